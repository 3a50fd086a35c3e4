"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), written here in plain torch and loaded from the two files users provide:

- ``alexnet-owt-7be5be79.pth``: torchvision's ImageNet AlexNet state dict (``features.{0,3,6,8,10}`` are read;
  the ``classifier.*`` keys are ignored),
- ``alex.pth``: the LPIPS v0.1 linear heads as shipped in the ``lpips`` package (``lin{0..4}.model.1.weight``,
  shapes [1, C, 1, 1] for C = 64, 192, 384, 256, 256).

The distance between two images in [-1, 1]: shift and scale each channel (the package's ScalingLayer), run
AlexNet up to relu1 .. relu5, scale each feature vector to unit length over channels (eps 1e-10 added to the
norm), square the difference, weight the channels with the 1x1 linear head (no bias), average over space and sum
the five layers. Videos are scored frame by frame at their own resolution and the per-frame distances averaged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.metrics import MetricError, load_weights

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LIN_FILE = "alex.pth"
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision's alexnet.features: index of each convolution, its weight shape, and its stride and padding.
CONVS = {0: ((64, 3, 11, 11), 4, 2), 3: ((192, 64, 5, 5), 1, 2), 6: ((384, 192, 3, 3), 1, 1),
         8: ((256, 384, 3, 3), 1, 1), 10: ((256, 256, 3, 3), 1, 1)}
# The feature slices end after these indices of alexnet.features: relu1 (1), relu2 (4), relu3 (7), relu4 (9),
# relu5 (11). Max pools sit at 2 and 5 (kernel 3, stride 2); the last one (12) is not used by LPIPS.
TAPS = (1, 4, 7, 9, 11)
MIN_SIDE = 31  # smallest frame side that survives conv1 and the two max pools before relu3


def alexnet_keys() -> dict:
    keys: dict[str, tuple[int, ...]] = {}
    for i, (shape, _, _) in CONVS.items():
        keys[f"features.{i}.weight"] = shape
        keys[f"features.{i}.bias"] = (shape[0],)
    return keys


def lin_keys() -> dict:
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(CHANNELS)}


class LPIPS(nn.Module):
    """LPIPS v0.1 / AlexNet. ``forward(x0, x1)``: images [N, 3, H, W] in [-1, 1]; returns [N] distances."""

    shift: torch.Tensor  # buffers (register_buffer), typed for the checker
    scale: torch.Tensor

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(TAPS[-1] + 1):
            if i in CONVS:
                (cout, cin, k, _), stride, pad = CONVS[i]
                layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=pad))
            elif i in (2, 5):
                layers.append(nn.MaxPool2d(3, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)  # same indices as torchvision, so its keys load as they are
        self.lins = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1), requires_grad=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def load(self, alexnet_state: dict, lin_state: dict) -> LPIPS:
        self.features.load_state_dict({k[len("features."):]: v for k, v in alexnet_state.items()
                                       if k.startswith("features.")}, strict=True)
        for k, lin in enumerate(self.lins):
            lin.data.copy_(lin_state[f"lin{k}.model.1.weight"])
        return self

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five AlexNet activations (relu1 .. relu5) of images already shifted and scaled."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if x0.shape != x1.shape:
            raise MetricError(f"LPIPS inputs differ in shape: {list(x0.shape)} vs {list(x1.shape)}")
        n = x0.shape[0]
        both = (torch.cat([x0, x1]) - self.shift) / self.scale  # one trunk pass for both images
        total = torch.zeros(n, dtype=x0.dtype, device=x0.device)
        for feat, lin in zip(self.taps(both), self.lins):
            unit = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (unit[:n] - unit[n:]).pow(2)
            total = total + F.conv2d(diff, lin).mean(dim=(1, 2, 3))
        return total


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(folder=None, *, alexnet=None, lin=None, device=None) -> LPIPS:
    """The LPIPS model from ``folder`` (holding both files) or from the two paths, in eval mode on ``device``
    (CUDA when available)."""
    if folder is None and not (alexnet and lin):
        raise MetricError(f"LPIPS needs a folder holding {ALEXNET_FILE} and {LIN_FILE}, or both paths")
    alexnet = Path(alexnet) if alexnet else Path(folder) / ALEXNET_FILE
    lin = Path(lin) if lin else Path(folder) / LIN_FILE
    trunk = load_weights(alexnet, alexnet_keys(), ignore=("classifier.",))
    heads = load_weights(lin, lin_keys())
    return LPIPS().load(trunk, heads).to(device or default_device())


def _to_input(frames: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def frame_distances(model: LPIPS, a, b, batch: int = 8) -> np.ndarray:
    """LPIPS of each frame pair of two RGB uint8 videos [T, H, W, 3] (at their own resolution), as [T]."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise MetricError(f"LPIPS needs RGB uint8 frames [T, H, W, 3], not {a.dtype} {list(a.shape)}")
    if a.shape != b.shape or b.dtype != np.uint8:
        raise MetricError(f"videos differ in shape: {list(a.shape)} vs {list(b.shape)}")
    if min(a.shape[1:3]) < MIN_SIDE:
        raise MetricError(f"LPIPS (AlexNet) needs frames of at least {MIN_SIDE}x{MIN_SIDE}, not "
                          f"{a.shape[2]}x{a.shape[1]}")
    device = next(model.parameters()).device
    out = [model(_to_input(a[i:i + batch], device), _to_input(b[i:i + batch], device)).double().cpu()
           for i in range(0, len(a), max(1, batch))]
    return torch.cat(out).numpy()


def lpips_video(model: LPIPS, a, b, batch: int = 8) -> float:
    """Mean LPIPS over the frames of two RGB uint8 videos [T, H, W, 3]."""
    return float(frame_distances(model, a, b, batch).mean())
