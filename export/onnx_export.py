"""ONNX export of the four components, with the engine contracts' names, shapes and dtypes.

FP32 graphs come from the FP32 modules. FP16 graphs come from the same modules cast to FP16, with
normalisation statistics and softmax computed in FP32 inside the graph (explicit Casts), so that a
strongly typed TensorRT build (the only FP16 route in TensorRT 11) keeps them there, and TensorRT
10.4 (V100) builds the same graph. The legacy TorchScript exporter is used, as NVIDIA's diffusion
demo does for UNets and VAEs: the graph has no einops and every reshape is derived from tensor shapes,
so one graph serves every batch size.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.model.layers import GroupNorm, LayerNorm, export_mode
from m3ddm.facts import VAE_SCALE_FACTOR
from m3ddm.files import replacing
from runtime.engines import contract

OPSET = 17  # native LayerNormalization; TensorRT 10.4 and 11 parse it
TWO_GB = 2 ** 31
# Protobuf caps a file at 2 GB; leave room for the graph itself.
EXTERNAL_ABOVE = TWO_GB - 2 ** 26


class GlobalEncoderGraph(nn.Module):
    """Runs in the encoder's own dtype and casts at the edges: an FP16 graph keeps this tiny encoder
    (11 GFLOP, once per video) in FP32, where FP16 BatchNorm-folded convs lose about 1 % of the context."""

    def __init__(self, unet, io_dtype=None):
        super().__init__()
        self.unet, self.io_dtype = unet, io_dtype

    def forward(self, global_latents):
        context = self.unet.encode_global(global_latents)
        return context if self.io_dtype is None else context.to(self.io_dtype)


class UNetGraph(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, fps, context):
        return self.unet(sample, timestep, fps, context)


class VaeEncoderGraph(nn.Module):
    """image [-1, 1] -> posterior mean x 0.18215 (the official code samples; the mean is deterministic)."""

    def __init__(self, vae):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, image):
        moments = self.encoder(image)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[:, : moments.shape[1] // 2]
        return mean * VAE_SCALE_FACTOR


class VaeDecoderGraph(nn.Module):
    """scaled latents -> image in about [-1, 1]; multiplies by 1/0.18215 as the official code does
    (docs/algorithm.md §1.5)."""

    def __init__(self, vae):
        super().__init__()
        self.decoder, self.post_quant_conv = vae.decoder, vae.post_quant_conv

    def forward(self, latent):
        z = latent * (1 / VAE_SCALE_FACTOR)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


def fp32_statistics(module: nn.Module) -> nn.Module:
    """Swap every GroupNorm/LayerNorm for the variants that compute statistics in FP32 (keys unchanged)."""
    for sub in module.modules():
        if type(sub) is nn.GroupNorm:
            sub.__class__ = GroupNorm
        elif type(sub) is nn.LayerNorm:
            sub.__class__ = LayerNorm
    return module


def explicit_vae_attention(vae) -> None:
    """The VAE's mid-block attention as plain MatMul/Softmax with an FP32 softmax (diffusers' AttnProcessor
    upcasts the softmax for the VAE, whose attention is built with upcast_softmax=True)."""
    from diffusers.models.attention_processor import AttnProcessor
    vae.set_attn_processor(AttnProcessor())
    for sub in vae.modules():
        if hasattr(sub, "upcast_softmax"):
            sub.upcast_softmax = True


def prepare(module: nn.Module, precision: str) -> nn.Module:
    """``module`` converted IN PLACE for export at ``precision`` (no copy: the full UNet is 5.2 GB in FP32)."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    return fp32_statistics(module).to(dtype).eval().requires_grad_(False)


def example_inputs(component: str, size: int, precision: str, batch: int, generator=None):
    """Random inputs of the contract's shapes, the dynamic dims set to ``batch`` (16 for global frames)."""
    inputs, _ = contract.component_io(component, size)
    g = generator or torch.Generator().manual_seed(0)
    out = []
    for spec in inputs:
        shape = [(16 if d == "g" else batch) if isinstance(d, str) else d for d in spec.shape]
        dtype = torch.float32 if spec.dtype == "float32" or precision == "fp32" else torch.float16
        if spec.name == "timestep":
            t = torch.randint(1, 1000, shape, generator=g).float()
        elif spec.name == "fps":
            t = torch.randint(1, 31, shape, generator=g).float()
        elif spec.name == "image":
            t = torch.rand(shape, generator=g) * 2 - 1
        else:
            t = torch.randn(shape, generator=g)
        out.append(t.to(dtype))
    return out


# The torch module whose trace is each component's graph (the contract's records say everything else).
GRAPHS = {contract.GLOBAL_ENCODER.name: GlobalEncoderGraph, contract.UNET.name: UNetGraph,
          contract.VAE_ENCODER.name: VaeEncoderGraph, contract.VAE_DECODER.name: VaeDecoderGraph}


def graph_module(component, model=None, *, unet=None, vae=None, **options) -> nn.Module:
    """The module whose trace is ``component``'s graph (a contract record or its name), in eval mode, over
    ``model`` (or ``unet``/``vae``: whichever checkpoint the component holds)."""
    comp = component if isinstance(component, contract.Component) else contract.component(component)
    if model is None:
        model = unet if comp.checkpoint == "unet" else vae
    return GRAPHS[comp.name](model, **options).eval()


TRACE_SIZE = 64  # trace at 8x8 latents: FP16 on a CPU is slow, and the graph does not depend on it


