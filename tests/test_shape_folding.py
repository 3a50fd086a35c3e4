"""The tracer's shape arithmetic folded into constants (export/shape_folding.py): fewer nodes, same values."""
from __future__ import annotations

import collections
import io
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import shape_folding  # noqa: E402


class Block(torch.nn.Module):
    """The shape patterns of the UNet: frames folded into the batch, heads split off a batch-dependent
    sequence, a Range over the frame count, an upsample to a size read from another tensor."""

    def __init__(self, c=8, heads=2):
        super().__init__()
        self.heads = heads
        self.proj = torch.nn.Linear(c, c)
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, skip):
        n, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * f, c, h, w)
        y = self.conv(frames).permute(0, 2, 3, 1).reshape(n * f, h * w, c)
        q = self.proj(y).reshape(n, -1, self.heads, c // self.heads).transpose(1, 2)
        att = torch.matmul(q, q.transpose(-1, -2)).softmax(-1)
        y = torch.matmul(att, q).transpose(1, 2).reshape(n * f, h * w, c)
        y = y + torch.arange(f).float()[None, :].expand(n, f).reshape(n * f, 1, 1)
        y = y.reshape(n, f, h, w, c).permute(0, 4, 1, 2, 3)
        up = torch.nn.functional.interpolate(y, size=(f, *skip.shape[-2:]), mode="nearest")
        return up + skip


def _export(dynamic_spatial: bool) -> onnx.ModelProto:
    model = Block().eval()
    x, skip = torch.randn(2, 8, 4, 6, 6), torch.randn(2, 8, 4, 12, 12)
    axes = {0: "N"}
    if dynamic_spatial:  # as a graph traced small and stamped with the contract's sizes afterwards
        axes.update({3: "h", 4: "w"})
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, skip), f, dynamo=False, opset_version=17, input_names=["x", "skip"],
                          output_names=["y"], dynamic_axes={"x": axes, "skip": {0: "N"}, "y": {0: "N"}})
    m = onnx.load_from_string(f.getvalue())
    if dynamic_spatial:
        for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim[3:], (6, 6)):
            d.ClearField("dim_param")
            d.dim_value = v
    return m


def _run(model: onnx.ModelProto, batch: int) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(batch)
    feeds = {"x": rng.standard_normal((batch, 8, 4, 6, 6)).astype(np.float32),
             "skip": rng.standard_normal((batch, 8, 4, 12, 12)).astype(np.float32)}
    return sess.run(None, feeds)[0]


def _ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("dynamic_spatial", [False, True])
def test_shape_arithmetic_folds_and_values_stay(dynamic_spatial):
    raw = _export(dynamic_spatial)
    before = _ops(raw)
    assert before["Shape"] >= 4  # the tracer's arithmetic is there to fold
    folded = shape_folding.fold_shapes(onnx.ModelProto.FromString(raw.SerializeToString()))
    onnx.checker.check_model(folded)
    after = _ops(folded)
    # Left: the two reads of the batch itself (the Expand to it, the Resize's sizes); the Range is a constant.
    assert after["Shape"] <= 2 and after["Range"] == 0, after
    assert sum(after.values()) < sum(before.values()) * 0.6, (before, after)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in folded.graph.initializer}
    inits.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in folded.graph.node
                  if n.op_type == "Constant"})
    for node in folded.graph.node:
        if node.op_type == "Reshape":  # a constant target, the dynamic batch as its one -1
            target = inits[node.input[1]]
            assert (target == -1).sum() <= 1 and (target != 0).all()
    # The batch stays dynamic: other batches than the trace's give the same values.
    for batch in (1, 2, 3):
        np.testing.assert_allclose(_run(folded, batch), _run(raw, batch), rtol=0, atol=1e-5)
    # The declared outputs are kept (symbolic inference would rename the batch dim).
    assert folded.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_without_symbolic_inference_it_folds_less_and_stays_correct(monkeypatch):
    import onnxruntime.tools.symbolic_shape_infer as ssi

    def refuse(*a, **k):
        raise RuntimeError("not here")
    monkeypatch.setattr(ssi.SymbolicShapeInference, "infer_shapes", staticmethod(refuse))
    raw = _export(False)
    folded = shape_folding.fold_shapes(onnx.ModelProto.FromString(raw.SerializeToString()))
    assert sum(_ops(folded).values()) < sum(_ops(raw).values())
    for batch in (1, 3):
        np.testing.assert_allclose(_run(folded, batch), _run(raw, batch), rtol=0, atol=1e-5)


def test_exported_unet_has_no_shape_arithmetic_left(engines):
    m = onnx.load(str(Path(engines) / "unet.fp32.onnx"), load_external_data=False)
    ops = _ops(m)
    # The UNet's only dynamic dim is the batch: what is left are the few Shape reads of broadcasts.
    assert ops["Shape"] <= 8 and ops["Gather"] <= 4, ops


def test_older_opsets_and_large_constants():
    """Unsqueeze/Squeeze with their axes as attributes (before opset 13); a ConstantOfShape too large to
    hold in the graph stays a node."""
    from onnx import TensorProto, helper
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),
        helper.make_node("Unsqueeze", ["c"], ["c1"], axes=[0]),
        helper.make_node("Concat", ["minus1", "c1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Concat", ["big", "c1"], ["big_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["big_shape"], ["zeros"]),
        helper.make_node("ReduceSum", ["zeros"], ["z"], axes=[0], keepdims=0),
    ]
    inits = [onnx.numpy_helper.from_array(np.array(1, np.int64), "i1"),
             onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             onnx.numpy_helper.from_array(np.array([4096], np.int64), "big")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    folded = shape_folding.fold_shapes(onnx.ModelProto.FromString(raw.SerializeToString()))
    ops = _ops(folded)
    assert ops["Shape"] == 0 and ops["Unsqueeze"] == 0 and ops["ConstantOfShape"] == 1, ops
    x = np.arange(18, dtype=np.float32).reshape(3, 6)
    for model in (raw, folded):
        y, z = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert y.shape == (18 // 6, 6) and z.shape == (6,)
