"""PyTorch backend: the engines folder's ``torch.export`` programs (``python -m export --torch``) on a CUDA GPU, or
on the CPU. For GPUs where TensorRT cannot be had: only PyTorch is needed.

On the GPU: FP16 programs (their norms' statistics and the global encoder in FP32, as the FP16 graphs), attention
through ``scaled_dot_product_attention`` (flash / memory-efficient kernels), one CUDA graph per UNet program (a
window count), the whole batch's sampling on the device (runtime/engines/torch_sampling.py), and
``gpu_memory_gb`` capping this process's GPU memory through PyTorch's allocator. On the CPU: the FP32 programs, the
same code. Imported only when this backend is chosen: the rest of the runtime never imports torch.
"""
from __future__ import annotations

import threading
import types
import typing
from contextlib import contextmanager

import numpy as np
import torch

from m3ddm.errors import EnginesError, first_line
from runtime.engines import contract, torch_sampling
from runtime.engines import torch_programs as tp
from runtime.engines.base import Backend, chunks
from runtime.engines.manifest import open_engines
from runtime.engines.torch_sampling import to_device
from runtime.engines.trt_policy import decompose_rows

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class Interrupted(EnginesError):
    """The calls in flight were aborted (``interrupt``): a job being cancelled."""


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, engines_dir, device: str | None = None, precision: str | None = None,
                 max_batch: int | None = None, gpu_memory_gb: float | None = None, threads: int | None = None,
                 cuda_graphs: bool = True, device_loop: bool = True):
        cuda = torch.cuda.is_available()
        if device is None:
            device = "cuda" if cuda else "cpu"
        if device.split(":")[0] == "cuda" and not cuda:
            raise EnginesError(f"PyTorch {torch.__version__} sees no CUDA GPU here (built for CUDA "
                               f"{torch.version.cuda or 'none'}); use --backend ort for the CPU")
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.precision = precision or ("fp16" if self.on_gpu else "fp32")
        if self.precision not in DTYPES:
            raise EnginesError(f"unknown precision {self.precision!r}")
        self.dtype = DTYPES[self.precision]
        self.engines = open_engines(engines_dir)  # its programs, not its graphs: a --torch-only folder has none
        self.records = {c: tp.record(self.engines, c, self.precision) for c in contract.ENGINES}
        note = tp.version_note(self.records[contract.UNET], torch.__version__)
        self.notes: list[str] = [note] if note else []
        self.max_batch, self.device_loop, self.cuda_graphs = max_batch, device_loop, cuda_graphs and self.on_gpu
        if threads and not self.on_gpu:
            torch.set_num_threads(int(threads))
        # UNet rows -> the index of its program in the record (static programs only)
        self._unet_index = {low: i for i, (low, high) in enumerate(tp.batch_ranges(self.records[contract.UNET]))
                            if low == high}
        if 3 not in self._unet_index:
            raise EnginesError(f"engines folder {self.engines.folder}: the PyTorch UNet programs lack the one-window "
                               f"program (3 rows); {tp.REEXPORT}")
        self.windows = sorted(r // 3 for r in self._unet_index)
        self.vae_batch = min(tp.batch_ranges(self.records[contract.VAE_ENCODER])[0][1],
                             tp.batch_ranges(self.records[contract.VAE_DECODER])[0][1])
        if self.on_gpu:
            self._cap_memory(gpu_memory_gb)
        self._programs: dict[contract.Component, dict] | None = {}  # component -> {index in its record: _Bound}
        self._weights: dict[contract.Component, dict] = {}
        self._graphs: dict[int, CudaGraph] = {}  # UNet rows -> captured call
        self._pool: object = None  # the CUDA graphs' shared memory pool, made with the first graph
        self._lock = threading.Lock()
        self._generation = 0  # interrupt() moves it on: a sampling loop begun before stops at its next step

    def _cap_memory(self, gpu_memory_gb: float | None) -> None:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        total = torch.cuda.get_device_properties(index).total_memory
        self.gpu = {"name": torch.cuda.get_device_name(index), "memory_bytes": total,
                    "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(index)))}
        if gpu_memory_gb:
            fraction = gpu_memory_gb * 2**30 / total
            if fraction > 1:
                raise EnginesError(f"--gpu-memory {gpu_memory_gb:g} GB is more than this GPU has "
                                   f"({total / 2**30:.1f} GiB)")
            torch.cuda.set_per_process_memory_fraction(fraction, index)

    # Loading -----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Every weights file and the programs of one window: a folder that cannot work fails here. The programs
        of more windows load when first used (deserialising one UNet program takes seconds)."""
        for comp in contract.ENGINES:
            self._program(comp, 0)

    def _program(self, comp: contract.Component, index: int):
        """The ``index``-th program of ``comp`` (in its record's order) with its weights bound, loaded once."""
        with self._lock:
            if self._programs is None:
                raise EnginesError("this PyTorch backend was closed")
            loaded = self._programs.setdefault(comp, {})
            if index not in loaded:
                if comp not in self._weights:
                    self._weights[comp] = self._load_weights(comp)
                loaded[index] = _Bound(self._load_program(comp, index), self._weights[comp])
            return loaded[index]

    def _load_weights(self, comp: contract.Component) -> dict:
        entry = self.records[comp]
        path = tp.check_file(self.engines, entry["weights"], f"the weights of {comp.key(self.precision)}")
        try:
            return torch.load(str(path), map_location=self.device, weights_only=True)
        except torch.cuda.OutOfMemoryError:
            raise EnginesError(f"the weights of {comp.key(self.precision)} do not fit the GPU memory this run may "
                               f"take (--gpu-memory, or what the GPU has free)") from None
        except Exception as exc:
            raise EnginesError(f"PyTorch cannot read {path.name}: {first_line(exc)}; {tp.REEXPORT}") from None

    def _load_program(self, comp: contract.Component, index: int):
        entry = self.records[comp]
        path = tp.check_file(self.engines, entry["graphs"][index], f"a program of {comp.key(self.precision)}")
        try:
            with _type_hints_cached():
                program = torch.export.load(str(path))
            if self.device.type != "cpu":  # what the tracer saw on the CPU (aranges, constants, asserts) moves too
                from torch.export.passes import move_to_device_pass
                program = move_to_device_pass(program, self.device)
            return program.module()
        except Exception as exc:
            wrote = entry.get("torch", "?")
            raise EnginesError(f"PyTorch {torch.__version__} cannot load {path.name} (written by torch {wrote}): "
                               f"{first_line(exc)}; {tp.REEXPORT}") from None

    # Calls -------------------------------------------------------------------------------------------------

    def _tensor(self, x, dtype=None) -> torch.Tensor:
        return to_device(x, self.device, dtype or self.dtype)

    @torch.inference_mode()
    def _ranged(self, comp: contract.Component, x: np.ndarray) -> np.ndarray:
        """A ranged program (VAE, global encoder) over host ``x``; padded up to the program's least batch."""
        low, high = tp.batch_ranges(self.records[comp])[0]
        call = self._program(comp, 0)
        n = x.shape[0]
        if n > high:
            raise ValueError(f"{comp.name} takes at most {high} rows a call, not {n}")
        inputs = self._tensor(x)
        if n < low:
            inputs = torch.cat([inputs, inputs[-1:].expand(low - n, *inputs.shape[1:])])
        return call(inputs)[:n].float().cpu().numpy()

    def encode_global(self, global_latents):
        return self._ranged(contract.GLOBAL_ENCODER, global_latents)

    def vae_encode_chunk(self, images):
        return self._ranged(contract.VAE_ENCODER, images)

    def vae_decode_chunk(self, latents):
        return self._ranged(contract.VAE_DECODER, latents)

    @torch.inference_mode()
    def unet(self, sample, timestep, fps, context):
        outs = []
        for s in chunks(sample.shape[0], self.max_batch):
            eps = self._unet(self._tensor(sample[s]), self._tensor(timestep[s], torch.float32),
                             self._tensor(fps[s], torch.float32), self._tensor(context[s]))
            outs.append(eps.float().cpu().numpy())
        return np.concatenate(outs)

    def _unet(self, sample, timestep, fps, context) -> torch.Tensor:
        """The UNet over device tensors of any 3k rows, as a sum of its programs' row counts."""
        parts, start = [], 0
        for size in decompose_rows(sample.shape[0], list(self._unet_index)):
            s = slice(start, start + size)
            call = self._program(contract.UNET, self._unet_index[size])
            parts.append(self._unet_rows(call, size, sample[s], timestep[s], fps[s], context[s]))
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _unet_rows(self, call, rows: int, *inputs) -> torch.Tensor:
        if not self.cuda_graphs:
            return call(*inputs)
        graph = self._graphs.get(rows)
        if graph is None:
            try:
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                graph = self._graphs[rows] = CudaGraph(call, inputs, self._pool)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # an op this torch cannot capture: slower, but the run goes on
                self.cuda_graphs = False
                self.notes.append(f"CUDA graphs off: capturing the UNet failed ({first_line(exc)[:200]})")
                return call(*inputs)
        return graph(*inputs).clone()  # the graphs share one memory pool: the next replay may overwrite it

    @torch.inference_mode()
    def sample_windows(self, sampler, x0, noise, rows, fps_rows, ctx_rows, s1, s2, step_noise=None, callback=None,
                       seen=None):
        """The batch's whole sampling loop on this backend's device (runtime/engines/torch_sampling.py)."""
        if not self.device_loop or (self.max_batch and rows.shape[0] > self.max_batch):
            return None
        started = self._generation

        def stopped():
            if self._generation != started:
                raise Interrupted("interrupted")

        return torch_sampling.run(sampler, self._unet, x0, noise, rows, fps_rows, ctx_rows, s1, s2, self.dtype,
                                  self.device, step_noise, callback, stopped=stopped, seen=seen)

    def interrupt(self) -> None:
        # A GPU kernel cannot be aborted: the sampling loops in flight stop at their next step; later calls run.
        self._generation += 1

    def close(self) -> None:
        with self._lock:
            self._programs = None
            self._weights.clear()
            self._graphs.clear()
            self._pool = None
        if self.on_gpu:
            torch.cuda.empty_cache()


@contextmanager
def _type_hints_cached():
    """While a program loads, the type hints of torch's schema classes are looked up once per class.

    torch.export.load builds every serialized node's dataclass through ``typing.get_type_hints`` (torch 2.11 to
    2.13 at least): about 85,000 uncached calls for a UNet program, half its load time. A class's hints do not
    change. Where torch's deserializer does not reach ``get_type_hints`` through its module ``typing`` as those
    releases do, the load runs as it is."""
    serialize: types.ModuleType | None
    try:
        from torch._export.serde import serialize
    except ImportError:
        serialize = None
    if serialize is None or getattr(serialize, "typing", None) is not typing:
        yield
        return
    found: dict = {}

    def get_type_hints(obj, globalns=None, localns=None, include_extras=False):
        key = (obj, id(globalns), id(localns), include_extras)
        if key not in found:
            found[key] = typing.get_type_hints(obj, globalns, localns, include_extras)
        return found[key]

    shim = types.ModuleType("typing")
    shim.__dict__.update(vars(typing))
    vars(shim)["get_type_hints"] = get_type_hints
    vars(serialize)["typing"] = shim
    try:
        yield
    finally:
        vars(serialize)["typing"] = typing


class _Bound:
    """A program with its weights bound: ``call(*inputs)``."""

    def __init__(self, module, weights: dict):
        self.module, self.weights = module, weights

    def __call__(self, *inputs):
        return self.module(self.weights, *inputs)


class CudaGraph:
    """One captured call of ``call`` on static input buffers (PyTorch's documented whole-network capture): a
    replay copies the inputs in and returns the static output."""

    def __init__(self, call, inputs, pool):
        self.inputs = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS/cuDNN pick their kernels
            for _ in range(2):
                call(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.output = call(*self.inputs)

    def __call__(self, *inputs) -> torch.Tensor:
        for buffer, x in zip(self.inputs, inputs):
            buffer.copy_(x)
        self.graph.replay()
        return self.output
