"""The engine contracts: component names, file names, tensor names, shapes and dtypes.

Shared by the exporter (which writes them into manifest.json) and the runtime (which refuses an
engines folder that does not match them). Shapes use ints for fixed sizes and names for the dynamic
batch dimension.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from m3ddm.errors import InputError
from m3ddm.facts import GLOBAL_FRAMES, VAE_DOWNSAMPLE, WINDOW_FRAMES

PRECISIONS = ("fp32", "fp16")
DTYPES = {"fp32": "float32", "fp16": "float16"}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CONTEXT_DIM = 320
LATENT_CHANNELS = 4
UNET_IN_CHANNELS = 9
VAE_BATCH = 16  # images per VAE engine call: bounds activation memory (the pipeline's chunks, the plans' profiles)


def onnx_file(component: str, precision: str) -> str:
    return f"{component}.{precision}.onnx"


def plan_file(component: str, precision: str) -> str:
    return f"{component}.{precision}.plan"


def latent_size(model_size: int) -> int:
    if model_size % (VAE_DOWNSAMPLE * 8) or model_size <= 0:
        raise InputError(f"model size {model_size} must be a positive multiple of 64 (latents a multiple of 8)")
    return model_size // VAE_DOWNSAMPLE


def global_tokens_per_frame(latent: int) -> int:
    """The global encoder's stride-2 stage, then its valid 3x3 conv: ((h + 1) // 2 - 2)^2 tokens a frame."""
    side = (latent + 1) // 2 - 2
    return side * side


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or a str naming a dynamic dimension
    dtype: str  # "float32", or "model" for the graph's precision

    def resolved(self, precision: str) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["dtype"] = DTYPES[precision] if self.dtype == "model" else self.dtype
        return d


def _global_encoder_io(lat, tokens, frames):
    return ([TensorSpec("global_latents", ("g", LATENT_CHANNELS, lat, lat), "model")],
            [TensorSpec("context", (1, "tokens", CONTEXT_DIM), "model")])


def _unet_io(lat, tokens, frames):
    return ([TensorSpec("sample", ("N", UNET_IN_CHANNELS, frames, lat, lat), "model"),
             TensorSpec("timestep", ("N",), "float32"),
             TensorSpec("fps", ("N",), "float32"),
             TensorSpec("context", ("N", tokens, CONTEXT_DIM), "model")],
            [TensorSpec("eps", ("N", LATENT_CHANNELS, frames, lat, lat), "model")])


def _vae_encoder_io(lat, tokens, frames):
    size = lat * VAE_DOWNSAMPLE
    return ([TensorSpec("image", ("n", 3, size, size), "model")],
            [TensorSpec("latent", ("n", LATENT_CHANNELS, lat, lat), "model")])


def _vae_decoder_io(lat, tokens, frames):
    size = lat * VAE_DOWNSAMPLE
    return ([TensorSpec("latent", ("n", LATENT_CHANNELS, lat, lat), "model")],
            [TensorSpec("image", ("n", 3, size, size), "model")])


@dataclass(frozen=True)
class Component:
    """One engine of the set, everything the exporter, the plan builder and the backends need to know of it.

    ``checkpoint`` is the source whose weights it holds; ``batch`` names its dynamic dimension; ``batches``
    gives the (min, opt, max) of that dimension per TensorRT optimisation profile, from the UNet window counts
    and the VAE batch. (The torch module whose trace is its graph belongs to the export side:
    export/onnx_export.py GRAPHS, keyed by these records.)
    """
    name: str
    checkpoint: str
    batch: str
    _io: Callable = field(repr=False)
    _batches: Callable = field(repr=False)

    def io(self, model_size: int, frames: int = WINDOW_FRAMES,
           global_frames: int = GLOBAL_FRAMES) -> tuple[list[TensorSpec], list[TensorSpec]]:
        lat = latent_size(model_size)
        return self._io(lat, global_frames * global_tokens_per_frame(lat), frames)

    @property
    def input(self) -> str:
        """The name of its first input (the only one, except for the UNet)."""
        return self._io(8, 1, 1)[0][0].name

    @property
    def output(self) -> str:
        """The name of its one output."""
        return self._io(8, 1, 1)[1][0].name

    def key(self, precision: str) -> str:
        """Its key in the manifest's ``components`` and ``plans``."""
        return f"{self.name}.{precision}"

    def onnx_file(self, precision: str) -> str:
        return onnx_file(self.name, precision)

    def plan_file(self, precision: str) -> str:
        return plan_file(self.name, precision)

    def profiles(self, windows=(1,), vae_batch: int = VAE_BATCH, global_frames: int = GLOBAL_FRAMES) -> list[tuple]:
        """(min, opt, max) of the batch dimension per TensorRT optimisation profile."""
        return self._batches(tuple(windows), vae_batch, global_frames)


GLOBAL_ENCODER = Component("global_encoder", "unet", "g", _global_encoder_io,
                           lambda windows, vae_batch, g: [(g, g, g)])
# One static profile per window count W (N = 3W rows, the CFG branches of W windows): runtime/engines/trt_policy.py
UNET = Component("unet", "unet", "N", _unet_io, lambda windows, vae_batch, g: [(3 * w, 3 * w, 3 * w) for w in windows])
VAE_ENCODER = Component("vae_encoder", "vae", "n", _vae_encoder_io,
                        lambda windows, vae_batch, g: [(1, vae_batch, vae_batch)])
VAE_DECODER = Component("vae_decoder", "vae", "n", _vae_decoder_io,
                        lambda windows, vae_batch, g: [(1, vae_batch, vae_batch)])
ENGINES = (GLOBAL_ENCODER, UNET, VAE_ENCODER, VAE_DECODER)
COMPONENTS = tuple(c.name for c in ENGINES)
_BY_NAME = {c.name: c for c in ENGINES}


def component(name: str) -> Component:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}; expected one of {COMPONENTS}") from None


def component_io(name: str, model_size: int, frames: int = WINDOW_FRAMES,
                 global_frames: int = GLOBAL_FRAMES) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return component(name).io(model_size, frames, global_frames)
