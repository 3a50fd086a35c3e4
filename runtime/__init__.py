"""M3DDM outpainting runtime: no torch, engines behind a small backend interface.

``runtime.Outpainter`` (runtime/api.py) is the Python API; ``python -m runtime.outpaint`` the command line.
"""

_LAZY = {"Outpainter": "runtime.api", "OutpaintResult": "runtime.pipeline", "Settings": "runtime.settings"}


def __getattr__(name):
    # Lazy: ``import runtime.geometry`` stays light; ``runtime.Outpainter`` pulls the pipeline in.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = ["Outpainter", "OutpaintResult", "Settings"]
