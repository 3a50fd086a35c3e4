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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from m3ddm.errors import InputError
from m3ddm.facts import GLOBAL_FRAMES
from runtime import composite, env, geometry, streaming
from runtime.engines.select import make_backend
from runtime.pipeline import OutpaintResult, Pipeline
from runtime.settings import Settings
from runtime.video import EncodeOptions


class Outpainter:
    """Outpaints videos with the engines in ``engines_dir`` ($M3DDM_ENGINES or ./engines when None); safe to
    reuse for many videos from one process (calls are serialised: the engines hold one set of activations)."""

    def __init__(self, engines_dir=None, backend: str = "auto", *, threads: int | None = None,
                 max_batch: int | None = None, gpu_memory_gb: float | None = None, engine=None):
        self.backend = engine if engine is not None else make_backend(
            engines_dir if engines_dir is not None else env.engines_dir(), backend, threads, max_batch, gpu_memory_gb)
        self.pipeline = Pipeline(self.backend)
        self.size = self.pipeline.size
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the backend's sessions and device memory."""
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- arrays -------------------------------------------------------------------------------
    def outpaint(self, frames: np.ndarray, fps: float, ratio=None, steps: int | None = None, sampler: str | None = None,
                 seed: int | None = None, noise=None, *, settings: Settings | None = None, progress=None,
                 **options) -> OutpaintResult:
        """RGB uint8 [T, H, W, 3] at ``fps`` -> the outpainted video (``.frames``) and final latents.

        The run is ``settings`` (a ``Settings``; its defaults when None: ratio 9:16, 50 PNDM steps, seed 6) with
        the keyword arguments given applied over it: ``ratio`` "W:H" or a list (one output per ratio, in
        ``.outputs``), ``pad`` = (top, right, bottom, left) in source pixels instead of ratios, ``noise``
        [4, 16, h, w] every window's start noise, ``step_noise(window, step)`` the per-step noise of
        stochastic samplers, ``output_height`` to rescale the outputs, and every other Settings field.
        """
        s = Settings.build(settings, ratio=ratio, steps=steps, sampler=sampler, seed=seed, noise=noise, **options)
        frames = _check_frames(frames, fps)
        s.check(self.pipeline.latent)
        t_count, height, width = frames.shape[:3]
        box, targets = s.layout(height, width, self.size)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # OpenCV releases the GIL
            pairs = list(pool.map(lambda f: geometry.canvas_and_init(f, box), frames))
        gidx = geometry.global_frame_indices(t_count, GLOBAL_FRAMES)
        with self._lock:
            video = self.pipeline.prepare(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]),
                                          frames[gidx], box, float(fps))
            del pairs
            prepare_s = time.perf_counter() - t0
            if progress:
                progress({"stage": "prepared", "seconds": prepare_s})
            generated, latents, plan, stats = self.pipeline.generate(video, s, progress)
        t3 = time.perf_counter()
        outputs = {t.label: np.stack([composite.scale_output(composite.composite(frames[i], generated[i], box, t,
                                                                                 s.feather), s.output_height)
                                      for i in range(t_count)]) for t in targets}
        stats.update(frames=t_count, model_size=self.size, backend=self.backend.name, prepare_s=prepare_s,
                     composite_s=time.perf_counter() - t3, total_s=time.perf_counter() - t0)
        return OutpaintResult(frames=outputs[targets[0].label], latents=latents, outputs=outputs, targets=targets,
                              plan=plan, stats=stats)

    # -- files --------------------------------------------------------------------------------
    def outpaint_file(self, input, output, ratio=None, *, settings: Settings | None = None, stream: int | None = None,
                      encode: EncodeOptions | None = None, overwrite: bool = True, progress=None, **options) -> dict:
        """Outpaint a video file; with several targets, ``output`` gets a ``_WxH`` suffix per target.

        The run is ``settings`` with the keyword arguments given applied, as for ``outpaint``. Streams the
        source (runtime/streaming.py) instead of holding it in memory. Returns a summary (paths, frame count,
        fps, timings). Raises VideoError/InputError/EnginesError with a one-line message; on failure no output
        file is left behind and existing outputs are untouched.
        """
        s = Settings.build(settings, ratio=ratio, **options)
        return streaming.outpaint_file(self.pipeline, input, output, s, stream=stream, encode=encode,
                                       overwrite=overwrite, progress=progress, lock=self._lock)


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
