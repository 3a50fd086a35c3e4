"""``Settings``: the one description of a run, accepted by ``Outpainter.outpaint`` and ``outpaint_file`` alike
(and by whatever schedules runs: a service, a batch). Everything is checked by ``check`` before any work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from m3ddm.errors import InputError
from m3ddm.facts import DEFAULT_GUIDANCE, WINDOW_FRAMES
from runtime import geometry


@dataclass
class Settings:
    ratios: tuple = ("9:16",)  # target ratios W:H, one output each
    pad: tuple | None = None  # (top, right, bottom, left) in source pixels, instead of ratios
    steps: int | None = None  # None: the sampler's default (50; 20 for dpmpp)
    sampler: str = "pndm"  # pndm reproduces the official trajectory
    seed: int = 6
    noise: np.ndarray | None = None  # [4, 16, h, w] start noise of every window
    window_noise: str = "shared"  # "shared" (official: one noise for every window) or "independent"
    guidance: tuple = DEFAULT_GUIDANCE  # (s1 local, s2 global)
    strides: tuple | None = None  # coarse-to-fine strides; None: 15,5,1, or 1 under 50 frames
    batch_windows: int = 4  # independent windows per engine call, at most
    feather: float | None = None  # seam blend width in source pixels (None: 1 % of the shorter side)
    step_noise: object = None  # callable(window, step) -> [4, 16, h, w]: the fresh noise of stochastic samplers
    output_height: int | None = None  # scale the outputs to this height (None: the source's own scale)

    def __post_init__(self):
        if isinstance(self.ratios, str):
            self.ratios = tuple(r for r in self.ratios.split(",") if r.strip())
        self.ratios = tuple(self.ratios)
        if self.pad is not None:
            self.pad = tuple(self.pad)
        self.guidance = tuple(self.guidance)
        if self.strides is not None:
            self.strides = tuple(self.strides)

    @classmethod
    def build(cls, settings: "Settings | None" = None, ratio=None, **options) -> "Settings":
        """``settings`` (or the defaults) with every option given applied; None leaves a field as it is.
        ``ratio`` is "W:H", "W:H,W:H" or a list of them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        changes = {k: v for k, v in options.items() if v is not None}
        if ratio is not None:
            changes["ratios"] = ratio
        base = settings if settings is not None else cls()
        return dataclasses.replace(base, **changes)

    @property
    def labels(self) -> list[str]:
        """One output per label: the ratios, or "pad"."""
        return ["pad"] if self.pad is not None else list(self.ratios)

    def check(self, latent: int) -> None:
        """Raise InputError on anything that cannot run, before any work is done (``latent``: S/8)."""
        from runtime import samplers
        if self.pad is None:
            if not self.ratios:
                raise InputError("give at least one target ratio (e.g. 9:16)")
            for r in self.ratios:
                geometry.parse_ratio(r)
        elif len(self.pad) != 4:
            raise InputError("padding takes four values: top, right, bottom, left")
        samplers.make_sampler(self.sampler, self.steps)
        if self.window_noise not in ("shared", "independent"):
            raise InputError("window_noise must be 'shared' or 'independent'")
        if self.batch_windows < 1:
            raise InputError("batch_windows must be at least 1")
        if self.strides is not None:
            if not self.strides or any(int(s) < 1 for s in self.strides) or int(self.strides[-1]) != 1:
                raise InputError("strides must be positive integers ending in 1 (e.g. 15,5,1)")
        if self.noise is not None and tuple(np.shape(self.noise)) != (4, WINDOW_FRAMES, latent, latent):
            raise InputError(f"noise must have shape (4, {WINDOW_FRAMES}, {latent}, {latent})")
        if len(self.guidance) != 2:
            raise InputError("guidance takes two scales: s1 (local), s2 (global)")
        if self.output_height is not None and self.output_height < 2:
            raise InputError("output height must be at least 2 pixels")

    def layout(self, height: int, width: int, size: int) -> tuple[geometry.Letterbox, list[geometry.Target]]:
        """Where a height x width source sits in the S x S canvas, and the output videos (one per label)."""
        if self.pad is not None:
            return (geometry.padding_geometry(height, width, self.pad, size),
                    [geometry.padding_target(height, width, self.pad)])
        return (geometry.letterbox_geometry(height, width, self.ratios, size),
                [geometry.ratio_target(height, width, r) for r in self.ratios])
