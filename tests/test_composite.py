"""Compositing: the strip-wise fast path equals the plain full-frame definition, and keeps the source exact."""
import cv2
import numpy as np
import pytest

from runtime import geometry
from runtime.composite import composite


def full_frame(source, generated, box, target, feather=None):
    """The definition: warp the whole canvas, blend every pixel by its distance from the source, paste it."""
    height, width = source.shape[:2]
    m = geometry.canvas_to_target(box, height, width, target)
    out = cv2.warpAffine(generated, m, (target.width, target.height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    feather = max(1.0, 0.01 * min(height, width)) if feather is None else float(feather)
    top, left = target.top, target.left
    if feather > 0:
        ys, xs = np.arange(target.height)[:, None], np.arange(target.width)[None, :]
        dy = np.maximum(np.maximum(top - ys, ys - (top + height - 1)), 0)
        dx = np.maximum(np.maximum(left - xs, xs - (left + width - 1)), 0)
        alpha = np.clip(np.hypot(dx, dy) / feather, 0.0, 1.0)[..., None]
        edge = cv2.copyMakeBorder(source, top, target.height - height - top, left, target.width - width - left,
                                  cv2.BORDER_REPLICATE)
        out = (alpha * out + (1 - alpha) * edge + 0.5).astype(np.uint8)
    out[top:top + height, left:left + width] = source
    return out


@pytest.mark.parametrize("h,w,ratio,pad", [(720, 1280, "9:16", None), (240, 320, "1:1", None), (400, 200, "16:9", None),
                                           (90, 160, None, (10, 0, 30, 20)), (55, 97, "4:3", None)])
@pytest.mark.parametrize("feather", [None, 0, 7.5])
def test_fast_composite_equals_its_definition(h, w, ratio, pad, feather):
    rng = np.random.default_rng(h + w)
    source = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    if pad:
        box, target = geometry.padding_geometry(h, w, pad, 256), geometry.padding_target(h, w, pad)
    else:
        box, target = geometry.letterbox_geometry(h, w, [ratio], 256), geometry.ratio_target(h, w, ratio)
    got = composite(source, generated, box, target, feather)
    want = full_frame(source, generated, box, target, feather)
    assert got.shape == (target.height, target.width, 3)
    assert np.abs(got.astype(int) - want).max() <= 1  # float32 against float64 weights
    np.testing.assert_array_equal(got[target.top:target.top + h, target.left:target.left + w], source)


def test_generated_border_lands_where_the_canvas_put_it():
    """A canvas whose border is a known gradient maps onto the target in the same place, at source scale."""
    h, w = 90, 160
    box = geometry.letterbox_geometry(h, w, ["9:16"], 256)
    target = geometry.ratio_target(h, w, "9:16")
    yy = np.repeat(np.arange(256, dtype=np.float32)[:, None], 256, 1)
    canvas = np.stack([yy, yy, yy], -1).astype(np.uint8)  # value = canvas row
    out = composite(np.zeros((h, w, 3), np.uint8), canvas, box, target, feather=0)
    # Output row y maps to canvas row box.top + (y + 0.5 - target.top) * box.height / h - 0.5.
    for y in (5, 40, target.height - 10):
        if target.top <= y < target.top + h:
            continue
        expect = box.top + (y + 0.5 - target.top) * box.height / h - 0.5
        assert abs(float(out[y, target.width // 2, 0]) - np.clip(expect, 0, 255)) <= 1.0
