"""Reading and checking an engines folder's manifest.json (torch-free).

An engines folder is data that may come from elsewhere (a download, a shared volume), so it is confined:
every file it names (graphs, their external weights, TensorRT plans) must be a plain relative path that
resolves inside the folder, and no symlink in it may lead out of it. The runtime never opens a file
outside the folder because a manifest said so. (ONNX Runtime itself refuses external-data locations that
are absolute or contain "..", so a tampered graph cannot name one either; the symlink rule covers the rest.)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from m3ddm.errors import EnginesError
from m3ddm.files import atomic_write
from runtime.engines import contract

PROGRAMS = "programs"  # the manifest's section of PyTorch programs (runtime/engines/torch_programs.py)


@dataclass(frozen=True)
class EngineSet:
    """A checked engines folder: what the runtime needs to know about it."""

    folder: Path
    manifest: dict
    model_size: int
    precisions: tuple[str, ...]  # those with every ONNX graph (ONNX Runtime, TensorRT)
    program_precisions: tuple[str, ...] = ()  # those with every component's PyTorch programs (--backend torch)

    def onnx_path(self, component: str, precision: str) -> Path:
        return self.path(self.manifest["components"][f"{component}.{precision}"]["file"])

    def graph_bytes(self, component: str, precision: str) -> int:
        """The graph's size on disk, its external weights included (as the checked manifest records them)."""
        entry = self.manifest["components"][f"{component}.{precision}"]
        data = entry.get("external_data") or {}
        return (int(entry.get("bytes") or self.onnx_path(component, precision).stat().st_size)
                + int(data.get("bytes", 0)))

    def path(self, name) -> Path:
        """The file ``name`` (as the manifest gives it) inside the folder; EnginesError if it would lead out."""
        return inside(self.folder, name)

    @property
    def latent_size(self) -> int:
        return contract.latent_size(self.model_size)

    @property
    def context_tokens(self) -> int:
        return self.manifest["model"]["context_tokens"]


def write_manifest(folder, manifest: dict) -> None:
    """Replace ``folder``'s manifest.json atomically (the exporter and the plan builder record as they go)."""
    atomic_write(Path(folder) / contract.MANIFEST, json.dumps(manifest, indent=1))


def _fail(folder: Path, reason: str):
    raise EnginesError(f"engines folder {folder} cannot be used: {reason}")


