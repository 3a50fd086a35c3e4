"""TensorRT facts in one place, as pure functions: which TensorRT runs on which GPU, which optimisation
profiles a plan holds, whether a plan may run here, how many windows fit in GPU memory.

The builder (runtime/engines/trt_build.py) writes what it decided into the manifest; the backend
(runtime/engines/tensorrt.py) and the doctor check it. Nothing here imports TensorRT or CUDA.

UNet plans hold one *static* profile per window count W (N = 3W rows, the CFG branches of W windows):
static shapes get the best kernels and CUDA graphs, and TensorRT reports each profile's activation memory
separately, so the runtime can take the largest W whose activations fit the free memory. Rows are
independent in the UNet, so any call of N = 3k rows runs as a sum of profile sizes.
"""
from __future__ import annotations

import re

from m3ddm.errors import EnginesError, InputError, first_line
from runtime.engines.manifest import inside

MIN_TENSORRT = (10, 0)  # name-based I/O, execute_async_v3, USER_MANAGED context memory
MAX_TENSORRT_MAJOR = 11  # newest major this code is written against
VOLTA = (7, 0)
LAST_TENSORRT_FOR_VOLTA = (10, 4)  # Volta support was removed in TensorRT 10.5
FIRST_TURING = (7, 5)
INSTALL_HINT = ("install TensorRT from NVIDIA: pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu12 "
                "(V100: tensorrt-cu12==10.4.*, with CUDA 12), or use an NGC container")
DEFAULT_WINDOWS = (1, 2, 4)
RESERVE_BYTES = 768 << 20  # left free on the GPU: CUDA context growth, cuBLAS/cuDNN handles, fragmentation


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EnginesError(f"TensorRT is not installed here ({INSTALL_HINT}); the ONNX Runtime backends work "
                           f"without it (--backend ort)") from None
    except Exception as exc:  # the PyPI stub, or a wheel without its libnvinfer
        raise EnginesError(f"TensorRT cannot be imported ({type(exc).__name__}: {first_line(exc)}); "
                           f"{INSTALL_HINT}") from None
    return tensorrt


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


def cc_tuple(cc) -> tuple[int, int]:
    major, minor = str(cc).split(".")[:2]
    return int(major), int(minor)


def support_problem(tensorrt_version: str, compute_capability: str, gpu_name: str = "this GPU") -> str | None:
    """Why this TensorRT cannot build or run plans for this GPU, with what to do; None when it can."""
    tv, cc = version_tuple(tensorrt_version), cc_tuple(compute_capability)
    sm = f"sm_{cc[0]}{cc[1]}"
    if tv[:2] < MIN_TENSORRT:
        return f"TensorRT {tensorrt_version} is too old: this runtime needs TensorRT 10 or 11; {INSTALL_HINT}"
    if tv[0] > MAX_TENSORRT_MAJOR:
        return (f"TensorRT {tensorrt_version} is newer than this runtime knows (10.x, 11.x); install tensorrt-cu12<12 "
                f"or use --backend ort")
    if cc < VOLTA:
        return f"{gpu_name} ({sm}) is older than Volta; TensorRT 10 needs compute capability 7.0 or newer"
    if cc == VOLTA and tv[:2] > LAST_TENSORRT_FOR_VOLTA:
        return (f"{gpu_name} ({sm}, Volta) is not supported by TensorRT {tensorrt_version} "
                f"(Volta was removed in 10.5): install tensorrt-cu12==10.4.* with CUDA 12, or use --backend ort "
                f"(onnxruntime-gpu<=1.26)")
    if tv[0] >= 11 and cc < FIRST_TURING:
        return f"TensorRT {tensorrt_version} needs Turing or newer; {gpu_name} is {sm}: use TensorRT 10.4"
    return None


