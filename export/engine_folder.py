"""Make or update an engines folder: the four ONNX graphs per precision and manifest.json.

Re-running with the same checkpoints, options and exporter code does nothing; a changed checkpoint,
option or exporter re-exports what it affects and drops what no longer matches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch

from export.model.loading import WEIGHT_NAMES, load_unet, load_vae, resolve_folder
from m3ddm.errors import InputError
from m3ddm.facts import GLOBAL_FRAMES, RELEASED_VAE_SUBFOLDER, VAE_SCALE_FACTOR, WINDOW_FRAMES
from m3ddm.files import atomic_write, file_digest
from runtime.engines import contract
from runtime.engines.manifest import PROGRAMS, write_manifest

ROOT = Path(__file__).resolve().parents[1]
# The code whose change alters the graphs: a change here re-exports.
CODE_FILES = sorted([*(ROOT / "export" / "model").glob("*.py"), ROOT / "export" / "onnx_export.py",
                     ROOT / "runtime" / "engines" / "contract.py", ROOT / "m3ddm" / "facts.py"])
log = logging.getLogger(__name__)


def source_files(folder: Path) -> list[Path]:
    names = {"config.json", *WEIGHT_NAMES}
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and
             (p.name in names
              or (p.name.startswith("diffusion_pytorch_model") and p.suffix in (".safetensors", ".bin")))]
    return files


def hash_source(folder: Path, previous: dict | None) -> dict:
    """{file: {bytes, mtime_ns, sha256}}, reusing earlier hashes of files whose size and mtime are unchanged."""
    previous = previous or {}
    out = {}
    for p in source_files(folder):
        st = p.stat()
        old = previous.get(p.name)
        if old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            out[p.name] = old
        else:
            out[p.name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_digest(p)}
    return out


def code_hash() -> str:
    h = hashlib.sha256()
    for p in CODE_FILES:
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def tool_versions() -> dict:
    import diffusers
    import onnx
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "diffusers": diffusers.__version__}
    try:
        import onnxruntime
        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def fingerprint(component: str, precision: str, sources: dict, options: dict, code: str) -> str:
    used = sources[contract.component(component).checkpoint]
    payload = {"component": component, "precision": precision, "options": options, "code": code,
               "files": {k: v["sha256"] for k, v in used["files"].items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(sources: dict, options: dict, code: str, precisions, attention_softmax: str) -> dict:
    """{key: fingerprint} of every component at ``precisions``: what its graph, and its PyTorch programs, exported
    now from ``sources`` with ``options`` by the exporter code ``code`` would record."""
    return {f"{c}.{p}": fingerprint(c, p, sources, _options(attention_softmax, options, c, p), code)
            for p in precisions for c in contract.COMPONENTS}


def checkpoint_folders(unet_source, vae_source) -> dict:
    """{"unet": folder, "vae": folder}: the local folders of the two checkpoints (hub downloads resolved)."""
    return {"unet": resolve_folder(unet_source, "unet", "UNet"),
            "vae": resolve_folder(vae_source, RELEASED_VAE_SUBFOLDER, "VAE")}


def _sources(folders: dict, given: dict, old: dict) -> dict:
    sources = {}
    for key, folder in folders.items():
        prev = old.get("sources", {}).get(key, {})
        prev_files = prev.get("files") if prev.get("folder") == str(folder) else None
        sources[key] = {"source": str(given[key]), "folder": str(folder), "files": hash_source(folder, prev_files)}
    return sources


def read_manifest(out: Path) -> dict:
    try:
        m = json.loads((out / contract.MANIFEST).read_text())
        return m if m.get("format") == contract.MANIFEST_FORMAT else {}
    except (OSError, ValueError):
        return {}


def export_engines(unet_source, vae_source, out, precisions=("fp32", "fp16"), size: int = 256,
                   opset: int | None = None, force: bool = False, attention_softmax: str = "fp32",
                   graphs: bool = True) -> dict:
    """Export what is missing or stale into ``out``; returns the manifest. ``graphs`` False (``--torch-only``): the
    manifest and its records only (current graphs kept, stale ones removed), for the PyTorch programs alone."""
    from export import onnx_export as ox

    opset = opset or ox.OPSET
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()  # its dtype advice does not apply: norms are upcast in the graph
    lat = contract.latent_size(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = read_manifest(out)
    folders = checkpoint_folders(unet_source, vae_source)
    sources = _sources(folders, {"unet": unet_source, "vae": vae_source}, old)
    if attention_softmax not in ("fp32", "fp16"):
        raise InputError(f"attention softmax must be fp32 or fp16, not {attention_softmax!r}")
    options = _base_options(size, opset)
    code = code_hash()

    wanted = fingerprints(sources, options, code, precisions, attention_softmax)
    current = fingerprints(sources, options, code, contract.PRECISIONS, attention_softmax)

    components = {}
    for key, entry in old.get("components", {}).items():
        kept = entry.get("fingerprint") == current.get(key) and (out / entry["file"]).is_file()
        if kept and not (force and key in wanted):
            components[key] = entry
        else:
            for name in (entry.get("file"), (entry.get("external_data") or {}).get("file")):
                if name:
                    (out / name).unlink(missing_ok=True)
    todo = [k for k in wanted if k not in components] if graphs else []

    manifest = {
        "format": contract.MANIFEST_FORMAT,
        "model": {"size": size, "latent_size": lat, "frames": WINDOW_FRAMES, "global_frames": GLOBAL_FRAMES,
                  "context_tokens": GLOBAL_FRAMES * contract.global_tokens_per_frame(lat),
                  "vae_scale_factor": VAE_SCALE_FACTOR},
        "sources": sources, "options": options, "code": code, "tools": tool_versions(),
        "components": components,
        # Plan records stay: each names the ONNX fingerprint it was built from, so a re-exported graph
        # makes its plan stale (rebuilt by `make plans`, refused by the runtime until then).
        "plans": old.get("plans", {}),
        # PyTorch programs too (export/torch_export.py): each names the fingerprint of the graph it was exported
        # beside; `--torch` replaces stale ones, the runtime refuses them.
        PROGRAMS: old.get(PROGRAMS, {}),
    }
    if not todo:
        manifest["model"].update({k: v for k, v in old.get("model", {}).items() if k.endswith("_config")})
        write_manifest(out, manifest)
        log.info(f"{out}: graphs up to date ({', '.join(sorted(components))})" if graphs else
                 f"{out}: no ONNX graphs exported (--torch-only){'; kept: ' if components else ''}"
                 f"{', '.join(sorted(components))}")
        return manifest

    second = _second_process_keys(todo, sources)
    part = _SecondProcess(second, folders, out, size, opset, wanted, attention_softmax) if second else None
    threads = torch.get_num_threads()
    try:
        if part:
            torch.set_num_threads(part.threads)
        here = [k for k in todo if k not in second]
        models = _models_for(here, folders, old.get("model", {}), manifest["model"])

        def done(key, record):
            components[key] = record
            components.update(part.records() if part else {})
            write_manifest(out, manifest)  # after each graph: an interrupted export keeps what finished

        _export_graphs(here, models, out, size, opset, wanted, attention_softmax, done)
    finally:
        torch.set_num_threads(threads)
        if part:
            failed = sys.exc_info()[0] is not None
            records, error = part.finish(wait=not failed)
            components.update(records)
            # The serial order (what was kept, then as exported), whichever process finished first.
            order = [k for k in components if k not in todo] + todo
            manifest["components"] = {k: components[k] for k in order if k in components}
            write_manifest(out, manifest)
            if error is not None and not failed:
                raise error
    return manifest


def _base_options(size: int, opset: int) -> dict:
    return {"size": size, "opset": opset, "frames": WINDOW_FRAMES, "global_frames": GLOBAL_FRAMES}


def _options(attention_softmax: str, options: dict, comp: str, prec: str) -> dict:
    # Only the FP16 UNet has FP16 attention to choose; the default leaves older fingerprints as they were.
    if comp == contract.UNET.name and prec == "fp16" and attention_softmax != "fp32":
        return {**options, "attention_softmax": attention_softmax}
    return options


def _models_for(keys, folders: dict, old_model: dict, model: dict) -> dict:
    """The models the graphs ``keys`` come from (and any whose config ``old_model`` lacks), their configs
    recorded in ``model``."""
    feeds = {contract.component(k.split(".")[0]).checkpoint for k in keys}
    models = _load_models(folders, {c for c in ("unet", "vae") if c in feeds or f"{c}_config" not in old_model})
    record_configs(models, model)
    for k in ("unet_config", "vae_config"):
        model.setdefault(k, old_model.get(k))
    return models


def record_configs(models: dict, model: dict) -> None:
    """The configs of the loaded ``models`` into the manifest's ``model`` record."""
    if "unet" in models:
        model["unet_config"] = models["unet"].config.to_dict()
    if "vae" in models:
        model["vae_config"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in dict(models["vae"].config).items() if not k.startswith("_")}


