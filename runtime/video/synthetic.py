"""The sample clip the demo outpaints and the benchmarks time: made, not shipped, so the project needs no media
file of its own (the tests' clips are tests/media.py's)."""
from __future__ import annotations

import cv2
import numpy as np


def synthetic_clip(frames: int = 24, width: int = 160, height: int = 90) -> np.ndarray:
    """A panning gradient with moving shapes, RGB uint8 [T, H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(frames):
        img = np.stack([128 + 100 * np.sin((xx + 3 * t) / 23), 128 + 90 * np.cos(yy / 17 + t / 9),
                        np.full_like(xx, 60 + 4 * t)], -1).clip(0, 255).astype(np.uint8)
        cv2.circle(img, (20 + 5 * t, 45), 14, (250, 220, 40), -1)
        cv2.rectangle(img, (120 - 2 * t, 10), (150 - 2 * t, 40), (30, 90, 230), -1)
        out.append(img)
    return np.stack(out)
