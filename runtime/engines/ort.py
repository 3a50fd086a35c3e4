"""ONNX Runtime backend: CPU provider with the FP32 graphs; CUDA provider with the FP16 graphs.

Each backend builds its sessions once, when first used, and ``close()`` releases them. On CUDA, inputs and
outputs go through IOBinding; V100 users need onnxruntime-gpu <= 1.26 (the last CUDA-12 build with sm_70
kernels).

On the CPU, a small graph's ops are too small to spread over threads (the tiny UNet gains 1.6x from a second
thread inside each op), while its batch rows are independent: a call runs as slices at once, each on a
single-threaded session (``row_slices``; 1.2-1.4x on 2 cores, the same bits as one call: only a single row,
never split, comes out differently on 2 threads than on 1). Only for graphs under ``ROW_PARALLEL_MAX_BYTES``,
since the single-threaded session holds its own copy of the weights, and a large graph's ops use the threads
well (the UNet at S = 256 loses 1.3x when 3 rows run as 2 + 1 on 2 cores).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from m3ddm.errors import EnginesError, first_line
from runtime.engines import contract
from runtime.engines.base import Backend, chunks
from runtime.engines.manifest import open_engines

ROW_PARALLEL_MAX_BYTES = 512 * 2 ** 20
ROW_PARALLEL = (contract.UNET.name, contract.VAE_ENCODER.name, contract.VAE_DECODER.name)  # rows independent


def row_slices(rows: int, threads: int) -> list[slice]:
    """The slices a call of ``rows`` runs as at once. Equal slices where they can be had with one to two slices
    per thread (the system spreads a few more single-threaded slices than cores evenly: 3 rows on 2 cores run
    as 1 + 1 + 1 in 0.85 of the time of one 3-row call on 2 threads, 2 + 1 in 0.95); one row each when there are
    fewer rows than threads; else one slice per thread, within a row of each other."""
    if threads < 2 or rows < 2:
        return [slice(0, rows)]
    even = [k for k in range(threads, 2 * threads + 1) if rows % k == 0]
    k = even[0] if even else min(rows, threads)
    bounds = [rows * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise EnginesError("onnxruntime is not installed: pip install 'm3ddm-runtime[ort]' "
                           "(or onnxruntime-gpu for the CUDA provider)") from None
    return onnxruntime


def available_providers() -> list[str]:
    try:
        return list(_import_ort().get_available_providers())
    except EnginesError:
        return []


class OrtBackend(Backend):
    name = "ort"
    concurrent = True  # an InferenceSession's run() is thread-safe: the VAE may encode while the UNet runs

    def __init__(self, engines_dir, device: str = "cpu", precision: str | None = None, threads: int | None = None,
                 max_batch: int | None = None, device_id: int = 0):
        if device not in ("cpu", "cuda"):
            raise EnginesError(f"ONNX Runtime device must be cpu or cuda, not {device!r}")
        ort = _import_ort()
        self.device, self.device_id = device, device_id
        self.precision = precision or ("fp16" if device == "cuda" else "fp32")
        if self.precision not in contract.PRECISIONS:
            raise EnginesError(f"unknown precision {self.precision!r}")
        self.engines = open_engines(engines_dir, self.precision)
        self.dtype = np.dtype(contract.DTYPES[self.precision])
        self.max_batch = max_batch
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EnginesError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu (V100: <= 1.26, "
                                   "CUDA 12) instead of onnxruntime, with a matching CUDA and cuDNN")
            self.providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.threads = threads
        self._sessions: dict[str, object] | None = {}  # None once closed
        self._row_sessions: dict[str, object] | None = {}  # single-threaded twins of the small row-parallel graphs
        self._row_pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the prepare thread's VAE and the UNet may build sessions at once
        self._run_options = ort.RunOptions()

    def session(self, component):
        """The ONNX Runtime session of ``component`` (a contract record or its name), built when first asked."""
        if isinstance(component, str):
            component = contract.component(component)
        with self._lock:
            if self._sessions is None:
                raise EnginesError("this ONNX Runtime backend was closed")
            if component.name not in self._sessions:
                self._sessions[component.name] = self._make_session(self.engines.onnx_path(component.name,
                                                                                           self.precision))
            return self._sessions[component.name]

    @property
    def cpu_threads(self) -> int:
        """The CPU threads this backend's calls use: ``threads``, else every core this process may run on."""
        return int(self.threads or _cpu_threads())

    def row_threads(self, component: contract.Component) -> int:
        """How many slices at once a call of ``component`` may run as (1: never split)."""
        threads = self.cpu_threads
        if (self.device != "cpu" or threads < 2 or component.name not in ROW_PARALLEL
                or self.engines.graph_bytes(component.name, self.precision) > ROW_PARALLEL_MAX_BYTES):
            return 1
        return threads

    def _row_session(self, component: contract.Component):
        with self._lock:
            if self._sessions is None or self._row_sessions is None:  # close() drops both at once
                raise EnginesError("this ONNX Runtime backend was closed")
            if component.name not in self._row_sessions:
                self._row_sessions[component.name] = self._make_session(
                    self.engines.onnx_path(component.name, self.precision), threads=1)
            if self._row_pool is None:
                # up to two slices a thread (row_slices)
                self._row_pool = ThreadPoolExecutor(2 * self.cpu_threads, thread_name_prefix="m3ddm-ort-rows")
            return self._row_sessions[component.name]

    def _make_session(self, path: Path, threads: int | None = None):
        ort = _import_ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or self.threads
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as exc:  # a corrupt or foreign graph: one line, not ORT's multi-line dump
            raise EnginesError(f"ONNX Runtime cannot load {path.name}: {first_line(exc)}") from None

    def load(self) -> None:
        for component in contract.ENGINES:
            self.session(component)
            if self.row_threads(component) > 1:
                self._row_session(component)

    def interrupt(self) -> None:
        # The calls in flight hold these options and stop; later calls get fresh ones.
        options, self._run_options = self._run_options, _import_ort().RunOptions()
        options.terminate = True

    def _run(self, component: contract.Component, feeds: dict) -> np.ndarray:
        if self.device == "cpu":
            rows = next(iter(feeds.values())).shape[0]
            slices = row_slices(rows, self.row_threads(component))
            options = self._run_options
            if len(slices) == 1:
                return self.session(component).run([component.output], feeds, options)[0]
            sess = self._row_session(component)
            assert self._row_pool is not None  # _row_session() made it
            parts = [self._row_pool.submit(sess.run, [component.output],
                                           {k: np.ascontiguousarray(v[s]) for k, v in feeds.items()}, options)
                     for s in slices]
            return np.concatenate([part.result()[0] for part in parts])
        sess = self.session(component)
        binding = sess.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(component.output, "cuda", self.device_id)
        sess.run_with_iobinding(binding, self._run_options)
        return binding.copy_outputs_to_cpu()[0]

    def _cast(self, x) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self.dtype)

    def encode_global(self, global_latents):
        out = self._run(contract.GLOBAL_ENCODER, {contract.GLOBAL_ENCODER.input: self._cast(global_latents)})
        return out.astype(np.float32, copy=False)

    def unet(self, sample, timestep, fps, context):
        outs = []
        for s in chunks(sample.shape[0], self.max_batch):
            outs.append(self._run(contract.UNET, {
                "sample": self._cast(sample[s]),
                "timestep": np.ascontiguousarray(timestep[s], dtype=np.float32),
                "fps": np.ascontiguousarray(fps[s], dtype=np.float32),
                "context": self._cast(context[s]),
            }))
        return np.concatenate(outs).astype(np.float32, copy=False)

    def vae_encode_chunk(self, images):
        return self._run(contract.VAE_ENCODER, {contract.VAE_ENCODER.input: self._cast(images)})

    def vae_decode_chunk(self, latents):
        return self._run(contract.VAE_DECODER, {contract.VAE_DECODER.input: self._cast(latents)})

    def close(self):
        self._sessions = self._row_sessions = None  # the sessions (and their memory) go with their last reference
        if self._row_pool is not None:
            self._row_pool.shutdown(wait=False)
