"""Which backend runs an engines folder: the one named, or for "auto" the fastest usable one."""
from __future__ import annotations

from m3ddm.errors import EnginesError
from runtime.engines.base import Backend

BACKENDS = ("auto", "ort", "ort-cpu", "ort-cuda", "tensorrt")


def make_backend(engines_dir, backend: str = "auto", threads=None, max_batch=None, gpu_memory_gb=None,
                 device_loop: bool = True) -> Backend:
    """The backend named, or for "auto" the fastest usable one: TensorRT plans, ORT CUDA, ORT CPU.

    "auto" passes over a TensorRT path that cannot run here (no TensorRT, plans for another GPU, stale
    plans) and says why in the returned backend's ``notes``; naming "tensorrt" makes that an error.
    ``device_loop`` False keeps TensorRT's sampling loop on the host (the caller reads M3DDM_DEVICE_LOOP).
    """
    from runtime.engines.manifest import open_engines
    from runtime.engines.ort import OrtBackend, available_providers
    if backend not in BACKENDS:
        raise EnginesError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
    engines = open_engines(engines_dir)
    notes = []
    if backend == "tensorrt" or (backend == "auto" and engines.manifest.get("plans")):
        from runtime.engines.tensorrt import TensorRTBackend
        try:
            return TensorRTBackend(engines_dir, max_batch=max_batch, gpu_memory_gb=gpu_memory_gb,
                                   device_loop=device_loop)
        except EnginesError as exc:
            if backend == "tensorrt":
                raise
            notes.append(f"TensorRT plans not used: {exc}")
    cuda = "CUDAExecutionProvider" in available_providers()
    device = "cuda" if backend == "ort-cuda" or (backend in ("auto", "ort") and cuda and "fp16" in engines.precisions) \
        else "cpu"
    chosen = OrtBackend(engines_dir, device=device, threads=threads, max_batch=max_batch)
    chosen.notes = notes + list(chosen.notes)
    return chosen
