"""An oracle denoiser that knows a video's ground truth must let the whole pipeline reconstruct it.

The video is a pan/zoom over a photo-like still (tests/media.py); each frame's ground-truth canvas is a 64x64 crop,
and the source video is that crop's central 64x36 band, so the outpainted borders have a known truth. The
"VAE" is analytic (8x8 mean, then a fixed 3->4 linear map; decode inverts it) and the "UNet" returns
the eps that points from its input to the ground-truth latents of the frames it recognises in the
window, so any wrong window, guide, frame order, geometry or storage shows up as a wrong frame.
"""
import cv2
import numpy as np
import pytest

from runtime import Outpainter, guidance
from runtime.engines.base import Backend
from runtime.plan import official_plan
from runtime.samplers import alphas_cumprod

S, LAT, TOP, BAND = 64, 8, 14, 36
A = np.array([[0.5, 0.3, 0.1], [-0.2, 0.4, 0.3], [0.1, -0.3, 0.6], [0.3, 0.3, -0.4]], np.float32)
B = np.array([0.1, -0.2, 0.05, 0.0], np.float32)
A_PINV = np.linalg.pinv(A).astype(np.float32)


def vae_encode(images):  # [n, 3, S, S] in [-1, 1] -> [n, 4, S/8, S/8]
    n = images.shape[0]
    pooled = images.reshape(n, 3, LAT, 8, LAT, 8).mean(axis=(3, 5))
    return np.einsum("kc,nchw->nkhw", A, pooled) + B[None, :, None, None]


def vae_decode(latents):
    rgb = np.einsum("ck,nkhw->nchw", A_PINV, latents - B[None, :, None, None])
    return rgb.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)


class OracleBackend(Backend):
    name = "oracle"
    precision = "fp32"

    def __init__(self, gt_latents, padded_latents):
        self.gt, self.padded = gt_latents, padded_latents
        self.ac = alphas_cumprod().astype(np.float64)
        self.windows_seen = []  # per call and window: [(frame at position, is_guide)]

    @property
    def model_size(self):
        return S

    def vae_encode(self, images):
        return vae_encode(images)

    def vae_decode(self, latents):
        return vae_decode(latents)

    def encode_global(self, global_latents):
        return np.zeros((1, 16 * 4, 320), np.float32)

    @staticmethod
    def _nearest(table, latent):
        return int(np.argmin(((table - latent[None]) ** 2).reshape(len(table), -1).sum(1)))

    def unet(self, sample, timestep, fps, context):
        n = sample.shape[0]
        w = n // guidance.NUM_BRANCHES
        local_row = [i for i, b in enumerate(guidance.BRANCHES) if b.local][0]
        x = sample[:, :4]
        eps = np.empty_like(x)
        a = self.ac[int(timestep[0])]
        for k in range(w):
            row = local_row * w + k
            window = []
            for p in range(sample.shape[2]):
                ctx, mask = sample[row, 4:8, p], sample[row, 8, p]
                guide = not mask.any()
                frame = self._nearest(self.gt if guide else self.padded, ctx)
                window.append((frame, guide))
                target = self.gt[frame]
                for b in range(guidance.NUM_BRANCHES):
                    r = b * w + k
                    eps[r, :, p] = (x[r, :, p] - np.sqrt(a) * target) / np.sqrt(1 - a)
            self.windows_seen.append(window)
        return eps.astype(np.float32)


def pan_zoom_video(photo, frames):
    """Ground-truth 64x64 canvases moving and zooming over the photo, and the 64x36 source band of each."""
    h, w = photo.shape[:2]
    canvases = []
    for t in range(frames):
        side = int(min(h, w) * (0.5 - 0.002 * t))
        y0 = int((h - side) * (0.3 + 0.004 * t))
        x0 = int((w - side) * (0.2 + 0.006 * t))
        canvases.append(cv2.resize(photo[y0:y0 + side, x0:x0 + side], (S, S), interpolation=cv2.INTER_AREA))
    canvases = np.stack(canvases)
    return canvases, np.ascontiguousarray(canvases[:, TOP:TOP + BAND])


@pytest.fixture(scope="module")
def photo():
    import media
    return media.photo(1280, 720, seed=3)


def unit(images):
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.5) / 0.5


def psnr(a, b, peak):
    return 10 * np.log10(peak ** 2 / np.mean((a - b) ** 2))


@pytest.mark.parametrize("frames,levels", [(40, 1), (100, 3)])
def test_pipeline_reconstructs_ground_truth(photo, frames, levels):
    canvases, source = pan_zoom_video(photo, frames)
    gt = vae_encode(unit(canvases))
    letterboxed = np.zeros_like(canvases)
    letterboxed[:, TOP:TOP + BAND] = source
    oracle = OracleBackend(gt, vae_encode(unit(letterboxed)))
    result = Outpainter(engine=oracle).outpaint(source, 30.0, ratio="1:1", feather=0,
                                                noise=np.zeros((4, 16, LAT, LAT), np.float32))
    plan = official_plan(frames)
    assert len(plan) == levels and len(result.plan) == levels

    # Every engine call saw the plan's windows: the right frames at the right positions, guides where
    # (and only where) an earlier window generated the frame, carrying that frame's latents.
    expected = [[(f, p in w.guides) for p, f in enumerate(w.frames)] for level in plan for w in level]
    seen = []
    for window in oracle.windows_seen:  # first-seen order; a batch's windows repeat every step
        if window not in seen:
            seen.append(window)
    assert seen == expected

    # Latents: the generated border equals the truth (the last PNDM step lands on alpha_0, so not bit-exact).
    peak = gt.max() - gt.min()
    assert psnr(result.latents, gt, peak) >= 40

    # Pixels: the source band untouched, the border the decoded truth.
    assert result.frames.shape == (frames, S, S, 3)
    np.testing.assert_array_equal(result.frames[:, TOP:TOP + BAND], source)
    truth = np.clip(np.round((vae_decode(gt) / 2 + 0.5) * 255), 0, 255).transpose(0, 2, 3, 1)
    border = np.ones(S, bool)
    border[TOP:TOP + BAND] = False
    assert psnr(result.frames[:, border].astype(np.float64), truth[:, border].astype(np.float64), 255.0) >= 40
