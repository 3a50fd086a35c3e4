"""The reference sampling pipeline in torch: what the official inference does, per window and per video.

Two costs, one result:
- ``cost="official"``: the official cost, the baseline that benchmarks compare against. Four CFG
  branches, the global encoder inside every UNet call, the window's 33 VAE encodes and the global
  frames' encodes redone for every window.
- ``cost="three_branch"``: the three branches that the guidance reads, the global contexts computed
  once per video and the frame latents encoded once per frame. Same eps, same trajectory.

Sampling is diffusers' PNDMScheduler with SD1.5's scheduler config, driven as the official
pipeline drives it (start noise at the second PNDM timestep, the loop from there: docs/algorithm.md §5.3).
VAE encodes take the posterior mean (the official code samples with an unseeded RNG).
This module is the oracle for parity tests of the runtime and the baseline of the benchmarks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from m3ddm.facts import DEFAULT_GUIDANCE, GLOBAL_FRAMES, VAE_DOWNSAMPLE, VAE_SCALE_FACTOR, WINDOW_FRAMES
from runtime import geometry, guidance
from runtime.plan import official_plan

# SD1.5's scheduler/scheduler_config.json, which the official inference loads.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def official_pndm(steps: int):
    from diffusers import PNDMScheduler
    scheduler = PNDMScheduler(**SD15_SCHEDULER)
    scheduler.set_timesteps(steps)
    return scheduler


def official_schedule(scheduler, steps: int, strength: float = 1.0):
    """(noise timestep, loop timesteps) as the official pipeline derives them from the PNDM list."""
    offset = scheduler.config.steps_offset
    init = min(int(steps * strength) + offset, steps)
    t_start = max(steps - init + offset, 0)
    return scheduler.timesteps[-init], scheduler.timesteps[t_start:]


def sample_pndm(eps_fn, x0: torch.Tensor, noise: torch.Tensor, steps: int = 50, trajectory: list | None = None):
    """The official PNDM loop over a guided-eps callable ``eps_fn(x, t) -> eps``; returns the final x."""
    scheduler = official_pndm(steps)
    t_noise, loop = official_schedule(scheduler, steps)
    x = scheduler.add_noise(x0, noise.to(x0.dtype), t_noise.reshape(1))
    if trajectory is not None:
        trajectory.append(x.clone())
    for t in loop:
        x = scheduler.step(eps_fn(x, t), t, x).prev_sample
        if trajectory is not None:
            trajectory.append(x.clone())
    return x


@dataclass
class WindowInputs:
    """One window's pixels, as the official preprocessing produces them (all in [-1, 1])."""

    inpainted: torch.Tensor  # [16, 3, S, S] noise-init images
    padded: torch.Tensor  # [16, 3, S, S] letterboxed frames, black borders
    mask: torch.Tensor  # [S, S] pixel mask of the first frame, 1 = missing
    fps: float
    guides: dict = field(default_factory=dict)  # position -> scaled latent [4, h, w]


