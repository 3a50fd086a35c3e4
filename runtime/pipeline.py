"""The outpainting pipeline over an engine backend: canvases in, final latents and generated frames out (no torch).

Per video (docs/algorithm.md): every VAE encode once per frame, the global encoder once, the window plan level by
level with independent windows batched into one engine call of 3 x W rows, each output frame decoded once.
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
from m3ddm.facts import GLOBAL_FRAMES, VAE_DOWNSAMPLE, WINDOW_FRAMES
from runtime import geometry, guidance, samplers
from runtime.engines.contract import VAE_BATCH
from runtime.plan import Window, independent_runs, official_plan
from runtime.resize import resize_frame_antialias
from runtime.settings import Settings


@dataclass
class OutpaintResult:
    frames: np.ndarray  # RGB uint8 [T, H', W', 3]: the first target's video
    latents: np.ndarray  # float32 [T, 4, S/8, S/8]: final scaled latents per frame
    outputs: dict = field(default_factory=dict)  # target label -> frames, every target
    targets: list = field(default_factory=list)
    plan: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VideoLatents:
    """What sampling reads of one video, computed once by ``Pipeline.prepare``."""
    inits: np.ndarray  # [T, 4, h, w] latents of the TELEA-inpainted canvases: the start of every window
    canvases: np.ndarray  # [T, 4, h, w] latents of the letterboxed canvases: the local branches' context
    mask: np.ndarray  # [h, w] latent mask, 1 where content is missing
    context: np.ndarray  # [1, L, 320] the global frames' context tokens
    fps: float
    waiter: object = field(default=None, compare=False, repr=False)  # prepares the later levels meanwhile

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


@dataclass(frozen=True)
class BatchNoise:
    """The random draws of one batch of windows, each belonging to its window (never to the batch)."""
    start: np.ndarray  # [W, 4, 16, h, w] start noise per window
    steps: list  # per window: step -> [4, 16, h, w], the fresh noise of stochastic samplers


def prepare_groups(count: int, plan=None) -> list[list[int]]:
    """The frames in the order they are prepared: grouped by the first plan level whose windows read them,
    each group in frame order (one group of every frame without a plan). With more than one level, the first
    level is two groups: the frames of its first run (what the first step reads) and the rest of it. Then
    ``level_groups`` says which group completes each level."""
    if plan is None:
        return [list(range(count))]
    seen, groups = set(), []
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
            if self.held[k] is None:  # the latents are held once, never copied whole
                self.held[k] = np.empty((self.count, *latents.shape[1:]), np.float32)
            self.held[k][index] = latents
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
        # Optional: spread(tasks, video, stored, settings, cancel, reporter) samples a run's independent batches
        # elsewhere (runtime/cluster.py: Ray workers) and yields their latents in order.
        self.spread = None

    def null_inputs(self):
        """(null latent [4, h, w] of an all-black image, null context [1, L, 320] of zero latents), once."""
        if self._null is None:
            black = -np.ones((1, 3, self.size, self.size), np.float32)
            null_latent = self.backend.vae_encode(black)[0]
            zeros = np.zeros((GLOBAL_FRAMES, 4, self.latent, self.latent), np.float32)
            self._null = (null_latent, self.backend.encode_global(zeros))
        return self._null

    def encode(self, images_unit: np.ndarray) -> np.ndarray:
        return np.concatenate([self.backend.vae_encode(images_unit[i:i + VAE_BATCH])
                               for i in range(0, len(images_unit), VAE_BATCH)])

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return np.concatenate([to_uint8(self.backend.vae_decode(latents[i:i + VAE_BATCH]))
                               for i in range(0, len(latents), VAE_BATCH)])

    def global_image(self, rgb: np.ndarray) -> np.ndarray:
        """One global frame stretched to S x S (antialiased bilinear, as the official code), [3, S, S] in [-1, 1].
        Made as the frame is decoded, so a long 4K video never holds its full-size frames."""
        return resize_frame_antialias(rgb, self.size, self.size) * 2 - 1

    def prepare(self, frames, count: int, box: geometry.Letterbox, fps: float, progress=None,
                cancel=None, plan=None, background: bool = False, on_prepared=None) -> VideoLatents:
        """The ``count`` RGB frames -> what sampling reads.

        ``frames``: an iterable of the frames in order (read once), or a callable ``frames(wanted)`` giving
        (index, RGB or None) for every frame, RGB for the indices in ``wanted`` (a set; None: all), which may be
        called more than once (a file decoded again). Each frame's canvas and TELEA init are made on a pool of
        threads and VAE-encoded VAE_BATCH at a time: memory grows with the latents, not with the canvases.

        With ``plan`` the frames are taken level by level (``prepare_groups``): the first level's first run
        (and the global frames) first, then the rest of the first level (from canvases the first pass kept),
        then the later levels, each group encoded in its own chunks of VAE_BATCH in frame order, so the
        latents never depend on timing. With ``background`` (and a callable ``frames``) the call returns once
        the first run's frames are ready and prepares the rest on a thread while sampling starts
        (``VideoLatents.wait``); ``on_prepared(video)`` is called once every frame is. Only for backends whose
        engines take calls from two threads at once (``Backend.concurrent``).
        """
        groups = prepare_groups(count, plan)
        levels = level_groups(groups, plan)
        split = levels[0] == 1  # the first level in two groups: its first run, then the rest of it
        gidx = geometry.global_frame_indices(count, GLOBAL_FRAMES)
        gset = set(gidx.tolist())
        prep = _Preparer(self, count, groups, box, progress, cancel, levels, early={1} if split else ())
        global_images = {}
        two_passes = callable(frames) and len(groups) > 1
        # The first pass decodes every frame (the global frames span the video). It prepares the first run's
        # frames; of the rest of the first level it keeps only the canvases (cheap and small), whose TELEA
        # inits (~50 ms each) are made after the first step has started.
        first = set(groups[0]) | (set(groups[1]) if split else set()) if two_passes else set(range(count))
        deferred: dict[int, Future] = {}
        defer = (set(groups[1]) if two_passes and split and
                 len(groups[1]) * self.size * self.size * 3 <= DEFER_BYTES else set())
        # The global images and the kept canvases are made on the pool too, off the decoding thread; a few
        # frames in flight at most, so a fast decoder never queues up the video's full-size frames.
        in_flight: deque = deque()

        def on_pool(fn, *args) -> Future:
            future = prep.pool.submit(fn, *args)
            in_flight.append(future)
            while len(in_flight) > 2 * prep.workers:
                in_flight.popleft().result()
            return future

        try:
            source = frames(first | gset if two_passes else None) if callable(frames) else enumerate(frames)
            for i, rgb in source:
                if i >= count:
                    break
                check_cancel(cancel)
                if rgb is None:
                    if i in first or i in gset:
                        raise ValueError(f"frame {i} was asked for and not given")
                    continue
                if i in gset:
                    global_images[i] = on_pool(self.global_image, rgb)
                if i in defer:
                    deferred[i] = on_pool(geometry.letterbox_frame, rgb, box)
                elif i in first:
                    prep.add(i, rgb)
            prep.flush(0 if two_passes else None)
            if two_passes and split and not defer:
                prep.flush(1)
            if len(global_images) != len(gset):
                raise ValueError(f"the video gave fewer than the {count} frames expected")
            context = self.backend.encode_global(self.encode(np.stack([global_images[int(i)].result()
                                                                       for i in gidx])))
            global_images.clear()
        except BaseException:
            prep.close()
            raise
        video = VideoLatents(inits=prep.held[1], canvases=prep.held[0], mask=latent_mask(box), context=context,
                             fps=float(fps), waiter=prep if two_passes else None)

        def rest():
            for i in sorted(deferred):
                if prep.stopped():
                    return
                check_cancel(cancel)
                prep.add_canvas(i, deferred.pop(i).result())
            if defer:
                prep.flush(1)
            for i, rgb in frames(set(range(count)) - first):
                if i >= count:
                    break
                if prep.stopped():
                    return
                check_cancel(cancel)
                if i not in first:
                    if rgb is None:
                        raise ValueError(f"frame {i} was asked for and not given")
                    prep.add(i, rgb)
            prep.flush(None)
            if prep.done != count:
                raise ValueError(f"the video gave {prep.done} frames, {count} expected")
            if on_prepared is not None:
                on_prepared(video)

        if not two_passes:
            if prep.done != count:
                raise ValueError(f"the video gave {prep.done} frames, {count} expected")
            prep.close()
            if on_prepared is not None:
                on_prepared(video)
        elif background:
            prep.run(rest)
        else:
            try:
                rest()
            finally:
                prep.close()
            video = dataclasses.replace(video, waiter=None)
        return video

    def generate(self, video: VideoLatents, s: Settings, progress=None, sink=None, cancel=None, resume=None,
                 checkpoint=None):
        """Sample and decode: (generated S x S frames, final latents, plan, stats).

        With ``sink(start, frames)``, the generated frames are handed over in order, in chunks of VAE_BATCH,
        as soon as they are final, while sampling goes on (the file path composites and encodes them on
        another thread meanwhile); the returned frames are then None. ``resume`` and ``checkpoint``: see
        ``sample``. After sampling, the frames still to decode are reported as "decode" events.
        """
        emitted, decode_s, sampled = [0], [0.0], [False]
        t0 = time.perf_counter()

        def emit(upto, latent_of):
            # Chunks start at multiples of VAE_BATCH, as decode's: the same frames either way.
            while emitted[0] < upto:
                start = emitted[0]
                end = min(start + VAE_BATCH, upto)
                td = time.perf_counter()
                frames = self.decode(np.stack([latent_of[i] for i in range(start, end)]))
                decode_s[0] += time.perf_counter() - td
                sink(start, frames)
                emitted[0] = end
                if sampled[0] and progress:
                    progress({"stage": "decode", "frames_done": end, "frames": len(latent_of),
                              "elapsed_s": time.perf_counter() - t0})

        def on_batch(stored):
            ready = emitted[0]
            while ready in stored:
                ready += 1
            emit(emitted[0] + (ready - emitted[0]) // VAE_BATCH * VAE_BATCH, stored)

        t1 = time.perf_counter()
        latents, plan, sampled_windows = self.sample(video, s, progress, on_batch=on_batch if sink else None,
                                                     cancel=cancel, resume=resume, checkpoint=checkpoint)
        stats = {"sample_s": time.perf_counter() - t1 - decode_s[0], "windows": sum(len(level) for level in plan),
                 "windows_sampled": sampled_windows}
        t2 = time.perf_counter()
        sampled[0] = True
        if sink:
            emit(len(latents), latents)
            generated = None
        else:
            generated = self.decode(latents)
        stats["decode_s"] = decode_s[0] + time.perf_counter() - t2
        return generated, latents, plan, stats

    def sample(self, video: VideoLatents, s: Settings, progress=None, on_batch=None, cancel=None, resume=None,
               checkpoint=None) -> tuple[np.ndarray, list, int]:
        """Run the plan; returns final latents per frame [T, 4, h, w], the plan and the windows sampled.

        ``on_batch(stored)`` is called after every batch with {frame: final latent} so far (a frame's
        latent never changes once stored), so a caller can decode and write frames while sampling goes on.
        ``cancel`` (e.g. a threading.Event) is checked after every step: set, the run raises Cancelled.
        ``resume`` = ({frame: final latent}, windows done) of an earlier run of the same job: those windows
        (the first ones in plan order) are not sampled again, and every random draw still belongs to its
        window, so the result is the uninterrupted run's. ``checkpoint(new, windows_done)`` is called after
        every batch with the frames it finished first, before anything else hears of the batch.
        """
        t_count = len(video)
        plan = official_plan(t_count, s.strides)
        sampler = samplers.make_sampler(s.sampler, s.steps)
        stored: dict[int, np.ndarray] = dict(resume[0]) if resume else {}
        skip = int(resume[1]) if resume else 0
        total = sum(len(level) for level in plan)
        done, sampled, t_run = 0, 0, time.perf_counter()
        if on_batch is not None and stored:
            on_batch(stored)
        steps = len(sampler.timesteps)

        def reporter(batch, first):
            frames_done, t0 = len(stored), time.perf_counter()

            def report(k, t):
                check_cancel(cancel)
                if progress:
                    now = time.perf_counter()
                    fraction = (first + len(batch) * (k + 1) / steps) / total
                    rate = (fraction - skip / total) / max(now - t_run, 1e-9)  # of this run
                    progress({"stage": "sample", "level": batch[0].level, "stride": batch[0].stride,
                              "windows_done": first, "windows": total, "batch": len(batch), "step": k + 1,
                              "steps": steps, "frames_done": frames_done, "frames": t_count,
                              "fraction": fraction, "seconds": now - t0, "elapsed_s": now - t_run,
                              "eta_s": (1 - fraction) / rate if rate > 0 else None})
            return report

        for number, level in enumerate(plan):
            for r, run in enumerate(independent_runs(level)):
                # its frames prepared (the later ones may still be, meanwhile)
                video.wait(number, cancel, first_run=number == 0 and r == 0)
                tasks = []  # (windows, the number of the first in plan order), still to sample
                for batch in batches(run, s.batch_windows, self.backend.windows):
                    if done + len(batch) > skip:  # else finished by an earlier run of this job
                        if done < skip:  # batched otherwise by the earlier run: resume at its window
                            batch, done = batch[skip - done:], skip
                        tasks.append((batch, done))
                    done += len(batch)
                if self.spread is not None and len(tasks) > 1:  # independent batches: over the cluster
                    outs = self.spread(tasks, video, stored, s, cancel, reporter)
                else:
                    outs = (self.sample_batch(batch, first, video, stored, s, sampler, reporter(batch, first))
                            for batch, first in tasks)
                for (batch, first), out in zip(tasks, outs):  # in plan order, whoever sampled them
                    new = {}
                    for w, lat in zip(batch, out):
                        for p, f in enumerate(w.frames):
                            if f not in stored and f not in new:  # the first generation of a frame wins
                                new[f] = lat[:, p]
                    stored.update(new)
                    sampled += len(batch)
                    if checkpoint is not None:
                        checkpoint(new, first + len(batch))
                    if on_batch is not None:
                        on_batch(stored)
        return np.stack([stored[i] for i in range(t_count)]), plan, sampled

    def sample_batch(self, batch: list[Window], first: int, video: VideoLatents, stored: dict, s: Settings,
                     sampler: samplers.Sampler | None = None, report=None) -> np.ndarray:
        """Final latents [W, 4, 16, h, w] of the windows ``batch``, numbered ``first``, ``first + 1``, ... in plan
        order. Everything a batch reads is here (its windows and their numbers, the video, the frames its guides
        take from ``stored``, the settings), so any engine set, in this process or another, gives the same."""
        sampler = sampler or samplers.make_sampler(s.sampler, s.steps)
        return self._sample_batch(batch, video, stored, self.batch_noise(range(first, first + len(batch)), s),
                                  sampler, s, report)

    def batch_noise(self, ids, s: Settings) -> BatchNoise:
        """The random draws of windows ``ids``: each window's own (seeded by the seed and its number), never the
        batch's, so batching windows differently gives the same video."""
        shape = (4, WINDOW_FRAMES, self.latent, self.latent)
        if s.window_noise == "shared":
            shared = (np.asarray(s.noise, np.float32) if s.noise is not None
                      else np.random.default_rng(s.seed).standard_normal(shape).astype(np.float32))
            start = np.stack([shared] * len(ids))
        else:
            start = np.stack([np.random.default_rng([s.seed, i]).standard_normal(shape).astype(np.float32)
                              for i in ids])
        if s.step_noise is not None:
            draws = [lambda k, i=i: np.asarray(s.step_noise(i, k), np.float32) for i in ids]
        else:
            rngs = [np.random.default_rng([s.seed, i, 1]) for i in ids]
            draws = [lambda k, r=r: r.standard_normal(shape).astype(np.float32) for r in rngs]
        return BatchNoise(start, draws)

    def _sample_batch(self, batch: list[Window], video: VideoLatents, stored: dict, noise: BatchNoise,
                      sampler: samplers.Sampler, s: Settings, report) -> np.ndarray:
        """Final latents [W, 4, 16, h, w] of one batch of W windows (docs/algorithm.md §4)."""
        nw = len(batch)
        f, h = WINDOW_FRAMES, self.latent
        null_latent, null_context = self.null_inputs()
        local = {False: np.empty((nw, 4, f, h, h), np.float32), True: np.empty((nw, 4, f, h, h), np.float32)}
        masks = {False: np.ones((nw, 1, f, h, h), np.float32), True: np.empty((nw, 1, f, h, h), np.float32)}
        x0 = np.empty((nw, 4, f, h, h), np.float32)
        for i, w in enumerate(batch):
            idx = list(w.frames)
            x0[i] = video.inits[idx].transpose(1, 0, 2, 3)
            local[True][i] = video.canvases[idx].transpose(1, 0, 2, 3)
            local[False][i] = null_latent[:, None]
            masks[True][i] = video.mask[None, None]
            for p in w.guides:  # guides enter both local branches, mask 0 (docs/algorithm.md §4.2)
                for branch_local in (False, True):
                    local[branch_local][i, :, p] = stored[w.frames[p]]
                    masks[branch_local][i, :, p] = 0
        rows = guidance.BRANCHES
        local_rows = np.concatenate([local[b.local] for b in rows])
        mask_rows = np.concatenate([masks[b.local] for b in rows])
        ctx_rows = np.concatenate([np.repeat(video.context if b.global_ else null_context, nw, axis=0) for b in rows])
        ctx_rows.setflags(write=False)  # the same for every step: a device backend may keep it resident
        n = len(rows) * nw
        fps_rows = np.full(n, float(video.fps // batch[0].stride), np.float32)
        s1, s2 = s.guidance

        def eps_fn(x, t):
            sample = np.concatenate([guidance.per_branch(x), local_rows, mask_rows], axis=1)
            return guidance.combine(self.backend.unet(sample, np.full(n, float(t), np.float32), fps_rows, ctx_rows),
                                    s1, s2)

        def step_noise(k, shape):
            return np.stack([draw(k) for draw in noise.steps])

        out = self.backend.sample_windows(sampler, x0, noise.start, np.concatenate([local_rows, mask_rows], axis=1),
                                          fps_rows, ctx_rows, s1, s2, step_noise, report)
        if out is not None:  # the whole loop on the device
            return out
        return samplers.run(sampler, eps_fn, x0, noise.start, step_noise=step_noise, callback=report)
