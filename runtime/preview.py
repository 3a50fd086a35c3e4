"""Live previews: what the border looks like while a run samples it, made off the sampling thread.

At every step the sampler has an estimate of the clean latents, x0 = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)
(``Sampler.clean_estimate``). A preview maps one frame of the window in flight from that estimate to RGB (by default
a linear map of the SD1.5 latents, the way diffusion tools show every step; the real VAE decoder where asked), scales
the S x S canvas up and composites it around the source frame as the output will be, at a small size.

The sampling thread only copies one frame's x and eps ([4, h, w] each), and only when the preview thread is ready
for more (idle, and at most one preview per ``every_s`` and per ``every_steps``); the preview thread takes the
latest offer, so the sampler never waits and never sees a preview's arrays. A failing preview is a note,
never a failed run.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from m3ddm.errors import InputError
from m3ddm.files import atomic_write
from runtime import composite, geometry
from runtime.callbacks import FrameSource, Progress, Seen
from runtime.settings import Settings

log = logging.getLogger(__name__)

# SD1.5 latents (scaled by 0.18215) -> RGB in about [-1, 1], one row per latent channel: the known linear fit
# (ComfyUI's comfy/latent_formats.py, SD15 latent_rgb_factors).
LATENT_RGB = np.array([[0.3512, 0.2297, 0.3227],
                       [0.3250, 0.4974, 0.2350],
                       [-0.2829, 0.1762, 0.2721],
                       [-0.2120, -0.2616, -0.7177]], np.float32)
FORMS = ("jpeg", "rgb", "number")  # what a progress event's "preview" holds: JPEG bytes, RGB uint8, the count made
DECODERS = ("linear", "vae")
THUMBNAIL_BYTES = 64 << 20  # the source frames kept for compositing, all together, whatever the video's length


@dataclass(frozen=True)
class PreviewOptions:
    """How a run shows its previews: ``form`` what progress events carry, ``path`` a JPEG file kept up to date
    (replaced atomically), ``decoder`` linear or vae, at most one preview per ``every_s`` seconds and per
    ``every_steps`` steps (None: 1 step for linear, 10 for the VAE), at most ``size`` pixels on the longer side."""
    form: str = "jpeg"
    path: str | None = None
    decoder: str = "linear"
    every_s: float = 0.5
    every_steps: int | None = None
    size: int = 320
    quality: int = 80

    @classmethod
    def of(cls, preview) -> PreviewOptions | None:
        """``outpaint_file(..., preview=...)``: None (no previews), a form ("jpeg", "rgb", "number") or options."""
        if preview is None or preview is False:
            return None
        options = cls(form=preview) if isinstance(preview, str) else preview
        if not isinstance(options, cls):
            raise InputError(f"preview must be one of {', '.join(FORMS)} or PreviewOptions, not {preview!r}")
        options.check()
        return options

    def check(self) -> None:
        if self.form not in FORMS:
            raise InputError(f"preview form must be one of {', '.join(FORMS)}, not {self.form!r}")
        if self.path is not None and not Path(self.path).parent.is_dir():
            raise InputError(f"the preview's folder {Path(self.path).parent} does not exist")
        if self.decoder not in DECODERS:
            raise InputError(f"preview decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        if not (isinstance(self.every_s, (int, float)) and math.isfinite(self.every_s) and self.every_s >= 0):
            raise InputError(f"preview every_s must be a finite number of seconds, 0 or more, not {self.every_s!r}")
        for name, value, low, high in (("every_steps", self.every_steps, 1, 10**6), ("size", self.size, 16, 4096),
                                       ("quality", self.quality, 1, 100)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not low <= value <= high):
                raise InputError(f"preview {name} must be an integer from {low} to {high}, not {value!r}")

    @property
    def steps_apart(self) -> int:
        return self.every_steps or (10 if self.decoder == "vae" else 1)


def latent_rgb(latent: np.ndarray) -> np.ndarray:
    """Scaled SD1.5 latents [4, h, w] -> RGB uint8 [h, w, 3] by the linear map (no decoder)."""
    rgb = np.tensordot(LATENT_RGB, np.asarray(latent, np.float32), axes=([0], [0]))  # [3, h, w]
    return composite.to_uint8(rgb[None])[0]


def compose(canvas: np.ndarray, source: np.ndarray | None, box: geometry.Letterbox, settings: Settings,
            scale: float, source_size: tuple[int, int]) -> np.ndarray:
    """The preview frame: the S x S ``canvas`` composited around ``source`` (a frame scaled by ``scale`` to
    ``source_size``) as the output will be; without a source (a run resumed from its prepared latents never reads
    one), the canvas's own content box stands in for it."""
    height, width = source_size
    if source is None:
        crop = canvas[box.top:box.top + box.height, box.left:box.left + box.width]
        source = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)
    target = settings.targets(height, width, scale)[0]  # the first output's
    feather = None if settings.feather is None else settings.feather * scale
    return composite.composite(source, canvas, box, target, feather)


