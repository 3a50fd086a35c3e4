"""ONNX Runtime backend: CPU provider with the FP32 graphs; CUDA provider with the FP16 graphs.

Each backend builds its sessions once, when first used, and ``close()`` releases them. On CUDA, inputs and
outputs go through IOBinding; V100 users need onnxruntime-gpu <= 1.26 (the last CUDA-12 build with sm_70
kernels).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from m3ddm.errors import EnginesError, first_line
from runtime.engines import contract
from runtime.engines.base import Backend, chunks
from runtime.engines.manifest import open_engines


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
        self._sessions: dict[str, object] = {}
        self._run_options = ort.RunOptions()

    def session(self, component):
        """The ONNX Runtime session of ``component`` (a contract record or its name), built when first asked."""
        if isinstance(component, str):
            component = contract.component(component)
        if self._sessions is None:
            raise EnginesError("this ONNX Runtime backend was closed")
        if component.name not in self._sessions:
            self._sessions[component.name] = self._make_session(self.engines.onnx_path(component.name, self.precision))
        return self._sessions[component.name]

    def _make_session(self, path: Path):
        ort = _import_ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        try:
            return ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as exc:  # a corrupt or foreign graph: one line, not ORT's multi-line dump
            raise EnginesError(f"ONNX Runtime cannot load {path.name}: {first_line(exc)}") from None

    def load(self) -> None:
        for component in contract.ENGINES:
            self.session(component)

    def interrupt(self) -> None:
        # The calls in flight hold these options and stop; later calls get fresh ones.
        options, self._run_options = self._run_options, _import_ort().RunOptions()
        options.terminate = True

    def _run(self, component: contract.Component, feeds: dict) -> np.ndarray:
        sess = self.session(component)
        if self.device == "cpu":
            return sess.run([component.output], feeds, self._run_options)[0]
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

    def _batched(self, component: contract.Component, x) -> np.ndarray:
        outs = [self._run(component, {component.input: self._cast(x[s])}) for s in chunks(x.shape[0], self.max_batch)]
        return np.concatenate(outs).astype(np.float32, copy=False)

    def vae_encode(self, images):
        return self._batched(contract.VAE_ENCODER, images)

    def vae_decode(self, latents):
        return self._batched(contract.VAE_DECODER, latents)

    def close(self):
        self._sessions = None  # the sessions (and their memory) go with their last reference
