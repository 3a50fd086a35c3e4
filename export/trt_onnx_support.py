"""What TensorRT's ONNX parser takes, for checking our graphs before a TensorRT build exists here.

Source: onnx/onnx-tensorrt docs/operators.md at the 10.1-GA release (commit 96e7811, "TensorRT 10.0
supports operators in the inclusive range of opset 9 to opset 20"), the TensorRT 10 parser that
10.4 (the last release for V100) extends; TensorRT 11's parser adds operators (Swish, TRT_Attention,
...) and keeps these (NVIDIA, "ONNX Opset Guide", TensorRT 11.x: opsets 9 to 25). Only the operators
and restrictions that matter for graphs like ours are listed; anything else fails the check, so a
new op in a graph is looked up before it ships.
"""
from __future__ import annotations

import onnx

# Operator -> the restriction the parser documents (empty: none that applies to float graphs).
SUPPORTED = {
    "Add": "", "Sub": "", "Mul": "", "Div": "", "Pow": "", "Sqrt": "", "Erf": "", "Floor": "",
    "Sin": "", "Cos": "", "Exp": "", "Sigmoid": "", "Relu": "", "Tanh": "", "Neg": "", "Abs": "",
    "MatMul": "", "Gemm": "", "Softmax": "", "Cast": "", "Identity": "", "Constant": "",
    "ConstantOfShape": "", "Shape": "", "Gather": "", "Concat": "", "Reshape": "", "Transpose": "",
    "Expand": "", "Where": "", "Equal": "", "Greater": "", "Less": "", "Min": "", "Max": "", "Split": "",
    "ReduceMean": "axes must be an initializer",
    "Conv": "2D or 3D convolutions only; weights W must be an initializer",
    "InstanceNormalization": "scale and B must be initializers; input rank 3 to 5",
    "LayerNormalization": "",
    "GroupNormalization": "",
    "BatchNormalization": "",
    "Range": "floating-point inputs only if start, limit and delta are initializers",
    "Slice": "axes must be an initializer",
    "Squeeze": "axes must be an initializer",
    "Unsqueeze": "axes must be a constant tensor",
    "Pad": "axes must be an initializer",
    "Resize": "modes nearest/linear; nearest_mode floor/ceil/round_prefer_*; no antialiasing",
}
RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def problems(model: onnx.ModelProto) -> list[str]:
    """Every node that TensorRT's ONNX parser (10.x/11.x) would refuse, as readable lines."""
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    constant |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    elem = {v.name: v.type.tensor_type.elem_type
            for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    elem.update({t.name: t.data_type for t in graph.initializer})
    out = []
    for node in graph.node:
        op, where = node.op_type, f"{node.op_type} node {node.name or node.output[0]}"
        if node.domain not in ("", "ai.onnx"):
            out.append(f"{where}: custom domain {node.domain}")
            continue
        if op not in SUPPORTED:
            out.append(f"{where}: operator not in TensorRT's ONNX support list")
            continue
        ins = list(node.input)
        if op == "Conv" and ins[1] not in constant:
            out.append(f"{where}: weights are not an initializer")
        if op == "InstanceNormalization" and not all(i in constant for i in ins[1:3]):
            out.append(f"{where}: scale/bias are not initializers")
        if op in ("Slice", "Squeeze", "Unsqueeze", "Pad", "ReduceMean"):
            axes_at = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "ReduceMean": 1}[op]
            if len(ins) > axes_at and ins[axes_at] and ins[axes_at] not in constant:
                out.append(f"{where}: axes input is not constant")
        if op == "Range" and elem.get(ins[0]) in float_types and not all(i in constant for i in ins):
            out.append(f"{where}: floating-point Range with computed inputs")
        if op == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            dec = lambda v: v.decode() if isinstance(v, bytes) else v
            if dec(attrs.get("mode", b"nearest")) not in ("nearest", "linear"):
                out.append(f"{where}: mode {attrs.get('mode')}")
            if dec(attrs.get("coordinate_transformation_mode", b"half_pixel")) not in RESIZE_TRANSFORMS:
                out.append(f"{where}: coordinate transform {attrs.get('coordinate_transformation_mode')}")
            if dec(attrs.get("mode", b"nearest")) == "nearest" and \
                    dec(attrs.get("nearest_mode", b"round_prefer_floor")) not in RESIZE_NEAREST:
                out.append(f"{where}: nearest mode {attrs.get('nearest_mode')}")
            if attrs.get("antialias", 0):
                out.append(f"{where}: antialiasing")
    return out
