"""The PyTorch programs of an engines folder: their manifest records and the rules that check them (torch-free).

``python -m export --torch`` writes, per component and precision, the weights once (``torch.save`` of a flat
dict of tensors, loaded with ``weights_only=True``) and one or more ``torch.export`` programs that take those
weights as inputs. The UNet has a program per window count W (static shapes: 3W rows), as TensorRT has a
profile per W: symbolic batch shapes make torch.export's shape reasoning take minutes on the UNet, static ones
seconds, and each static program is a CUDA graph. The VAE and the global encoder programs take a range of
batch sizes. Weight-free programs are small, so the window counts cost no copy of the 1.3 B parameters.

A record in the manifest's ``programs``::

    "unet.fp16": {"fingerprint": <the ONNX graph's fingerprint, whether or not the graph was exported>,
                  "torch": "2.13.0", "inputs": [...], "outputs": [...] (as a graph's record),
                  "weights": {"file": "unet.fp16.weights.pt", "bytes": ..., "sha256": ...},
                  "graphs": [{"rows": [3, 3], "file": "unet.fp16.rows3.pt2", "bytes": ..., "sha256": ...}, ...]}

The fingerprint ties it to the same checkpoints, options and exporter code as the graphs: a re-export of the
graphs makes it stale, and the runtime refuses it until ``python -m export --torch`` runs again. A folder of
``--torch-only`` has programs and no graphs: each record then states its own inputs and outputs (checked against the
contract like a graph's), and the exporter alone knows when it is stale (as it knows for the graphs).
"""
from __future__ import annotations

from pathlib import Path

from m3ddm.errors import EnginesError
from m3ddm.files import file_digest
from runtime.engines import contract
from runtime.engines.manifest import PROGRAMS, EngineSet, inside

REEXPORT = "re-export them: python -m export ... --torch (or make engines EXPORT_ARGS=--torch)"


def weights_file(key: str) -> str:
    return f"{key}.weights.pt"


def graph_file(key: str, rows: tuple[int, int]) -> str:
    low, high = rows
    return f"{key}.rows{low}.pt2" if low == high else f"{key}.rows{low}-{high}.pt2"


def check_file(engines: EngineSet, entry, what: str, hashed: bool = True) -> Path:
    """The file of ``entry`` ({file, bytes, sha256}) inside the folder, as recorded; EnginesError if it is not."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise EnginesError(f"engines folder {engines.folder}: the {what} record names no file; {REEXPORT}")
    path = inside(engines.folder, entry["file"])
    if not path.is_file():
        raise EnginesError(f"engines folder {engines.folder}: {entry['file']} ({what}) is missing; {REEXPORT}")
    if path.stat().st_size != entry.get("bytes"):
        raise EnginesError(f"engines folder {engines.folder}: {entry['file']} has {path.stat().st_size} bytes, the "
                           f"manifest says {entry.get('bytes')} (changed or truncated); {REEXPORT}")
    if hashed and file_digest(path) != entry.get("sha256"):
        raise EnginesError(f"engines folder {engines.folder}: {entry['file']} is not the file the exporter wrote "
                           f"(its SHA-256 differs); {REEXPORT}")
    return path


def record(engines: EngineSet, component: contract.Component, precision: str) -> dict:
    """The checked record of ``component``'s programs at ``precision``: present, not stale, every file as
    written (sizes; the hashes are checked as each file is loaded)."""
    key = component.key(precision)
    programs = engines.manifest.get(PROGRAMS) or {}
    entry = programs.get(key) if isinstance(programs, dict) else None
    if not isinstance(entry, dict):
        have = ", ".join(sorted(programs)) if isinstance(programs, dict) and programs else "none"
        raise EnginesError(f"engines folder {engines.folder} has no PyTorch program for {key} (has: {have}); "
                           f"export them: python -m export ... --torch (or make engines EXPORT_ARGS=--torch)")
    graph = engines.manifest["components"].get(key)
    if graph is not None and entry.get("fingerprint") != graph.get("fingerprint"):
        raise EnginesError(f"engines folder {engines.folder}: the PyTorch programs of {key} are stale (the graphs "
                           f"were exported again since, from other checkpoints, options or code); {REEXPORT}")
    graphs = entry.get("graphs")
    if not isinstance(graphs, list) or not graphs or not all(_rows(g) for g in graphs):
        raise EnginesError(f"engines folder {engines.folder}: the PyTorch record of {key} lists no programs "
                           f"with their batch sizes; {REEXPORT}")
    check_file(engines, entry.get("weights"), f"the weights of {key}", hashed=False)
    for g in graphs:
        check_file(engines, g, f"a program of {key}", hashed=False)
    return entry


def _rows(graph) -> tuple[int, int] | None:
    rows = graph.get("rows") if isinstance(graph, dict) else None
    if (isinstance(rows, list) and len(rows) == 2 and all(type(r) is int for r in rows)
            and 1 <= rows[0] <= rows[1]):
        return rows[0], rows[1]
    return None


def batch_ranges(entry: dict) -> list[tuple[int, int]]:
    """The (least, most) batch rows of each of the record's programs, in its order."""
    return [_rows(g) or (0, 0) for g in entry["graphs"]]


def version_note(entry: dict, running: str) -> str | None:
    """What to say when the running torch is not the one that wrote the programs (they may still load)."""
    wrote = str(entry.get("torch", "?"))
    if wrote.split("+")[0].split(".")[:2] != str(running).split("+")[0].split(".")[:2]:
        return f"the PyTorch programs were written by torch {wrote}, this is torch {running}"
    return None
