"""Quality metrics on cases whose answer is known by hand."""
import numpy as np
import pytest

from benchmarks import metrics


def video(seed=0, t=4, h=48, w=64):
    rng = np.random.default_rng(seed)
    import cv2
    base = rng.integers(0, 256, (h // 4, w // 4 + t, 3)).astype(np.float32)
    wide = cv2.resize(base, ((w // 4 + t) * 4, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return np.stack([wide[:, 4 * i:4 * i + w] for i in range(t)])


def test_identical_videos():
    v = video()
    assert metrics.mse(v, v) == 0 and metrics.psnr(v, v) == float("inf")
    assert metrics.ssim(v, v) == pytest.approx(1.0)


def test_known_offset():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + 10
    assert metrics.mse(a, b) == pytest.approx((10 / 255) ** 2)
    assert metrics.psnr(a, b) == pytest.approx(20 * np.log10(255 / 10))
    mask = np.zeros((16, 16), bool)
    mask[:, :4] = True
    c = a.copy()
    c[:, :, 4:] = 0  # differs only outside the mask
    assert metrics.mse(a, c, mask) == 0


def test_ssim_drops_with_noise_and_is_symmetric():
    v = video(1)
    noisy = np.clip(v.astype(int) + np.random.default_rng(2).integers(-40, 41, v.shape), 0, 255).astype(np.uint8)
    s = metrics.ssim(v, noisy)
    assert 0 < s < 0.9 and s == pytest.approx(metrics.ssim(noisy, v))


def test_temporal_consistency_follows_motion_not_change():
    """A known shift (4 px a frame) is coherent motion: warping by the flow explains it. Fresh noise is not."""
    panning = video(3, t=5)
    flicker = np.stack([video(10 + i, t=1)[0] for i in range(5)])
    still = np.repeat(panning[:1], 5, axis=0)
    assert metrics.temporal_consistency(still) == 0
    tc_pan, tc_flicker = metrics.temporal_consistency(panning), metrics.temporal_consistency(flicker)
    naive_pan = np.abs(np.diff(panning.astype(float), axis=0)).mean() / 255
    assert tc_pan < naive_pan / 3 and tc_pan < tc_flicker / 3


def test_learned_metrics_name_the_files_they_need(tmp_path):
    with pytest.raises(metrics.MetricError, match="alexnet-owt-7be5be79.pth"):
        metrics.require_weights("lpips", None)
    with pytest.raises(metrics.MetricError, match="i3d_pretrained_400.pt"):
        metrics.require_weights("fvd", tmp_path)


class _Perfect:
    """Stands in for the Outpainter: returns the original, checking that the crop it got is the original's band."""

    def __init__(self, original):
        self.original = original

    def outpaint(self, kept, fps, pad, **kwargs):
        top, right, bottom, left = pad
        h, w = self.original.shape[1:3]
        np.testing.assert_array_equal(kept, self.original[:, top:h - bottom, left:w - right])

        class R:
            frames = self.original
        return R()


@pytest.mark.parametrize("mode,ratio", [("horizontal", 0.25), ("horizontal", 0.666), ("vertical", 0.5)])
def test_protocol_crops_and_scores_against_the_original(mode, ratio):
    from benchmarks.quality import crop_for, score_video
    v = video(4, t=3)
    top, right, bottom, left = crop_for(48, 64, mode, ratio)
    removed = (left + right) / 64 if mode == "horizontal" else (top + bottom) / 48
    assert abs(removed - ratio) < 0.07
    s = score_video(_Perfect(v), v, 24, mode, ratio)
    assert s["psnr"] == float("inf") and s["ssim"] == pytest.approx(1.0) and s["mse"] == 0


def test_quality_cli_smoke(engines, tmp_path):
    import json
    import subprocess
    import sys

    import media
    from conftest import ROOT
    videos = tmp_path / "videos"
    videos.mkdir()
    media.write(videos / "wide.mp4", media.scene(10, 160, 90, seed=1), audio=True)
    media.write(videos / "camera.mp4", media.scene(12, 128, 96, seed=2), fps=20, pix_fmt="yuv444p")
    out = tmp_path / "scores.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--videos", str(videos), "--engines",
                          str(engines), "--steps", "2", "--max-frames", "8", "--mask-ratio", "0.666",
                          "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert set(report["videos"]) == {"wide.mp4", "camera.mp4"}
    for s in report["videos"].values():
        assert 0 < s["ssim"] < 1 and np.isfinite(s["psnr"]) and s["frames"] == 8
    res = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--videos", str(videos), "--engines",
                          str(engines), "--metrics", "psnr,lpips"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "alexnet-owt-7be5be79.pth" in res.stderr
