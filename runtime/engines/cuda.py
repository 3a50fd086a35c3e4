"""The few CUDA calls the GPU path needs, over cuda-python (no torch, no CuPy).

Device buffers, pinned host buffers with numpy views, one stream, memory info and CUDA graphs (runtime API),
and the driver calls that load and launch kernels (runtime/engines/device_kernels.py). Every call goes through
``kernels.check``, the one status check: a failure raises ``CudaError`` naming the call and CUDA's reason.

Why not cuda.core, NVIDIA's higher layer over these bindings: its PTX compile calls the CUDA driver, so the
kernels would no longer compile on a machine without a GPU (CI), and its API was renamed as recently as 1.0.
"""
from __future__ import annotations

import ctypes

import numpy as np

from kernels import CudaError, check

__all__ = ["CudaError", "call", "driver_call", "set_device", "device_properties", "mem_info", "DeviceBuffer",
           "PinnedBuffer", "Stream", "upload_array", "Graph"]


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise CudaError("cuda-python is not installed: pip install 'm3ddm-runtime[gpu]' (cuda-bindings 12.x)") from None
    return cudart


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        raise CudaError("cuda-python is not installed: pip install 'm3ddm-runtime[gpu]' (cuda-bindings 12.x)") from None
    return driver


def call(name: str, *args):
    """cudart.<name>(*args), checked; returns the results after the status (one value unwrapped)."""
    return check(getattr(_cudart(), name)(*args), name)


def driver_call(name: str, *args):
    """The CUDA driver's <name>(*args), checked, as ``call``."""
    return check(getattr(_driver(), name)(*args), name)


def set_device(index: int) -> None:
    call("cudaSetDevice", index)


def device_properties(index: int) -> dict:
    prop = call("cudaGetDeviceProperties", index)
    name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}", "memory_bytes": int(prop.totalGlobalMem)}


def mem_info() -> tuple[int, int]:
    """(free, total) bytes on the current device."""
    free, total = call("cudaMemGetInfo")
    return int(free), int(total)


class DeviceBuffer:
    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(call("cudaMalloc", self.nbytes))

    def free(self) -> None:
        if self.ptr:
            call("cudaFree", self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory (fast, asynchronous copies) with a numpy view."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(call("cudaMallocHost", self.nbytes))
        self.bytes: np.ndarray | None = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def view(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{list(shape)} {dtype} does not fit a {self.nbytes}-byte pinned buffer")
        assert self.bytes is not None  # only live buffers are viewed (free() drops the view with the memory)
        return self.bytes[:count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.bytes = None
            call("cudaFreeHost", self.ptr)
            self.ptr = 0


class Stream:
    def __init__(self):
        self.handle = call("cudaStreamCreate")

    def __int__(self) -> int:
        return int(self.handle)

    def upload(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        cudart = _cudart()
        call("cudaMemcpyAsync", dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle)

    def download(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        cudart = _cudart()
        call("cudaMemcpyAsync", dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle)

    def copy(self, dst_ptr: int, src_ptr: int, nbytes: int) -> None:
        """Device to device, in stream order."""
        cudart = _cudart()
        call("cudaMemcpyAsync", dst_ptr, src_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.handle)

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", self.handle)

    def destroy(self) -> None:
        if self.handle is not None:
            call("cudaStreamDestroy", self.handle)
            self.handle = None


def upload_array(stream: Stream, array: np.ndarray, keep: list) -> DeviceBuffer:
    """A new device copy of ``array`` (through a new pinned buffer), enqueued on ``stream``; both buffers are
    appended to ``keep``, which the caller frees once the stream is done with them."""
    array = np.ascontiguousarray(array)
    dev, host = DeviceBuffer(array.nbytes), PinnedBuffer(array.nbytes)
    keep += [dev, host]
    host.view(array.shape, array.dtype)[...] = array
    stream.upload(dev, host, array.nbytes)
    return dev


class Graph:
    """A CUDA graph captured from the work ``record()`` puts on ``stream``; ``launch`` replays it.

    Thread-local capture: other threads (a memory watcher, the frame writer) may call CUDA meanwhile."""

    def __init__(self, stream: Stream, record):
        cudart = _cudart()
        call("cudaStreamBeginCapture", stream.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            record()
        finally:
            graph = call("cudaStreamEndCapture", stream.handle)
        self.graph = graph
        self.exec = call("cudaGraphInstantiate", graph, 0)

    def launch(self, stream: Stream) -> None:
        call("cudaGraphLaunch", self.exec, stream.handle)

    def destroy(self) -> None:
        if self.exec is not None:
            call("cudaGraphExecDestroy", self.exec)
            call("cudaGraphDestroy", self.graph)
            self.exec = self.graph = None
