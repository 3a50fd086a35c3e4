"""The outpainting pipeline over an engine backend: canvases in, final latents and generated frames out (no torch).

Per video (docs/algorithm.md): every VAE encode once per frame, the global encoder once, the window plan level by
level with independent windows batched into one engine call of 3 x W rows, each output frame decoded once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from m3ddm.errors import check_cancel
from m3ddm.facts import GLOBAL_FRAMES, VAE_DOWNSAMPLE, WINDOW_FRAMES
from runtime import geometry, guidance, samplers
from runtime.callbacks import CancelToken, Checkpoint, FrameSink, FrameSource, Progress, Seen, Spread
from runtime.composite import to_uint8
from runtime.engines.contract import VAE_BATCH
from runtime.plan import Window, batches, independent_runs, official_plan
from runtime.prepare import VideoLatents, prepare
from runtime.preview import Previewer, previewing
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
class BatchNoise:
    """The random draws of one batch of windows, each belonging to its window (never to the batch)."""
    start: np.ndarray  # [W, 4, 16, h, w] start noise per window
    steps: list  # per window: step -> [4, 16, h, w], the fresh noise of stochastic samplers


class Pipeline:
    """The sampling core over a Backend; ``runtime.Outpainter`` wraps it with engines and files."""

    def __init__(self, backend):
        self.backend = backend
        self.size = backend.model_size
        self.latent = self.size // VAE_DOWNSAMPLE
        self._null = None
        self.spread: Spread | None = None  # a run's independent batches sampled elsewhere (Ray workers)

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

    def prepare(self, frames: FrameSource, count: int, box: geometry.Letterbox, fps: float,
                progress: Progress | None = None, cancel: CancelToken | None = None, plan=None,
                background: bool = False, on_prepared=None) -> VideoLatents:
        """The ``count`` RGB frames -> what sampling reads.

        ``frames``: an iterable of the frames in order (read once), or a ``FrameSource`` (runtime/callbacks.py).
        Each frame's canvas and TELEA init are made on a pool of threads and VAE-encoded VAE_BATCH at a time:
        memory grows with the latents, not with the canvases.

        With ``plan`` the frames are taken level by level (``prepare_groups``): the first level's first run
        (and the global frames) first, then the rest of the first level (from canvases the first pass kept),
        then the later levels, each group encoded in its own chunks of VAE_BATCH in frame order, so the
        latents never depend on timing. With ``background`` (and a callable ``frames``) the call returns once
        the first run's frames are ready and prepares the rest on a thread while sampling starts
        (``VideoLatents.wait``); ``on_prepared(video)`` is called once every frame is. Only for backends whose
        engines take calls from two threads at once (``Backend.concurrent``)."""
        return prepare(self, frames, count, box, fps, progress, cancel, plan, background, on_prepared)

    def run(self, frames: FrameSource, sink: FrameSink, s: Settings, *, count: int, box: geometry.Letterbox,
            fps: float, progress: Progress | None = None, cancel: CancelToken | None = None,
            prepared: VideoLatents | None = None, on_prepared=None, resume=None,
            checkpoint: Checkpoint | None = None, preview=None) -> tuple[np.ndarray, list, dict]:
        """One video, whole: prepared (unless ``prepared``, e.g. read back from a work dir), sampled level by
        level, each generated S x S frame handed to ``sink(start, frames)`` in order, in chunks of VAE_BATCH, as
        soon as it is final. Returns (final latents [T, 4, h, w], plan, stats). The array API and the file
        path both come here. ``frames`` as for ``prepare``; ``resume`` and ``checkpoint`` as for ``sample``;
        ``on_prepared(video)`` once every frame is prepared (not called with ``prepared``). ``preview`` shows the
        border forming (``runtime.preview.PreviewOptions.of``) from a thread of its own; it never changes the result."""
        plan = official_plan(count, s.strides)
        sampler = samplers.make_sampler(s.sampler, s.steps)  # checked by Settings.check: built once per run
        with previewing(preview, self, s, box, count, frames, progress) as (previewer, frames, progress):
            t0 = time.perf_counter()
            video = prepared
            if video is None:  # the first level's frames now, the rest while it samples (where the engines allow)
                video = self.prepare(frames, count, box, fps, progress, cancel, plan=plan,
                                     background=self.backend.concurrent, on_prepared=on_prepared)
            prepare_s = time.perf_counter() - t0
            if progress:
                progress({"stage": "prepared", "seconds": prepare_s, "resumed": prepared is not None})
            try:
                latents, stats = self.generate(video, s, sampler, sink, progress, cancel, resume, checkpoint,
                                               previewer)
                if video.waiter is not None:
                    video.waiter.close()  # every level waited for it; its last act (``on_prepared``) ends now
                    video.wait()
            except BaseException:
                if video.waiter is not None:
                    video.waiter.close()
                raise
        stats.update(previewer.stats if previewer is not None else {}, prepare_s=prepare_s)
        return latents, plan, stats

    def generate(self, video: VideoLatents, s: Settings, sampler: samplers.Sampler, sink: FrameSink,
                 progress: Progress | None = None, cancel: CancelToken | None = None, resume=None,
                 checkpoint: Checkpoint | None = None, preview: Previewer | None = None) -> tuple[np.ndarray, dict]:
        """Sample and decode: (final latents, stats). The generated frames go to ``sink(start, frames)`` in
        order, in chunks of VAE_BATCH starting at multiples of it, as soon as they are final, while sampling goes
        on (the file path composites and encodes them on another thread meanwhile). After sampling, the frames
        still to decode are reported as "decode" events."""
        emitted, decode_s, sampled = [0], [0.0], [False]
        t0 = time.perf_counter()

        def emit(upto, latent_of):
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
        latents, plan, sampled_windows = self.sample(video, s, progress, on_batch=on_batch, cancel=cancel,
                                                     resume=resume, checkpoint=checkpoint, sampler=sampler,
                                                     preview=preview)
        stats = {"sample_s": time.perf_counter() - t1 - decode_s[0], "windows": sum(len(level) for level in plan),
                 "windows_sampled": sampled_windows}
        t2 = time.perf_counter()
        sampled[0] = True
        emit(len(latents), latents)
        stats["decode_s"] = decode_s[0] + time.perf_counter() - t2
        return latents, stats

    def sample(self, video: VideoLatents, s: Settings, progress: Progress | None = None, on_batch=None,
               cancel: CancelToken | None = None, resume=None, checkpoint: Checkpoint | None = None,
               sampler: samplers.Sampler | None = None,
               preview: Previewer | None = None) -> tuple[np.ndarray, list, int]:
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
        sampler = sampler or samplers.make_sampler(s.sampler, s.steps)
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
                    outs = self.spread(tasks, video, stored, s, sampler, cancel, reporter)
                else:
                    outs = (self.sample_batch(batch, first, video, stored, s, sampler, reporter(batch, first),
                                              preview.watcher(batch, sampler) if preview else None)
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
                     sampler: samplers.Sampler | None = None, report=None, seen: Seen | None = None) -> np.ndarray:
        """Final latents [W, 4, 16, h, w] of the windows ``batch``, numbered ``first``, ``first + 1``, ... in plan
        order. Everything a batch reads is here (its windows and their numbers, the video, the frames its guides
        take from ``stored``, the settings), so any engine set, in this process or another, gives the same.
        ``seen`` looks at every step (``samplers.iterate``)."""
        sampler = sampler or samplers.make_sampler(s.sampler, s.steps)
        return self._sample_batch(batch, video, stored, self.batch_noise(range(first, first + len(batch)), s),
                                  sampler, s, report, seen)

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
        given = s.step_noise
        if given is not None:
            draws = [lambda k, i=i: np.asarray(given(i, k), np.float32) for i in ids]
        else:
            rngs = [np.random.default_rng([s.seed, i, 1]) for i in ids]
            draws = [lambda k, r=r: r.standard_normal(shape).astype(np.float32) for r in rngs]
        return BatchNoise(start, draws)

    def _sample_batch(self, batch: list[Window], video: VideoLatents, stored: dict, noise: BatchNoise,
                      sampler: samplers.Sampler, s: Settings, report, seen: Seen | None = None) -> np.ndarray:
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
                                          fps_rows, ctx_rows, s1, s2, step_noise, report, seen)
        if out is not None:  # the whole loop on the device
            return out
        return samplers.run(sampler, eps_fn, x0, noise.start, step_noise=step_noise, callback=report, seen=seen)
