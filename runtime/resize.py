"""Antialiased bilinear resizing, as torch's ``F.interpolate(mode="bilinear", antialias=True)`` does it.

The official inference stretches the 16 global frames to S x S with torchvision's antialiased
Resize on float tensors; the model saw those inputs, so the runtime reproduces them without torch.
Separable triangle filter whose support widens with the downscale factor (PIL's and torch's scheme).

Each output value is accumulated tap by tap, in input order, in float32 (as torch's kernel does), with
elementwise NumPy only: no BLAS, whose blocking (and so the rounding) changes with the thread count. The
same frames give the same bits under any OMP_NUM_THREADS, in a container, a Ray worker or a service.

A video frame (``resize_frame_antialias``) is resized along the first axis of a contiguous copy, so a tap
gathers whole rows (a few kilobytes each) instead of single floats: the same arithmetic, 4-8x faster at 1080p.
"""
from __future__ import annotations

import cv2
import numpy as np


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(index [out, K], weight [out, K] float32): the input pixels and normalised triangle-filter weights of
    each output pixel (align_corners=False), in input order; unused taps have weight 0 on a valid index."""
    scale = in_size / out_size
    support = max(scale, 1.0)  # bilinear: radius 1 input pixel, stretched when downscaling
    spans = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = (np.arange(lo, hi) - center + 0.5) / support
        k = np.clip(1.0 - np.abs(x), 0.0, None)
        total = k.sum()
        spans.append((lo, k / total if total > 0 else np.zeros_like(k)))
    width = max(len(k) for _, k in spans)
    index = np.zeros((out_size, width), np.intp)
    weight = np.zeros((out_size, width), np.float32)
    for i, (lo, k) in enumerate(spans):
        index[i] = np.minimum(lo + np.arange(width), in_size - 1)
        weight[i, :len(k)] = k
    return index, weight


def _resize_axis(images: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weight = _taps(images.shape[axis], out_size)
    shape = [1] * images.ndim
    shape[axis] = out_size
    out = np.take(images, index[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for k in range(1, index.shape[1]):
        out += np.take(images, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def resize_antialias(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [..., C, H, W] -> [..., C, height, width]."""
    images = np.asarray(images, dtype=np.float32)
    return _resize_axis(_resize_axis(images, width, images.ndim - 1), height, images.ndim - 2)


def resize_frame_antialias(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> its values / 255, resized: float32 [3, height, width]. The same bits as
    ``resize_antialias(rgb.transpose(2, 0, 1) / 255)``, without a float copy in the frame's own layout."""
    by_column = cv2.transpose(np.ascontiguousarray(rgb)).astype(np.float32) / np.float32(255.0)  # [W, H, 3]
    columns = _resize_axis(by_column, width, 0)  # [width, H, 3]
    rows = _resize_axis(np.ascontiguousarray(columns.transpose(1, 0, 2)), height, 0)  # [height, width, 3]
    return np.ascontiguousarray(rows.transpose(2, 0, 1))
