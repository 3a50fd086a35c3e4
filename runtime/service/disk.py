"""A full data disk, told apart from other failures: the service answers it with 507 and one line, fails the job
it stopped with that line, and waits for space instead of losing a record or its worker.

SQLite says "database or disk is full" (SQLITE_FULL); files say ENOSPC, or EDQUOT past a quota; FFmpeg and the
work dir pass the OS's words on in their messages, sometimes without the OSError itself, so the words count too.
"""
from __future__ import annotations

import errno
import os
import sqlite3

from m3ddm.errors import EXIT_ENGINES, M3DDMError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")
# SQLite's result code SQLITE_FULL; the sqlite3 module names it only from Python 3.11 (3.10 has no
# sqlite_errorcode either, so there the words decide).
_SQLITE_FULL = 13


class DiskFull(M3DDMError):
    """The service's data disk has no room for what it had to write (exit code 3: the environment)."""
    exit_code = EXIT_ENGINES


def is_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, says the disk is full."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        try:
            text = str(exc).lower()
        except Exception:
            text = ""
        if any(words in text for words in _FULL_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_mb(path) -> float:
    """Megabytes free for this process under ``path`` (0 where it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0.0
    return st.f_bavail * st.f_frsize / 2**20


def full(what: str, path) -> DiskFull:
    """The one line for a write that did not fit under ``path``."""
    return DiskFull(f"the service's data disk is full: {what} ({free_mb(path):.1f} MB free)")
