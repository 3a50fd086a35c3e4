"""M3DDM outpainting runtime: no torch, engines behind a small backend interface."""


def __getattr__(name):
    # Lazy: ``import runtime.geometry`` stays light; ``runtime.Outpainter`` pulls the pipeline in.
    if name == "Outpainter":
        from runtime.outpainter import Outpainter
        return Outpainter
    if name == "OutpaintResult":
        from runtime.pipeline import OutpaintResult
        return OutpaintResult
    raise AttributeError(name)


__all__ = ["Outpainter", "OutpaintResult"]
