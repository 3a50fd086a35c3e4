"""A batch of windows sampled with torch ops on the backend's device: the host sees the latents once, at the end.

The loop of ``runtime.samplers.run`` (``samplers.iterate``, the same code) with the arithmetic of its ``apply``
and of ``runtime.guidance.combine`` in torch (their numpy code is the reference, and tests hold this to it): the
noisy latents go into channels 0..3 of the 3W-row UNet input once per step in the model's dtype (the context
latents and masks stay there from the start), the guided eps and every linear update in FP32. Only the fresh noise
of a stochastic sampler crosses from the host, a step at a time.
"""
from __future__ import annotations

import numpy as np
import torch

from runtime import guidance, samplers


def to_device(x: np.ndarray, device, dtype) -> torch.Tensor:
    """A host array as a tensor on ``device`` (read-only arrays copied first: torch tensors are always writable)."""
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device, dtype)


def apply(u, x: torch.Tensor, saved, eps_terms, z=None) -> torch.Tensor:
    """``runtime.samplers.apply`` in torch: the same FP32 coefficients, the same order of operations."""
    out = x * float(np.float32(u.x)) if u.x else torch.zeros_like(x)
    if u.saved:
        out = out + saved * float(np.float32(u.saved))
    for b, e in zip(u.eps, eps_terms):
        out = out + e * float(np.float32(b))
    if u.noise:
        out = out + z * float(np.float32(u.noise))
    return out


def run(sampler, unet, x0, noise, rows, fps_rows, ctx_rows, s1: float, s2: float, dtype, device, step_noise=None,
        callback=None, stopped=None, seen=None) -> np.ndarray:
    """The final latents [W, 4, F, h, w] of W windows. ``unet(sample, timestep, fps, context)`` takes device
    tensors; ``rows`` [3W, 5, F, h, w] are the UNet input's channels 4..8, branch-major; ``stopped()`` is asked
    before each step (a cancelled job raises there); ``seen`` as for ``samplers.iterate``, with device tensors (a
    preview copies the little it shows to the host, now and then)."""
    n = rows.shape[0]
    x = torch.from_numpy(sampler.add_noise(np.asarray(x0, np.float32), np.asarray(noise, np.float32))).to(device)
    sample = torch.empty((n, 9, *x.shape[2:]), dtype=dtype, device=device)
    sample[:, 4:] = to_device(rows, device, dtype)
    fps = to_device(fps_rows, device, torch.float32)
    context = to_device(ctx_rows, device, dtype)
    timestep = torch.empty(n, dtype=torch.float32, device=device)

    def eps(x, t):
        if stopped is not None:
            stopped()
        sample[:, :4] = torch.cat([x] * guidance.NUM_BRANCHES)
        timestep.fill_(float(t))
        return guidance.combine(unet(sample, timestep, fps, context).float(), s1, s2)

    def draw(i, shape):
        return torch.from_numpy(np.asarray(step_noise(i, tuple(shape)), np.float32)).to(device)

    def after(i, t, x):
        if callback is not None:
            callback(i, t)

    return samplers.iterate(sampler, x, eps, draw, apply, after, seen).cpu().numpy()
