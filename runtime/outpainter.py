"""``Outpainter``: built once from an engines folder, then ``outpaint`` (arrays) and ``outpaint_file``."""
from __future__ import annotations

import os
import queue
import threading
from functools import lru_cache
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from runtime import geometry
from runtime.engines import EnginesError
from runtime.pipeline import ENCODE_CHUNK, OutpaintResult, Pipeline, Settings
from runtime.constants import GLOBAL_FRAMES
from runtime.video import (EncodeOptions, VideoError, VideoWriter, check_output_path, fps_from_times, iter_frames,
                           probe)

DEFAULT_ENGINES = os.environ.get("M3DDM_ENGINES", "engines")


def make_backend(engines_dir, backend: str = "auto", threads=None, max_batch=None, gpu_memory_gb=None):
    """The backend named, or for "auto" the fastest usable one: TensorRT plans, ORT CUDA, ORT CPU.

    "auto" passes over a TensorRT path that cannot run here (no TensorRT, plans for another GPU, stale
    plans) and says why in the returned backend's ``notes``; naming "tensorrt" makes that an error.
    """
    from runtime.engines.manifest import open_engines
    from runtime.engines.onnxruntime import OrtBackend, available_providers
    if backend not in ("auto", "ort", "ort-cpu", "ort-cuda", "tensorrt"):
        raise EnginesError(f"unknown backend {backend!r}; choose auto, ort, ort-cpu, ort-cuda or tensorrt")
    engines = open_engines(engines_dir)
    notes = []
    if backend == "tensorrt" or (backend == "auto" and engines.manifest.get("plans")):
        from runtime.engines.tensorrt import TensorRTBackend
        try:
            return TensorRTBackend(engines_dir, max_batch=max_batch, gpu_memory_gb=gpu_memory_gb)
        except EnginesError as exc:
            if backend == "tensorrt":
                raise
            notes.append(f"TensorRT plans not used: {exc}")
    cuda = "CUDAExecutionProvider" in available_providers()
    if backend == "ort-cuda" or (backend in ("auto", "ort") and cuda and "fp16" in engines.precisions):
        chosen = OrtBackend(engines_dir, device="cuda", threads=threads, max_batch=max_batch)
    else:
        chosen = OrtBackend(engines_dir, device="cpu", threads=threads, max_batch=max_batch)
    chosen.notes = notes + list(chosen.notes)
    return chosen


