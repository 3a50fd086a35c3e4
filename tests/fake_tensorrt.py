"""A stand-in for the `tensorrt` module, for testing our side of the TensorRT boundary on machines without it.

It implements only the calls runtime/engines/trt_build.py and runtime/engines/tensorrt.py make, with the names
and signatures of the TensorRT 10/11 Python API (read from NVIDIA/TensorRT's python/src/infer/pyCore.cpp and
parsers/pyOnnx.cpp), and it checks what TensorRT would check: optimisation-profile shapes against the ONNX
graph's inputs (rank, fixed dimensions, min <= opt <= max, every dynamic input covered), that the network is
strongly typed, that a timing cache is handed back as TensorRT serialises it; at run time, that input shapes
lie inside the selected profile, that the context has enough device memory, and that every I/O tensor has
an address. The "plan" it builds is a JSON record of the build request (so the tests can read what was
asked for); its engines compute simple stand-in functions of their inputs (``COMPUTE``), in the graph's
dtypes, reading and writing the bound addresses of tests/fake_cuda.py's memory, and they are recorded
instead of run while that stream is being captured into a CUDA graph.
"""
from __future__ import annotations

import ctypes
import json

import numpy as np

__version__ = "10.4.0.26"
BUILDS: list[dict] = []  # every build request, in order


class Logger:
    WARNING, INFO, ERROR = 2, 3, 1

    def __init__(self, severity=2):
        self.severity = severity


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1


class OnnxParserFlag:
    NATIVE_INSTANCENORM = 0


class MemoryPoolType:
    WORKSPACE = 0


class TensorIOMode:
    INPUT, OUTPUT = "input", "output"


class ExecutionContextAllocationStrategy:
    STATIC, ON_PROFILE_CHANGE, USER_MANAGED = 0, 1, 2


def nptype(trt_type):
    return np.dtype(trt_type).type


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.inputs, self.io = {}, {}


class _Error:
    def __init__(self, text):
        self.text = text

    def desc(self):
        return self.text


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors, self.flags = network, [], set()

    def set_flag(self, flag):
        self.flags.add(flag)

    def parse_from_file(self, path):
        import onnx
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:
            self.errors.append(_Error(f"cannot read {path}: {exc}"))
            return False
        from onnx import helper
        for side, values in (("input", model.graph.input), ("output", model.graph.output)):
            for value in values:
                t = value.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
                if side == "input":
                    self.network.inputs[value.name] = dims
                self.network.io[value.name] = {"mode": side, "dims": dims,
                                               "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name}
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, index):
        return self.errors[index]


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's own argument names
        self.shapes[name] = [list(min), list(opt), list(max)]


class _TimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self):
        return self.data


class _Config:
    def __init__(self):
        self.builder_optimization_level = 3
        self.pools, self.profiles, self.cache = {}, [], None

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def create_timing_cache(self, data):
        return _TimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return _Network(flags)

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        if not network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED):
            raise AssertionError("FP16 plans must be built strongly typed")
        for profile in config.profiles:
            for name, dims in network.inputs.items():
                dynamic = any(isinstance(d, str) for d in dims)
                if name not in profile.shapes:
                    if dynamic:
                        raise AssertionError(f"profile lacks dynamic input {name}")
                    continue
                lo, opt, hi = profile.shapes[name]
                for shape in (lo, opt, hi):
                    if len(shape) != len(dims) or any(not isinstance(d, str) and d != s for d, s in zip(dims, shape)):
                        raise AssertionError(f"profile shape {shape} does not fit {name} {dims}")
                if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                    raise AssertionError(f"profile of {name} is not min <= opt <= max")
            unknown = set(profile.shapes) - set(network.inputs)
            if unknown:
                raise AssertionError(f"profile names inputs the graph lacks: {unknown}")
        record = {"flags": network.flags, "opt_level": config.builder_optimization_level,
                  "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
                  "profiles": [p.shapes for p in config.profiles], "io": network.io,
                  "timing_cache_in": config.cache.data.decode() if config.cache else None}
        BUILDS.append(record)
        if config.cache is not None:
            config.cache = _TimingCache(config.cache.data + b"+")
        return json.dumps(record).encode()


def _f32(x):
    return np.asarray(x, np.float32)


def _unet(sample, timestep, fps, context):
    s = _f32(sample)
    per_row = 1e-4 * _f32(timestep) + 1e-3 * _f32(fps) + _f32(context).mean(axis=(1, 2))
    return 0.3 * s[:, :4] - 0.1 * s[:, 4:8] + 0.05 * s[:, 8:9] + per_row[:, None, None, None, None]


