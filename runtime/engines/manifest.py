"""Reading and checking an engines folder's manifest.json (torch-free)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from m3ddm.errors import EnginesError
from m3ddm.files import atomic_write
from runtime.engines import contract


@dataclass(frozen=True)
class EngineSet:
    """A checked engines folder: what the runtime needs to know about it."""

    folder: Path
    manifest: dict
    model_size: int
    precisions: tuple[str, ...]

    def onnx_path(self, component: str, precision: str) -> Path:
        return self.folder / self.manifest["components"][f"{component}.{precision}"]["file"]

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


def open_engines(folder, precision: str | None = None) -> EngineSet:
    """Check ``folder`` against the engine contracts; ``precision`` (if given) must be complete there."""
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
    except (KeyError, TypeError, ValueError):
        _fail(folder, "manifest lacks model.size or components")
    complete = []
    for prec in contract.PRECISIONS:
        if all(f"{c}.{prec}" in components for c in contract.COMPONENTS):
            complete.append(prec)
    if precision is not None and precision not in complete:
        _fail(folder, f"it has no complete {precision} engine set (has: {', '.join(complete) or 'none'})")
    for prec in ([precision] if precision else complete):
        for comp in contract.COMPONENTS:
            _check_component(folder, comp, prec, size, components[f"{comp}.{prec}"])
    if not complete:
        _fail(folder, "no complete engine set in the manifest")
    return EngineSet(folder, manifest, size, tuple(complete))


def _check_component(folder: Path, comp: str, prec: str, size: int, entry: dict) -> None:
    inputs, outputs = contract.component_io(comp, size)
    want = {"inputs": [t.resolved(prec) for t in inputs], "outputs": [t.resolved(prec) for t in outputs]}
    for side in ("inputs", "outputs"):
        got = entry.get(side)
        if got != want[side]:
            _fail(folder, f"{comp}.{prec} {side} {_brief(got)} differ from what this runtime expects {_brief(want[side])} "
                          f"(exported for another model or version)")
    onnx = folder / entry.get("file", "")
    if not onnx.is_file():
        _fail(folder, f"{onnx.name} is missing")
    if entry.get("bytes") is not None and onnx.stat().st_size != entry["bytes"]:
        _fail(folder, f"{onnx.name} has {onnx.stat().st_size} bytes, the manifest says {entry['bytes']} (changed or truncated)")
    data = entry.get("external_data")
    if data:
        p = folder / data["file"]
        if not p.is_file() or p.stat().st_size != data["bytes"]:
            _fail(folder, f"{data['file']} (the weights of {onnx.name}) is missing or has the wrong size")


def _brief(specs) -> str:
    if not isinstance(specs, list):
        return repr(specs)
    return "[" + ", ".join(f"{s.get('name')}{s.get('shape')}:{s.get('dtype')}" for s in specs if isinstance(s, dict)) + "]"
