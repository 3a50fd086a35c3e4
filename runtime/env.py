"""Every environment variable the project reads, in one place (the README lists them too).

    M3DDM_ENGINES      engines folder used when none is named (default ./engines)
    M3DDM_DEVICE_LOOP  0: the TensorRT backend samples on the host instead of entirely on the GPU (default 1)
    M3DDM_DEBUG        1: a command shows the traceback of an unexpected error instead of one line
    M3DDM_SHARED       the tests' ../shared folder (golden data, fixtures, media), when it is elsewhere
    XDG_CACHE_HOME     where compiled kernels are cached ($XDG_CACHE_HOME/m3ddm/kernels, default ~/.cache), and
                       where object-storage inputs and outputs are staged ($XDG_CACHE_HOME/m3ddm/scratch, batch)

Read when asked, not at import, so a test or a service can change them.
"""
from __future__ import annotations

import os
from pathlib import Path

ENGINES = "M3DDM_ENGINES"
DEVICE_LOOP = "M3DDM_DEVICE_LOOP"
DEBUG = "M3DDM_DEBUG"
SHARED = "M3DDM_SHARED"


def engines_dir() -> str:
    return os.environ.get(ENGINES) or "engines"


def device_loop() -> bool:
    return os.environ.get(DEVICE_LOOP, "1") != "0"


def debug() -> bool:
    return os.environ.get(DEBUG, "") not in ("", "0")


def cache_dir() -> Path:
    """This user's cache folder of the project: $XDG_CACHE_HOME/m3ddm, default ~/.cache/m3ddm."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m3ddm"


def shared_dir(root) -> Path:
    """The shared data folder: $M3DDM_SHARED, else ``shared`` beside the repository ``root``."""
    return Path(os.environ.get(SHARED) or Path(root).parent / "shared")
