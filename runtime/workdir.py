"""A job's work dir: what the job is, its prepared latents, and the final latents of every batch of windows
finished, so that a run killed at any point resumes where it stopped and ends with the same bits.

    DIR/lock                  held by the run using the folder (one at a time); marks the folder as ours
    DIR/job.json              what the job is: input fingerprint, the settings that decide the latents, engines
    DIR/prepared-latents.npz  the VAE encodes of the prepare stage (inits, canvases) and the global context
    DIR/batch-NNNNNN.npz      the frames a batch of windows finished first, with their final latents
    DIR/state.json            which of those files hold, with their sizes and SHA-256; the last file written

Every file is written beside its place and renamed, data files before the state that names them, so a kill
at any instant leaves the previous state or the next one, never a mix. Everything read back is held to what
this version writes and this job implies (runtime/workdir_schema.py: names, types, ranges, array shapes,
dtypes, finiteness) besides its checksum, and read only inside the folder (runtime/workdir_files.py); what
fails is a damaged work dir, refused with one line, never resumed from. Only files the job's own records name
are ever removed. Settings that change only the compositing or the encoding (feather, output height, codec)
are not part of the job: a resumed run may change them.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from m3ddm.errors import InputError
from m3ddm.files import file_digest  # noqa: F401 - part of this module's interface (the input's digest)
from runtime import workdir_schema as schema
from runtime.workdir_files import LOCK, Folder, Gone, WorkDirError, check_apart  # noqa: F401 - the API
from runtime.workdir_schema import FORMAT, JOB, LATENT_FIELDS, STATE, Expected  # noqa: F401 - the API


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


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


class WorkDir:
    """The checkpoints of one job, its folder locked for this run. ``open`` checks the folder against the job
    (or clears it with ``restart``); ``prepared``/``finished`` give back what an earlier run left; ``save_*``
    add to it; ``close`` releases the lock, ``clear`` removes the job's files and the folder."""

    def __init__(self, files: Folder, job: dict, expected: Expected):
        self.files, self.folder, self.job, self.expected = files, files.path, job, expected
        self.state: dict[str, Any] = {"format": FORMAT, "prepared": None, "batches": [], "windows_done": 0}
        self.seconds = 0.0  # spent writing checkpoints
        self._lock = threading.Lock()  # the prepared latents may be saved by the thread preparing them

    @classmethod
    def open(cls, folder, job: dict, restart: bool = False, *, expected: Expected) -> WorkDir:
        """The work dir ``folder`` of ``job``, locked; made where it is missing. Raises WorkDirError: a folder
        that is not ours, in use by another run, of another job, or damaged."""
        for _ in range(3):
            files = None
            try:
                files = Folder(folder)
                return cls._open(files, job, restart, expected)
            except BaseException as exc:
                if files is not None:
                    files.close()
                if not isinstance(exc, Gone):  # Gone: another run finished and removed it meanwhile: new again
                    raise
        raise WorkDirError(f"work dir {folder} keeps being removed by another run; name another folder")

    @classmethod
    def _open(cls, files: Folder, job: dict, restart: bool, expected: Expected) -> WorkDir:
        if not _ours(files):
            raise WorkDirError(f"work dir {files.path} is not empty and holds no job; name an empty or new folder")
        files.lock()
        wd = cls(files, job, expected)
        if restart:
            wd._remove_own(keep_lock=True)
            for name in (JOB, STATE):
                if files.kind(name) not in (None, "file"):
                    raise WorkDirError(f"work dir {files.path}: its {name} is a {files.kind(name)}, not a file of "
                                       f"ours; remove it or name another folder")
        if files.kind(JOB) is None:
            files.write(JOB, json.dumps(job, indent=1, sort_keys=True).encode())
            wd._commit()
            return wd
        old = wd._read_json(JOB, schema.MAX_JOB_BYTES)
        if _canonical(old) != _canonical(job):
            problem = schema.job_problem(old)
            if problem:
                raise files.damaged(problem)
            raise WorkDirError(f"work dir {files.path} belongs to another job ({_difference(old, job)}); "
                               f"pass --restart (restart=True) to clear it and start afresh")
        if files.kind(STATE) is None:  # killed between writing the job and its first state: nothing done yet
            wd._commit()
            return wd
        state = wd._read_json(STATE, schema.state_limit(job))
        problem = schema.state_problem(state)
        if problem:
            raise files.damaged(problem)
        wd.state = state
        return wd

    def _read_json(self, name: str, limit: int):
        data = self.files.read(name, limit)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise self.files.damaged(f"{name} is unreadable or truncated ({type(exc).__name__})") from None

    def _load(self, record: dict, specs: dict) -> dict:
        """The arrays of the data file ``record`` names, checked against its size, checksum and ``specs``."""
        name, size = record["file"], record["bytes"]
        most = self.expected.most_bytes(specs)
        if size > most:
            raise self.files.damaged(f"{name} is recorded as {size} bytes, more than this job's arrays take")
        f, actual = self.files.open(name, most)
        with f:
            try:
                if actual != size or file_digest(f) != record["sha256"]:
                    raise self.files.damaged(f"{name} is missing, truncated or changed (checksum mismatch)")
                f.seek(0)
                return schema.read_arrays(f, specs)
            except schema.Damaged as exc:
                raise self.files.damaged(f"{name}: {exc}") from None
            except OSError as exc:
                raise self.files.damaged(f"{name} cannot be read ({exc.strerror or exc})") from None

    def _save(self, name: str, arrays: dict) -> dict:
        t0 = time.perf_counter()
        data = _npz_bytes(arrays)
        self.files.write(name, data)
        self.seconds += time.perf_counter() - t0
        return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def _commit(self) -> None:
        t0 = time.perf_counter()
        self.files.write(STATE, json.dumps(self.state).encode())
        self.seconds += time.perf_counter() - t0

    # -- the prepare stage ----------------------------------------------------------------------
    def prepared(self) -> dict | None:
        """{"inits", "canvases", "context"} arrays an earlier run saved, or None. Their frame count may differ
        from this run's (a video counted another way): the caller decides."""
        record = self.state["prepared"]
        if record is None:
            return None
        arrays = self._load(record, self.expected.prepared_specs())
        if len(arrays["inits"]) != len(arrays["canvases"]) or not len(arrays["inits"]):
            raise self.files.damaged(f"{record['file']} holds {len(arrays['inits'])} inits and "
                                     f"{len(arrays['canvases'])} canvases")
        return arrays

    def save_prepared(self, inits, canvases, context) -> None:
        record = self._save(schema.PREPARED_FILE, {"inits": inits, "canvases": canvases, "context": context})
        with self._lock:
            self.state["prepared"] = record
            self._commit()

    # -- sampling -------------------------------------------------------------------------------
    @property
    def windows_done(self) -> int:
        return self.state["windows_done"]

    def finished(self) -> dict:
        """{frame: final latent} of every batch an earlier run finished: each batch exactly the frames its
        windows finished first, of the job's shape, finite."""
        try:
            wanted = schema.batch_frames(self.expected, self.state)
        except schema.Damaged as exc:
            raise self.files.damaged(f"state.json: {exc}") from None
        stored: dict[int, np.ndarray] = {}
        for record, frames in zip(self.state["batches"], wanted):
            data = self._load(record, self.expected.batch_specs(len(frames)))
            if not np.array_equal(data["frames"], frames):
                raise self.files.damaged(f"{record['file']} holds other frames than its windows finished")
            stored.update(zip(frames.tolist(), data["latents"]))
        return stored

    def save_batch(self, new: dict, windows_done: int) -> None:
        """After a batch: the frames it finished first (``new``: {frame: latent}) and the windows done so far."""
        record = None
        if new:
            frames = np.array(sorted(new), np.int64)
            record = self._save(schema.batch_file(windows_done),
                                {"frames": frames, "latents": np.stack([new[int(f)] for f in frames])})
        with self._lock:
            if record is not None:
                self.state["batches"].append(record)
            self.state["windows_done"] = int(windows_done)
            self._commit()

    def bytes_on_disk(self) -> int:
        return self.files.bytes_on_disk()

    # -- the end --------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the folder's lock (the files stay: the job resumes from them)."""
        self.files.close()

    def clear(self) -> None:
        """Remove this job's files, then the folder once empty, and release it. Only files the job's own
        records name are removed: what else is in the folder (a work dir named by mistake, a home folder say)
        loses nothing."""
        try:
            self._remove_own(keep_lock=False)
            self.files.remove_folder()
        finally:
            self.close()

    def _remove_own(self, keep_lock: bool) -> None:
        """job.json, state.json, the files the state on disk names, the ones the job writes before it records
        them (the prepared latents, the batches that can follow the last recorded), our temporary files of
        those names and (unless ``keep_lock``) the lock; never a folder, never another name."""
        files, own = self.files, {JOB, STATE, schema.PREPARED_FILE}
        state, job = _on_disk(files, STATE, schema.state_limit(self.job)), _on_disk(files, JOB, schema.MAX_JOB_BYTES)
        own |= schema.record_names(state)
        if schema.job_problem(job) is None and isinstance(state, dict) and schema.integer(state.get("windows_done")):
            done = state["windows_done"]
            own |= {schema.batch_file(k) for k in range(done + 1, done + job["settings"]["batch_windows"] + 1)}
        partials = {n for n in files.names() if (m := schema.PARTIAL_FILE.match(n)) and m.group(1) in own | {LOCK}}
        for name in sorted(own | partials) + ([] if keep_lock else [LOCK]):
            if files.kind(name) in ("file", "symlink"):
                try:
                    files.remove(name)
                except OSError as exc:
                    raise WorkDirError(f"work dir {files.path}: cannot remove {name} ({exc.strerror})") from None


def _on_disk(files: Folder, name: str, limit: int):
    """The JSON in ``name`` as it is, or None where it cannot be read (a damaged folder)."""
    try:
        return json.loads(files.read(name, limit))
    except (WorkDirError, ValueError, RecursionError):
        return None


def _ours(files: Folder) -> bool:
    """Whether ``files`` may be used as a work dir: empty (or being made by another run), marked by our lock,
    or holding a job of ours (an earlier version's, made before the lock)."""
    names = [n for n in files.names() if not ((m := schema.PARTIAL_FILE.match(n)) and m.group(1) in (LOCK, JOB))]
    if not names or files.marked():
        return True
    return JOB in names and schema.job_problem(_on_disk(files, JOB, schema.MAX_JOB_BYTES)) is None


def finished_windows(folder) -> int | None:
    """How many windows the job in ``folder`` has finished, or None where that cannot be read."""
    try:
        fd = os.open(Path(folder) / STATE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            done = json.loads(f.read(1 << 26))["windows_done"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    return done if schema.integer(done) else None


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