def _scaled(height: float, width: float, scale: float) -> tuple[int, int]:
    return max(2, int(round(height * scale))), max(2, int(round(width * scale)))


def _host(a) -> np.ndarray:
    """A copy on the host, float32: a numpy array's or a device tensor's (which copies itself over first)."""
    to_host = getattr(a, "cpu", None)
    return np.array(to_host() if to_host is not None else a, np.float32)


class Previewer:
    """The previews of one run: thumbnails of the source frames as they are read (``watch_source``), one frame of
    each batch offered at its steps (``watcher``), made on its own thread, handed on in progress events
    (``carrying``) and to ``options.path``. ``close`` makes the last offer's preview and stops the thread."""

    def __init__(self, options: PreviewOptions, pipeline, settings: Settings, box: geometry.Letterbox, count: int):
        self.options, self.settings, self.box, self.count = options, settings, box, count
        self._measure(box.height, box.width)  # until a source frame is read (a resumed run may read none)
        self.size = pipeline.size
        self.decode = None
        if options.decoder == "vae":
            if pipeline.backend.concurrent:  # the decoder runs on this thread while the UNet runs on the other
                self.decode = lambda x0: composite.to_uint8(pipeline.backend.vae_decode(x0[None]))[0]
            else:
                log.warning(f"previews by the linear map: the {pipeline.backend.name} backend's engines take no "
                            "calls from a second thread, so the VAE cannot decode while the UNet runs")
        self.thumbs: dict[int, np.ndarray] = {}
        self.made = 0
        self.seconds = 0.0  # on the preview thread
        self.offer_s = 0.0  # on the sampling thread
        self._latest: tuple | None = None  # (number, what events carry)
        self._delivered = 0
        self._pending: tuple | None = None
        self._ready_at = 0.0
        self._stop = False
        self._failed = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="m3ddm-preview", daemon=True)
        self._thread.start()

    def _measure(self, height: int, width: int) -> None:
        """The preview's scale for a source of ``height`` x ``width``: the output within ``options.size``, and
        every frame's thumbnail within THUMBNAIL_BYTES, however long the video (smaller previews of long videos)."""
        target = self.settings.targets(height, width)[0]
        scale = min(1.0, self.options.size / max(target.height, target.width))
        self.scale = min(scale, math.sqrt(THUMBNAIL_BYTES / (3 * max(self.count, 1) * height * width)))
        self.thumb_size = _scaled(height, width, self.scale)
        self.source_size = (height, width)

    # -- on the run's threads ---------------------------------------------------------------------
    def watch_source(self, frames: FrameSource) -> FrameSource:
        """``frames`` (runtime/callbacks.py FrameSource), keeping a thumbnail of every RGB frame read."""
        def watched(wanted):
            for i, rgb in frames(wanted):
                if rgb is not None:
                    if rgb.shape[:2] != self.source_size:
                        self._measure(*rgb.shape[:2])
                    h, w = self.thumb_size
                    self.thumbs[i] = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
                yield i, rgb
        return watched

    def watcher(self, batch: list, sampler) -> Seen:
        """The ``seen`` of one batch: offers its first window's middle frame, when the preview thread is ready."""
        window = batch[0]
        position = len(window.frames) // 2
        frame, steps, apart = window.frames[position], len(sampler.timesteps), self.options.steps_apart

        def seen(i, t, x, eps):
            if self._failed or not self.ready or ((i + 1) % apart and i + 1 != steps):
                return
            t0 = time.perf_counter()
            offer = (frame, sampler, t, _host(x[0, :, position]), _host(eps[0, :, position]))
            with self._lock:
                self._pending = offer  # the one before, if not yet taken, is dropped
                self._ready_at = math.inf  # no more copies until this one is made
            self._wake.set()
            self.offer_s += time.perf_counter() - t0
        return seen

    def carrying(self, progress: Progress | None) -> Progress | None:
        """``progress`` whose next event after a new preview carries it as "preview" (``options.form``)."""
        if progress is None:
            return None

        def relay(event):
            latest = self._latest
            if latest is not None and latest[0] != self._delivered:
                with self._lock:
                    fresh, self._delivered = latest[0] != self._delivered, latest[0]
                if fresh:
                    event = {**event, "preview": latest[1]}
            progress(event)
        return relay

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self._wake.set()
        self._thread.join()

    @property
    def ready(self) -> bool:
        """Whether the preview thread takes an offer now (idle, and ``every_s`` since its last preview)."""
        return time.monotonic() >= self._ready_at

    @property
    def stats(self) -> dict:
        return {"previews": self.made, "preview_s": self.seconds, "preview_offer_s": self.offer_s}

    # -- on the preview thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                offer, self._pending, stop = self._pending, None, self._stop
            if offer is not None and not self._failed:
                try:
                    self._make(*offer)
                except Exception as exc:  # a preview is a hint: the run goes on without them
                    self._failed = True
                    log.warning(f"previews stopped: {type(exc).__name__}: {exc}")
            if stop:
                return

    def render(self, frame: int, sampler, t, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """The preview image (RGB uint8) of ``frame`` from its step input ``x`` and guided ``eps`` [4, h, w]."""
        x0 = sampler.clean_estimate(x, eps, t).astype(np.float32)
        if self.decode is not None:
            canvas = self.decode(x0)
        else:
            canvas = cv2.resize(latent_rgb(x0), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        thumb = self.thumbs.get(frame)
        return compose(canvas, thumb, self.box, self.settings, self.scale, thumb.shape[:2] if thumb is not None
                       else self.thumb_size)

    def _make(self, frame: int, sampler, t, x: np.ndarray, eps: np.ndarray) -> None:
        t0 = time.perf_counter()
        image = self.render(frame, sampler, t, x, eps)
        jpeg = None
        if self.options.form == "jpeg" or self.options.path:
            ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.options.quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode the preview as JPEG")
            jpeg = buffer.tobytes()
        if self.options.path:
            atomic_write(self.options.path, jpeg)  # a viewer never reads half a file
        self.made += 1
        carried = {"jpeg": jpeg, "rgb": image, "number": self.made}[self.options.form]
        self._latest = (self.made, carried)
        self.seconds += time.perf_counter() - t0
        self._ready_at = time.monotonic() + self.options.every_s


@contextmanager
def previewing(preview, pipeline, settings: Settings, box: geometry.Letterbox, count: int, frames: FrameSource,
               progress: Progress | None):
    """(the run's Previewer or None, the frames and the progress to hand the run) for ``preview``
    (``PreviewOptions.of``); the previewer is closed after the run, its last preview made."""
    options = PreviewOptions.of(preview)
    if options is None:
        yield None, frames, progress
        return
    previewer = Previewer(options, pipeline, settings, box, count)
    try:
        yield previewer, previewer.watch_source(frames), previewer.carrying(progress)
    finally:
        previewer.close()
