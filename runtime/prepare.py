"""Preparing a video for sampling (docs/algorithm.md §2-3): every frame's letterboxed canvas and TELEA-inpainted
init VAE-encoded once, the global frames encoded into the context once, level by level so that sampling can
start on the first level's first run while the rest is still being prepared.

Whatever the timing, the latents are the same: every group of frames is encoded in its own chunks of VAE_BATCH,
in frame order.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from m3ddm.errors import check_cancel
from m3ddm.facts import GLOBAL_FRAMES, VAE_DOWNSAMPLE
from runtime import geometry
from runtime.engines.contract import VAE_BATCH
from runtime.plan import independent_runs
from runtime.video.source import VideoError


@dataclass(frozen=True)
class VideoLatents:
    """What sampling reads of one video, computed once by ``Pipeline.prepare``."""
    inits: np.ndarray  # [T, 4, h, w] latents of the TELEA-inpainted canvases: the start of every window
    canvases: np.ndarray  # [T, 4, h, w] latents of the letterboxed canvases: the local branches' context
    mask: np.ndarray  # [h, w] latent mask, 1 where content is missing
    context: np.ndarray  # [1, L, 320] the global frames' context tokens
    fps: float
    waiter: _Preparer | None = field(default=None, compare=False, repr=False)  # prepares the later levels meanwhile

    def __len__(self) -> int:
        return len(self.inits)

    def wait(self, level: int | None = None, cancel=None, first_run: bool = False) -> None:
        """Until the frames of plan level ``level`` (None: every frame; ``first_run``: only the first level's
        first run, all the first step reads) are prepared; a failure of the preparing thread is raised here."""
        if self.waiter is not None:
            self.waiter.wait(level, cancel, first_run)

    def __getstate__(self):  # to another process: the prepared arrays, never the thread preparing them
        self.wait()
        return {k: getattr(self, k) for k in ("inits", "canvases", "mask", "context", "fps")}

    def __setstate__(self, state):
        for k, v in {**state, "waiter": None}.items():
            object.__setattr__(self, k, v)


def prepare_groups(count: int, plan=None) -> list[list[int]]:
    """The frames in the order they are prepared: grouped by the first plan level whose windows read them,
    each group in frame order (one group of every frame without a plan). With more than one level, the first
    level is two groups: the frames of its first run (what the first step reads) and the rest of it. Then
    ``level_groups`` says which group completes each level."""
    if plan is None:
        return [list(range(count))]
    seen: set[int] = set()
    groups: list[list[int]] = []
    for level in plan:
        group = sorted({f for w in level for f in w.frames} - seen)
        seen.update(group)
        groups.append(group)
    rest = sorted(set(range(count)) - seen)
    if rest:  # a plan that reads fewer frames than the video has: they still get latents
        groups[-1] = sorted(groups[-1] + rest)
    if len(plan) > 1:
        head = sorted({f for w in independent_runs(plan[0])[0] for f in w.frames})
        groups[:1] = [head, sorted(set(groups[0]) - set(head))]
    return groups


def level_groups(groups: list, plan=None) -> list[int]:
    """For each plan level, the group whose completion makes it ready (groups complete in order)."""
    levels = len(plan) if plan is not None else 1
    return [k + 1 for k in range(levels)] if len(groups) == levels + 1 else list(range(len(groups)))


DEFER_BYTES = 128 * 2 ** 20  # canvases of the first level held for after the first step, at most


class _Preparer:
    """Canvases and TELEA inits on a pool of threads, VAE-encoded in chunks of VAE_BATCH per group (the
    group's frames in order): the latents are the same whatever the timing. Level k is ready once group
    ``levels[k]`` is (``level_groups``); the first step waits for group 0 alone."""

    def __init__(self, pipeline, count, groups, box, progress, cancel, levels=None, early=()):
        self.pipeline, self.count, self.box, self.progress, self.cancel = pipeline, count, box, progress, cancel
        self.levels = levels or list(range(len(groups)))  # level k is ready with group levels[k]
        self.early = set(early)  # groups ready as soon as encoded, also on the thread (the first level's)
        self.group_of = np.zeros(count, np.int64)
        for g, frames in enumerate(groups):
            self.group_of[frames] = g
        self.left = [len(frames) for frames in groups]
        self.buffers: list[list] = [[] for _ in groups]  # (index, future) waiting for their chunk
        self.ready = [threading.Event() for _ in groups]
        for g, n in enumerate(self.left):
            if n == 0:
                self.ready[g].set()
        self.held: list[np.ndarray | None] = [None, None]  # latents of the canvases, of the inits
        self.done, self.t0 = 0, time.perf_counter()
        self.workers = min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.workers)  # OpenCV releases the GIL
        self.thread, self.error, self._stop = None, None, threading.Event()

    def add(self, i: int, rgb: np.ndarray) -> None:
        self._submit(i, self.pool.submit(geometry.canvas_and_init, rgb, self.box))

    def add_canvas(self, i: int, canvas: np.ndarray) -> None:
        """A frame whose canvas was made earlier: only its TELEA init is left."""
        self._submit(i, self.pool.submit(lambda: (canvas, geometry.inpaint_init(canvas, self.box))))

    def _submit(self, i: int, future) -> None:
        g = int(self.group_of[i])
        self.buffers[g].append((i, future))
        if len(self.buffers[g]) == VAE_BATCH:  # memory: at most a chunk of frames per group (plan level)
            self._encode(g)

    def flush(self, group: int | None) -> None:
        """Encode what is left of ``group`` (None: every group): its frames are all in."""
        for g in range(len(self.buffers)) if group is None else [group]:
            if self.buffers[g]:
                self._encode(g)

    def _encode(self, g: int) -> None:
        chunk = self.buffers[g]
        results = [future.result() for _, future in chunk]
        index = np.array([i for i, _ in chunk])
        for k in (1, 0):  # inits first
            latents = self.pipeline.encode(geometry.to_unit_range(np.stack([r[k] for r in results])))
            held = self.held[k]
            if held is None:  # the latents are held once, never copied whole
                held = self.held[k] = np.empty((self.count, *latents.shape[1:]), np.float32)
            held[index] = latents
        chunk.clear()
        self.done += len(index)
        self.left[g] -= len(index)
        if self.left[g] == 0 and (self.thread is None or g in self.early):  # else: once all is in, and saved
            self.ready[g].set()
        if self.progress:
            self.progress({"stage": "prepare", "frames_done": self.done, "frames": self.count,
                           "seconds": time.perf_counter() - self.t0})

    # -- the later groups on a thread of their own --------------------------------------------
    def run(self, body) -> None:
        def work():
            try:
                body()
            except BaseException as exc:
                self.error = exc
            finally:
                self.pool.shutdown(wait=True)
                for event in self.ready:
                    event.set()  # waiters wake up and see the error, if any
        self.thread = threading.Thread(target=work, name="m3ddm-prepare", daemon=True)
        self.thread.start()

    def wait(self, level, cancel=None, first_run: bool = False) -> None:
        if first_run:
            event = self.ready[0]
        else:
            event = self.ready[-1 if level is None else self.levels[min(level, len(self.levels) - 1)]]
        while not event.wait(0.1):
            check_cancel(cancel)
        if self.error is not None:
            raise self.error

    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop preparing (at the next frame) and wait for the thread; safe to call twice."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        self.pool.shutdown(wait=True)


def latent_mask(box: geometry.Letterbox) -> np.ndarray:
    """[h, w] float32 latent mask, 1 where content is missing: each 8x8 cell's top-left pixel (nearest)."""
    return box.mask[::VAE_DOWNSAMPLE, ::VAE_DOWNSAMPLE].astype(np.float32)



def prepare(pipeline, frames, count: int, box: geometry.Letterbox, fps: float, progress=None, cancel=None,
            plan=None, background: bool = False, on_prepared=None) -> VideoLatents:
    """The ``count`` RGB frames -> what sampling reads (``Pipeline.prepare`` documents the arguments)."""
    run = _Preparation(pipeline, frames, count, box, progress, cancel, plan)
    try:
        context = run.first_pass()
    except BaseException:
        run.prep.close()
        raise
    canvases, inits = run.prep.held
    assert canvases is not None and inits is not None  # the first run's frames are encoded by now
    video = VideoLatents(inits=inits, canvases=canvases, mask=latent_mask(box), context=context,
                         fps=float(fps), waiter=run.prep if run.two_passes else None)

    def rest():
        run.second_pass()
        if on_prepared is not None:
            on_prepared(video)

    if not run.two_passes:
        run.check_all_given()
        run.prep.close()
        if on_prepared is not None:
            on_prepared(video)
    elif background:
        run.prep.run(rest)
    else:
        try:
            rest()
        finally:
            run.prep.close()
        video = dataclasses.replace(video, waiter=None)
    return video


class _Preparation:
    """One video's preparing, in two passes where ``frames`` can be decoded again and the plan has levels.

    The first pass decodes every frame (the global frames span the video). It prepares the first run's frames;
    of the rest of the first level it keeps only the canvases (cheap and small), whose TELEA inits (~50 ms each)
    are made after the first step has started. The second pass prepares the rest, level by level."""

    def __init__(self, pipeline, frames, count, box, progress, cancel, plan):
        self.pipeline, self.frames, self.count, self.box, self.cancel = pipeline, frames, count, box, cancel
        self.groups = prepare_groups(count, plan)
        levels = level_groups(self.groups, plan)
        self.split = levels[0] == 1  # the first level in two groups: its first run, then the rest of it
        self.gidx = geometry.global_frame_indices(count, GLOBAL_FRAMES)
        self.gset = set(self.gidx.tolist())
        self.prep = _Preparer(pipeline, count, self.groups, box, progress, cancel, levels,
                              early={1} if self.split else ())
        self.two_passes = callable(frames) and len(self.groups) > 1
        if self.two_passes:
            self.first = set(self.groups[0]) | (set(self.groups[1]) if self.split else set())
        else:
            self.first = set(range(count))
        size = pipeline.size
        self.defer = (set(self.groups[1]) if self.two_passes and self.split and
                      len(self.groups[1]) * size * size * 3 <= DEFER_BYTES else set())
        self.deferred: dict[int, Future] = {}
        # The global images and the kept canvases are made on the pool too, off the decoding thread; a few
        # frames in flight at most, so a fast decoder never queues up the video's full-size frames.
        self.in_flight: deque = deque()

    def _on_pool(self, fn, *args) -> Future:
        future = self.prep.pool.submit(fn, *args)
        self.in_flight.append(future)
        while len(self.in_flight) > 2 * self.prep.workers:
            self.in_flight.popleft().result()
        return future

    def first_pass(self) -> np.ndarray:
        """Every frame decoded once: the first run's frames prepared, the global frames encoded; the context."""
        prep, frames = self.prep, self.frames
        global_images: dict[int, Future] = {}
        if callable(frames):
            source = frames(self.first | self.gset if self.two_passes else None)
        else:
            source = enumerate(frames)
        for i, rgb in source:
            if i >= self.count:
                break
            check_cancel(self.cancel)
            if rgb is None:
                if i in self.first or i in self.gset:
                    raise VideoError(f"frame {i} was asked for and not given")
                continue
            if i in self.gset:
                global_images[i] = self._on_pool(self.pipeline.global_image, rgb)
            if i in self.defer:
                self.deferred[i] = self._on_pool(geometry.letterbox_frame, rgb, self.box)
            elif i in self.first:
                prep.add(i, rgb)
        prep.flush(0 if self.two_passes else None)
        if self.two_passes and self.split and not self.defer:
            prep.flush(1)
        if len(global_images) != len(self.gset):
            raise VideoError(f"the video gave fewer than the {self.count} frames expected")
        images = np.stack([global_images[int(i)].result() for i in self.gidx])
        return self.pipeline.backend.encode_global(self.pipeline.encode(images))

    def second_pass(self) -> None:
        """The deferred TELEA inits of the first level, then every later frame, decoded again."""
        prep, count = self.prep, self.count
        for i in sorted(self.deferred):
            if prep.stopped():
                return
            check_cancel(self.cancel)
            prep.add_canvas(i, self.deferred.pop(i).result())
        if self.defer:
            prep.flush(1)
        for i, rgb in self.frames(set(range(count)) - self.first):
            if i >= count:
                break
            if prep.stopped():
                return
            check_cancel(self.cancel)
            if i not in self.first:
                if rgb is None:
                    raise VideoError(f"frame {i} was asked for and not given")
                prep.add(i, rgb)
        prep.flush(None)
        self.check_all_given()

    def check_all_given(self) -> None:
        if self.prep.done != self.count:
            raise VideoError(f"the video gave {self.prep.done} frames, {self.count} expected")
