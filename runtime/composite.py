"""The output frame at the source resolution: the generated S x S canvas mapped onto the target, the source's
pixels pasted unchanged, a feathered seam (docs/algorithm.md §6); and the optional output scaling."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from runtime import geometry


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoder output in about [-1, 1], [n, 3, S, S] -> RGB uint8 [n, S, S, 3] (round(255 v), v clamped)."""
    v = np.clip(images / 2 + 0.5, 0.0, 1.0)
    return np.round(v * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def composite(source: np.ndarray, generated: np.ndarray, box: geometry.Letterbox, target: geometry.Target,
              feather: float | None = None) -> np.ndarray:
    """One output frame at the source resolution: the generated S x S canvas mapped onto the target,
    the source pixels pasted unchanged, and the generated border blended over ``feather`` pixels
    towards the source's edge colours so no seam shows. Only the border strips are warped and only
    the seam band is blended (at 1080p the output has 6.5 M pixels, 2 M of them the source's)."""
    height, width = source.shape[:2]
    out = np.empty((target.height, target.width, 3), np.uint8)
    edge = None
    for strip in seam_plan(box, height, width, target, feather):
        y0, y1, x0, x1 = strip.region
        region = cv2.warpAffine(generated, strip.warp, (x1 - x0, y1 - y0),
                                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        if strip.alpha is not None:
            if edge is None:
                f = strip.pad
                edge = cv2.copyMakeBorder(source, f, f, f, f, cv2.BORDER_REPLICATE)
            by0, by1, bx0, bx1 = strip.band  # the band inside the strip, where 0 < alpha < 1
            ey, ex = y0 + by0 - (target.top - strip.pad), x0 + bx0 - (target.left - strip.pad)
            near = edge[ey:ey + by1 - by0, ex:ex + bx1 - bx0]
            band = region[by0:by1, bx0:bx1].astype(np.float32)
            region[by0:by1, bx0:bx1] = (strip.alpha * band + (1 - strip.alpha) * near + 0.5).astype(np.uint8)
        out[y0:y1, x0:x1] = region
    out[target.top:target.top + height, target.left:target.left + width] = source
    return out


@dataclass(slots=True)
class Strip:
    """One border strip of the output: its region, its warp from the canvas, the seam band and its weights."""
    region: tuple  # (y0, y1, x0, x1) in output pixels
    warp: np.ndarray  # 2x3 map from strip-local output pixels to canvas pixels
    pad: int  # the feather's reach in whole pixels (the source's edge is padded by it)
    band: tuple | None = None  # (y0, y1, x0, x1) inside the strip where 0 < alpha < 1
    alpha: np.ndarray | None = None  # [band h, band w, 1] weight of the generated pixels


@lru_cache(maxsize=16)
def seam_plan(box, height, width, target, feather) -> tuple:
    """What every frame of one (geometry, target) shares: the border strips around the source, each
    with its warp from the S x S canvas, and the seam band's blend weights."""
    m = geometry.canvas_to_target(box, height, width, target)
    feather = max(1.0, 0.01 * min(height, width)) if feather is None else float(feather)
    f = int(np.ceil(feather)) if feather > 0 else 0
    top, left, bottom, right = target.top, target.left, target.top + height, target.left + width
    regions = [(0, top, 0, target.width), (bottom, target.height, 0, target.width),
               (top, bottom, 0, left), (top, bottom, right, target.width)]
    strips = []
    for y0, y1, x0, x1 in regions:
        if y1 <= y0 or x1 <= x0:
            continue
        warp = m.copy()
        warp[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # strip-local output pixels
        s = Strip((y0, y1, x0, x1), warp, f)
        if f:
            ys = np.arange(y0, y1)[:, None]
            xs = np.arange(x0, x1)[None, :]
            dy = np.maximum(np.maximum(top - ys, ys - (bottom - 1)), 0)
            dx = np.maximum(np.maximum(left - xs, xs - (right - 1)), 0)
            alpha = np.clip(np.hypot(dx, dy) / feather, 0.0, 1.0)
            rows, cols = np.nonzero((alpha < 1).any(axis=1))[0], np.nonzero((alpha < 1).any(axis=0))[0]
            if len(rows) and len(cols):
                s.band = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
                s.alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1, None].astype(np.float32)
        strips.append(s)
    return tuple(strips)


def scale_output(frame: np.ndarray, output_height: int | None) -> np.ndarray:
    """The optional output scaling: to ``output_height`` rows, width in proportion."""
    if not output_height or output_height == frame.shape[0]:
        return frame
    h = int(output_height)
    w = max(2, int(round(frame.shape[1] * h / frame.shape[0])))
    interp = cv2.INTER_AREA if h < frame.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(frame, (w, h), interpolation=interp)


def output_size(target: geometry.Target, output_height: int | None) -> list:
    """[width, height] of the encoded video of ``target``: scaled as ``scale_output``, even (yuv420p)."""
    w, h = target.width, target.height
    if output_height and output_height != h:
        w, h = max(2, int(round(w * output_height / h))), int(output_height)
    return [w - w % 2, h - h % 2]


def finish(source: np.ndarray, generated: np.ndarray, box, targets, feather, output_height) -> list:
    """Every output frame of one source frame: [(label, RGB uint8)], composited and scaled."""
    return [(t.label, scale_output(composite(source, generated, box, t, feather), output_height)) for t in targets]
