"""The file path of ``Outpainter.outpaint_file``: a video file in, one video file per target out, streamed.

The source is decoded twice (canvases, composite; its frames are counted from the container's packets)
instead of being held in memory, so a long video costs its latents (T x 4 x S/8 x S/8 float32), not its
frames or canvases; every frame size, read or written, is checked against the pixel budget before it is
decoded or made. Frames are composited and
encoded on a writer thread as soon as they are final, while the engines sample the rest; every output is
written to a temporary file and renamed at the end, all or nothing across the targets of one call.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from m3ddm.errors import Cancelled, check_cancel
from runtime import composite, workdir
from runtime.plan import official_plan
from runtime.prepare import VideoLatents, latent_mask
from runtime.settings import Settings
from runtime.video import EncodeOptions, VideoError, VideoWriter, fps_from_times, iter_frames, packet_times, probe


def output_paths(output: Path, labels) -> dict:
    """{label: path}: ``output`` itself for one target, else ``output`` with a ``_WxH`` suffix per target."""
    labels = [str(l).replace(":", "x") for l in labels]
    if len(labels) == 1:
        return {labels[0]: Path(output)}
    output = Path(output)
    return {l: output.with_name(f"{output.stem}_{l}{output.suffix}") for l in labels}


class _Recount(Exception):
    """The frames decoded are not the ones the container's packets announced: count them by decoding."""


def outpaint_file(pipeline, input, output, s: Settings, **options) -> dict:
    """Outpaint a video file with ``pipeline`` (runtime.pipeline.Pipeline); see ``Outpainter.outpaint_file``.
    ``lock`` is held while the engines run; ``cancel`` is checked between frames and steps. With ``work_dir``
    the job checkpoints there (runtime/workdir.py) and resumes from what an earlier run of it left.

    The frames are counted from the container's packets, without decoding, so sampling starts after one
    decoding pass, not two. The first pass checks every decoded frame's time against them; where they differ
    (a decoder that drops a damaged packet, say) the call starts over, counting by decoding, before it has
    sampled or written anything."""
    try:
        return _outpaint_file(pipeline, input, output, s, count_by_decoding=False, **options)
    except _Recount:
        return _outpaint_file(pipeline, input, output, s, count_by_decoding=True, **options)


def _outpaint_file(pipeline, input, output, s: Settings, *, stream: int | None = None,
                   encode: EncodeOptions | None = None, overwrite: bool = True, progress=None, lock=None,
                   cancel=None, work_dir=None, restart: bool = False, keep_work_dir: bool = False,
                   count_by_decoding: bool = False, preview=None) -> dict:
    input, output = Path(input), Path(output)
    encode = encode or EncodeOptions()
    s.check(pipeline.latent)
    paths = _checked_outputs(input, output, s, encode, overwrite, work_dir)
    info = probe(input, stream)
    s.check_frame(info.height, info.width, f"{input}: frames")  # as declared, before a frame is decoded
    pipeline.backend.load()  # a graph that cannot load fails now, not after the prepare stage
    t0 = time.perf_counter()
    source = _Source(input, stream, s.max_pixels, count_by_decoding, cancel)
    box, targets = s.layout(source.shape[0], source.shape[1], pipeline.size)  # every output size checked here
    fps = info.fps or fps_from_times(source.times)
    writers = {t.label: VideoWriter(paths[t.label], fps, encode, audio_from=input, times=source.times)
               for t in targets}
    finisher = _Finisher(lambda rgb, gen: composite.finish(rgb, gen, box, targets, s.feather, s.output_height),
                         iter_frames(input, stream, max_pixels=s.max_pixels), source.times, writers, input,
                         source.verify)
    wd = _work_dir(pipeline, source, info, s, work_dir, restart) if work_dir is not None else None
    written: dict = {}
    saved = resume = None
    t1 = time.perf_counter()
    try:
        finisher.start()
        with lock or nullcontext():
            saved = _saved_prepared(wd, source, box, fps) if wd else None
            resume = (wd.finished(), wd.windows_done) if wd else None
            _, _, stats = pipeline.run(source.frames, finisher.put, s, count=source.count, box=box, fps=fps,
                                       progress=progress, cancel=cancel, prepared=saved, resume=resume,
                                       on_prepared=(lambda v: wd.save_prepared(v.inits, v.canvases, v.context))
                                       if wd else None, checkpoint=wd.save_batch if wd else None, preview=preview)
        t2 = time.perf_counter()
        finisher.finish(source.count, cancel)
        stats["finish_wait_s"] = time.perf_counter() - t2
        check_cancel(cancel)  # the last chance: nothing is in place yet
        if progress:
            progress({"stage": "finish", "frames_done": source.count, "frames": source.count})
        for label, w in writers.items():
            written[label] = w.commit()
    except BaseException as exc:
        if wd is not None:
            wd.close()  # its files stay: the same call resumes from them
        finisher.cancel()
        for w in writers.values():
            w.abort()
        for p in written.values():  # all or nothing across the targets of one call
            p.unlink(missing_ok=True)
        if cancel is not None and cancel.is_set() and not isinstance(exc, Cancelled):
            raise Cancelled("cancelled") from None  # an engine call aborted by the cancellation, say
        raise
    stats.update(encode_s=finisher.seconds, generate_and_encode_s=time.perf_counter() - t1,
                 total_s=time.perf_counter() - t0)
    extra = _finish_work_dir(wd, resume, saved, keep_work_dir) if wd else {}
    return {**extra, "windows_sampled": stats["windows_sampled"], "input": str(input),
            "outputs": {k: str(v) for k, v in written.items()}, "frames": source.count, "fps": fps,
            "source_size": [int(source.shape[1]), int(source.shape[0])],
            "output_size": composite.output_size(targets[0], s.output_height), "has_audio": info.has_audio,
            "windows": stats["windows"], **{k: round(v, 3) for k, v in stats.items() if k.endswith("_s")}}


