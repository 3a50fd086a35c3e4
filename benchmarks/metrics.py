"""Video quality metrics (numpy + OpenCV, no downloads): MSE, PSNR, SSIM and temporal consistency.

Frames are RGB uint8 [T, H, W, 3]; values are compared on [0, 1]. The learned metrics live beside this
module (``benchmarks.lpips``: LPIPS v0.1 on AlexNet; ``benchmarks.fvd``: I3D features and the Fréchet
distance) and need pretrained weights that cannot be downloaded here: ``require_weights`` names the files
a user must provide, ``load_weights`` reads one safely (``weights_only``) and checks its keys and shapes.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from m3ddm.errors import InputError

# What the learned metrics need, and where users get it (the files are not downloadable from here).
WEIGHTS = {
    "lpips": ("alexnet-owt-7be5be79.pth (torchvision AlexNet) and alex.pth (LPIPS v0.1 linear layers, "
              "from the lpips package)", ("alexnet-owt-7be5be79.pth", "alex.pth")),
    "fvd": ("i3d_pretrained_400.pt (the Kinetics-400 I3D used for FVD)", ("i3d_pretrained_400.pt",)),
}


class MetricError(InputError):
    """A metric cannot run; the message says why and what to provide."""


def _unit(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MetricError(f"frames must be [T, H, W, 3], not {list(frames.shape)}")
    return frames.astype(np.float64) / 255.0


def _pair(a, b):
    a, b = _unit(a), _unit(b)
    if a.shape != b.shape:
        raise MetricError(f"videos differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return a, b


def mse(a, b, mask=None) -> float:
    """Mean squared error on [0, 1]; ``mask`` [H, W] (True = counted) restricts it to a region."""
    a, b = _pair(a, b)
    d = (a - b) ** 2
    if mask is not None:
        d = d[:, np.asarray(mask, bool)]
    return float(d.mean())


def psnr(a, b, mask=None) -> float:
    m = mse(a, b, mask)
    return float("inf") if m == 0 else float(10 * np.log10(1.0 / m))


def ssim(a, b) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), per channel."""
    a, b = _pair(a, b)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)
    values = []
    for x, y in zip(a, b):
        for ch in range(3):
            xi, yi = x[..., ch], y[..., ch]
            mx, my = blur(xi), blur(yi)
            sxx, syy, sxy = blur(xi * xi) - mx * mx, blur(yi * yi) - my * my, blur(xi * yi) - mx * my
            s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
            values.append(s.mean())
    return float(np.mean(values))


def temporal_consistency(frames) -> float:
    """Mean absolute error (on [0, 1]) between each frame and the previous one warped onto it by OpenCV DIS
    optical flow: low for temporally coherent video, whatever its motion."""
    frames = np.asarray(frames)
    if len(frames) < 2:
        return 0.0
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = frames.shape[1:3]
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
    errors = []
    for prev, cur in zip(frames[:-1], frames[1:]):
        g0, g1 = cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY), cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY)
        # where each pixel of `cur` came from in `prev` (flow None: a new one; OpenCV's stubs ask for one)
        flow = dis.calc(g1, g0, None)  # type: ignore[call-overload]
        # map2 None: map1 holds both coordinates (OpenCV's stubs ask for a map2 regardless)
        warped = cv2.remap(prev, grid + flow, None, cv2.INTER_LINEAR,  # type: ignore[call-overload]
                           borderMode=cv2.BORDER_REPLICATE)
        errors.append(np.abs(warped.astype(np.float64) - cur.astype(np.float64)).mean() / 255.0)
    return float(np.mean(errors))


def require_weights(metric: str, folder) -> list[Path]:
    """The weight files ``metric`` needs from ``folder``, or a MetricError naming them."""
    what, names = WEIGHTS[metric]
    if folder is None:
        raise MetricError(f"{metric.upper()} needs pretrained weights that cannot be downloaded here: "
                          f"pass a folder holding {what}")
    paths = [Path(folder) / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MetricError(f"{metric.upper()} weights missing in {folder}: {', '.join(missing)} (needs {what})")
    return paths


def load_weights(path, expected: dict, ignore=(), optional=()) -> dict:
    """The tensors of the state dict in ``path``, checked against ``expected`` (key: shape).

    Loaded with ``torch.load(weights_only=True)`` on the CPU, as float32. A file that does not load, a
    missing key, a key of another shape, or a key neither expected nor starting with one of the ``ignore``
    prefixes is a one-line MetricError naming the file and the key. Keys in ``optional`` are kept when present
    (batch norm's ``num_batches_tracked``, which files saved by older torch lack).
    """
    import torch
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle, zip or version errors: one line, naming the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MetricError(f"{path}: cannot load it as a PyTorch state dict ({first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MetricError(f"{path}: holds a {type(state).__name__}, not a state dict")
    out = {}
    for key, shape in expected.items():
        if key not in state:
            raise MetricError(f"{path}: missing key {key!r} (expected shape {list(shape)})")
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise MetricError(f"{path}: key {key!r} has shape {got}, expected {list(shape)}")
        out[key] = value.float() if value.is_floating_point() else value
    optional = set(optional)
    for key in state:
        if key in optional and isinstance(state[key], torch.Tensor):
            out[key] = state[key]
        elif key not in expected and not str(key).startswith(tuple(ignore)):
            raise MetricError(f"{path}: unexpected key {key!r} (not part of the expected network)")
    return out
