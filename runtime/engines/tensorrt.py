"""TensorRT backend on cuda-python (no torch): the product's fast path.

Plans are deserialized once (memory-mapped, no host copy). All engines share one activation buffer, sized
for the largest UNet profile that fits the GPU's free memory once the weights are loaded (TensorRT reports
each profile's need); the contexts use it through USER_MANAGED allocation, which is safe because every
engine runs on the one stream. Each I/O tensor has a device buffer and a pinned host buffer at its largest
shape, bound by name once. Every (profile, shapes) is run eagerly once, then captured as a CUDA graph and
replayed. A read-only input array passed again (the pipeline's CFG context, the same for all 50 steps of a
batch) is not uploaded again. Batches whose rows match a profile are sampled entirely on the GPU
(``sample_windows``: kernels/ for the per-step math, one download per batch; ``device_loop=False`` turns it
off, which the runtime's callers pass for M3DDM_DEVICE_LOOP=0).

Importing this module needs neither TensorRT nor a GPU; constructing the backend checks both and says
what is missing.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3ddm.errors import EnginesError
from runtime.engines import contract, cuda
from runtime.engines import trt_policy as policy
from runtime.engines.base import Backend
from runtime.engines.manifest import open_engines

if TYPE_CHECKING:  # imported when first sampled on the GPU (sample_windows)
    from runtime.engines.device_sampling import DeviceSampler


class TrtEngine:
    """One plan: engine, context on the shared activation buffer, bound I/O buffers, CUDA graphs."""

    def __init__(self, trt, runtime, path: Path, stream: cuda.Stream, cuda_graphs: bool = True):
        self.trt, self.path, self.stream, self.use_graphs = trt, Path(path), stream, cuda_graphs
        with open(path, "rb") as f:
            blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.engine = runtime.deserialize_cuda_engine(blob)
        finally:
            try:
                blob.close()
            except BufferError:  # a view still held by the bindings: the map goes with it
                pass
        if self.engine is None:
            raise EnginesError(f"TensorRT cannot load {self.path.name} (corrupt, or built by another TensorRT or for "
                               f"another GPU): rebuild it with make plans")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.names}
        self.context: Any = None  # TensorRT's execution context (TensorRT ships no types), made by activate()
        self.device: dict[str, cuda.DeviceBuffer] = {}
        self.host: dict[str, cuda.PinnedBuffer] = {}
        self.graphs: dict[tuple, cuda.Graph] = {}
        self._profile: int | None = None
        self._resident: dict[str, np.ndarray] = {}

    def profile_bytes(self, index: int) -> int:
        return policy.profile_memory(self.engine, index)

    def max_shape(self, name: str, profile: int) -> tuple:
        return tuple(self.engine.get_tensor_profile_shape(name, profile)[2])

    def activate(self, memory: cuda.DeviceBuffer, profiles) -> None:
        """Context on the shared ``memory``; I/O buffers for the largest shapes of ``profiles``."""
        trt = self.trt
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EnginesError(f"TensorRT could not create an execution context for {self.path.name}")
        if hasattr(self.context, "set_device_memory"):
            self.context.set_device_memory(memory.ptr, memory.nbytes)
        else:  # TensorRT 10.0
            self.context.device_memory = memory.ptr
        largest: dict[str, int] = {}
        for p in profiles:
            self._select(p)
            for name in self.inputs:
                self.context.set_input_shape(name, self.max_shape(name, p))
            for name in self.names:
                shape = tuple(self.context.get_tensor_shape(name))
                nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
                largest[name] = max(largest.get(name, 0), nbytes)
        for name, nbytes in largest.items():
            self.device[name] = cuda.DeviceBuffer(nbytes)
            self.host[name] = cuda.PinnedBuffer(nbytes)
            if not self.context.set_tensor_address(name, self.device[name].ptr):
                raise EnginesError(f"TensorRT refused the buffer of {name} in {self.path.name}")

    def _select(self, profile: int) -> None:
        if self._profile != profile:
            if not self.context.set_optimization_profile_async(profile, int(self.stream)):
                raise EnginesError(f"TensorRT cannot switch {self.path.name} to profile {profile}")
            self._profile = profile
            self._resident.clear()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise EnginesError(f"TensorRT failed to run {self.path.name}")

    def run(self, profile: int, feeds: dict) -> dict:
        """Inputs by name (any float dtype; cast to the engine's) -> outputs as float32 arrays."""
        key = self.prepare(profile, {n: v.shape for n, v in feeds.items()}, feeds)
        self.launch(key)
        return self.collect()

    def prepare(self, profile: int, shapes: dict, feeds: dict) -> tuple:
        """Select ``profile``, set every input's shape, upload the ``feeds`` given (the others keep what their
        device buffers hold); returns the key of this (profile, shapes) for ``launch``."""
        self._select(profile)
        for name in self.inputs:
            if not self.context.set_input_shape(name, tuple(shapes[name])):
                raise EnginesError(f"{self.path.name}: input {name} {list(shapes[name])} is outside profile {profile}")
        for name, value in feeds.items():
            if self._resident.get(name) is value:
                continue  # the same read-only array as last time: already on the device
            np.copyto(self.host[name].view(value.shape, self.dtypes[name]), value, casting="unsafe")
            self.stream.upload(self.device[name], self.host[name], value.size * self.dtypes[name].itemsize)
            if value.flags.writeable:
                self._resident.pop(name, None)
            else:
                self._resident[name] = value
        return (profile, tuple(tuple(shapes[n]) for n in self.inputs))

    def launch(self, key) -> None:
        """Enqueue the engine for ``key`` on the stream: its CUDA graph, or eagerly (then captured)."""
        graph = self.graphs.get(key)
        if graph is not None:
            graph.launch(self.stream)
        else:
            self._enqueue()
            if self.use_graphs:
                self._capture(key)

    def forget(self, name: str) -> None:
        """Input ``name``'s device buffer was written by other means: the next feed uploads again."""
        self._resident.pop(name, None)

    def collect(self) -> dict:
        """Wait for the stream; the outputs as float32 arrays."""
        shapes = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        for name, shape in shapes.items():
            self.stream.download(self.host[name], self.device[name], int(np.prod(shape)) * self.dtypes[name].itemsize)
        self.stream.synchronize()
        return {n: self.host[n].view(s, self.dtypes[n]).astype(np.float32) for n, s in shapes.items()}

    def _capture(self, key) -> None:
        try:
            self.graphs[key] = cuda.Graph(self.stream, self._enqueue)
        except EnginesError:
            self.use_graphs = False  # this engine cannot be captured (TensorRT enqueued host work): stay eager

    def close(self) -> None:
        for g in self.graphs.values():
            g.destroy()
        self.graphs.clear()
        buffers: list[cuda.DeviceBuffer | cuda.PinnedBuffer] = [*self.device.values(), *self.host.values()]
        for buf in buffers:
            buf.free()
        self.device.clear()
        self.host.clear()
        self.context = None
        self.engine = None


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engines_dir, precision: str = "fp16", max_batch: int | None = None, device_id: int = 0,
                 cuda_graphs: bool = True, max_windows: int | None = None, gpu_memory_gb: float | None = None,
                 device_loop: bool = True):
        trt = policy.import_tensorrt()
        self.precision = precision
        self.engines = open_engines(engines_dir, precision)
        cuda.set_device(device_id)
        self.gpu = cuda.device_properties(device_id)
        version = trt.__version__
        problem = policy.support_problem(version, self.gpu["compute_capability"], self.gpu["name"])
        if problem:
            raise EnginesError(problem)
        plans = self.engines.manifest.get("plans") or {}
        self.notes: list[str] = []
        records = {}
        for comp in contract.ENGINES:
            key = comp.key(precision)
            record = plans.get(key)
            why = policy.plan_problem(key, record, self.engines.manifest["components"][key]["fingerprint"], version,
                                      self.gpu, self.engines.folder)
            if why:
                raise EnginesError(why)
            assert record is not None  # plan_problem() passes only a plan record
            self.notes += policy.plan_notes(record, self.gpu)
            records[comp] = record
        self.stream: cuda.Stream | None = cuda.Stream()  # None once closed
        try:
            self._load(trt, records, cuda_graphs, max_windows, gpu_memory_gb)
        except BaseException:
            self.close()  # a half-built backend gives its GPU memory back
            raise
        self.max_batch = max_batch
        self.device_loop = device_loop
        self._device_sampler: DeviceSampler | None = None

    def _load(self, trt, records, cuda_graphs, max_windows, gpu_memory_gb):
        assert self.stream is not None  # __init__ made it just before
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        free_before, total = cuda.mem_info()
        self._engines = {}
        for c in contract.ENGINES:  # one at a time, so close() frees what loaded if a later one fails
            self._engines[c] = TrtEngine(trt, self.runtime, self.engines.path(records[c]["file"]), self.stream,
                                         cuda_graphs)
        free, _ = cuda.mem_info()
        self.weights_bytes = free_before - free
        unet = self._engines[contract.UNET]
        rows = [r[0] for r in records[contract.UNET]["profiles"]]
        profile_bytes = {n // 3: unet.profile_bytes(i) for i, n in enumerate(rows)}
        if max_windows:
            profile_bytes = {w: b for w, b in profile_bytes.items() if w <= max_windows} or {1: profile_bytes[1]}
        other = max(e.profile_bytes(0) for c, e in self._engines.items() if c is not contract.UNET)
        budget = int(gpu_memory_gb * 2**30) - self.weights_bytes if gpu_memory_gb else None
        need = max(profile_bytes[min(profile_bytes)], other)
        if budget is not None and budget < need:
            raise EnginesError(f"--gpu-memory {gpu_memory_gb:g} GB is too little: the weights take "
                               f"{self.weights_bytes / 2**30:.2f} GiB and one window's activations "
                               f"{need / 2**30:.2f} GiB more")
        self.windows, act_bytes = policy.choose_unet_profiles(profile_bytes, other, free, budget)
        self.activations: cuda.DeviceBuffer | None = cuda.DeviceBuffer(act_bytes)  # None once closed
        self._unet_profile = {3 * w: rows.index(3 * w) for w in self.windows}
        for comp, engine in self._engines.items():
            engine.activate(self.activations, list(self._unet_profile.values()) if comp is contract.UNET else [0])
        self.vae_batch = records[contract.VAE_ENCODER]["profiles"][0][2]
        self.memory = {"weights_bytes": self.weights_bytes, "activation_bytes": act_bytes,
                       "total_bytes": total, "free_after_load_bytes": free}

    def sample_windows(self, sampler, x0, noise, rows, fps_rows, ctx_rows, s1, s2, step_noise=None, callback=None,
                       seen=None):
        """A batch of windows sampled on the GPU (runtime/engines/device_sampling.py); None when this batch
        cannot be (its rows are not one profile, the kernels do not load): the pipeline then runs the
        host loop over ``unet``. ``seen`` is not called: the fused kernels keep the eps on the device (live
        previews need the host loop, M3DDM_DEVICE_LOOP=0, or another backend)."""
        n = rows.shape[0]
        if not self.device_loop or n not in self._unet_profile:
            return None
        if self._device_sampler is None:
            assert self.stream is not None  # a closed backend is not used again
            from runtime.engines.device_sampling import DeviceSampler
            try:
                import kernels
                arch = kernels.arch_for(self.gpu["compute_capability"])
                self._device_sampler = DeviceSampler(self._engines[contract.UNET], self.stream, arch)
            except Exception as exc:  # no NVRTC, an arch it does not know: the host loop still works
                self.device_loop = False
                self.notes.append(f"sampling on the host: the device kernels did not load ({str(exc)[:200]})")
                return None
        if not self._device_sampler.supports(sampler):
            return None
        return self._device_sampler.run(self._unet_profile[n], sampler, x0, noise, rows, fps_rows, ctx_rows, s1, s2,
                                        step_noise, callback)

    def unet(self, sample, timestep, fps, context):
        n = sample.shape[0]
        parts = policy.decompose_rows(n, list(self._unet_profile))
        if len(parts) == 1:
            return self._unet_call(n, sample, timestep, fps, context)  # whole arrays: the context can stay resident
        outs, start = [], 0
        for size in parts:
            s = slice(start, start + size)
            outs.append(self._unet_call(size, sample[s], timestep[s], fps[s], context[s]))
            start += size
        return np.concatenate(outs)

    def _unet_call(self, rows, sample, timestep, fps, context):
        feeds = {"sample": sample, "timestep": timestep, "fps": fps, "context": context}
        return self._engines[contract.UNET].run(self._unet_profile[rows], feeds)[contract.UNET.output]

    def encode_global(self, global_latents):
        g = self.engines.manifest["model"]["global_frames"]
        if global_latents.shape[0] != g:
            raise ValueError(f"the global encoder plan takes exactly {g} frames, not {global_latents.shape[0]}")
        enc = contract.GLOBAL_ENCODER
        return self._engines[enc].run(0, {enc.input: global_latents})[enc.output]

    def vae_encode_chunk(self, images):
        return self._vae_call(contract.VAE_ENCODER, images)

    def vae_decode_chunk(self, latents):
        return self._vae_call(contract.VAE_DECODER, latents)

    def _vae_call(self, component: contract.Component, x):
        return self._engines[component].run(0, {component.input: x})[component.output]

    def close(self):
        for engine in getattr(self, "_engines", {}).values():
            engine.close()
        activations = getattr(self, "activations", None)  # absent when _load failed before making it
        if activations is not None:
            activations.free()
            self.activations = None
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.destroy()
            self.stream = None