def _checked_outputs(input: Path, output: Path, s: Settings, encode: EncodeOptions, overwrite: bool,
                     work_dir) -> dict:
    """{label: path} of the outputs, each checked before anything is made: not the input, not in a work dir's
    way, not an existing file unless ``overwrite``, and writable with ``encode``'s codec and container."""
    paths = output_paths(output, s.labels)
    if work_dir is not None:  # neither the input nor an output may be in its way
        workdir.check_apart(work_dir, input, paths.values())
    for p in paths.values():
        if p.resolve() == input.resolve():
            raise VideoError(f"output {p} would overwrite the input")
        if p.exists() and not overwrite:
            raise VideoError(f"output {p} exists (pass overwrite=True / drop --no-overwrite)")
        encode.check(p)  # a codec, pixel format or container that cannot work fails now, not after sampling
    return paths


class _Source:
    """The input's frames: counted from the container's packets without decoding (so sampling starts after
    one decoding pass, not two), or by decoding where asked (``count_by_decoding``) or where the container
    announces nothing; then decoded again as often as the preparing stage asks (``frames``)."""

    def __init__(self, input: Path, stream, max_pixels: int, count_by_decoding: bool, cancel):
        self.input, self.stream, self.max_pixels = input, stream, max_pixels
        self.announced = packet_times(input, stream)
        self.verify = self.announced is not None and not count_by_decoding
        self.times: np.ndarray = (self.announced if self.announced is not None and not count_by_decoding
                                  else self._decoded_times(cancel))
        self.count = len(self.times)
        first = iter_frames(input, stream, max_pixels=max_pixels)
        try:
            frame = next(first, None)
        finally:
            first.close()
        if frame is None:
            raise VideoError(f"{input} has no decodable video frames")
        self.shape = frame[0].shape

    def _decoded_times(self, cancel) -> np.ndarray:
        times = []
        for _, t, _ in iter_frames(self.input, self.stream, rgb=False, max_pixels=self.max_pixels):
            times.append(t)
            if len(times) % 256 == 0:
                check_cancel(cancel)
        if not times:
            raise VideoError(f"{self.input} has no decodable video frames")
        return np.array(times, dtype=np.float64)

    def frames(self, wanted):
        """(index, RGB or None) of every frame, decoded again; RGB for those in ``wanted`` (None: all). Where
        the count was announced, a frame whose time differs from it starts the call over (``_Recount``)."""
        i = -1
        for i, (rgb, t, _) in enumerate(iter_frames(self.input, self.stream, rgb=True if wanted is None else wanted,
                                                    max_pixels=self.max_pixels)):
            if self.verify and (i >= self.count or t != self.times[i]):
                raise _Recount()
            if rgb is not None and rgb.shape != self.shape:
                raise VideoError(f"{self.input}: the frame size changes mid-stream, which is not supported")
            yield i, rgb
        if self.verify and i + 1 != self.count:
            raise _Recount()


