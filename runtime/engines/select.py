"""Which backend runs an engines folder: the one named, or for "auto" the fastest usable one."""
from __future__ import annotations

from pathlib import Path

from m3ddm.errors import EnginesError, first_line
from runtime.engines.base import Backend

NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/proc/driver/nvidia/gpus")  # Linux, containers included
BACKENDS = ("auto", "ort", "ort-cpu", "ort-cuda", "torch", "tensorrt")


def make_backend(engines_dir, backend: str = "auto", threads=None, max_batch=None, gpu_memory_gb=None,
                 device_loop: bool = True) -> Backend:
    """The backend named, or for "auto" the fastest usable one: TensorRT plans, ORT CUDA, the PyTorch programs on
    a CUDA GPU, ORT CPU.

    "auto" passes over a path that cannot run here (no TensorRT, plans for another GPU, stale plans or programs,
    no CUDA) and says why in the returned backend's ``notes``; naming that backend makes it an error. A folder of
    PyTorch programs alone (``python -m export --torch-only``) runs on them, on the CPU too.
    ``device_loop`` False keeps TensorRT's sampling loop on the host (the caller reads M3DDM_DEVICE_LOOP).
    """
    from runtime.engines.manifest import PROGRAMS, open_engines
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
    if backend == "torch":
        return _torch_backend(engines_dir, max_batch, gpu_memory_gb, threads, device_loop)
    if backend == "auto" and not engines.precisions:  # --torch-only: nothing else can run this folder
        chosen = _torch_backend(engines_dir, max_batch, gpu_memory_gb, threads, device_loop)
        chosen.notes = [*notes, "the engines folder holds PyTorch programs only (no ONNX graphs)", *chosen.notes]
        return chosen
    cuda = "CUDAExecutionProvider" in available_providers()
    if backend == "auto" and not (cuda and "fp16" in engines.precisions) and engines.manifest.get(PROGRAMS):
        why = torch_on_gpu_problem()
        if why is None:
            try:
                chosen = _torch_backend(engines_dir, max_batch, gpu_memory_gb, threads, device_loop)
                chosen.notes = notes + list(chosen.notes)
                return chosen
            except EnginesError as exc:
                why = str(exc)
        notes.append(f"PyTorch programs not used: {why}")
    device = "cuda" if backend == "ort-cuda" or (backend in ("auto", "ort") and cuda and "fp16" in engines.precisions) \
        else "cpu"
    chosen = OrtBackend(engines_dir, device=device, threads=threads, max_batch=max_batch)
    chosen.notes = notes + list(chosen.notes)
    return chosen


def _torch_backend(engines_dir, max_batch, gpu_memory_gb, threads, device_loop) -> Backend:
    try:
        from runtime.engines.pytorch import TorchBackend  # imports torch: only when this backend is asked for
    except ImportError as exc:
        raise EnginesError(f"the torch backend needs PyTorch ({first_line(exc)}): pip install torch (a CUDA build "
                           f"for a GPU), or choose another --backend") from None
    return TorchBackend(engines_dir, max_batch=max_batch, gpu_memory_gb=gpu_memory_gb, threads=threads,
                        device_loop=device_loop)


def torch_on_gpu_problem() -> str | None:
    """Why "auto" should not pick the PyTorch programs here (it picks them on a CUDA GPU only); None: it should.
    Without an NVIDIA device node it says so without importing torch (seconds, and the CPU runs ORT faster)."""
    if not any(Path(p).exists() for p in NVIDIA_DEVICES):
        return "no NVIDIA GPU here (the PyTorch programs run on a CUDA GPU; on the CPU, ONNX Runtime is faster)"
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install: the other backends still work
        return f"PyTorch cannot be imported ({type(exc).__name__}: {first_line(exc)})"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU (on the CPU, ONNX Runtime is faster)"
    return None
