"""Atomic file replacement: a reader sees the old file or the whole new one, never a partial write.

Every temporary file being written is registered in ``PARTIAL`` until it is renamed or removed, so a command
that must exit without unwinding (a second Ctrl-C) can still remove them all (``remove_partials``).
"""
from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path

PARTIAL: set[Path] = set()
_lock = threading.Lock()


def file_hash(source, h, chunk: int = 1 << 20):
    """``h`` (a hash object: hashlib's or the same shape) fed a file's bytes, by path or of an open binary file
    from where it stands; returns ``h``."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return file_hash(f, h, chunk)
    while block := source.read(chunk):
        h.update(block)
    return h


def file_digest(source, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, by path or of an open binary file from where it stands."""
    return file_hash(source, hashlib.sha256(), chunk).hexdigest()


def track_partial(path, active: bool = True) -> None:
    """Register (``active``) or forget a temporary file that must not outlive the process."""
    with _lock:
        (PARTIAL.add if active else PARTIAL.discard)(Path(path))


def remove_partials() -> None:
    """Remove every temporary file still being written (on a forced exit)."""
    with _lock:
        paths = list(PARTIAL)
        PARTIAL.clear()
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def partial_name(name: str) -> str:
    """The temporary name a file named ``name`` is written under, beside it, by this process."""
    return f".{name}.{os.getpid()}.partial"


@contextmanager
def replacing(path):
    """Yields a temporary path beside ``path`` to write; on success it replaces ``path`` (one rename, atomic
    on POSIX), on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(partial_name(path.name))
    track_partial(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        track_partial(tmp, False)


def atomic_write(path, data) -> Path:
    """Replace ``path`` with ``data`` (str, bytes or any buffer) atomically."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            with open(tmp, "wb") as f:
                f.write(memoryview(data))
    return Path(path)