def _load_models(folders: dict, checkpoints, explicit: bool = True) -> dict:
    """The checkpoints named, loaded; ``explicit``: the VAE's attention spelled out for ONNX."""
    from export import onnx_export as ox
    models = {}
    if "unet" in checkpoints:
        models["unet"] = load_unet(folders["unet"])
    if "vae" in checkpoints:
        models["vae"] = load_vae(folders["vae"])
        if explicit:
            ox.explicit_vae_attention(models["vae"])
    return models


def _export_graphs(keys, models: dict, out: Path, size: int, opset: int, wanted: dict, attention_softmax: str,
                   done) -> None:
    """Export the graphs ``keys`` from ``models``, calling ``done(key, manifest record)`` after each."""
    # FP32 first, then convert the modules in place to FP16: never two copies of the full UNet in RAM.
    for precision in contract.PRECISIONS:
        for comp in contract.ENGINES:
            key = comp.key(precision)
            if key in keys:
                done(key, _export_graph(comp, precision, models[comp.checkpoint], out, size, opset, wanted[key],
                                        attention_softmax))


def component_module(comp: contract.Component, precision: str, model) -> torch.nn.Module:
    """The module of ``comp`` at ``precision`` over ``model`` (converted in place), as the graphs and the PyTorch
    programs export it."""
    from export import onnx_export as ox
    if comp is contract.GLOBAL_ENCODER and precision == "fp16":
        module = ox.graph_module(comp, ox.prepare(model, "fp32"), io_dtype=torch.float16)
        # The global encoder's graph reads fp16 latents: cast at its input inside the graph.
        return _CastInput(module, torch.float32).eval()
    return ox.graph_module(comp, ox.prepare(model, precision))


