"""The Python API, ``runtime.Outpainter``: built once from an engines folder, then ``outpaint`` (arrays) and
``outpaint_file`` (files). The command line over it is runtime/outpaint.py (``python -m runtime.outpaint``).

It ties the parts together and holds none of their logic: the backend (runtime/engines/select.py), the
sampling core (runtime/pipeline.py), the canvases and geometry (runtime/geometry.py, Settings.layout), the
compositing (runtime/composite.py) and the streamed file path (runtime/streaming.py).
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from m3ddm.errors import InputError
from runtime import composite, env, streaming
from runtime.callbacks import CancelToken, Progress, Spread
from runtime.engines.select import make_backend
from runtime.pipeline import OutpaintResult, Pipeline
from runtime.preview import PreviewOptions
from runtime.settings import Settings
from runtime.video import EncodeOptions


class Outpainter:
    """Outpaints videos with the engines in ``engines_dir`` ($M3DDM_ENGINES or ./engines when None); safe to
    reuse for many videos from one process (calls are serialised: the engines hold one set of activations)."""

    def __init__(self, engines_dir=None, backend: str = "auto", *, threads: int | None = None,
                 max_batch: int | None = None, gpu_memory_gb: float | None = None, engine=None,
                 spread: Spread | None = None):
        """``spread``: where a level's independent batches are sampled besides this process, e.g.
        ``runtime.cluster.window_pool(engines_dir, workers)`` (Ray workers, the ``cluster`` extra): this process
        prepares, runs the first level and decodes; the Outpainter closes it with itself."""
        check_resources(threads, gpu_memory_gb)
        engines_dir = engines_dir if engines_dir is not None else env.engines_dir()
        self.backend = engine if engine is not None else make_backend(engines_dir, backend, threads, max_batch,
                                                                      gpu_memory_gb, device_loop=env.device_loop())
        self.pipeline = Pipeline(self.backend)
        self.pipeline.spread = spread
        self.size = self.pipeline.size
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the backend's sessions and device memory (and the Ray workers)."""
        if self.pipeline.spread is not None:
            self.pipeline.spread.close()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- arrays -------------------------------------------------------------------------------
    def outpaint(self, frames: np.ndarray, fps: float, ratio=None, steps: int | None = None, sampler: str | None = None,
                 seed: int | None = None, noise=None, *, settings: Settings | None = None,
                 progress: Progress | None = None, cancel: CancelToken | None = None, preview=None,
                 **options) -> OutpaintResult:
        """RGB uint8 [T, H, W, 3] at ``fps`` -> the outpainted video (``.frames``) and final latents.

        The run is ``settings`` (a ``Settings``; its defaults when None: ratio 9:16, 50 PNDM steps, seed 6) with
        the keyword arguments given applied over it: ``ratio`` "W:H" or a list (one output per ratio, in
        ``.outputs``), ``pad`` = (top, right, bottom, left) in source pixels instead of ratios, ``noise``
        [4, 16, h, w] every window's start noise, ``step_noise(window, step)`` the per-step noise of
        stochastic samplers, ``output_height`` to rescale the outputs, and every other Settings field.
        ``cancel`` (anything with ``is_set()``, e.g. a threading.Event) is checked between steps: once set,
        the call raises m3ddm.errors.Cancelled. ``preview`` as for ``outpaint_file``.
        """
        s = Settings.build(settings, ratio=ratio, steps=steps, sampler=sampler, seed=seed, noise=noise, **options)
        PreviewOptions.of(preview)
        frames = _check_frames(frames, fps)
        s.check(self.pipeline.latent)
        t_count, height, width = frames.shape[:3]
        box, targets = s.layout(height, width, self.size)
        t0 = time.perf_counter()
        generated = np.empty((t_count, self.size, self.size, 3), np.uint8)

        def given(wanted):  # the frames as prepare asks for them: the first level's first
            return ((i, frames[i] if wanted is None or i in wanted else None) for i in range(t_count))

        def keep(start, chunk):
            generated[start:start + len(chunk)] = chunk

        with self._lock:
            latents, plan, stats = self.pipeline.run(given, keep, s, count=t_count, box=box, fps=float(fps),
                                                     progress=progress, cancel=cancel, preview=preview)
        t3 = time.perf_counter()
        outputs = {t.label: np.stack([composite.scale_output(composite.composite(frames[i], generated[i], box, t,
                                                                                 s.feather), s.output_height)
                                      for i in range(t_count)]) for t in targets}
        stats.update(frames=t_count, model_size=self.size, backend=self.backend.name,
                     composite_s=time.perf_counter() - t3, total_s=time.perf_counter() - t0)
        return OutpaintResult(frames=outputs[targets[0].label], latents=latents, outputs=outputs, targets=targets,
                              plan=plan, stats=stats)

    # -- files --------------------------------------------------------------------------------
    def outpaint_file(self, input, output, ratio=None, *, settings: Settings | None = None, stream: int | None = None,
                      encode: EncodeOptions | None = None, overwrite: bool = True,
                      progress: Progress | None = None, cancel: CancelToken | None = None,
                      work_dir=None, restart: bool = False, keep_work_dir: bool = False, preview=None,
                      **options) -> dict:
        """Outpaint a video file; with several targets, ``output`` gets a ``_WxH`` suffix per target.

        The run is ``settings`` with the keyword arguments given applied, as for ``outpaint``. Streams the
        source (runtime/streaming.py) instead of holding it in memory. Returns a summary (paths, frame count,
        fps, timings). Raises VideoError/InputError/EnginesError with a one-line message; on failure no output
        file is left behind and existing outputs are untouched. ``cancel`` as for ``outpaint``.

        With ``work_dir`` the job checkpoints there after every batch of windows (runtime/workdir.py): a call
        that was killed, cancelled or failed is resumed by the same call, with the same result; a work dir of
        another job is refused (``restart=True`` clears it); it is removed on success unless ``keep_work_dir``.

        ``preview`` shows the border forming while the run samples (runtime/preview.py): "jpeg" (or "rgb") puts
        the latest preview, JPEG bytes (or RGB uint8 [h, w, 3]), into the next progress event as "preview";
        ``PreviewOptions(path=...)`` also keeps a JPEG file up to date, ``decoder="vae"`` decodes with the VAE.
        Previews never change the result, and are made on a thread of their own.
        """
        s = Settings.build(settings, ratio=ratio, **options)
        return streaming.outpaint_file(self.pipeline, input, output, s, stream=stream, encode=encode,
                                       overwrite=overwrite, progress=progress, lock=self._lock, cancel=cancel,
                                       work_dir=work_dir, restart=restart, keep_work_dir=keep_work_dir,
                                       preview=preview)

    def interrupt(self) -> None:
        """Abort the engine call in flight, if the backend can (ONNX Runtime can): with a cancel token set,
        the job then stops at once instead of at the end of its current step. Safe from any thread."""
        self.backend.interrupt()
        if self.pipeline.spread is not None:
            self.pipeline.spread.interrupt()


MAX_GPU_MEMORY_GB = 4096.0


def check_resources(threads, gpu_memory_gb) -> None:
    """Refuse thread counts and memory caps that cannot mean anything on this machine (10^5 threads would
    not fail: they would be created, one by one)."""
    most = max(256, 4 * (os.cpu_count() or 1))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or not 1 <= threads <= most):
        raise InputError(f"threads must be an integer from 1 to {most}, not {threads}")
    if gpu_memory_gb is not None:
        try:
            gb = float(gpu_memory_gb)
        except (TypeError, ValueError):
            raise InputError(f"gpu memory must be a number of GB, not {gpu_memory_gb!r}") from None
        if not (np.isfinite(gb) and 0 < gb <= MAX_GPU_MEMORY_GB):
            raise InputError(f"gpu memory must be a finite number of GB above 0 and at most {MAX_GPU_MEMORY_GB:g}, "
                             f"not {gpu_memory_gb}")


def _check_frames(frames, fps) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be RGB uint8 [T, H, W, 3], not {frames.dtype} {list(frames.shape)}")
    if frames.shape[0] < 1:
        raise InputError("the video has no frames")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise InputError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small")
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"fps must be positive, not {fps}")
    return frames