def export_component(component: str, module: nn.Module, size: int, precision: str, path: Path,
                     trace_batch: int = 1, external_above: int = EXTERNAL_ABOVE, trace_size: int | None = TRACE_SIZE,
                     softmax_fp32: bool = True) -> Path:
    """Trace ``module`` (already prepared for ``precision``) and write a cleaned ONNX graph to ``path``.

    The trace runs at batch ``trace_batch`` and model size ``trace_size`` with every dimension that differs
    from the contract marked dynamic, so the tracer must keep it symbolic; the contract's static sizes are
    then stamped on the graph's inputs and outputs. (A full-size FP16 trace at 32x32 latents takes over
    20 minutes on a CPU; at 8x8 seconds. Tests check graphs traced small against torch at the full size.)
    Graphs over 2 GB keep their weights in ``<path>.data`` beside the graph.
    """
    inputs, outputs = contract.component_io(component, size)
    trace_size = min(size, trace_size or size)
    t_inputs, t_outputs = contract.component_io(component, trace_size)
    dynamic = {}
    for spec, t_spec in zip(inputs + outputs, t_inputs + t_outputs):
        axes = {i: (d if isinstance(d, str) else f"{spec.name}_{i}")
                for i, (d, td) in enumerate(zip(spec.shape, t_spec.shape)) if isinstance(d, str) or d != td}
        if axes:
            dynamic[spec.name] = axes
    args = tuple(example_inputs(component, trace_size, precision, trace_batch))
    # torch.onnx.export restores the wrapper's training flag afterwards, recursively: a wrapper left in
    # training mode would switch the model's BatchNorms to batch statistics for every later call.
    module.eval()
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), export_mode(softmax_fp32), warnings.catch_warnings():
            # Tracer warnings flag Python-side shape checks; every such value is static in the contract.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(raw), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                              input_names=[s.name for s in inputs], output_names=[s.name for s in outputs],
                              dynamic_axes=dynamic)
        # Weights stay where the tracer wrote them until the final write: the full UNet never sits in
        # RAM twice (a loaded 5 GB graph beside the 5 GB torch model would not fit a 24 GB machine).
        model = onnx.load(str(raw), load_external_data=False)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))
        stamp_io(model, inputs, outputs)
        model = cleanup(model, fold=not external)
        write_model(model, path, external_above, base_dir=Path(tmp))
    return path


def stamp_io(model: onnx.ModelProto, inputs, outputs) -> None:
    """Write the contract's shapes onto the graph's inputs and outputs (the tracer invents names for
    dims it cannot prove static)."""
    specs = {s.name: s for s in list(inputs) + list(outputs)}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise RuntimeError(f"{value.name}: traced rank {len(dims)} != contract rank {len(spec.shape)}")
        for dim, want in zip(dims, spec.shape):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want


def cleanup(model: onnx.ModelProto, fold: bool = True) -> onnx.ModelProto:
    """Dead nodes out, topological order, the tracer's shape arithmetic folded (``shape_folding``), constants
    folded (where ONNX Runtime is there to fold them; torch already folded the weight-side constants), shapes
    inferred."""
    import onnx_graphsurgeon as gs

    from export.shape_folding import fold_shapes
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    graph = gs.import_onnx(fold_shapes(gs.export_onnx(graph)))
    if fold:
        try:
            graph.fold_constants().cleanup()
        except Exception:  # folding needs onnxruntime; the graph is valid without it
            pass
    model = gs.export_onnx(graph)
    model.opset_import[0].version = max(model.opset_import[0].version, OPSET)
    return onnx.shape_inference.infer_shapes(model)  # weights are external or small here: under 2 GB


EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the graph
ALIGN = 4096  # page-aligned offsets let ONNX Runtime memory-map the weights


def write_model(model: onnx.ModelProto, path: Path, external_above: int = EXTERNAL_ABOVE,
                base_dir: Path | None = None) -> None:
    """Write ``model`` to ``path`` atomically. If its weights reach ``external_above`` bytes (or are
    already external, relative to ``base_dir``), they go to one file ``path.name + '.data'``, copied
    tensor by tensor so that no second copy of them is ever held in memory."""
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    tensors = list(_all_tensors(model))
    external = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
    total = sum(_tensor_bytes(t) for t in tensors)
    for stale in (path, data_path):
        stale.unlink(missing_ok=True)
    if not external and total < external_above:
        with replacing(path) as tmp:
            onnx.save_model(model, str(tmp))
        return
    # The weights file first, the graph last: a graph is never there without its weights.
    with replacing(path) as tmp, replacing(data_path) as tmp_data:
        with open(tmp_data, "wb") as out:
            for t in tensors:
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    info = {e.key: e.value for e in t.external_data}
                    src = (base_dir or path.parent) / info["location"]
                    with open(src, "rb") as f:
                        f.seek(int(info.get("offset", 0)))
                        blob = f.read(int(info["length"])) if "length" in info else f.read()
                elif len(t.raw_data) >= EXTERNAL_MIN_BYTES:
                    blob = t.raw_data
                else:
                    continue
                pad = (-out.tell()) % ALIGN
                out.write(b"\0" * pad)
                offset = out.tell()
                out.write(blob)
                del t.external_data[:]
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(blob)))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
        onnx.save_model(model, str(tmp))


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return int({e.key: e.value for e in t.external_data}.get("length", 0))
    return len(t.raw_data) or t.ByteSize()


def op_types(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    for fn in model.functions:
        ops |= {n.op_type for n in fn.node}
    return ops


def io_specs(path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs/outputs of a saved graph as the manifest records them."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
