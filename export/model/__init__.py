"""The M3DDM UNet3D with its global-frame encoder, and the SD1.5 VAE loader."""
from export.model.config import UNetConfig
from export.model.errors import CheckpointError
from export.model.loading import build_unet, load_unet, load_vae, save_unet
from export.model.unet import M3DDMUNet

__all__ = ["UNetConfig", "CheckpointError", "M3DDMUNet", "build_unet", "load_unet", "load_vae", "save_unet"]
