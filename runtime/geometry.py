"""Canvas geometry and the noise-init image, as the official inference computes them (docs/algorithm.md §2).

Pure numpy + OpenCV. The S x S canvas holds the source frame letterboxed so that the canvas of the
target ratio(s), scaled to longer side S, is centred in it; the pixel mask is 1 where content is
missing. The one deliberate difference: the canvas is always S x S, also for sources smaller than S
(the official code then uses a smaller, possibly fractional size and crashes; docs/algorithm.md §2.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from m3ddm.errors import InputError

INPAINT_RADIUS = 5


def parse_ratio(text: str) -> float:
    """'9:16' -> 0.5625 (width / height). Raises ValueError with a readable message."""
    try:
        a, b = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise InputError(f"ratio {text!r} is not of the form W:H (e.g. 9:16)") from None
    if not (a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)):
        raise InputError(f"ratio {text!r} must have two positive numbers")
    return a / b


def target_canvas(height: int, width: int, ratios) -> tuple[float, float]:
    """(canvas height, canvas width) in source pixels that holds every target ratio (floats)."""
    cur = width / height
    max_h, max_w = float(height), float(width)
    for r in ratios:
        r = parse_ratio(r) if isinstance(r, str) else float(r)
        if cur < r:
            max_w = max(max_w, r * height)
        else:
            max_h = max(max_h, width / r)
    return max_h, max_w


@dataclass(frozen=True)
class Letterbox:
    """Where the source frame sits inside the S x S canvas."""

    size: int  # S
    top: int
    left: int
    height: int  # of the resized content
    width: int

    @property
    def mask(self) -> np.ndarray:
        """uint8 [S, S], 1 where content is missing."""
        m = np.ones((self.size, self.size), np.uint8)
        m[self.top:self.top + self.height, self.left:self.left + self.width] = 0
        return m


def letterbox_geometry(height: int, width: int, ratios, size: int) -> Letterbox:
    """Official arithmetic: int(S / max_dim * w) evaluated in that order, clipped to S (docs/algorithm.md §2.1)."""
    canvas_h, canvas_w = target_canvas(height, width, ratios)
    max_dim = max(canvas_h, canvas_w)
    rw = min(int(size / max_dim * width), size)
    rh = min(int(size / max_dim * height), size)
    if rw < 1 or rh < 1:
        raise InputError(f"a {width}x{height} frame leaves no content on a {size}px canvas for ratios {list(ratios)}")
    return Letterbox(size, (size - rh) // 2, (size - rw) // 2, rh, rw)


def letterbox_frame(frame: np.ndarray, box: Letterbox) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [S, S, 3] canvas, black outside the content.

    Resized in float32 with bilinear interpolation, then truncated to uint8, as the official code does.
    """
    resized = cv2.resize(frame.astype(np.float32), (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((box.size, box.size, 3), np.uint8)
    canvas[box.top:box.top + box.height, box.left:box.left + box.width] = resized.astype(np.uint8)
    return canvas


def inpaint_init(canvas: np.ndarray, box: Letterbox) -> np.ndarray:
    """The noise-init image: OpenCV TELEA inpaint (radius 5) of the missing border."""
    return cv2.inpaint(canvas, box.mask, INPAINT_RADIUS, cv2.INPAINT_TELEA)


def canvas_and_init(frame: np.ndarray, box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """A frame's letterboxed canvas and its TELEA noise-init image, computed once per frame."""
    canvas = letterbox_frame(frame, box)
    return canvas, inpaint_init(canvas, box)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    x = np.moveaxis(images, -1, -3).astype(np.float32) / 255.0
    return (x - 0.5) / 0.5


def global_frame_indices(num_frames: int, count: int) -> np.ndarray:
    """linspace(0, T-1, count) truncated to integers (docs/algorithm.md §2.4)."""
    return np.linspace(0, num_frames - 1, count).astype(np.int64)


def padding_geometry(height: int, width: int, pads, size: int) -> Letterbox:
    """Explicit padding (top, right, bottom, left) in source pixels: the padded canvas, scaled so its
    longer side is S, centred in the S x S square; the content sits at its offset inside it."""
    top, right, bottom, left = (int(p) for p in pads)
    if min(top, right, bottom, left) < 0:
        raise InputError("padding must not be negative")
    if top + right + bottom + left == 0:
        raise InputError("padding adds nothing to outpaint")
    canvas_h, canvas_w = height + top + bottom, width + left + right
    k = size / max(canvas_h, canvas_w)
    rw, rh = min(int(k * width), size), min(int(k * height), size)
    if rw < 1 or rh < 1:
        raise InputError(f"a {width}x{height} frame leaves no content on a {size}px canvas with padding {list(pads)}")
    ox = (size - canvas_w * k) / 2 + left * k
    oy = (size - canvas_h * k) / 2 + top * k
    return Letterbox(size, min(int(round(oy)), size - rh), min(int(round(ox)), size - rw), rh, rw)


@dataclass(frozen=True)
class Target:
    """One output video: its size in source pixels and where the source frame sits in it."""

    label: str  # "9x16", or "pad" for explicit padding
    height: int
    width: int
    top: int
    left: int


def ratio_target(height: int, width: int, ratio: str) -> Target:
    canvas_h, canvas_w = target_canvas(height, width, [ratio])
    out_h, out_w = int(round(canvas_h)), int(round(canvas_w))
    out_h, out_w = max(out_h, height), max(out_w, width)
    return Target(str(ratio).replace(":", "x"), out_h, out_w, (out_h - height) // 2, (out_w - width) // 2)


def padding_target(height: int, width: int, pads) -> Target:
    top, right, bottom, left = (int(p) for p in pads)
    return Target("pad", height + top + bottom, width + left + right, top, left)


def canvas_to_target(box: Letterbox, height: int, width: int, target: Target) -> np.ndarray:
    """2x3 affine map from target pixels to S-canvas pixels that lays the canvas's content box exactly
    over the source frame's place in the target (pixel centres, OpenCV's convention)."""
    sx, sy = box.width / width, box.height / height
    # canvas x + 0.5 = box.left + (target x + 0.5 - target.left) * sx
    return np.array([[sx, 0.0, box.left + (0.5 - target.left) * sx - 0.5],
                     [0.0, sy, box.top + (0.5 - target.top) * sy - 0.5]], dtype=np.float64)
