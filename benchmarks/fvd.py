"""FVD (Unterthiner et al. 2018): the Fréchet distance between I3D features of two sets of videos.

The network is the Inception-v1 I3D of Carreira & Zisserman in the layout of piergiaj/pytorch-i3d, so that the
Kinetics-400 state dict ``i3d_pretrained_400.pt`` (the file VideoGPT and common_metrics_on_video_quality load)
loads key for key: ``Conv3d_1a_7x7``, ``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``, ``Mixed_3b`` .. ``Mixed_5c`` (branches
``b0``, ``b1a``, ``b1b``, ``b2a``, ``b2b``, ``b3b``) and ``logits``; each unit is ``conv3d`` (+ ``bn``). Convolutions
and max pools pad TensorFlow-style ('same', computed from the input size, more at the back when odd); batch norm
uses eps 1e-5, as in VideoGPT's copy of the network that FVD numbers in the literature come from (pytorch-i3d
itself says 1e-3; the weights are the same, the features differ slightly).

Convention (VideoGPT's ``get_fvd_logits``, which common_metrics_on_video_quality's "videogpt" FVD repeats):

- preprocessing: frames to [0, 1], bilinear resize (no antialiasing, align_corners=False) so that the shorter
  side is 224 and the other ceil(side * scale), centre crop 224x224, then to [-1, 1]. ``frame="full"`` resizes
  the whole frame to 224x224 instead, aspect not kept, as the original TensorFlow FVD does (its bilinear grid
  is TF1's, without half-pixel centres, so values differ slightly): a centre crop of a landscape video
  outpainted at its sides holds (almost) none of the generated pixels, so FVD on it compares the untouched
  source with itself (``region_share`` tells how much of the input is generated);
- clips: VideoGPT scores 16-frame samples, so a video is cut into consecutive 16-frame clips (a remainder shorter
  than 16 is dropped); ``clip_frames=None`` takes each whole video as one clip instead (the
  common_metrics_on_video_quality way for equal-length videos);
- features: the 400-d Kinetics logits (before softmax) after the network's 2x7x7 average pool, averaged over the
  remaining time steps, one vector per clip. This is what VideoGPT's I3D ``forward`` returns and what its FVD
  compares, so numbers computed here are comparable with those reported through that code. (The original
  TensorFlow FVD also uses the 400 logits, of a TF-Hub I3D whose input is 224x224 too.) The average pool's kernel
  is clipped to the feature map where that is smaller than 2x7x7 (inputs under 224 px or under 9 frames, which
  the original code cannot run): a global average there, identical at 224 px and 16 frames.

``frechet_distance``: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2) with unbiased (N - 1)
covariances, in float64 numpy; the trace of the square root comes from the eigenvalues of the symmetric product
(as TF-GAN and VideoGPT do), so no scipy is needed. It needs at least two feature vectors per set.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.metrics import MetricError, load_weights

I3D_FILE = "i3d_pretrained_400.pt"
SIZE = 224
CLIP_FRAMES = 16
FRAMES = ("crop", "full")
NUM_CLASSES = 400
BN_EPS = 1e-5
# Inception modules: name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels.
MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def _same_pad(sizes, kernel, stride) -> tuple:
    """F.pad argument for TF 'same' padding of a [N, C, T, H, W] input (last dim first, extra at the back)."""
    pad = []
    for s, k, st in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max(k - (st if s % st == 0 else s % st), 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


class Unit3D(nn.Module):
    """Conv3d (no bias unless told) with 'same' padding, then batch norm and ReLU where asked."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True, bias=False,
                 eps=BN_EPS):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=eps) if bn else None

    def forward(self, x):
        x = self.conv3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with 'same' padding (zeros, as the reference pads; every input here follows a ReLU)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class Mixed(nn.Module):
    def __init__(self, cin, widths, eps=BN_EPS):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = widths
        self.b0 = Unit3D(cin, c0, eps=eps)
        self.b1a = Unit3D(cin, c1a, eps=eps)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3), eps=eps)
        self.b2a = Unit3D(cin, c2a, eps=eps)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3), eps=eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3, eps=eps)

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """I3D (RGB) to the Kinetics logits. ``forward``: clips [N, 3, T, H, W] in [-1, 1] -> [N, classes],
    the logits averaged over time (and over space where the pooled map is larger than 1x1)."""

    def __init__(self, num_classes=NUM_CLASSES, eps=BN_EPS):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), eps=eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), eps=eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in MIXED[:2]:
            setattr(self, name, Mixed(cin, widths, eps))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name, cin, widths in MIXED[2:7]:
            setattr(self, name, Mixed(cin, widths, eps))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name, cin, widths in MIXED[7:]:
            setattr(self, name, Mixed(cin, widths, eps))
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def trunk(self, x):
        """Mixed_5c's output, [N, 1024, T', H', W'] (T' = T/8, H' = H/32 rounded up)."""
        for block in self.children():
            if block is self.logits:
                break
            x = block(x)
        return x

    def forward(self, x):
        x = self.trunk(x)
        kernel = tuple(min(k, s) for k, s in zip((2, 7, 7), x.shape[2:]))
        x = self.logits(F.avg_pool3d(x, kernel, stride=1))  # dropout: identity at inference
        return x.mean(dim=(2, 3, 4))


