"""A stand-in for cuda-python's runtime module (``cuda.bindings.runtime``) on a machine without a GPU.

"Device" memory is host memory, so copies are memmoves and engines (tests/fake_tensorrt.py) compute on it
with numpy. Work enqueued on a stream runs at once, except while the stream is being captured: then it is
recorded, and a launched graph runs what was recorded, reading memory as it is at launch (as a CUDA graph
does). Every call returns (error, values...) as cuda-python does. ``LOG`` lists copies and launches for the
tests; ``ALLOCATED`` what is not yet freed.
"""
from __future__ import annotations

import ctypes
import itertools


class cudaError_t:  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind:  # noqa: N801
    cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = "h2d", "d2h", "d2d"


class cudaStreamCaptureMode:  # noqa: N801
    cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal = "global", "thread_local"


class _Properties:
    def __init__(self, name, major, minor, memory):
        self.name, self.major, self.minor, self.totalGlobalMem = name.encode(), major, minor, memory


GPU = {"name": "NVIDIA H100 80GB HBM3", "major": 9, "minor": 0}
TOTAL = 80 * 2**30
FREE = [TOTAL]  # what cudaMemGetInfo reports as free before this module's own allocations
ALLOCATED: dict[int, object] = {}
LOG: list[tuple] = []
_streams = itertools.count(1)
_capturing: dict[int, list] = {}


def enqueue(stream, fn) -> None:
    """Run ``fn`` now, or record it when ``stream`` is being captured."""
    if int(stream) in _capturing:
        _capturing[int(stream)].append(fn)
    else:
        fn()


DEVICE: set[int] = set()  # the allocations that count against the GPU's memory (not pinned host ones)


def _alloc(size):
    buf = ctypes.create_string_buffer(max(int(size), 1))
    ALLOCATED[ctypes.addressof(buf)] = buf
    return ctypes.addressof(buf)


def reset(free=TOTAL) -> None:
    ALLOCATED.clear()
    DEVICE.clear()
    LOG.clear()
    _capturing.clear()
    FREE[0] = free


def cudaGetErrorString(err):
    return 0, f"fake CUDA error {err}".encode()


def cudaSetDevice(index):
    return (0,)


def cudaGetDeviceProperties(index):
    return 0, _Properties(GPU["name"], GPU["major"], GPU["minor"], TOTAL)


def cudaMemGetInfo():
    used = sum(ctypes.sizeof(ALLOCATED[p]) for p in DEVICE)
    return 0, max(FREE[0] - used, 0), TOTAL


def cudaMalloc(size):
    if size > cudaMemGetInfo()[1]:
        return (cudaError_t.cudaErrorMemoryAllocation, 0)
    ptr = _alloc(size)
    DEVICE.add(ptr)
    return 0, ptr


def cudaMallocHost(size):
    return 0, _alloc(size)


def cudaFree(ptr):
    if ptr:
        del ALLOCATED[int(ptr)]
        DEVICE.discard(int(ptr))
    return (0,)


cudaFreeHost = cudaFree


def cudaStreamCreate():
    return 0, next(_streams)


def cudaStreamDestroy(stream):
    return (0,)


def cudaStreamSynchronize(stream):
    return (0,)


def cudaMemcpyAsync(dst, src, count, kind, stream):
    LOG.append((kind, int(dst), int(count)))
    enqueue(stream, lambda: ctypes.memmove(int(dst), int(src), int(count)))
    return (0,)


def cudaStreamBeginCapture(stream, mode):
    _capturing[int(stream)] = []
    return (0,)


def cudaStreamEndCapture(stream):
    return 0, _capturing.pop(int(stream))


def cudaGraphInstantiate(graph, flags):
    return 0, list(graph)


def cudaGraphLaunch(graph_exec, stream):
    LOG.append(("graph", id(graph_exec), len(graph_exec)))
    for fn in graph_exec:
        fn()
    return (0,)


def cudaGraphExecDestroy(graph_exec):
    return (0,)


def cudaGraphDestroy(graph):
    return (0,)


# -- the driver API calls runtime/engines/device_kernels.py makes; kernels run as their numpy references -----
class driver:  # noqa: N801 - stands in for the module cuda.bindings.driver
    LAUNCHES: list[str] = []

    @staticmethod
    def cuModuleLoadData(ptx):
        assert b".entry" in ptx  # real PTX from NVRTC
        return 0, "module"

    @staticmethod
    def cuModuleGetFunction(module, name):
        return 0, name.decode()

    @staticmethod
    def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        driver.LAUNCHES.append(f)
        enqueue(stream, _kernel(f, params))
        return (0,)


def _params(address, types):
    slots = (ctypes.c_void_p * len(types)).from_address(address)
    return [t.from_address(slots[i]).value for i, t in enumerate(types)]


def _view(ptr, count, dtype):
    import numpy as np
    dtype = np.dtype(dtype)
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype)


def _kernel(name, address):
    import numpy as np

    from runtime import guidance, samplers
    from runtime.engines.device_kernels import sampler_step_reference
    half = name.endswith("f16")
    if name.startswith("scatter_noisy"):
        x, sample, plane, windows = _params(address, [ctypes.c_void_p] * 2 + [ctypes.c_longlong, ctypes.c_int])

        def run():
            xs = _view(x, windows * 4 * plane, np.float32).reshape(windows, 4, plane)
            out = _view(sample, 3 * windows * 9 * plane, np.float16 if half else np.float32)
            out = out.reshape(3 * windows, 9, plane)
            out[:, :4] = guidance.per_branch(xs.astype(out.dtype))
        return run
    args = _params(address, [ctypes.c_void_p] * 9 + [ctypes.c_longlong, ctypes.c_int] + [ctypes.c_float] * 9)
    eps, x, saved, h0, h1, h2, z, x_out, g_out = args[:9]
    per_window, windows = args[9], args[10]
    s1, s2, a, a_saved, b0, b1, b2, b3, c = args[11:]

    def run():
        n = per_window * windows
        f32 = lambda ptr: _view(ptr, n, np.float32)  # noqa: E731
        e = _view(eps, 3 * n, np.float16 if half else np.float32).astype(np.float32).reshape(3 * windows, -1)
        b = [b0, b1, b2, b3]
        terms = len(b) - next((i for i, v in enumerate(reversed(b)) if v), len(b))
        u = samplers.Update(x=a, saved=a_saved, eps=tuple(b[:terms]), noise=c)
        hist = [f32(p).reshape(windows, -1) if p else None for p in (h0, h1, h2)][:max(terms - 1, 0)]
        new, g = sampler_step_reference(e, f32(x).reshape(windows, -1), u, s1, s2,
                                                f32(saved).reshape(windows, -1) if a_saved else None, hist,
                                                f32(z).reshape(windows, -1) if c else None)
        f32(x_out)[...] = new.ravel()
        f32(g_out)[...] = g.ravel()
    return run
