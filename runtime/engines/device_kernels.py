"""Loading and launching the kernels of ``kernels/`` with cuda-python's driver API (what users have).

``check()`` is the doctor's kernel test: both kernels, FP32 and FP16, on random data on the current GPU,
against their numpy references, the runtime's own host code (``guidance.combine`` + ``samplers.apply``,
``guidance.per_branch``).
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

import kernels
from runtime import guidance, samplers
from runtime.engines import cuda


class Module:
    """The PTX of one kernel source loaded on the current device (JIT-compiled by the driver for it)."""

    def __init__(self, name: str, arch: str | None = None):
        cuda.call("cudaFree", 0)  # make the runtime's primary context current for the driver API
        self.module = cuda.driver_call("cuModuleLoadData", kernels.compile_ptx(name, arch))
        self.functions: dict[str, Any] = {}  # CUfunction handles (cuda-python ships no types)

    def function(self, entry: str):
        if entry not in self.functions:
            self.functions[entry] = cuda.driver_call("cuModuleGetFunction", self.module, entry.encode())
        return self.functions[entry]

    def launch(self, entry: str, args, stream: cuda.Stream, threads: int = 256, blocks: int = 1024) -> None:
        """``args``: DeviceBuffer or a plain int (a pointer; 0 for one the kernel will not read),
        np.int64/np.int32/np.float32 scalars, in the kernel's order."""
        holders: list[ctypes._SimpleCData] = []
        for a in args:
            if isinstance(a, cuda.DeviceBuffer):
                holders.append(ctypes.c_void_p(a.ptr))
            elif type(a) is int:
                holders.append(ctypes.c_void_p(a))
            elif isinstance(a, np.int64):
                holders.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.int32):
                holders.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.float32):
                holders.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"kernel argument of type {type(a).__name__}")
        pointers = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        cuda.driver_call("cuLaunchKernel", self.function(entry), blocks, 1, 1, threads, 1, 1, 0, int(stream),
                         ctypes.addressof(pointers), 0)


def sampler_step_reference(eps, x, update, s1, s2, saved=None, history=(), z=None):
    """What ``sampler_step`` computes, in the runtime's own terms: (x', guided eps) of W windows from 3W eps rows."""
    g = guidance.combine(np.asarray(eps, np.float32), s1, s2).astype(np.float32)
    return samplers.apply(update, np.asarray(x, np.float32), saved, [g, *history], z), g


def _to_host(stream, dev: cuda.DeviceBuffer, shape, dtype, keep: list) -> np.ndarray:
    host = cuda.PinnedBuffer(dev.nbytes)
    keep.append(host)
    stream.download(host, dev, dev.nbytes)
    stream.synchronize()
    return host.view(shape, dtype).copy()


def check(arch: str | None = None, windows: int = 2, latent: int = 32) -> dict:
    """Max error of each kernel against numpy on this GPU: {"sampler_step_f16": 3e-7, ...}."""
    rng = np.random.default_rng(0)
    shape = (4, 16, latent, latent)
    per_window = int(np.prod(shape))
    u = samplers.Update(x=1.1, saved=0.3, eps=(-0.2, 0.15, -0.05, 0.01), noise=0.07)
    stream = cuda.Stream()
    keep: list[cuda.DeviceBuffer | cuda.PinnedBuffer] = []
    errors: dict[str, float] = {}
    try:
        step, scatter = Module("sampler_step", arch), Module("unet_input", arch)
        for dtype, np_t in (("f32", np.float32), ("f16", np.float16)):
            eps = rng.standard_normal((3 * windows, *shape)).astype(np_t)
            x, saved, h0, h1, h2, z = (rng.standard_normal((windows, *shape)).astype(np.float32) for _ in range(6))
            d = [cuda.upload_array(stream, a, keep) for a in (eps, x, saved, h0, h1, h2, z)]
            x_out, g_out = cuda.DeviceBuffer(x.nbytes), cuda.DeviceBuffer(x.nbytes)
            keep += [x_out, g_out]
            step.launch(f"sampler_step_{dtype}", [*d, x_out, g_out, np.int64(per_window), np.int32(windows),
                                                   np.float32(2.0), np.float32(4.0), np.float32(u.x),
                                                   np.float32(u.saved), *map(np.float32, u.eps), np.float32(u.noise)],
                        stream)
            want, _ = sampler_step_reference(eps, x, u, 2.0, 4.0, saved, (h0, h1, h2), z)
            got = _to_host(stream, x_out, x.shape, np.float32, keep)
            errors[f"sampler_step_{dtype}"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            sample = rng.standard_normal((3 * windows, 9, *shape[1:])).astype(np_t)
            d_sample = cuda.upload_array(stream, sample, keep)
            scatter.launch(f"scatter_noisy_{dtype}", [d[1], d_sample, np.int64(per_window // 4), np.int32(windows)],
                           stream)
            got = _to_host(stream, d_sample, sample.shape, np_t, keep)
            want = sample.copy()
            want[:, :4] = guidance.per_branch(x)
            errors[f"scatter_noisy_{dtype}"] = float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())
    finally:
        for b in keep:
            b.free()
        stream.destroy()
    return errors