def state_dict_shapes(num_classes=NUM_CLASSES) -> dict:
    """Every key of the I3D state dict and its shape (batch-norm ``num_batches_tracked`` left out: files saved by
    older torch lack it, and it does not change the features)."""
    return {k: tuple(v.shape) for k, v in InceptionI3d(num_classes).state_dict().items()
            if not k.endswith("num_batches_tracked")}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path, device=None, eps=BN_EPS) -> InceptionI3d:
    """The I3D network with the weights in ``path`` (a file, or a folder holding ``i3d_pretrained_400.pt``), in
    eval mode on ``device`` (CUDA when available). Keys and shapes are checked first (one-line MetricError)."""
    path = Path(path)
    if path.is_dir():
        path = path / I3D_FILE
    model = InceptionI3d(eps=eps)
    expected = state_dict_shapes()
    counters = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    state = load_weights(path, expected, optional=counters)
    full = model.state_dict()
    full.update(state)  # num_batches_tracked keeps the model's own where the file has none
    model.load_state_dict(full, strict=True)
    return model.to(device or default_device())


def preprocess(frames, size: int = SIZE, frame: str = "crop") -> torch.Tensor:
    """RGB uint8 frames [T, H, W, 3] -> [3, T, size, size] in [-1, 1].

    ``frame="crop"``: VideoGPT's resize of the shorter side to ``size`` and centre crop (the default, comparable
    with numbers computed through VideoGPT's code). ``frame="full"``: the whole frame resized to size x size
    (aspect not kept), as the original TensorFlow FVD does; the choice for outpainting, whose generated borders
    a centre crop cuts away.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MetricError(f"frames must be [T, H, W, 3], not {list(frames.shape)}")
    if frame not in FRAMES:
        raise MetricError(f"FVD frame must be one of {', '.join(FRAMES)}, not {frame!r}")
    t, h, w = frames.shape[:3]
    scale = size / min(h, w)
    if frame == "full":
        target = (size, size)
    else:
        target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    out = []
    for i in range(0, t, 16):  # a chunk at a time: a float copy of a long 1080p video would not fit
        x = torch.from_numpy(np.ascontiguousarray(frames[i:i + 16])).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        out.append(x[:, :, top:top + size, left:left + size])
    return (torch.cat(out).permute(1, 0, 2, 3) * 2.0 - 1.0).contiguous()


def clip_count(frames: int, clip_frames: int | None = CLIP_FRAMES) -> int:
    """How many clips (feature vectors) a video of ``frames`` frames gives."""
    if not clip_frames:
        return 1 if frames > 0 else 0
    return frames // clip_frames


@torch.no_grad()
def features(model: InceptionI3d, frames, clip_frames: int | None = CLIP_FRAMES, size: int = SIZE,
             batch: int = 4, frame: str = "crop") -> np.ndarray:
    """I3D features of one RGB uint8 video [T, H, W, 3]: [clips, 400] float64, one row per clip of
    ``clip_frames`` consecutive frames (``None``/0: the whole video as one clip); ``frame`` as in preprocess."""
    frames = np.asarray(frames)
    n = clip_count(len(frames), clip_frames)
    length = clip_frames or len(frames)
    device = next(model.parameters()).device
    rows = []
    for i in range(0, n, max(1, batch)):
        clips = [preprocess(frames[c * length:(c + 1) * length], size, frame) for c in range(i, min(n, i + batch))]
        rows.append(model(torch.stack(clips).to(device)).double().cpu())
    return torch.cat(rows).numpy() if rows else np.zeros((0, model.logits.conv3d.out_channels))


def _psd_eigenvalues(m: np.ndarray, vectors: bool = False):
    """Eigenvalues (and vectors) of a symmetric PSD matrix, those under the numerical-rank tolerance set to 0: a
    covariance of N < D points has D - N + 1 zero eigenvalues that come out as +-1e-16 of the largest, whose
    square roots (1e-8 each, hundreds of them) would otherwise add up to a visible error."""
    m = (m + m.T) / 2
    values, vecs = np.linalg.eigh(m) if vectors else (np.linalg.eigvalsh(m), None)
    tolerance = max(values.max(initial=0.0), 0.0) * len(m) * np.finfo(np.float64).eps
    values = np.where(values > tolerance, values, 0.0)
    return (values, vecs) if vectors else values


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    values, vectors = _psd_eigenvalues(m, vectors=True)
    return (vectors * np.sqrt(values)) @ vectors.T


def frechet_distance(x1, x2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N1, D] and [N2, D] (N >= 2 each)."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise MetricError(f"feature sets must be [N, D] of one D, not {list(x1.shape)} and {list(x2.shape)}")
    if min(len(x1), len(x2)) < 2:
        raise MetricError(f"the Fréchet distance needs at least 2 feature vectors per set (a covariance), "
                          f"got {len(x1)} and {len(x2)}")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = (np.atleast_2d(np.cov(x, rowvar=False, ddof=1)) for x in (x1, x2))
    root1 = _sqrt_psd(s1)
    product = root1 @ s2 @ root1
    cross = np.sqrt(_psd_eigenvalues(product)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * cross)
    return max(value, 0.0)


def fvd(model: InceptionI3d, videos_a, videos_b, clip_frames: int | None = CLIP_FRAMES, size: int = SIZE,
        frame: str = "crop") -> float:
    """FVD between two lists of RGB uint8 videos [T, H, W, 3] (any sizes; features per clip, pooled per list)."""
    fa = np.concatenate([features(model, v, clip_frames, size, frame=frame) for v in videos_a])
    fb = np.concatenate([features(model, v, clip_frames, size, frame=frame) for v in videos_b])
    return frechet_distance(fa, fb)


def region_share(mask, size: int = SIZE, frame: str = "crop") -> float:
    """The share of the I3D input that comes from the pixels where ``mask`` [H, W] is True, with the sampling
    weights of ``preprocess``: 0 when the crop never sees them (a centre crop of an outpainted landscape video
    keeps the untouched middle and cuts away the generated sides)."""
    m = np.asarray(mask, bool)
    image = np.repeat((m * np.uint8(255))[None, :, :, None], 3, axis=-1)
    return float((preprocess(image, size, frame)[0] + 1).mean() / 2)
