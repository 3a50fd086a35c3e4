"""A job's work dir: what the job is, its prepared latents, and the final latents of every batch of windows
finished, so that a run killed at any point resumes where it stopped and ends with the same bits.

    DIR/job.json          what the job is: input fingerprint, the settings that decide the latents, engines
    DIR/prepared-*.npy    the VAE encodes of the prepare stage (inits, canvases) and the global context
    DIR/batch-NNNNNN.npy  the frames a batch of windows finished first, with their final latents
    DIR/state.json        which of those files hold, with their sizes and SHA-256; the last file written

Every file is written beside its place and renamed (m3ddm.files), data files before the state that names
them, so a kill at any instant leaves the previous state or the next one, never a mix; a file that does not
match its checksum is refused with one line, never resumed from. Settings that change only the compositing
or the encoding (feather, output height, codec) are not part of the job: a resumed run may change them.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from m3ddm.errors import InputError
from m3ddm.files import replacing

FORMAT = 1
JOB, STATE = "job.json", "state.json"
PREPARED = ("inits", "canvases", "context")
# What decides the final latents (every other Settings field only changes the compositing or the encoding).
LATENT_FIELDS = ("ratios", "pad", "steps", "sampler", "seed", "noise", "window_noise", "guidance", "strides",
                 "batch_windows")


class WorkDirError(InputError):
    """A work dir that belongs to another job, or whose files are damaged: never resumed from."""


def file_digest(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def settings_identity(s) -> dict:
    """The settings that decide the latents, as JSON values (the start noise by its digest)."""
    if s.step_noise is not None:
        raise InputError("a run with a step_noise callable cannot be checkpointed (it cannot be told apart "
                         "from another); drop work_dir or step_noise")
    known = {f.name for f in fields(s)}
    out = {}
    for name in LATENT_FIELDS:
        assert name in known, name
        value = getattr(s, name)
        if name == "noise" and value is not None:
            value = hashlib.sha256(np.ascontiguousarray(value, np.float32).tobytes()).hexdigest()
        elif isinstance(value, tuple):
            value = [float(v) if name == "guidance" else v for v in value]
        out[name] = value
    return json.loads(json.dumps(out, default=int))


def engines_identity(backend) -> dict:
    """The engines that compute the latents: backend, precision, graph fingerprints (and plans' builds)."""
    manifest = backend.engines.manifest
    ident = {"backend": backend.name, "precision": backend.precision, "model_size": backend.model_size,
             "graphs": {k: v.get("fingerprint") for k, v in sorted(manifest.get("components", {}).items())
                        if k.endswith("." + backend.precision)}}
    if backend.name == "tensorrt":
        ident["plans"] = {k: [v.get("tensorrt"), v.get("gpu"), v.get("onnx_fingerprint")]
                          for k, v in sorted(manifest.get("plans", {}).items())}
    return ident


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Atomic and durable: the data reach the disk before the name does."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


class WorkDir:
    """The checkpoints of one job. ``open`` checks the folder against the job (or clears it with
    ``restart``); ``prepared``/``finished`` give back what an earlier run left; ``save_*`` add to it."""

    def __init__(self, folder, job: dict):
        self.folder = Path(folder)
        self.job = job
        self.state = {"format": FORMAT, "prepared": None, "batches": [], "windows_done": 0}
        self.seconds = 0.0  # spent writing checkpoints
        self._lock = threading.Lock()  # the prepared latents may be saved by the thread preparing them

    @classmethod
    def open(cls, folder, job: dict, restart: bool = False) -> "WorkDir":
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise WorkDirError(f"work dir {folder} is a file, not a folder")
        wd = cls(folder, job)
        if restart and folder.exists():
            wd.clear()
        if not (folder / JOB).exists():
            if folder.exists() and any(folder.iterdir()):
                raise WorkDirError(f"work dir {folder} is not empty and holds no job; name an empty or new folder")
            folder.mkdir(parents=True, exist_ok=True)
            _write(folder / JOB, json.dumps(job, indent=1, sort_keys=True).encode())
            _write(folder / STATE, json.dumps(wd.state).encode())
            return wd
        old = wd._read_json(JOB)
        if old != job:
            raise WorkDirError(f"work dir {folder} belongs to another job ({_difference(old, job)}); "
                               f"pass --restart (restart=True) to clear it and start afresh")
        wd.state = wd._read_json(STATE)
        if not isinstance(wd.state, dict) or wd.state.get("format") != FORMAT:
            raise WorkDirError(f"work dir {folder}: {STATE} is not a state this version reads; pass --restart")
        return wd

    def _read_json(self, name):
        try:
            return json.loads((self.folder / name).read_text())
        except (OSError, ValueError) as exc:
            raise WorkDirError(f"work dir {self.folder}: {name} is unreadable or truncated ({type(exc).__name__}); "
                               f"pass --restart to start afresh") from None

    def _load(self, record: dict) -> dict:
        path = self.folder / record["file"]
        if not path.is_file() or path.stat().st_size != record["bytes"] or file_digest(path) != record["sha256"]:
            raise WorkDirError(f"work dir {self.folder}: {record['file']} is missing, truncated or changed "
                               f"(checksum mismatch); pass --restart to start afresh")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def _save(self, name: str, arrays: dict) -> dict:
        t0 = time.perf_counter()
        data = _npz_bytes(arrays)
        _write(self.folder / name, data)
        self.seconds += time.perf_counter() - t0
        return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def _commit(self) -> None:
        t0 = time.perf_counter()
        _write(self.folder / STATE, json.dumps(self.state).encode())
        self.seconds += time.perf_counter() - t0

    # -- the prepare stage ----------------------------------------------------------------------
    def prepared(self) -> dict | None:
        """{"inits", "canvases", "context"} arrays an earlier run saved, or None."""
        record = self.state.get("prepared")
        return self._load(record) if record else None

    def save_prepared(self, inits, canvases, context) -> None:
        record = self._save("prepared-latents.npz", {"inits": inits, "canvases": canvases, "context": context})
        with self._lock:
            self.state["prepared"] = record
            self._commit()

    # -- sampling -------------------------------------------------------------------------------
    @property
    def windows_done(self) -> int:
        return int(self.state.get("windows_done", 0))

    def finished(self) -> dict:
        """{frame: final latent} of every batch an earlier run finished."""
        stored = {}
        for record in self.state.get("batches", []):
            data = self._load(record)
            for f, lat in zip(data["frames"].tolist(), data["latents"]):
                stored.setdefault(int(f), lat)
        return stored

    def save_batch(self, new: dict, windows_done: int) -> None:
        """After a batch: the frames it finished first (``new``: {frame: latent}) and the windows done so far."""
        record = None
        if new:
            frames = np.array(sorted(new), np.int64)
            record = self._save(f"batch-{windows_done:06d}.npz",
                                {"frames": frames, "latents": np.stack([new[int(f)] for f in frames])})
        with self._lock:
            if record is not None:
                self.state["batches"].append(record)
            self.state["windows_done"] = int(windows_done)
            self._commit()

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def clear(self) -> None:
        """Remove this job's files, and the folder once empty; nothing else in it is touched (a work dir
        named by mistake, a home folder say, loses nothing but our files)."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if p.is_file() and (p.name in (JOB, STATE) or fnmatch.fnmatch(p.name, "batch-*.npz")
                                or fnmatch.fnmatch(p.name, "prepared-*.npz") or p.name.endswith(".partial")):
                p.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def finished_windows(folder) -> int | None:
    """How many windows the job in ``folder`` has finished, or None where that cannot be read."""
    try:
        return int(json.loads((Path(folder) / STATE).read_text())["windows_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _difference(old, new) -> str:
    if not isinstance(old, dict):
        return "unreadable job"
    for key, what in (("input", "another input"), ("settings", "other settings"), ("engines", "other engines"),
                      ("stream", "another stream"), ("frames", "another frame count"), ("format", "another format")):
        if old.get(key) != new.get(key):
            if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                keys = sorted(k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k))
                return f"{what}: {', '.join(keys)} differ"
            return what
    return "another job"
