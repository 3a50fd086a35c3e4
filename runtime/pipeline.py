"""The outpainting pipeline over an engine backend: frames in, outpainted frames out (no torch).

Per video: each frame's canvas and TELEA init once, every VAE encode once per frame, the global
encoder once, the window plan level by level with independent windows batched into one engine call
of 3 x W rows, each output frame decoded once, composited at the source resolution.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime import geometry, guidance, samplers
from runtime.constants import DEFAULT_GUIDANCE, GLOBAL_FRAMES, VAE_DOWNSAMPLE, WINDOW_FRAMES
from runtime.plan import Window, official_plan
from runtime.resize import resize_antialias

ENCODE_CHUNK = 16  # frames per VAE call: bounds activation memory, long videos included


@dataclass
class OutpaintResult:
    frames: np.ndarray  # RGB uint8 [T, H', W', 3]: the first target's video
    latents: np.ndarray  # float32 [T, 4, S/8, S/8]: final scaled latents per frame
    outputs: dict = field(default_factory=dict)  # target label -> frames, every target
    targets: list = field(default_factory=list)
    plan: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass
class Settings:
    ratios: tuple = ("9:16",)
    pad: tuple | None = None  # (top, right, bottom, left) in source pixels, instead of ratios
    steps: int | None = None
    sampler: str = "pndm"
    seed: int = 6
    noise: np.ndarray | None = None  # [4, 16, h, w] start noise of every window
    window_noise: str = "shared"  # "shared" (official: one noise for every window) or "independent"
    guidance: tuple = DEFAULT_GUIDANCE
    strides: tuple | None = None
    batch_windows: int = 4
    feather: float | None = None  # seam blend width in source pixels (None: 1 % of the shorter side)
    step_noise: object = None  # callable(window, step) -> [4, 16, h, w]: the fresh noise of stochastic samplers
    output_height: int | None = None  # scale the outputs to this height (None: the source's own scale)

    def check(self, latent: int):
        if self.window_noise not in ("shared", "independent"):
            raise ValueError("window_noise must be 'shared' or 'independent'")
        if self.batch_windows < 1:
            raise ValueError("batch_windows must be at least 1")
        if self.strides is not None:
            if not self.strides or any(int(s) < 1 for s in self.strides) or int(self.strides[-1]) != 1:
                raise ValueError("strides must be positive integers ending in 1 (e.g. 15,5,1)")
        if self.noise is not None and tuple(np.shape(self.noise)) != (4, WINDOW_FRAMES, latent, latent):
            raise ValueError(f"noise must have shape (4, {WINDOW_FRAMES}, {latent}, {latent})")
        if len(self.guidance) != 2:
            raise ValueError("guidance takes two scales: s1 (local), s2 (global)")
        if self.output_height is not None and self.output_height < 2:
            raise ValueError("output height must be at least 2 pixels")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoder output in about [-1, 1], [n, 3, S, S] -> RGB uint8 [n, S, S, 3] (round(255 v), v clamped)."""
    v = np.clip(images / 2 + 0.5, 0.0, 1.0)
    return np.round(v * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def batches(windows: list, cap: int, sizes=None):
    """``windows`` in batches of at most ``cap``; with ``sizes`` (the window counts a backend runs best,
    e.g. its TensorRT profiles) each batch takes the largest of them that fits. Batching never changes
    the result (every random draw belongs to a window)."""
    usable = sorted({w for w in (sizes or ()) if w <= cap})
    start = 0
    while start < len(windows):
        rest = len(windows) - start
        fitting = [w for w in usable if w <= rest]
        size = fitting[-1] if fitting else min(cap, rest)
        yield windows[start:start + size]
        start += size


class Pipeline:
    """The sampling core over a Backend; ``runtime.Outpainter`` wraps it with engines and files."""

    def __init__(self, backend):
        self.backend = backend
        self.size = backend.model_size
        self.latent = self.size // VAE_DOWNSAMPLE
        self._null = None

    def null_inputs(self):
        """(null latent [4, h, w] of an all-black image, null context [1, L, 320] of zero latents), once."""
        if self._null is None:
            black = -np.ones((1, 3, self.size, self.size), np.float32)
            null_latent = self.backend.vae_encode(black)[0]
            zeros = np.zeros((GLOBAL_FRAMES, 4, self.latent, self.latent), np.float32)
            self._null = (null_latent, self.backend.encode_global(zeros))
        return self._null

    def encode(self, images_unit: np.ndarray) -> np.ndarray:
        out = [self.backend.vae_encode(images_unit[i:i + ENCODE_CHUNK]) for i in range(0, len(images_unit), ENCODE_CHUNK)]
        return np.concatenate(out)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        out = [to_uint8(self.backend.vae_decode(latents[i:i + ENCODE_CHUNK]))
               for i in range(0, len(latents), ENCODE_CHUNK)]
        return np.concatenate(out)

    def global_context(self, frames: np.ndarray) -> np.ndarray:
        """The 16 global frames stretched to S x S (antialiased bilinear, as the official code) -> context."""
        gidx = geometry.global_frame_indices(len(frames), GLOBAL_FRAMES)
        g = frames[gidx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        g = resize_antialias(g, self.size, self.size) * 2 - 1
        return self.backend.encode_global(self.encode(g))

    def sample(self, frame_latents, padded_latents, mask_latent, context, fps: float, s: Settings,
               progress=None, on_batch=None) -> tuple[np.ndarray, list]:
        """Run the plan; returns final latents per frame [T, 4, h, w] and the plan.

        ``on_batch(stored)`` is called after every batch with {frame: final latent} so far (a frame's
        latent never changes once stored), so a caller can decode and write frames while sampling goes on.
        """
        t_count = len(frame_latents)
        plan = official_plan(t_count, s.strides)
        sampler = samplers.make_sampler(s.sampler, s.steps)
        shape = (4, WINDOW_FRAMES, self.latent, self.latent)
        # Every random draw belongs to a window (numbered in plan order), never to a batch: batching
        # windows differently gives the same video.
        shared = (np.asarray(s.noise, np.float32) if s.noise is not None
                  else np.random.default_rng(s.seed).standard_normal(shape).astype(np.float32))
        null_latent, null_context = self.null_inputs()
        stored: dict[int, np.ndarray] = {}
        total = sum(len(level) for level in plan)
        done = 0
        for level in plan:
            # The first level's windows guide each other in turn; later levels only read earlier levels.
            cap = 1 if level[0].level == 0 else s.batch_windows
            for batch in batches(level, cap, getattr(self.backend, "windows", None)):
                ids = range(done, done + len(batch))
                noise = np.stack([shared if s.window_noise == "shared" else
                                  np.random.default_rng([s.seed, i]).standard_normal(shape).astype(np.float32)
                                  for i in ids])
                if s.step_noise is not None:
                    draws = [lambda k, i=i: np.asarray(s.step_noise(i, k), np.float32) for i in ids]
                else:
                    rngs = [np.random.default_rng([s.seed, i, 1]) for i in ids]
                    draws = [lambda k, r=r: r.standard_normal(shape).astype(np.float32) for r in rngs]
                out = self._sample_batch(batch, stored, frame_latents, padded_latents, mask_latent, null_latent,
                                         context, null_context, fps, noise, sampler, s, draws, progress, done,
                                         total, len(stored))
                for w, lat in zip(batch, out):
                    for p, f in enumerate(w.frames):
                        stored.setdefault(f, lat[:, p])  # the first generation of a frame wins
                done += len(batch)
                if on_batch is not None:
                    on_batch(stored)
        return np.stack([stored[i] for i in range(t_count)]), plan

    def _sample_batch(self, batch: list[Window], stored, frame_latents, padded_latents, mask_latent, null_latent,
                      context, null_context, fps, noise, sampler, s: Settings, draws, progress, done, total,
                      frames_done):
        nw = len(batch)
        f, h = WINDOW_FRAMES, self.latent
        local = {False: np.empty((nw, 4, f, h, h), np.float32), True: np.empty((nw, 4, f, h, h), np.float32)}
        masks = {False: np.ones((nw, 1, f, h, h), np.float32), True: np.empty((nw, 1, f, h, h), np.float32)}
        x0 = np.empty((nw, 4, f, h, h), np.float32)
        for i, w in enumerate(batch):
            idx = list(w.frames)
            x0[i] = frame_latents[idx].transpose(1, 0, 2, 3)
            local[True][i] = padded_latents[idx].transpose(1, 0, 2, 3)
            local[False][i] = null_latent[:, None]
            masks[True][i] = mask_latent[None, None]
            for p in w.guides:  # guides enter both local branches, mask 0 (spec 4.3 step 4)
                for branch_local in (False, True):
                    local[branch_local][i, :, p] = stored[w.frames[p]]
                    masks[branch_local][i, :, p] = 0
        rows = guidance.BRANCHES
        local_rows = np.concatenate([local[b.local] for b in rows])
        mask_rows = np.concatenate([masks[b.local] for b in rows])
        ctx_rows = np.concatenate([np.repeat(context if b.global_ else null_context, nw, axis=0) for b in rows])
        ctx_rows.setflags(write=False)  # the same for every step: a device backend may keep it resident
        n = len(rows) * nw
        fps_rows = np.full(n, float(fps // batch[0].stride), np.float32)
        s1, s2 = s.guidance
        t0 = time.perf_counter()

        def eps_fn(x, t):
            sample = np.concatenate([np.concatenate([x] * len(rows)), local_rows, mask_rows], axis=1)
            return guidance.combine(self.backend.unet(sample, np.full(n, float(t), np.float32), fps_rows, ctx_rows),
                                    s1, s2)

        def report(k, t):
            if progress:
                progress({"stage": "sample", "level": batch[0].level, "stride": batch[0].stride,
                          "windows_done": done, "windows": total, "batch": nw, "step": k + 1,
                          "steps": len(sampler.timesteps), "seconds": time.perf_counter() - t0,
                          "frames_done": frames_done, "frames": len(frame_latents)})

        def step_noise(k, shape):
            return np.stack([draw(k) for draw in draws])

        on_device = getattr(self.backend, "sample_windows", None)
        if on_device is not None:  # the whole loop on the GPU, where the backend can
            out = on_device(sampler, x0, noise, np.concatenate([local_rows, mask_rows], axis=1), fps_rows, ctx_rows,
                            s1, s2, step_noise, report)
            if out is not None:
                return out
        return samplers.run(sampler, eps_fn, x0, noise, step_noise=step_noise, callback=report)
