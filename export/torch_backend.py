"""A runtime Backend that runs the torch modules directly: the runtime's pipeline over the reference
model, to tell pipeline differences from engine differences in tests and benchmarks."""
from __future__ import annotations

import numpy as np
import torch

from export.onnx_export import VaeDecoderGraph, VaeEncoderGraph
from runtime.engines.base import Backend


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class TorchBackend(Backend):
    name = "torch"
    precision = "fp32"

    def __init__(self, unet_model, vae, size: int):
        self.model, self.size = unet_model, size
        self.encoder, self.decoder = VaeEncoderGraph(vae).eval(), VaeDecoderGraph(vae).eval()

    @property
    def model_size(self) -> int:
        return self.size

    @torch.no_grad()
    def encode_global(self, global_latents):
        return self.model.encode_global(_t(global_latents)).numpy()

    @torch.no_grad()
    def unet(self, sample, timestep, fps, context):
        return self.model(_t(sample), _t(timestep), _t(fps), _t(context)).numpy()

    @torch.no_grad()
    def vae_encode(self, images):
        return self.encoder(_t(images)).numpy()

    @torch.no_grad()
    def vae_decode(self, latents):
        return self.decoder(_t(latents)).numpy()
