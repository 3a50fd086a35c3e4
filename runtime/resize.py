"""Antialiased bilinear resizing, as torch's ``F.interpolate(mode="bilinear", antialias=True)`` does it.

The official inference stretches the 16 global frames to S x S with torchvision's antialiased
Resize on float tensors; the model saw those inputs, so the runtime reproduces them without torch.
Separable triangle filter whose support widens with the downscale factor (PIL's and torch's scheme).
"""
from __future__ import annotations

import numpy as np


def _weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of normalised triangle-filter weights (align_corners=False)."""
    scale = in_size / out_size
    support = max(scale, 1.0)  # bilinear: radius 1 input pixel, stretched when downscaling
    w = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        x = (j - center + 0.5) / support
        k = np.clip(1.0 - np.abs(x), 0.0, None)
        total = k.sum()
        if total > 0:
            w[i, lo:hi] = k / total
    return w.astype(np.float32)


def resize_antialias(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [..., C, H, W] -> [..., C, height, width]."""
    images = np.asarray(images, dtype=np.float32)
    wy = _weights(images.shape[-2], height)
    wx = _weights(images.shape[-1], width)
    out = np.einsum("...hw,xw->...hx", images, wx, optimize=True)
    return np.einsum("yh,...hx->...yx", wy, out, optimize=True).astype(np.float32)