def inside(folder, name) -> Path:
    """``folder / name`` when ``name`` is a relative path without ".." that resolves (symlinks followed)
    inside ``folder``; otherwise EnginesError, and nothing is opened."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        _fail(folder, f"the manifest names a file {name!r}, which is not a file name")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or os.path.isabs(name):
        _fail(folder, f"the manifest names {name!r}, outside the folder (only files inside it are read)")
    path = folder / rel
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        _fail(folder, f"{name} leads outside the folder (a symlink to {path.resolve()}); only files inside it are read")
    return path


def check_links(folder: Path) -> None:
    """Refuse a folder holding a symlink that leads out of it (ONNX Runtime would follow it to weights)."""
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                _fail(folder, f"{p.relative_to(folder)} is a symlink to {p.resolve()}, outside the folder")


def open_engines(folder, precision: str | None = None) -> EngineSet:
    """Check ``folder`` against the engine contracts; ``precision`` (if given) must have every ONNX graph there.
    Without it, a complete set of graphs or of PyTorch programs (``python -m export --torch-only`` writes no
    graphs) is enough for the folder to open; the PyTorch backend checks its programs' set itself."""
    folder = Path(folder)
    path = folder / contract.MANIFEST
    if not folder.is_dir():
        _fail(folder, "it does not exist (make one with `make engines` or `python -m export --out DIR`)")
    if not path.is_file():
        _fail(folder, f"no {contract.MANIFEST} (not made by `python -m export`, or the export did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(folder, f"unreadable {contract.MANIFEST}: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != contract.MANIFEST_FORMAT:
        _fail(folder, f"manifest format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                      f"this runtime reads format {contract.MANIFEST_FORMAT}; re-export with this version")
    try:
        size = int(manifest["model"]["size"])
        components = manifest["components"]
        plans = manifest.get("plans", {})
        records = manifest.get(PROGRAMS) or {}
        named = [e["file"] for e in components.values()] + [e["external_data"]["file"] for e in components.values()
                                                             if e.get("external_data")]
        named += [e["file"] for e in plans.values() if isinstance(e, dict) and "file" in e]
        for e in records.values():
            named += [e["weights"]["file"], *(g["file"] for g in e["graphs"])]
    except (KeyError, TypeError, ValueError, AttributeError):
        _fail(folder, "manifest lacks model.size or components, or an entry has no file")
    check_links(folder)
    for name in named:
        inside(folder, name)
    complete = tuple(p for p in contract.PRECISIONS if all(f"{c}.{p}" in components for c in contract.COMPONENTS))
    with_programs = tuple(p for p in contract.PRECISIONS if all(f"{c}.{p}" in records for c in contract.COMPONENTS))
    if precision is not None and precision not in complete:
        _fail(folder, _incomplete(precision, complete, with_programs))
    for prec in ([precision] if precision else complete):
        for comp in contract.COMPONENTS:
            _check_component(folder, comp, prec, size, components[f"{comp}.{prec}"])
    for prec in with_programs:
        for comp in contract.COMPONENTS:
            if f"{comp}.{prec}" not in components:  # a program beside its graph is held to the graph's record
                _check_io(folder, comp, prec, size, records[f"{comp}.{prec}"], "PyTorch programs")
    if not complete and not with_programs:
        _fail(folder, "no complete engine set in the manifest")
    return EngineSet(folder, manifest, size, complete, with_programs)


def _incomplete(precision: str, complete: tuple, with_programs: tuple) -> str:
    why = f"it has no complete {precision} engine set (has: {', '.join(complete) or 'none'})"
    if with_programs and not complete:  # a folder of --torch-only
        why += (f"; its PyTorch programs ({', '.join(with_programs)}) run with --backend torch, or export the graphs "
                f"(python -m export ... without --torch-only)")
    return why


def io_record(comp: str, prec: str, size: int) -> dict:
    """The inputs and outputs the contract gives ``comp`` at ``prec`` and model size ``size``, as recorded."""
    inputs, outputs = contract.component_io(comp, size)
    return {"inputs": [t.resolved(prec) for t in inputs], "outputs": [t.resolved(prec) for t in outputs]}


def _check_io(folder: Path, comp: str, prec: str, size: int, entry: dict, what: str = "") -> None:
    want = io_record(comp, prec, size)
    for side in ("inputs", "outputs"):
        got = entry.get(side)
        if got != want[side]:
            _fail(folder, f"{comp}.{prec} {what + ' ' if what else ''}{side} {_brief(got)} differ from what this "
                          f"runtime expects {_brief(want[side])} (exported for another model or version)")


def _check_component(folder: Path, comp: str, prec: str, size: int, entry: dict) -> None:
    _check_io(folder, comp, prec, size, entry)
    onnx = inside(folder, entry.get("file", ""))
    if not onnx.is_file():
        _fail(folder, f"{onnx.name} is missing")
    if entry.get("bytes") is not None and onnx.stat().st_size != entry["bytes"]:
        _fail(folder, f"{onnx.name} has {onnx.stat().st_size} bytes, the manifest says {entry['bytes']} "
                      f"(changed or truncated)")
    data = entry.get("external_data")
    if data:
        p = inside(folder, data["file"])
        if not p.is_file() or p.stat().st_size != data["bytes"]:
            _fail(folder, f"{data['file']} (the weights of {onnx.name}) is missing or has the wrong size")


def _brief(specs) -> str:
    if not isinstance(specs, list):
        return repr(specs)
    return "[" + ", ".join(f"{s.get('name')}{s.get('shape')}:{s.get('dtype')}"
                           for s in specs if isinstance(s, dict)) + "]"