def plan_problem(key: str, record: dict | None, onnx_fingerprint: str | None, tensorrt_version: str, gpu: dict,
                 folder=None) -> str | None:
    """Why the plan described by ``record`` (its manifest entry) cannot run here; None when it can.

    A plan is tied to the TensorRT version that built it and to the GPU architecture; one built from an
    older ONNX graph is stale. Another GPU of the same architecture runs it correctly (TensorRT's tactic
    choice may then be less than ideal): that is allowed, see ``plan_notes``. With ``folder``, the plan
    file must also be there with the size the manifest recorded.
    """
    rebuild = "rebuild the plans on this machine: make plans (or python -m export.tensorrt_build --engines DIR)"
    if not isinstance(record, dict) or "file" not in record:
        return f"{key} has no plan ({rebuild})"
    if onnx_fingerprint is not None and record.get("onnx_fingerprint") != onnx_fingerprint:
        return f"{record['file']} was built from an older {key} ONNX graph; {rebuild}"
    if record.get("tensorrt") != tensorrt_version:
        return (f"{record['file']} was built with TensorRT {record.get('tensorrt')}, this machine has "
                f"{tensorrt_version}; {rebuild}")
    if record.get("compute_capability") != gpu["compute_capability"]:
        return (f"{record['file']} was built for {record.get('gpu')} (compute {record.get('compute_capability')}), "
                f"this is {gpu['name']} (compute {gpu['compute_capability']}); {rebuild}")
    if folder is not None:
        path = inside(folder, record["file"])
        if not path.is_file() or path.stat().st_size != record.get("bytes"):
            return f"{record['file']} is missing or has changed since it was built; {rebuild}"
    return None


def plan_notes(record: dict, gpu: dict) -> list[str]:
    if record.get("gpu") != gpu["name"]:
        return [f"{record['file']} was tuned on {record.get('gpu')}, running on {gpu['name']} (same architecture): "
                f"correct, maybe not the fastest; `make plans` here tunes for this GPU"]
    return []


def parse_windows(text) -> tuple[int, ...]:
    """'1,2,4' (or a sequence) -> sorted distinct window counts, 1 always included (any batch decomposes)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        counts = {int(x) for x in items if str(x).strip()}
    except ValueError:
        raise InputError(f"window counts must be integers like 1,2,4, not {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 64:
        raise InputError(f"window counts must be between 1 and 64, not {text!r}")
    return tuple(sorted(counts | {1}))


def default_windows(gpu_memory_bytes: int) -> tuple[int, ...]:
    """Window counts worth building for a GPU of this size (a one-window run must fit 16 GB cards)."""
    gb = gpu_memory_bytes / 2 ** 30
    if gb < 20:
        return (1,)
    if gb < 40:
        return (1, 2)
    return DEFAULT_WINDOWS


def profile_memory(engine, index: int) -> int:
    """Activation bytes a deserialized engine needs for optimisation profile ``index`` (TensorRT 10.x and 11
    name the call differently; the oldest only report the engine's maximum)."""
    for name in ("get_device_memory_size_for_profile_v2", "get_device_memory_size_for_profile"):
        fn = getattr(engine, name, None)
        if fn is not None:
            return int(fn(index))
    return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)


def profile_shapes(batch: tuple, spec_shape: list, dim_name: str) -> tuple[list, ...]:
    """min/opt/max shapes of one input: ``batch`` (min, opt, max) put where ``spec_shape`` names ``dim_name``."""
    out = []
    for value in batch:
        out.append([value if d == dim_name else int(d) for d in spec_shape])
    return tuple(out)


def decompose_rows(n: int, sizes) -> list[int]:
    """Split a UNet call of ``n`` rows into profile sizes, largest first (every size and n are multiples of 3)."""
    sizes = sorted(set(sizes), reverse=True)
    if n % 3 or 3 not in sizes:
        raise ValueError(f"{n} UNet rows cannot be split into profiles {sorted(sizes)}")
    parts = []
    while n:
        size = next(s for s in sizes if s <= n)
        parts.append(size)
        n -= size
    return parts


def choose_unet_profiles(profile_bytes: dict, other_bytes: int, free_bytes: int, budget_bytes: int | None = None,
                         reserve: int = RESERVE_BYTES) -> tuple[list[int], int]:
    """Which UNet profiles (by window count) to use and the activation buffer size, from memory.

    ``profile_bytes`` {windows: activation bytes of that UNet profile}; ``other_bytes`` the largest
    activation need of the other engines; ``free_bytes`` what the GPU has free once the weights are
    loaded; ``budget_bytes`` an optional cap on what this run may still take. Returns the usable window
    counts (all whose profile fits) and the size of the one shared activation buffer.
    """
    room = free_bytes - reserve
    if budget_bytes is not None:
        room = min(room, budget_bytes)
    usable = sorted(w for w, b in profile_bytes.items() if max(b, other_bytes) <= room)
    if not usable or 1 not in usable:
        need = max(profile_bytes.get(1, min(profile_bytes.values())), other_bytes)
        raise EnginesError(f"not enough GPU memory for one window: its activations need {need / 2**30:.2f} GiB, "
                           f"{max(room, 0) / 2**30:.2f} GiB are free beyond the weights (close other programs on "
                           f"this GPU, or build with a smaller --vae-batch)")
    return usable, max(max(profile_bytes[w] for w in usable), other_bytes)