def _export_graph(comp, precision: str, model, out: Path, size: int, opset: int, fingerprint_: str,
                  attention_softmax: str) -> dict:
    import onnx

    from export import onnx_export as ox
    from export.trt_onnx_support import problems as trt_problems
    t0 = time.perf_counter()
    key = comp.key(precision)
    module = component_module(comp, precision, model)
    path = out / comp.onnx_file(precision)
    log.info(f"exporting {key} ...")
    ox.export_component(comp.name, module, size, precision, path, softmax_fp32=attention_softmax == "fp32")
    proto = onnx.load(str(path), load_external_data=False)
    refused = trt_problems(proto)
    if refused:
        raise RuntimeError(f"{path.name} has nodes TensorRT's ONNX parser refuses: {refused[:3]}")
    inputs, outputs = ox.io_specs(path)
    data = path.with_name(path.name + ".data")
    options = _base_options(size, opset)
    record = {
        "file": path.name, "bytes": path.stat().st_size, "precision": precision, "opset": opset,
        "external_data": {"file": data.name, "bytes": data.stat().st_size} if data.is_file() else None,
        "inputs": inputs, "outputs": outputs, "ops": sorted({n.op_type for n in proto.graph.node}),
        "fingerprint": fingerprint_, "options": _options(attention_softmax, options, comp.name, precision),
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    log.info(f"  {path.name}: {record['bytes'] / 2**20:.1f} MiB"
             + (f" + {data.stat().st_size / 2**30:.2f} GiB weights" if data.is_file() else "")
             + f", {record['export_seconds']} s")
    return record


# A second process loads its own copy of the models: only checkpoints this small are exported in two at once
# (the released UNet's 5.2 GB FP32 copy twice, beside the tracer's graphs, would not fit a 24 GB machine).
PARALLEL_MAX_SOURCE_BYTES = 2 ** 30


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _second_process_keys(todo: list, sources: dict) -> list:
    """The FP16 graphs to export in a second process while this one exports the FP32 ones, or none."""
    fp16 = [k for k in todo if k.endswith(".fp16")]
    unet_bytes = sum(f["bytes"] for f in sources["unet"]["files"].values())
    if not fp16 or len(fp16) == len(todo) or _cpus() < 2 or unet_bytes > PARALLEL_MAX_SOURCE_BYTES:
        return []
    return fp16


class _SecondProcess:
    """Exports ``keys`` in a process of its own. It never writes the manifest: it records each finished graph in
    a file of its own, which this process merges into the manifest (the one writer), even when interrupted."""

    def __init__(self, keys, folders, out: Path, size, opset, wanted, attention_softmax):
        import multiprocessing
        self.keys, self.wanted, self.threads = list(keys), wanted, max(1, _cpus() // 2)
        self.path = out / f".export-{os.getpid()}.records.json"
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-use
        self.conn, child = ctx.Pipe(duplex=False)
        args = (self.keys, folders, out, size, opset, {k: wanted[k] for k in self.keys}, attention_softmax,
                self.threads, bool(logging.getLogger("export").handlers), self.path, child)
        self.process = ctx.Process(target=_export_in_second_process, args=args, daemon=True)
        self.process.start()
        child.close()

    def records(self) -> dict:
        """The graphs it has finished, as manifest records (only those it was asked for, as wanted)."""
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: r for k, r in found.items() if k in self.keys and r.get("fingerprint") == self.wanted[k]}

    def finish(self, wait: bool) -> tuple[dict, BaseException | None]:
        """(what it finished, its error): after it ends, or after stopping it unless ``wait``."""
        if not wait and self.process.is_alive():
            self.process.terminate()  # it unwinds, removing the graph it was writing
        self.process.join()
        records = self.records()
        self.path.unlink(missing_ok=True)
        try:
            error = self.conn.recv() if self.conn.poll() else None
        except EOFError:  # it ended without a word: it finished, or was killed
            error = None
        if error is None and self.process.exitcode:
            error = RuntimeError(f"the export of {', '.join(self.keys)} stopped with exit code {self.process.exitcode}")
        return records, error


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _export_in_second_process(keys, folders, out, size, opset, wanted, attention_softmax, threads, logs, path, conn):
    signal.signal(signal.SIGTERM, _raise_interrupt)  # unwind: a graph half written is removed, not left
    if logs:
        from runtime import cli
        cli.setup_logging(sys.stdout)
    torch.set_num_threads(threads)
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()
    records: dict = {}

    def done(key, record):
        records[key] = record
        atomic_write(path, json.dumps(records))

    try:
        models = _load_models(folders, {contract.component(k.split(".")[0]).checkpoint for k in keys})
        _export_graphs(keys, models, out, size, opset, wanted, attention_softmax, done)
    except BaseException as exc:
        try:
            conn.send(exc)
        except Exception:  # an exception that does not pickle: its line
            conn.send(RuntimeError(f"{type(exc).__name__}: {exc}"))
        sys.exit(1)


class _CastInput(torch.nn.Module):
    def __init__(self, inner, dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x):
        return self.inner(x.to(self.dtype))
