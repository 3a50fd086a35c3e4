"""CUDA C for the per-step device math, compiled at run time with NVRTC (cuda-python) and cached on disk.

Each kernel has a numpy reference in the runtime (the kernels must equal it on a GPU): ``sampler_step`` is
``runtime.guidance.combine`` followed by ``runtime.samplers.apply``; ``unet_input`` is the branch-major copy of
the noisy latents into the UNet input that ``runtime.pipeline`` does with numpy. Compiling needs no GPU.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCES = {"sampler_step": "sampler_step.cu", "unet_input": "unet_input.cu"}
HEADERS = ("half_bits.cuh",)  # handed to NVRTC by name: no include path is needed
ENTRY_POINTS = {"sampler_step": ("sampler_step_f32", "sampler_step_f16"),
                "unet_input": ("scatter_noisy_f32", "scatter_noisy_f16")}
MAX_HISTORY = 3


class KernelError(RuntimeError):
    """NVRTC is missing or a kernel did not compile; the message says which and why."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "m3ddm" / "kernels"


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        raise KernelError("cuda-python (cuda-bindings) is not installed: pip install 'm3ddm-runtime[gpu]'") from None
    return nvrtc


def _check(result, what: str, prog=None):
    err = result[0]
    if int(err) != 0:
        log = ""
        if prog is not None:
            nvrtc = _nvrtc()
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.decode(errors="replace").strip().splitlines()[:3]
        raise KernelError(f"NVRTC {what} failed ({err}): {' | '.join(log) if log else ''}")
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def compile_ptx(name: str, arch: str = "compute_70", use_cache: bool = True) -> bytes:
    """PTX of kernel source ``name`` for ``arch`` (compute_70 runs on a V100 and, JIT-compiled, on newer GPUs)."""
    source = (HERE / SOURCES[name]).read_bytes()
    headers = [(HERE / h).read_bytes() for h in HEADERS]
    nvrtc = _nvrtc()
    _, major, minor = nvrtc.nvrtcVersion()
    key = hashlib.sha256(b"".join([source, *headers]) + arch.encode() + f"{major}.{minor}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{name}-{arch}-{key}.ptx"
    if use_cache and cached.is_file():
        return cached.read_bytes()
    prog = _check(nvrtc.nvrtcCreateProgram(source, SOURCES[name].encode(), len(headers), headers,
                                           [h.encode() for h in HEADERS]), "create")
    # No fast math: the kernels must match their numpy references to FP32 rounding.
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]
    try:
        _check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), f"compile of {SOURCES[name]} for {arch}", prog)
        size = _check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(ptx)
        os.replace(tmp, cached)
    return ptx


# -- numpy references -------------------------------------------------------------------------------------
def sampler_step_reference(eps, x, update, s1, s2, saved=None, history=(), z=None):
    """What ``sampler_step`` computes: (x', guided eps) for W windows from the 3W-row eps."""
    from runtime import guidance, samplers
    g = guidance.combine(np.asarray(eps, np.float32), s1, s2).astype(np.float32)
    return samplers.apply(update, np.asarray(x, np.float32), saved, [g, *history], z), g


def unet_input_reference(x, sample):
    """What ``scatter_noisy`` computes: channels 0..3 of every branch row of ``sample`` [3W, 9, ...] set to x [W, 4, ...]."""
    out = np.array(sample, copy=True)
    w = x.shape[0]
    for b in range(3):
        out[b * w:(b + 1) * w, :4] = x
    return out
