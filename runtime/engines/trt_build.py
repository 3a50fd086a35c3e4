"""TensorRT plans from an engines folder's ONNX graphs (no torch needed: build on the GPU machine).

    python -m export.tensorrt_build --engines DIR [--windows 1,2,4] [--opt-level 3] [--force]   (make plans)

(that command's flags and main are runtime/tensorrt_plans.py; ``build_plans`` here is what it runs).

Each plan is built *strongly typed* from the FP16 graph: the graph's own types decide every layer's
precision (FP16 compute, FP32 normalisation statistics and softmax through the graph's Casts). That is the
only way TensorRT 11 builds FP16, and the same graph and flags build on TensorRT 10.4, the last release
for V100. UNet plans hold one static profile per window count (runtime/engines/trt_policy.py); the
timing cache is kept per GPU and TensorRT version in the folder and reused by later builds. The manifest
records, per plan, the TensorRT version, GPU name and compute capability, the ONNX fingerprint it was built
from, the options and each profile's activation memory; the runtime refuses a plan that does not match.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from m3ddm.errors import EnginesError, InputError
from m3ddm.files import atomic_write
from runtime.engines import contract
from runtime.engines import trt_policy as policy
from runtime.engines.manifest import open_engines, write_manifest

log = logging.getLogger(__name__)

DEFAULT_OPT_LEVEL = 3  # TensorRT's default; 4-5 search longer for (sometimes) faster kernels


class BuildError(EnginesError):
    """TensorRT could not parse, build or load back a plan here; the message says which and why."""


def current_gpu(index: int = 0) -> dict:
    from runtime.engines import cuda
    try:
        return cuda.device_properties(index)
    except cuda.CudaError as exc:
        raise BuildError(f"no usable NVIDIA GPU {index} to build TensorRT plans on ({exc}); plans are built on the "
                         f"GPU type that runs them") from None


def timing_cache_path(folder: Path, gpu: dict, tensorrt_version: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu["name"]).strip("-").lower()
    cc = gpu["compute_capability"].replace(".", "")
    return Path(folder) / f"timing_cache.{slug}.sm{cc}.trt{tensorrt_version}.bin"


def build_plan(trt, onnx_path: Path, plan_path: Path, profiles: list[dict], *, opt_level: int = DEFAULT_OPT_LEVEL,
               workspace_bytes: int | None = None, timing_cache: Path | None = None,
               verbose: bool = False) -> dict:
    """Build one strongly typed plan; ``profiles`` [{input: (min, opt, max) shapes}]. Returns what it measured."""
    logger = trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights next to the graph
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT's ONNX parser refused {onnx_path.name}: "
                         f"{'; '.join(errors[:3]) or 'no reason given'}")
    config = builder.create_builder_config()
    config.builder_optimization_level = int(opt_level)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, False)  # a cache from another GPU or version is refused, not used
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if blob is None:
        raise BuildError(f"TensorRT could not build {plan_path.name} (its log above says why)")
    atomic_write(plan_path, blob)
    if cache is not None:
        atomic_write(timing_cache, config.get_timing_cache().serialize())
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)  # the bytes just written, not a second copy
    if engine is None:
        raise BuildError(f"TensorRT built {plan_path.name} but cannot load it back")
    memory = [policy.profile_memory(engine, i) for i in range(engine.num_optimization_profiles)]
    return {"build_seconds": round(seconds, 1), "bytes": plan_path.stat().st_size, "device_memory": memory}


def component_profiles(entry: dict, component: contract.Component, windows, vae_batch: int) -> tuple[list[dict], list]:
    """(shape profiles for the builder, their batch ranges for the manifest) of one component."""
    ranges = component.profiles(windows, vae_batch)
    shapes = [{spec["name"]: policy.profile_shapes(rng, spec["shape"], component.batch)
               for spec in entry["inputs"] if component.batch in spec["shape"]} for rng in ranges]
    return shapes, [list(rng) for rng in ranges]


def build_plans(folder, precision: str = "fp16", windows=None, vae_batch: int = contract.VAE_BATCH,
                opt_level: int = DEFAULT_OPT_LEVEL, workspace_gb: float | None = None, device: int = 0,
                force: bool = False, verbose: bool = False) -> dict:
    """Build what is missing or stale; returns the manifest's ``plans``."""
    folder = Path(folder)
    engines = open_engines(folder, precision)
    trt = policy.import_tensorrt()
    from runtime.engines import cuda
    cuda.set_device(device)
    gpu = current_gpu(device)
    version = trt.__version__
    problem = policy.support_problem(version, gpu["compute_capability"], gpu["name"])
    if problem:
        raise BuildError(problem)
    windows = policy.parse_windows(windows) if windows else policy.default_windows(gpu["memory_bytes"])
    if not 1 <= vae_batch <= 64:
        raise InputError("the VAE batch must be between 1 and 64")
    common: dict[str, object] = {"opt_level": int(opt_level), "workspace_gb": workspace_gb, "strongly_typed": True}
    own: dict[contract.Component, dict[str, object]] = {
        contract.UNET: {"windows": list(windows)}, contract.VAE_ENCODER: {"vae_batch": vae_batch},
        contract.VAE_DECODER: {"vae_batch": vae_batch}, contract.GLOBAL_ENCODER: {}}
    cache = timing_cache_path(folder, gpu, version)
    manifest = dict(engines.manifest)  # as open_engines read and checked it
    plans = manifest.setdefault("plans", {})
    log.info(f"TensorRT {version} on {gpu['name']} (compute {gpu['compute_capability']}, "
        f"{gpu['memory_bytes'] / 2**30:.0f} GiB): windows {','.join(map(str, windows))}, opt level {opt_level}")
    for comp in contract.ENGINES:
        key = comp.key(precision)
        entry = engines.manifest["components"][key]
        plan_path = folder / comp.plan_file(precision)
        old = plans.get(key, {})
        options = {**common, **own[comp]}
        current = (not force and old.get("options") == options and old.get("gpu") == gpu["name"]
                   and policy.plan_problem(key, old, entry["fingerprint"], version, gpu, folder) is None)
        if current:
            log.info(f"  {plan_path.name}: up to date")
            continue
        shapes, ranges = component_profiles(entry, comp, windows, vae_batch)
        log.info(f"  building {plan_path.name} ({len(shapes)} profile{'s' * (len(shapes) > 1)}) ...")
        built = build_plan(trt, engines.path(entry["file"]), plan_path, shapes, opt_level=opt_level,
                           workspace_bytes=int(workspace_gb * 2**30) if workspace_gb else None,
                           timing_cache=cache, verbose=verbose)
        plans[key] = {"file": plan_path.name, "precision": precision, "onnx_fingerprint": entry["fingerprint"],
                      "tensorrt": version, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
                      "options": options, "profiles": ranges, **built}
        write_manifest(folder, manifest)  # after each plan: an interrupted build keeps what finished
        log.info(f"    {built['bytes'] / 2**20:.1f} MiB in {built['build_seconds']} s; activations "
            + ", ".join(f"{m / 2**20:.0f}" for m in built["device_memory"]) + " MiB per profile")
    return plans

