"""Engines: the folder contract, and one backend module per inference library."""
from m3ddm.errors import EnginesError
from runtime.engines.manifest import EngineSet, open_engines

__all__ = ["EnginesError", "EngineSet", "open_engines"]