def _global_encoder(global_latents, tokens_per_frame):
    g = _f32(global_latents)
    per_token = np.repeat(g.mean(axis=(1, 2, 3)), tokens_per_frame)
    return per_token[None, :, None] + np.linspace(0, 0.01, 320, dtype=np.float32)


def _vae_encoder(image):
    x = _f32(image)
    n, _, size, _ = x.shape
    pooled = x.reshape(n, 3, size // 8, 8, size // 8, 8).mean(axis=(3, 5))
    return np.concatenate([pooled, pooled.mean(axis=1, keepdims=True)], axis=1) * 0.5


def _vae_decoder(latent):
    return np.tanh(_f32(latent)[:, :3].repeat(8, axis=2).repeat(8, axis=3))


# What each fake engine computes, by its output name; a numpy backend computing the same is the reference.
COMPUTE = {"eps": _unet, "context": _global_encoder, "latent": _vae_encoder, "image": _vae_decoder}
EXECUTIONS: list[str] = []  # output name of every enqueue that really ran (eagerly or in a graph replay)


def output_shape(name, shapes, tokens_per_frame):
    if name == "eps":
        n, _, f, h, w = shapes["sample"]
        return [n, 4, f, h, w]
    if name == "context":
        return [1, shapes["global_latents"][0] * tokens_per_frame, 320]
    if name == "latent":
        n, _, size, _ = shapes["image"]
        return [n, 4, size // 8, size // 8]
    n, _, lat, _ = shapes["latent"]
    return [n, 3, lat * 8, lat * 8]


def _array(address, shape, dtype):
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(address), dtype).reshape(shape)


class _Context:
    def __init__(self, engine):
        self.engine, self.memory, self.profile = engine, None, 0
        self.shapes, self.addresses = {}, {}

    def set_device_memory(self, memory, size):
        self.memory = (memory, size)

    def set_optimization_profile_async(self, index, stream):
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.record["profiles"][self.profile][name]
        if len(shape) != len(lo) or not all(a <= b <= c for a, b, c in zip(lo, shape, hi)):
            return False
        self.shapes[name] = [int(x) for x in shape]
        return True

    def get_tensor_shape(self, name):
        if self.engine.io[name]["mode"] == "input":
            return list(self.shapes[name])
        return output_shape(name, self.shapes, self.engine.tokens_per_frame)

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        import fake_cuda
        need = self.engine.get_device_memory_size_for_profile_v2(self.profile)
        if self.memory is None or self.memory[1] < need or set(self.addresses) != set(self.engine.io):
            return False
        # What a kernel launch bakes in: shapes and addresses now; the data is read when it runs.
        shapes = {n: self.get_tensor_shape(n) for n in self.engine.io}
        addresses = dict(self.addresses)

        def run():
            io = self.engine.io
            inputs = [_array(addresses[n], shapes[n], io[n]["dtype"]) for n in self.engine.inputs]
            (out,) = self.engine.outputs
            extra = (self.engine.tokens_per_frame,) if out == "context" else ()
            result = COMPUTE[out](*inputs, *extra)
            _array(addresses[out], shapes[out], io[out]["dtype"])[...] = result
            EXECUTIONS.append(out)

        fake_cuda.enqueue(stream_handle, run)
        return True


class _Engine:
    def __init__(self, record):
        self.record = record
        self.num_optimization_profiles = len(record["profiles"])
        self.io = record.get("io", {})
        self.names = list(self.io)
        self.num_io_tensors = len(self.names)
        self.inputs = [n for n in self.names if self.io[n]["mode"] == "input"]
        self.outputs = [n for n in self.names if self.io[n]["mode"] == "output"]
        self.tokens_per_frame = 0
        if "context" in self.outputs:  # fixed in the graph: [1, g * tokens per frame, 320]
            from runtime.engines import contract
            lat = self.io["global_latents"]["dims"][2]
            self.tokens_per_frame = contract.global_tokens_per_frame(lat)

    def get_device_memory_size_for_profile_v2(self, index):
        # Grows with the batch, as a real engine's activations do; a UNet row costs the most.
        shapes = self.record["profiles"][index]
        return 1000 * max(hi[0] for _, _, hi in shapes.values()) * (10 if "sample" in shapes else 1)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.io[name]["mode"]

    def get_tensor_dtype(self, name):
        return self.io[name]["dtype"]

    def get_tensor_profile_shape(self, name, index):
        return self.record["profiles"][index][name]

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        assert strategy == ExecutionContextAllocationStrategy.USER_MANAGED, "the backend shares one buffer"
        return _Context(self)


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        try:
            return _Engine(json.loads(bytes(data)))
        except ValueError:
            return None
