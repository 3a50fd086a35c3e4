"""CUDA C for the per-step device math, compiled at run time with NVRTC (cuda-python) and cached on disk.

A leaf: it imports nothing of the runtime. The runtime loads and launches the kernels
(runtime/engines/device_kernels.py) and holds them to their numpy references, which are its own host code:
``sampler_step`` is ``runtime.guidance.combine`` followed by ``runtime.samplers.apply``; ``unet_input`` is the
branch-major copy of the noisy latents into the UNet input, ``runtime.guidance.per_branch``. Compiling needs
no GPU. ``check`` is the one status check of cuda-python calls (runtime, driver and NVRTC APIs alike).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from m3ddm.errors import EnginesError
from m3ddm.files import atomic_write

HERE = Path(__file__).resolve().parent
SOURCES = {"sampler_step": "sampler_step.cu", "unet_input": "unet_input.cu"}
HEADERS = ("half_bits.cuh",)  # handed to NVRTC by name: no include path is needed
ENTRY_POINTS = {"sampler_step": ("sampler_step_f32", "sampler_step_f16"),
                "unet_input": ("scatter_noisy_f32", "scatter_noisy_f16")}
MAX_HISTORY = 3  # earlier eps a sampler_step reads (the .cu file's MAX_HISTORY)
OLDEST_ARCH = 70  # V100, the oldest GPU the project supports (compute capability x 10)


class CudaError(EnginesError):
    """A CUDA runtime, driver or NVRTC call failed; the message names the call and CUDA's reason."""


class KernelError(CudaError):
    """NVRTC is missing or a kernel did not compile; the message says which and why."""


def _reason(status) -> str:
    """CUDA's own words for ``status`` (each API has its error-string call), else the status' name."""
    api, call = {"cudaError_t": ("runtime", "cudaGetErrorString"), "CUresult": ("driver", "cuGetErrorString"),
                 "nvrtcResult": ("nvrtc", "nvrtcGetErrorString")}.get(type(status).__name__, (None, None))
    try:
        if api is not None and call is not None:
            import importlib
            text = getattr(importlib.import_module(f"cuda.bindings.{api}"), call)(status)[1]
            return text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # the reason is a courtesy; the failure is reported either way
        pass
    return getattr(status, "name", str(status))


def check(result, what: str):
    """cuda-python returns ``(status, *values)`` from every call: raise ``CudaError`` naming ``what`` unless the
    status is success; else the values (one unwrapped, none as None)."""
    status = result[0] if isinstance(result, tuple) else result
    if int(status) != 0:
        raise CudaError(f"CUDA {what} failed: {_reason(status)} ({int(status)})")
    rest = result[1:] if isinstance(result, tuple) else ()
    return rest[0] if len(rest) == 1 else (rest or None)


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "m3ddm" / "kernels"


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise KernelError("cuda-python (cuda-bindings) is not installed: "
                          "pip install 'm3ddm-runtime[kernels]'") from None
    return nvrtc


def _log(nvrtc, prog) -> str:
    size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    buf = b" " * size
    check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
    return " | ".join(buf.decode(errors="replace").strip().splitlines()[:3])


def supported_archs() -> list[int]:
    """The virtual architectures this NVRTC compiles for (compute capability x 10), oldest first."""
    return sorted(int(a) for a in check(_nvrtc().nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def default_arch() -> str:
    """The oldest architecture this NVRTC has, from V100's on: its PTX runs, JIT-compiled by the driver, on every
    newer GPU. compute_70 with NVRTC 12; compute_75 with NVRTC 13, which dropped Volta."""
    return f"compute_{[a for a in supported_archs() if a >= OLDEST_ARCH][0]}"


def arch_for(compute_capability: str) -> str:
    """The newest architecture this NVRTC has that a GPU of ``compute_capability`` ("9.0") runs."""
    major, minor = (int(v) for v in compute_capability.split("."))
    archs = supported_archs()
    usable = [a for a in archs if a <= 10 * major + minor]
    if not usable:
        version = ".".join(map(str, check(_nvrtc().nvrtcVersion(), "nvrtcVersion")))
        raise KernelError(f"NVRTC {version} cannot compile for compute {compute_capability} (its oldest is "
                          f"compute_{archs[0]}): install NVRTC for CUDA 12, pip install 'm3ddm-runtime[kernels]'")
    return f"compute_{usable[-1]}"


def compile_ptx(name: str, arch: str | None = None, use_cache: bool = True) -> bytes:
    """PTX of kernel source ``name`` for ``arch`` (default: ``default_arch()``, which runs on every supported GPU)."""
    arch = arch or default_arch()
    source = (HERE / SOURCES[name]).read_bytes()
    headers = [(HERE / h).read_bytes() for h in HEADERS]
    nvrtc = _nvrtc()
    major, minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    key = hashlib.sha256(b"".join([source, *headers]) + arch.encode() + f"{major}.{minor}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{name}-{arch}-{key}.ptx"
    if use_cache and cached.is_file():
        return cached.read_bytes()
    prog = check(nvrtc.nvrtcCreateProgram(source, SOURCES[name].encode(), len(headers), headers,
                                          [h.encode() for h in HEADERS]), "nvrtcCreateProgram")
    # No fast math: the kernels must match their numpy references to FP32 rounding.
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]
    try:
        try:
            check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), f"NVRTC compile of {SOURCES[name]} for {arch}")
        except CudaError as exc:
            raise KernelError(f"{exc}: {_log(nvrtc, prog)}") from None
        ptx = b" " * check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, ptx)
    return ptx