class ReferencePipeline:
    def __init__(self, unet, vae, cost: str = "three_branch", steps: int = 50, guidance_scales=DEFAULT_GUIDANCE):
        if cost not in ("official", "three_branch"):
            raise ValueError(f"cost must be 'official' or 'three_branch', not {cost!r}")
        self.unet, self.vae, self.cost, self.steps = unet, vae, cost, steps
        self.s1, self.s2 = guidance_scales
        self.unet_calls = 0
        self.vae_encodes = 0  # images

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return next(self.unet.parameters()).device

    # -- pieces ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[n, 3, S, S] in [-1, 1] -> scaled posterior means [n, 4, S/8, S/8]."""
        self.vae_encodes += images.shape[0]
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(vae_dtype)).latent_dist.mean.to(self.dtype) * VAE_SCALE_FACTOR

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [n, 4, h, w] -> images in [0, 1] (multiplied by 1/0.18215, docs/algorithm.md §1.5)."""
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents * (1 / VAE_SCALE_FACTOR)).to(vae_dtype)).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @staticmethod
    def latent_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
        """Nearest-neighbour downsample: the top-left pixel of each 8x8 cell (docs/algorithm.md §2.2)."""
        return F.interpolate(mask[None, None].float(), size=(size, size))[0, 0]

    def global_contexts(self, global_latents: torch.Tensor):
        """(null context, real context), each [1, L, 320]."""
        with torch.no_grad():
            return (self.unet.encode_global(torch.zeros_like(global_latents)),
                    self.unet.encode_global(global_latents))

    def local_inputs(self, window: WindowInputs, padded_latents: torch.Tensor, null_latent: torch.Tensor):
        """Context latents and masks [2, 4|1, F, h, w] for (no local, local), guides entered in both."""
        f, _, h, w = padded_latents.shape
        cond = padded_latents.permute(1, 0, 2, 3).clone()
        uncond = null_latent[:, None].expand(-1, f, -1, -1).clone()
        cond_mask = self.latent_mask(window.mask, h)[None, None].expand(1, f, h, w).clone()
        uncond_mask = torch.ones_like(cond_mask)
        for p, latent in window.guides.items():
            cond[:, p] = latent
            uncond[:, p] = latent
            cond_mask[:, p] = 0
            uncond_mask[:, p] = 0
        return torch.stack([uncond, cond]), torch.stack([uncond_mask, cond_mask])

    # -- one window ---------------------------------------------------------------------------
    @torch.no_grad()
    def window(self, window: WindowInputs, global_frames_or_latents: torch.Tensor, noise: torch.Tensor,
               init_latents: torch.Tensor | None = None, padded_latents: torch.Tensor | None = None,
               null_latent: torch.Tensor | None = None, contexts=None) -> torch.Tensor:
        """Final scaled latents [4, 16, h, w] of one window.

        Official cost: ``global_frames_or_latents`` are the 16 global frames [16, 3, S, S]; the
        window encodes them and its own 33 images. Three-branch cost: pass the global latents and
        optionally the cached per-frame latents and contexts.
        """
        official = self.cost == "official"
        if official or init_latents is None:
            images = torch.cat([window.inpainted, window.padded, -torch.ones_like(window.padded[:1])])
            latents = self.encode(images)
            n = window.inpainted.shape[0]
            init_latents, padded_latents, null_latent = latents[:n], latents[n:2 * n], latents[2 * n]
        assert padded_latents is not None and null_latent is not None  # given with init_latents, or made above
        global_latents = self.encode(global_frames_or_latents) if official else global_frames_or_latents
        local, masks = self.local_inputs(window, padded_latents, null_latent)
        x0 = init_latents.permute(1, 0, 2, 3)[None]
        fps = float(window.fps)

        if official:
            rows_local = [int(b) for b in guidance.OFFICIAL_LOCAL]

            def eps_fn(x, t):
                # The official model re-encodes [zeros, zeros, G, G] inside every call.
                c0, c = self.global_contexts(global_latents)
                context = torch.cat([c if g else c0 for g in guidance.OFFICIAL_GLOBAL])
                eps = self._unet(x, local[rows_local], masks[rows_local], t, fps, context)
                return guidance.combine(eps[list(guidance.OFFICIAL_ROWS)], self.s1, self.s2)
        else:
            c0, c = contexts if contexts is not None else self.global_contexts(global_latents)
            rows_local = [int(b.local) for b in guidance.BRANCHES]
            context = torch.cat([c if b.global_ else c0 for b in guidance.BRANCHES])

            def eps_fn(x, t):
                return guidance.combine(self._unet(x, local[rows_local], masks[rows_local], t, fps, context),
                                        self.s1, self.s2)

        return sample_pndm(eps_fn, x0, noise.reshape(x0.shape), self.steps)[0]

    def _unet(self, x, local, masks, t, fps, context):
        n = local.shape[0]
        sample = torch.cat([x.expand(n, -1, -1, -1, -1), local, masks.to(x.dtype)], dim=1)
        self.unet_calls += 1
        full = torch.full((n,), float(t), device=x.device)
        return self.unet(sample, full, torch.full((n,), fps, device=x.device), context)

    # -- a whole video, the official loop -----------------------------------------------------
    @torch.no_grad()
    def video(self, frames: np.ndarray, fps: float, ratios=("9:16",), size: int = 256, noise=None,
              seed: int = 6, strides=None):
        """The official inference loop over a video (docs/algorithm.md §2-§6), ``frames`` RGB uint8 [T, H, W, 3].

        Returns (latents [T, 4, h, w] first generation wins, composited S x S frames per written index
        as the official code writes them, the plan). ``noise`` [4, 16, h, w] is every window's start
        noise (the official code re-seeds per window); default: numpy normal from ``seed``.
        """
        t_count, height, width = frames.shape[:3]
        lat = size // VAE_DOWNSAMPLE
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal((4, WINDOW_FRAMES, lat, lat)).astype(np.float32)
        noise = torch.as_tensor(noise, dtype=self.dtype, device=self.device)
        box = geometry.letterbox_geometry(height, width, ratios, size)
        canvases = [geometry.letterbox_frame(f, box) for f in frames]
        inits = [geometry.inpaint_init(c, box) for c in canvases]
        padded = torch.from_numpy(geometry.to_unit_range(np.stack(canvases))).to(self.device)
        inpainted = torch.from_numpy(geometry.to_unit_range(np.stack(inits))).to(self.device)
        mask = torch.from_numpy(box.mask.astype(np.float32)).to(self.device)

        gidx = geometry.global_frame_indices(t_count, GLOBAL_FRAMES)
        global_frames = torch.from_numpy(frames[gidx]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        global_frames = F.interpolate(global_frames, size=(size, size), mode="bilinear", antialias=True,
                                      align_corners=False)
        global_frames = (global_frames - 0.5) / 0.5

        cache = {}
        if self.cost == "three_branch":
            global_in = self.encode(global_frames)
            contexts = self.global_contexts(global_in)
            all_lat = self.encode(torch.cat([inpainted, padded, -torch.ones_like(padded[:1])]))
            cache = dict(init=all_lat[:t_count], padded=all_lat[t_count:2 * t_count], null=all_lat[-1],
                         contexts=contexts)
        else:
            global_in = global_frames

        stored: dict[int, torch.Tensor] = {}
        written: dict[int, np.ndarray] = {}
        plan = official_plan(t_count, strides)
        for level in plan:
            for w in level:
                idx = list(w.frames)
                win = WindowInputs(inpainted[idx], padded[idx], mask, fps // w.stride,
                                   {p: stored[idx[p]] for p in w.guides})
                if cache:
                    out = self.window(win, global_in, noise, cache["init"][idx], cache["padded"][idx],
                                      cache["null"], cache["contexts"])
                else:
                    out = self.window(win, global_in, noise)
                images = self.decode(out.permute(1, 0, 2, 3))
                for p, f in enumerate(idx):
                    stored.setdefault(f, out[:, p].clone())
                    # The official file index (docs/algorithm.md §6.4: it runs past T-1 for padded positions).
                    written[idx[0] + p * w.stride] = self._official_composite(images[p], padded[f], mask)
        latents = torch.stack([stored[i] for i in range(t_count)])
        return latents, written, plan

    @staticmethod
    def _official_composite(image: torch.Tensor, padded: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """padded_original * (1 - M) + generated * M, truncated to uint8 (docs/algorithm.md §6.4)."""
        generated = np.round(image.float().cpu().numpy() * 255)
        original = (padded.float().cpu().numpy() / 2 + 0.5) * 255
        m = mask.cpu().numpy()
        return (original * (1 - m) + generated * m).transpose(1, 2, 0).astype(np.uint8)