def _work_dir(pipeline, source: _Source, info, s: Settings, folder, restart: bool) -> workdir.WorkDir:
    """The job's work dir, opened (and locked) before anything is made; a work dir of another job is refused."""
    # "frames": as announced where the container announces them, so that both ways of counting name the
    # same job (a work dir left by a run that had to count by decoding is resumed by the next run).
    input = source.input
    job = {"format": workdir.FORMAT, "input": {"bytes": input.stat().st_size, "sha256": workdir.file_digest(input)},
           "stream": info.stream_index, "frames": source.count if source.announced is None else len(source.announced),
           "settings": workdir.settings_identity(s), "engines": workdir.engines_identity(pipeline.backend)}
    plan = official_plan(source.count, s.strides)
    return workdir.WorkDir.open(folder, job, restart, expected=workdir.Expected.of(plan, source.count, pipeline.latent))


def _saved_prepared(wd: workdir.WorkDir, source: _Source, box, fps: float) -> VideoLatents | None:
    """The VAE encodes an earlier run of this job left in its work dir, if any."""
    saved = wd.prepared()
    if not saved:
        return None
    if len(saved["inits"]) != source.count:
        if source.verify:  # prepared by a run that counted by decoding: so must this one
            raise _Recount()
        raise VideoError(f"work dir {wd.folder} holds {len(saved['inits'])} prepared frames, the video "
                         f"{source.count}; pass --restart")
    return VideoLatents(saved["inits"], saved["canvases"], latent_mask(box), saved["context"], float(fps))


def _finish_work_dir(wd: workdir.WorkDir, resume, saved, keep_work_dir: bool) -> dict:
    """What the summary says of the work dir; removed unless kept."""
    try:
        extra = {"work_dir": str(wd.folder), "work_dir_bytes": wd.bytes_on_disk(), "resumed_windows": resume[1],
                 "prepare_resumed": saved is not None, "checkpoint_s": round(wd.seconds, 4)}
        if not keep_work_dir:
            wd.clear()
    finally:
        wd.close()
    return extra


class _Finisher(threading.Thread):
    """Composites and encodes generated frames, in order, as they arrive (a bounded queue of chunks),
    reading the source a frame at a time. A failure here stops the producer at its next ``put``."""

    def __init__(self, compose, source_frames, times, writers, input, verify: bool = False):
        super().__init__(name="m3ddm-finisher", daemon=True)
        self.compose, self.source, self.times, self.writers, self.input = compose, source_frames, times, writers, input
        self.verify = verify  # the times were announced, not decoded: a run resumed from its work dir checks here
        self.chunks: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.done = 0
        self.seconds = 0.0
        self.cancelled = threading.Event()

    def run(self):
        # Each frame composited on a pool (OpenCV and NumPy's copies release the GIL), written in order as it
        # is done: a few frames in flight, never the video. The encoder has threads of its own.
        workers = min(4, os.cpu_count() or 1)
        pending: deque = deque()  # (frame number, future of its [(label, frame)])

        def write_next():
            number, future = pending.popleft()
            for label, frame in future.result():
                self.writers[label].write(frame, self.times[number])
            self.done = number + 1

        try:
            with ThreadPoolExecutor(workers) as pool:
                for start, frames in iter(self.chunks.get, None):
                    if self.cancelled.is_set():
                        return
                    t0 = time.perf_counter()
                    for k, generated in enumerate(frames):
                        if self.cancelled.is_set():
                            return
                        try:
                            rgb, t, _ = next(self.source)
                        except StopIteration:
                            if self.verify:
                                raise _Recount() from None
                            raise VideoError(f"{self.input}: the source ended at frame {start + k} "
                                             "on re-reading") from None
                        if self.verify and t != self.times[start + k]:
                            raise _Recount()
                        pending.append((start + k, pool.submit(self.compose, rgb, generated)))
                        while len(pending) > workers:
                            write_next()
                    self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                while pending:
                    if self.cancelled.is_set():
                        return
                    write_next()
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
                    raise RuntimeError("the frame writer stopped") from None

    def finish(self, total, cancel=None):
        self.put_end()
        while self.is_alive():
            self.join(0.1)
            check_cancel(cancel)
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
