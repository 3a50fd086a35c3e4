"""``Settings``: the one description of a run, accepted by ``Outpainter.outpaint`` and ``outpaint_file`` alike
(and by whatever schedules runs: a service, a batch). Everything is checked by ``check`` before any work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from m3ddm.errors import InputError
from m3ddm.facts import DEFAULT_GUIDANCE, WINDOW_FRAMES
from runtime import composite, geometry
from runtime.callbacks import StepNoise
from runtime.video.source import check_pixels

# The largest frame, read or written, in pixels: 8K UHD. A 4K/8K video passes; a file declaring 16000 x 16000
# (a 31 KB PNG can) is refused before a frame is decoded, as is an output scaled past it.
MAX_PIXELS = 7680 * 4320
MAX_GUIDANCE = 50.0  # the official scales are 2 and 4; far beyond this the output is saturated noise
MAX_FEATHER = 10000.0  # source pixels; wider than any frame the pixel budget allows blends it all anyway
MAX_BATCH_WINDOWS = 256
MAX_SEED = 2**63 - 1


def _finite(value, what: str, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, not {value!r}") from None
    if not np.isfinite(v) or not low <= v <= high:
        raise InputError(f"{what} must be a finite number from {low:g} to {high:g}, not {value}")
    return v


def _integer(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer, not {value!r}")
    if not low <= int(value) <= high:
        raise InputError(f"{what} must be from {low} to {high}, not {value}")
    return int(value)


def _targets(ratios) -> tuple:
    """The target ratios, each once, in order: "9:16,9:16" is one output (its label names one file, which two
    targets would both be written into)."""
    if isinstance(ratios, str):
        ratios = ratios.split(",")
    stripped = (r.strip() if isinstance(r, str) else r for r in ratios)
    return tuple(dict.fromkeys(r for r in stripped if r != ""))


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
    step_noise: StepNoise | None = None  # the fresh noise of stochastic samplers, per window and step
    output_height: int | None = None  # scale the outputs to this height (None: the source's own scale)
    max_pixels: int = MAX_PIXELS  # the largest frame read or written (width x height); larger is refused

    def __post_init__(self):
        self.ratios = _targets(self.ratios)
        if self.pad is not None:
            self.pad = tuple(self.pad)
        self.guidance = tuple(self.guidance)
        if self.strides is not None:
            self.strides = tuple(self.strides)

    @classmethod
    def build(cls, settings: Settings | None = None, ratio=None, **options) -> Settings:
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

    def check(self, latent: int | None = None) -> None:
        """Raise InputError on anything that cannot run, before any work is done (``latent``: S/8, for the
        noise's shape; None before the engines are known). Every
        number must be finite and in range: a NaN guidance or a million threads is refused, not run."""
        from runtime import samplers
        _integer(self.max_pixels, "max_pixels", 1, 2**40)
        if self.pad is None:
            if not self.ratios:
                raise InputError("give at least one target ratio (e.g. 9:16)")
            for r in self.ratios:
                geometry.parse_ratio(r)
        else:
            if len(self.pad) != 4:
                raise InputError("padding takes four values: top, right, bottom, left")
            for p in self.pad:
                _integer(p, "padding", 0, self.max_pixels)
        if self.steps is not None:
            _integer(self.steps, "steps", 1, samplers.MAX_STEPS)
        samplers.make_sampler(self.sampler, self.steps)
        _integer(self.seed, "seed", 0, MAX_SEED)
        if self.window_noise not in ("shared", "independent"):
            raise InputError("window_noise must be 'shared' or 'independent'")
        _integer(self.batch_windows, "batch_windows", 1, MAX_BATCH_WINDOWS)
        if self.strides is not None:
            if not self.strides or any(isinstance(x, bool) or int(x) != x or int(x) < 1 for x in self.strides) \
                    or int(self.strides[-1]) != 1:
                raise InputError("strides must be positive integers ending in 1 (e.g. 15,5,1)")
        if self.noise is not None:
            if latent is not None and tuple(np.shape(self.noise)) != (4, WINDOW_FRAMES, latent, latent):
                raise InputError(f"noise must have shape (4, {WINDOW_FRAMES}, {latent}, {latent})")
            if not np.isfinite(np.asarray(self.noise, np.float32)).all():
                raise InputError("noise must be finite")
        if len(self.guidance) != 2:
            raise InputError("guidance takes two scales: s1 (local), s2 (global)")
        for name, g in zip(("s1", "s2"), self.guidance):
            _finite(g, f"guidance {name}", 0.0, MAX_GUIDANCE)
        if self.feather is not None:
            _finite(self.feather, "feather", 0.0, MAX_FEATHER)
        if self.output_height is not None:
            _integer(self.output_height, "output height", 2, self.max_pixels)

    def check_frame(self, height: int, width: int, what: str = "frames") -> None:
        """Refuse a frame size past the pixel budget (before it is decoded, or made)."""
        check_pixels(width, height, self.max_pixels, what)

    def targets(self, height: int, width: int, scale: float = 1.0) -> list[geometry.Target]:
        """The output videos (one per label) around a height x width source; ``scale``: a frame scaled down
        (a preview's), its padding scaled with it."""
        if self.pad is not None:
            pads = self.pad if scale == 1 else [int(round(p * scale)) for p in self.pad]
            return [geometry.padding_target(height, width, pads)]
        return [geometry.ratio_target(height, width, r) for r in self.ratios]

    def layout(self, height: int, width: int, size: int) -> tuple[geometry.Letterbox, list[geometry.Target]]:
        """Where a height x width source sits in the S x S canvas, and the output videos (one per label).
        Every output must fit the pixel budget: checked here, before any sampling."""
        self.check_frame(height, width, "source frames")
        box = (geometry.padding_geometry(height, width, self.pad, size) if self.pad is not None
               else geometry.letterbox_geometry(height, width, self.ratios, size))
        targets = self.targets(height, width)
        for t in targets:
            self.check_frame(t.height, t.width, f"output frames ({t.label})")
            w, h = composite.output_size(t, self.output_height)
            self.check_frame(h, w, f"output frames ({t.label}) scaled to height {self.output_height}")
        return box, targets
