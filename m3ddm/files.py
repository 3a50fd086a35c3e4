"""Atomic file replacement: a reader sees the old file or the whole new one, never a partial write."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path):
    """Yields a temporary path beside ``path`` to write; on success it replaces ``path`` (one rename, atomic
    on POSIX), on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, data) -> Path:
    """Replace ``path`` with ``data`` (str, bytes or any buffer) atomically."""
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            with open(tmp, "wb") as f:
                f.write(memoryview(data))
    return Path(path)
