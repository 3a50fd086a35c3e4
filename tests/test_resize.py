"""The global frames' antialiased resize: the frame path (a transposed copy, gathering whole rows) gives the
bits of the generic one, and both stay within float rounding of torch's antialiased bilinear interpolate."""
import numpy as np
import pytest

from runtime.resize import resize_antialias, resize_frame_antialias

SHAPES = [(1080, 1920, 256), (90, 160, 256), (481, 271, 64), (7, 5, 32), (256, 256, 256), (300, 64, 48), (1, 1, 16),
          (1, 7, 16), (2, 900, 32)]


@pytest.mark.parametrize("height,width,size", SHAPES)
def test_the_frame_path_gives_the_bits_of_the_generic_resize(height, width, size):
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    generic = resize_antialias(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0, size, size)
    fast = resize_frame_antialias(rgb, size, size)
    assert fast.shape == (3, size, size) and fast.dtype == np.float32 and fast.flags.c_contiguous
    assert np.array_equal(fast, generic)


def test_a_non_square_target_and_a_strided_frame():
    rgb = np.random.default_rng(3).integers(0, 256, (200, 330, 3), dtype=np.uint8)
    view = rgb[::2, 1::3]  # not contiguous: decoded frames rotated by a view would be
    generic = resize_antialias(view.transpose(2, 0, 1).astype(np.float32) / 255.0, 40, 72)
    assert np.array_equal(resize_frame_antialias(view, 40, 72), generic)


@pytest.mark.parametrize("height,width,size", SHAPES[:4])
def test_the_resize_follows_torch_antialiased_bilinear(height, width, size):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[export]')")
    rgb = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255.0
    ref = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False)[0].numpy()
    # not bit for bit: torch computes its weights its own way; the two differ by float rounding only
    np.testing.assert_allclose(resize_frame_antialias(rgb, size, size), ref, rtol=0, atol=5e-7)
