"""``python -m export --torch``: the four components as ``torch.export`` programs, for the runtime's PyTorch backend
(runtime/engines/pytorch.py). Folder layout and manifest records: runtime/engines/torch_programs.py.

Runs after the ONNX export into the same folder (or, with ``--torch-only``, after the manifest alone) and ties each
record to the fingerprint its graph has, or would have: the same checkpoints, options and code. The modules are
the ONNX graphs' modules (the same FP32 statistics in FP16, the same FP32 global encoder with FP16 edges), but
attention stays PyTorch's fused ``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU;
their softmax statistics are FP32 whatever the inputs).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from export.engine_folder import fingerprints, read_manifest, record_configs
from m3ddm.facts import GLOBAL_FRAMES
from m3ddm.files import file_digest
from runtime.engines import contract
from runtime.engines import torch_programs as tp
from runtime.engines.manifest import io_record, write_manifest

log = logging.getLogger(__name__)
DEFAULT_WINDOWS = (1, 2, 4)
# torch.export specialises a batch of 1 (and its shape guards exclude it in the VAE decoder): the least batch of a
# ranged program is 2, and the runtime pads a single image to it.
RANGE = {contract.VAE_ENCODER.name: (2, contract.VAE_BATCH), contract.VAE_DECODER.name: (2, contract.VAE_BATCH),
         contract.GLOBAL_ENCODER.name: (GLOBAL_FRAMES, GLOBAL_FRAMES)}
CODE = Path(__file__)


class WithWeights(nn.Module):
    """``module`` as a function of (weights, *inputs): its program holds no weights, so every program of a
    component (one per window count) shares one weights file."""

    def __init__(self, module: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", module)  # not a submodule: the exporter would lift its weights too

    def forward(self, weights: dict, *inputs):
        return torch.func.functional_call(self.inner, weights, inputs)  # type: ignore[arg-type]


def weights_of(module: nn.Module) -> dict:
    out: dict[str, torch.Tensor] = dict(module.named_parameters())
    out.update(module.named_buffers())
    return out


def current(manifest: dict, attention_softmax: str) -> dict:
    """{key: fingerprint} of every component at every precision as the manifest's sources, options and code give
    it (the graph's, where the export just made or kept one)."""
    return fingerprints(manifest["sources"], manifest["options"], manifest["code"], contract.PRECISIONS,
                        attention_softmax)


def export_programs(unet_source, vae_source, out, precisions=("fp32", "fp16"), windows=DEFAULT_WINDOWS,
                    force: bool = False, attention_softmax: str = "fp32") -> dict:
    """Export the programs missing or stale in ``out`` (an engines folder whose manifest ``export_engines`` has
    just written, with or without its graphs)."""
    from export.engine_folder import _load_models, checkpoint_folders, component_module
    out = Path(out)
    manifest = read_manifest(out)
    fingerprint = current(manifest, attention_softmax)
    options = {"torch": torch.__version__, "code": file_digest(CODE)[:16], "windows": list(windows)}
    want = {comp.key(p): (fingerprint[comp.key(p)], options) for p in precisions for comp in contract.ENGINES}
    programs = manifest.setdefault(tp.PROGRAMS, {})
    for key, entry in list(programs.items()):
        stale = key in want and (force or (entry.get("fingerprint"), entry.get("options")) != want[key])
        if stale or entry.get("fingerprint") != fingerprint.get(key):
            for name in [entry.get("weights", {}).get("file"), *(g.get("file") for g in entry.get("graphs", []))]:
                if isinstance(name, str):
                    (out / name).unlink(missing_ok=True)
            del programs[key]
    todo = [k for k in want if k not in programs]
    if not todo:
        write_manifest(out, manifest)
        return manifest
    checkpoints = {contract.component(k.split(".")[0]).checkpoint for k in todo}
    models = _load_models(checkpoint_folders(unet_source, vae_source), checkpoints, explicit=False)
    record_configs(models, manifest["model"])
    size = manifest["model"]["size"]
    for precision in contract.PRECISIONS:  # FP32 first, then the modules in place to FP16, as the graphs
        for comp in contract.ENGINES:
            key = comp.key(precision)
            if key not in todo:
                continue
            t0 = time.perf_counter()
            module = component_module(comp, precision, models[comp.checkpoint])
            log.info(f"exporting the PyTorch programs of {key} ...")
            programs[key] = _export_component(comp, precision, module, size, windows, out)
            programs[key].update(fingerprint=want[key][0], options=want[key][1], torch=torch.__version__,
                                 **io_record(comp.name, precision, size),
                                 export_seconds=round(time.perf_counter() - t0, 1))
            write_manifest(out, manifest)  # after each: an interrupted export keeps what finished
    return manifest


def _export_component(comp: contract.Component, precision: str, module: nn.Module, size: int, windows,
                      out: Path) -> dict:
    from export import onnx_export as ox
    key = comp.key(precision)
    weights = weights_of(module)
    ranges = [(3 * w, 3 * w) for w in windows] if comp is contract.UNET else [RANGE[comp.name]]
    graphs = []
    for rows in ranges:
        example = ox.example_inputs(comp.name, size, precision, rows[0])
        dynamic = None
        if rows[0] != rows[1]:
            batch = torch.export.Dim(comp.batch, min=rows[0], max=rows[1])
            dynamic = ({k: None for k in weights}, tuple({0: batch} for _ in example))
        program = torch.export.export(WithWeights(module), (weights, *example), dynamic_shapes=dynamic)
        used = _used_weights(program, weights)
        if len(used) < len(weights):  # e.g. the global encoder's module holds the whole UNet: keep what it reads
            weights = {k: weights[k] for k in used}
            dynamic = dynamic and ({k: None for k in weights}, dynamic[1])
            program = torch.export.export(WithWeights(module), (weights, *example), dynamic_shapes=dynamic)
        _check_outputs(program, comp, precision, size)
        program.example_inputs = None  # else the file holds a copy of every weight
        name = tp.graph_file(key, rows)
        _save(out / name, lambda path, program=program: torch.export.save(program, str(path)))
        graphs.append({"rows": list(rows), **_file_entry(out, name)})
    name = tp.weights_file(key)
    state = {k: v.detach().contiguous() for k, v in weights.items()}
    _save(out / name, lambda path: torch.save(state, str(path)))
    return {"precision": precision, "weights": _file_entry(out, name), "graphs": graphs}


def _check_outputs(program, comp: contract.Component, precision: str, size: int) -> None:
    """The program's outputs have the contract's shapes (its named dimensions free) and dtypes, which its record
    then states for the runtime (a folder without graphs has no other record of them)."""
    node = next(n for n in program.graph.nodes if n.op == "output")
    got = [(list(a.meta["val"].shape), str(a.meta["val"].dtype).removeprefix("torch.")) for a in node.args[0]]
    want = [spec.resolved(precision) for spec in contract.component_io(comp.name, size)[1]]
    fits = len(got) == len(want) and all(
        dtype == w["dtype"] and len(shape) == len(w["shape"])
        and all(isinstance(d, str) or d == int(g) for g, d in zip(shape, w["shape"]))
        for (shape, dtype), w in zip(got, want))
    if not fits:
        raise RuntimeError(f"the PyTorch program of {comp.key(precision)} gives {got}, the contract says "
                           f"{[(w['shape'], w['dtype']) for w in want]}")


def _used_weights(program, weights: dict) -> list:
    """The names of ``weights`` the program reads (its first input is the weights dict, flattened in order)."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
    return [name for name, node in zip(weights, user_inputs) if node.users]


def _save(path: Path, write) -> None:
    """Write through a temporary name: a file under its final name is always whole."""
    part = path.with_name(f"{path.stem}.partial{path.suffix}")  # torch.export.save wants the .pt2
    try:
        write(part)
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def _file_entry(out: Path, name: str) -> dict:
    path = out / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": file_digest(path)}