class Outpainter:
    """Outpaints videos with the engines in ``engines_dir``; safe to reuse for many videos from one process
    (calls are serialised: the engines hold one set of activations)."""

    def __init__(self, engines_dir=DEFAULT_ENGINES, backend: str = "auto", *, threads: int | None = None,
                 max_batch: int | None = None, gpu_memory_gb: float | None = None, engine=None):
        self.backend = engine if engine is not None else make_backend(engines_dir, backend, threads, max_batch,
                                                                      gpu_memory_gb)
        self.pipeline = Pipeline(self.backend)
        self.size = self.pipeline.size
        self._lock = threading.Lock()

    # -- arrays -------------------------------------------------------------------------------
    def outpaint(self, frames: np.ndarray, fps: float, ratio="9:16", steps: int | None = None, sampler: str = "pndm",
                 seed: int = 6, noise=None, *, pad=None, guidance=None, strides=None, batch_windows: int = 4,
                 window_noise: str = "shared", feather: float | None = None, step_noise=None,
                 output_height: int | None = None, progress=None) -> OutpaintResult:
        """RGB uint8 [T, H, W, 3] at ``fps`` -> the outpainted video (``.frames``) and final latents.

        ``ratio`` is "W:H" or a list of them (one output per ratio, in ``.outputs``); ``pad`` =
        (top, right, bottom, left) in source pixels replaces the ratios. ``noise`` [4, 16, h, w] is every
        window's start noise; ``step_noise(window, step)`` the per-step noise of stochastic samplers.
        ``output_height`` rescales the outputs (the source's own scale by default: its pixels untouched).
        """
        frames = self._check_frames(frames, fps)
        ratios = tuple([ratio] if isinstance(ratio, str) else ratio)
        s = self._settings(ratios, pad, dict(steps=steps, sampler=sampler, seed=seed, noise=noise, guidance=guidance,
                                             strides=strides, batch_windows=batch_windows, window_noise=window_noise,
                                             feather=feather, step_noise=step_noise, output_height=output_height))
        with self._lock:
            return self._run(frames, float(fps), s, progress)

    @staticmethod
    def _check_frames(frames, fps):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be RGB uint8 [T, H, W, 3], not {frames.dtype} {list(frames.shape)}")
        if frames.shape[0] < 1:
            raise ValueError("the video has no frames")
        if frames.shape[1] < 2 or frames.shape[2] < 2:
            raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, not {fps}")
        return frames

    def _geometry(self, height, width, s: Settings):
        if s.pad is not None:
            box = geometry.padding_geometry(height, width, s.pad, self.size)
            return box, [geometry.padding_target(height, width, s.pad)]
        for r in s.ratios:
            geometry.parse_ratio(r)
        box = geometry.letterbox_geometry(height, width, s.ratios, self.size)
        return box, [geometry.ratio_target(height, width, r) for r in s.ratios]

    def _run(self, frames, fps, s: Settings, progress) -> OutpaintResult:
        t_count, height, width = frames.shape[:3]
        box, targets = self._geometry(height, width, s)
        s.check(self.pipeline.latent)
        t0 = time.perf_counter()
        canvases, inits = self._canvases(frames, box)
        gidx = geometry.global_frame_indices(t_count, GLOBAL_FRAMES)
        generated, latents, plan, stats = self._generate(canvases, inits, frames[gidx], fps, box, s, progress)
        t3 = time.perf_counter()
        outputs = {t.label: np.stack([self._finish(composite(frames[i], generated[i], box, t, s.feather), s)
                                      for i in range(t_count)]) for t in targets}
        stats["composite_s"] = time.perf_counter() - t3
        stats["total_s"] = time.perf_counter() - t0
        return OutpaintResult(frames=outputs[targets[0].label], latents=latents, outputs=outputs, targets=targets,
                              plan=plan, stats=stats)

    def _generate(self, canvases, inits, global_frames, fps, box, s: Settings, progress, sink=None):
        """Canvases and inits [T, S, S, 3] and the 16 global frames -> generated S x S frames and latents.

        With ``sink(start, frames)``, the generated frames are handed over in order, in chunks, as soon as
        they are final, while sampling goes on (the file path composites and encodes them on another
        thread meanwhile); the returned frames are then None.
        """
        stats = {"frames": len(canvases), "model_size": self.size, "backend": getattr(self.backend, "name", "custom")}
        t0 = time.perf_counter()
        frame_latents = self.pipeline.encode(geometry.to_unit_range(inits))
        padded_latents = self.pipeline.encode(geometry.to_unit_range(canvases))
        context = self.pipeline.global_context(global_frames)
        mask_latent = box.mask[::8, ::8].astype(np.float32)  # nearest: each 8x8 cell's top-left pixel
        stats["prepare_s"] = time.perf_counter() - t0
        if progress:
            progress({"stage": "prepared", "seconds": stats["prepare_s"]})
        emitted, decode_s = [0], [0.0]

        def emit(upto, latent_of):
            # Chunks start at multiples of ENCODE_CHUNK, as Pipeline.decode's: the same frames either way.
            while emitted[0] < upto:
                start = emitted[0]
                end = min(start + ENCODE_CHUNK, upto)
                td = time.perf_counter()
                frames = self.pipeline.decode(np.stack([latent_of[i] for i in range(start, end)]))
                decode_s[0] += time.perf_counter() - td
                sink(start, frames)
                emitted[0] = end

        def on_batch(stored):
            ready = emitted[0]
            while ready in stored:
                ready += 1
            emit(emitted[0] + (ready - emitted[0]) // ENCODE_CHUNK * ENCODE_CHUNK, stored)

        t1 = time.perf_counter()
        latents, plan = self.pipeline.sample(frame_latents, padded_latents, mask_latent, context, fps, s, progress,
                                             on_batch=on_batch if sink else None)
        stats["sample_s"] = time.perf_counter() - t1 - decode_s[0]
        stats["windows"] = sum(len(level) for level in plan)
        t2 = time.perf_counter()
        if sink:
            emit(len(latents), latents)
            generated = None
        else:
            generated = self.pipeline.decode(latents)
        stats["decode_s"] = decode_s[0] + time.perf_counter() - t2
        return generated, latents, plan, stats

    @staticmethod
    def _finish(frame: np.ndarray, s: Settings) -> np.ndarray:
        """The optional output scaling: to ``output_height`` rows, width in proportion (even)."""
        if not s.output_height or s.output_height == frame.shape[0]:
            return frame
        h = int(s.output_height)
        w = max(2, int(round(frame.shape[1] * h / frame.shape[0])))
        interp = cv2.INTER_AREA if h < frame.shape[0] else cv2.INTER_CUBIC
        return cv2.resize(frame, (w, h), interpolation=interp)

    @staticmethod
    def _canvas_and_init(frame, box):
        """A frame's letterboxed canvas and its TELEA noise-init image, computed once per frame."""
        canvas = geometry.letterbox_frame(frame, box)
        return canvas, geometry.inpaint_init(canvas, box)

    @classmethod
    def _canvases(cls, frames, box):
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # OpenCV releases the GIL
            pairs = list(pool.map(lambda f: cls._canvas_and_init(f, box), frames))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    # -- files --------------------------------------------------------------------------------
    def outpaint_file(self, input, output, ratio="9:16", *, stream: int | None = None,
                      encode: EncodeOptions | None = None, overwrite: bool = True, progress=None, **kwargs) -> dict:
        """Outpaint a video file; with several ratios, ``output`` gets a ``_WxH`` suffix per ratio.

        Streams: the source is decoded three times (count, canvases, composite) instead of being held in
        memory, so a long 1080p video costs about S x S x 3 bytes a frame, not its full frames. Returns
        a summary (paths, frame count, fps, timings). Raises VideoError/ValueError/EnginesError with a
        one-line message; on failure no output file is left behind and existing outputs are untouched.
        """
        input, output = Path(input), Path(output)
        ratios = [ratio] if isinstance(ratio, str) else list(ratio)
        pad = kwargs.pop("pad", None)
        paths = self.output_paths(output, ratios if pad is None else ["pad"])
        for p in paths.values():
            if p.resolve() == input.resolve():
                raise VideoError(f"output {p} would overwrite the input")
            if p.exists() and not overwrite:
                raise VideoError(f"output {p} exists (pass overwrite=True / drop --no-overwrite)")
            check_output_path(p)
        info = probe(input, stream)
        s = self._settings(ratios, pad, kwargs)
        t0 = time.perf_counter()
        times = np.array([t for _, t, _ in iter_frames(input, stream, rgb=False)], dtype=np.float64)
        if len(times) == 0:
            raise VideoError(f"{input} has no decodable video frames")
        t_count = len(times)
        fps = info.fps or fps_from_times(times)
        gidx = geometry.global_frame_indices(t_count, GLOBAL_FRAMES)
        canvases, inits, global_frames = [], [], {}
        box = targets = None
        shape = None
        for i, (rgb, _, _) in enumerate(iter_frames(input, stream)):
            if i >= t_count:
                break
            if box is None:
                shape = rgb.shape
                box, targets = self._geometry(rgb.shape[0], rgb.shape[1], s)
                s.check(self.pipeline.latent)
            elif rgb.shape != shape:
                raise VideoError(f"{input}: the frame size changes mid-stream, which is not supported")
            canvas, init = self._canvas_and_init(rgb, box)
            canvases.append(canvas)
            inits.append(init)
            if i in gidx:
                global_frames[i] = rgb
        if len(canvases) != t_count:
            raise VideoError(f"{input}: decoding gave {len(canvases)} frames after counting {t_count}")
        # Frames are composited and encoded on another thread while the engines sample the rest.
        writers = {t.label: VideoWriter(paths[t.label], fps, encode, audio_from=input) for t in targets}
        finisher = _Finisher(lambda rgb, gen: [(t.label, self._finish(composite(rgb, gen, box, t, s.feather), s))
                                               for t in targets], iter_frames(input, stream), times, writers, input)
        written = {}
        t1 = time.perf_counter()
        try:
            finisher.start()
            with self._lock:
                _, latents, plan, stats = self._generate(np.stack(canvases), np.stack(inits),
                                                         np.stack([global_frames[i] for i in gidx]), fps, box, s,
                                                         progress, sink=finisher.put)
            del canvases, inits
            t2 = time.perf_counter()
            finisher.finish(t_count)
            stats["finish_wait_s"] = time.perf_counter() - t2
            for label, w in writers.items():
                written[label] = w.commit()
        except BaseException:
            finisher.cancel()
            for w in writers.values():
                w.abort()
            for p in written.values():  # all or nothing across the ratios of one call
                p.unlink(missing_ok=True)
            raise
        stats["encode_s"] = finisher.seconds
        stats["generate_and_encode_s"] = time.perf_counter() - t1
        stats["total_s"] = time.perf_counter() - t0
        out = targets[0]
        return {"input": str(input), "outputs": {k: str(v) for k, v in written.items()}, "frames": t_count,
                "fps": fps, "source_size": [int(shape[1]), int(shape[0])],
                "output_size": self._output_size(out, s), "has_audio": info.has_audio,
                "windows": stats["windows"], **{k: round(v, 3) for k, v in stats.items() if k.endswith("_s")}}

    @staticmethod
    def _output_size(target, s: Settings) -> list:
        w, h = target.width, target.height
        if s.output_height and s.output_height != h:
            w, h = max(2, int(round(w * s.output_height / h))), int(s.output_height)
        return [w - w % 2, h - h % 2]

    @staticmethod
    def _settings(ratios, pad, kwargs) -> Settings:
        guidance = kwargs.pop("guidance", None)
        strides = kwargs.pop("strides", None)
        return Settings(ratios=tuple(ratios), pad=tuple(pad) if pad is not None else None,
                        guidance=tuple(guidance) if guidance is not None else Settings.guidance,
                        strides=tuple(strides) if strides is not None else None, **kwargs)

    @staticmethod
    def output_paths(output: Path, labels) -> dict:
        if len(labels) == 1:
            return {str(labels[0]).replace(":", "x"): output}
        return {str(l).replace(":", "x"): output.with_name(f"{output.stem}_{str(l).replace(':', 'x')}{output.suffix}")
                for l in labels}


class _Finisher(threading.Thread):
    """Composites and encodes generated frames, in order, as they arrive (a bounded queue of chunks),
    reading the source a frame at a time. A failure here stops the producer at its next ``put``."""

    def __init__(self, compose, source_frames, times, writers, input):
        super().__init__(name="m3ddm-finisher", daemon=True)
        self.compose, self.source, self.times, self.writers, self.input = compose, source_frames, times, writers, input
        self.chunks = queue.Queue(maxsize=2)
        self.error = None
        self.done = 0
        self.seconds = 0.0
        self.cancelled = threading.Event()

    def run(self):
        try:
            for start, frames in iter(self.chunks.get, None):
                if self.cancelled.is_set():
                    return
                t0 = time.perf_counter()
                for k, generated in enumerate(frames):
                    try:
                        rgb, _, _ = next(self.source)
                    except StopIteration:
                        raise VideoError(f"{self.input}: the source ended at frame {start + k} on re-reading") from None
                    for label, frame in self.compose(rgb, generated):
                        self.writers[label].write(frame, self.times[start + k])
                self.done = start + len(frames)
                self.seconds += time.perf_counter() - t0
        except BaseException as exc:  # handed to the producer
            self.error = exc

    def _raise(self):
        if self.error is not None:
            raise self.error

    def put(self, start, frames):
        while True:
            self._raise()
            try:
                self.chunks.put((start, frames), timeout=0.1)
                return
            except queue.Full:
                if not self.is_alive():
                    self._raise()
                    raise RuntimeError("the frame writer stopped")

    def finish(self, total):
        self.put_end()
        self.join()
        self._raise()
        if self.done != total:
            raise RuntimeError(f"wrote {self.done} of {total} frames")

    def put_end(self):
        while self.is_alive():
            try:
                self.chunks.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def cancel(self):
        self.cancelled.set()
        while True:  # unblock the thread: drop what waits, then the end marker
            try:
                self.chunks.get_nowait()
            except queue.Empty:
                break
        self.put_end()
        self.join(timeout=30)
        close = getattr(self.source, "close", None)
        if close:
            close()


def composite(source: np.ndarray, generated: np.ndarray, box: geometry.Letterbox, target: geometry.Target,
              feather: float | None = None) -> np.ndarray:
    """One output frame at the source resolution: the generated S x S canvas mapped onto the target,
    the source pixels pasted unchanged, and the generated border blended over ``feather`` pixels
    towards the source's edge colours so no seam shows. Only the border strips are warped and only
    the seam band is blended (at 1080p the output has 6.5 M pixels, 2 M of them the source's)."""
    height, width = source.shape[:2]
    out = np.empty((target.height, target.width, 3), np.uint8)
    edge = None
    for strip in _seam_plan(box, height, width, target, feather):
        y0, y1, x0, x1 = strip.region
        region = cv2.warpAffine(generated, strip.warp, (x1 - x0, y1 - y0),
                                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        if strip.alpha is not None:
            if edge is None:
                f = strip.pad
                edge = cv2.copyMakeBorder(source, f, f, f, f, cv2.BORDER_REPLICATE)
            by0, by1, bx0, bx1 = strip.band  # the band inside the strip, where 0 < alpha < 1
            ey, ex = y0 + by0 - (target.top - strip.pad), x0 + bx0 - (target.left - strip.pad)
            near = edge[ey:ey + by1 - by0, ex:ex + bx1 - bx0]
            band = region[by0:by1, bx0:bx1].astype(np.float32)
            region[by0:by1, bx0:bx1] = (strip.alpha * band + (1 - strip.alpha) * near + 0.5).astype(np.uint8)
        out[y0:y1, x0:x1] = region
    out[target.top:target.top + height, target.left:target.left + width] = source
    return out


class _Strip:
    __slots__ = ("region", "warp", "alpha", "band", "pad")


@lru_cache(maxsize=16)
def _seam_plan(box, height, width, target, feather) -> tuple:
    """What every frame of one (geometry, target) shares: the border strips around the source, each
    with its warp from the S x S canvas, and the seam band's blend weights."""
    m = geometry.canvas_to_target(box, height, width, target)
    feather = max(1.0, 0.01 * min(height, width)) if feather is None else float(feather)
    f = int(np.ceil(feather)) if feather > 0 else 0
    top, left, bottom, right = target.top, target.left, target.top + height, target.left + width
    regions = [(0, top, 0, target.width), (bottom, target.height, 0, target.width),
               (top, bottom, 0, left), (top, bottom, right, target.width)]
    strips = []
    for y0, y1, x0, x1 in regions:
        if y1 <= y0 or x1 <= x0:
            continue
        s = _Strip()
        s.region, s.pad, s.alpha, s.band = (y0, y1, x0, x1), f, None, None
        s.warp = m.copy()
        s.warp[:, 2] += m[:, 0] * x0 + m[:, 1] * y0  # strip-local output pixels
        if f:
            ys = np.arange(y0, y1)[:, None]
            xs = np.arange(x0, x1)[None, :]
            dy = np.maximum(np.maximum(top - ys, ys - (bottom - 1)), 0)
            dx = np.maximum(np.maximum(left - xs, xs - (right - 1)), 0)
            alpha = np.clip(np.hypot(dx, dy) / feather, 0.0, 1.0)
            rows, cols = np.nonzero((alpha < 1).any(axis=1))[0], np.nonzero((alpha < 1).any(axis=0))[0]
            if len(rows) and len(cols):
                s.band = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
                s.alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1, None].astype(np.float32)
        strips.append(s)
    return tuple(strips)
