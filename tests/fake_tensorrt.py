"""A stand-in for the `tensorrt` module, for testing our side of the TensorRT boundary on machines without it.

It implements only the calls export/tensorrt_build.py makes, with the names and signatures of the TensorRT
10/11 Python API (read from NVIDIA/TensorRT's python/src/infer/pyCore.cpp and parsers/pyOnnx.cpp), and
it checks what TensorRT would check: optimisation-profile shapes against the ONNX graph's inputs (rank,
fixed dimensions, min <= opt <= max, every dynamic input covered), that the network is strongly typed, and
that a timing cache is handed back as TensorRT serialises it. The "plan" it builds is a JSON record of the
build request, so the tests can read what was asked for.
"""
from __future__ import annotations

import json

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


class _Network:
    def __init__(self, flags):
        self.flags = flags
        self.inputs = {}


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
        for value in model.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
            self.network.inputs[value.name] = dims
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
                  "profiles": [p.shapes for p in config.profiles],
                  "timing_cache_in": config.cache.data.decode() if config.cache else None}
        BUILDS.append(record)
        if config.cache is not None:
            config.cache = _TimingCache(config.cache.data + b"+")
        return json.dumps(record).encode()


class _Engine:
    def __init__(self, record):
        self.record = record
        self.num_optimization_profiles = len(record["profiles"])

    def get_device_memory_size_for_profile_v2(self, index):
        # Grows with the batch, as a real engine's activations do.
        shapes = self.record["profiles"][index]
        return 1000 * max(hi[0] for _, _, hi in shapes.values())


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data):
        return _Engine(json.loads(bytes(data)))
