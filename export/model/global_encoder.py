"""The global-frame encoder ("LightImageEncoder", docs/algorithm.md §1.4).

Five stages of two bottleneck ResNet layers each, with the key names of the Hugging Face
transformers ResNet that the official model instantiates, then a valid 3x3 conv to 320 channels.
BatchNorm uses its running statistics (the model is always in eval mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ((4, 8, 1), (8, 16, 1), (16, 32, 2), (32, 64, 1), (64, 128, 1))  # (in, out, stride)
LAYERS_PER_STAGE = 2
BOTTLENECK_REDUCTION = 4
CONTEXT_DIM = 320


class ConvBN(nn.Module):
    """keys: convolution.weight, normalization.{weight,bias,running_mean,running_var,num_batches_tracked}."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.normalization = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x):
        x = self.normalization(self.convolution(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // BOTTLENECK_REDUCTION
        self.shortcut = ConvBN(cin, cout, 1, stride, relu=False) if (cin != cout or stride != 1) else None
        self.layer = nn.Sequential(
            ConvBN(cin, mid, 1),
            ConvBN(mid, mid, 3, stride),
            ConvBN(mid, cout, 1, relu=False),
        )

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.layer(x) + skip)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(
            Bottleneck(cin, cout, stride),
            *[Bottleneck(cout, cout, 1) for _ in range(LAYERS_PER_STAGE - 1)],
        )

    def forward(self, x):
        return self.layers(x)


class GlobalEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet_layer = nn.Sequential(*[Stage(i, o, s) for i, o, s in STAGES])
        self.convolution = nn.Conv2d(STAGES[-1][1], CONTEXT_DIM, 3)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """[g, 4, h, w] global latents -> [1, g*h'*w', 320] tokens, frame-major then row, column."""
        feats = self.convolution(self.resnet_layer(latents))
        g, c, h, w = feats.shape
        return feats.permute(0, 2, 3, 1).reshape(1, g * h * w, c)

    @staticmethod
    def tokens_per_frame(latent_size: int) -> int:
        side = (latent_size + 1) // 2 - 2  # stride-2 stage, then the valid 3x3 conv
        return side * side
