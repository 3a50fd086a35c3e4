"""The engine contracts: component names, file names, tensor names, shapes and dtypes.

Shared by the exporter (which writes them into manifest.json) and the runtime (which refuses an
engines folder that does not match them). Shapes use ints for fixed sizes and names for the dynamic
batch dimension.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from runtime.constants import GLOBAL_FRAMES, VAE_DOWNSAMPLE, WINDOW_FRAMES

COMPONENTS = ("global_encoder", "unet", "vae_encoder", "vae_decoder")
PRECISIONS = ("fp32", "fp16")
DTYPES = {"fp32": "float32", "fp16": "float16"}
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CONTEXT_DIM = 320
LATENT_CHANNELS = 4
UNET_IN_CHANNELS = 9


def onnx_file(component: str, precision: str) -> str:
    return f"{component}.{precision}.onnx"


def plan_file(component: str, precision: str) -> str:
    return f"{component}.{precision}.plan"


def latent_size(model_size: int) -> int:
    if model_size % (VAE_DOWNSAMPLE * 8) or model_size <= 0:
        raise ValueError(f"model size {model_size} must be a positive multiple of 64 (latents a multiple of 8)")
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


def component_io(component: str, model_size: int, frames: int = WINDOW_FRAMES,
                 global_frames: int = GLOBAL_FRAMES) -> tuple[list[TensorSpec], list[TensorSpec]]:
    lat = latent_size(model_size)
    tokens = global_frames * global_tokens_per_frame(lat)
    if component == "global_encoder":
        return ([TensorSpec("global_latents", ("g", LATENT_CHANNELS, lat, lat), "model")],
                [TensorSpec("context", (1, "tokens", CONTEXT_DIM), "model")])
    if component == "unet":
        return ([TensorSpec("sample", ("N", UNET_IN_CHANNELS, frames, lat, lat), "model"),
                 TensorSpec("timestep", ("N",), "float32"),
                 TensorSpec("fps", ("N",), "float32"),
                 TensorSpec("context", ("N", tokens, CONTEXT_DIM), "model")],
                [TensorSpec("eps", ("N", LATENT_CHANNELS, frames, lat, lat), "model")])
    if component == "vae_encoder":
        return ([TensorSpec("image", ("n", 3, model_size, model_size), "model")],
                [TensorSpec("latent", ("n", LATENT_CHANNELS, lat, lat), "model")])
    if component == "vae_decoder":
        return ([TensorSpec("latent", ("n", LATENT_CHANNELS, lat, lat), "model")],
                [TensorSpec("image", ("n", 3, model_size, model_size), "model")])
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
