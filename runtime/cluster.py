"""Scale-out on Ray (the optional ``cluster`` extra): engine sets as Ray actors, one per GPU (or a few CPU
threads), anywhere in a cluster. Ray does the placing, the restarts and the transport; nothing here schedules.

- ``Worker``: the actor. It builds its ``Outpainter`` once and runs whole files (runtime.batch, the service
  with ``--ray``) or single batches of windows (one long video over many workers).
- ``WindowPool``: an Outpainter's ``spread`` (runtime/callbacks.py) over N workers (``window_pool``). A level's
  independent batches go out through ``ray.util.ActorPool`` and come back in plan order; each batch is
  ``Pipeline.sample_batch`` of the same windows, numbers, guides and settings as in one process, so the video
  is the one-process video.
- ``RemoteOutpainter``: what the service's job queue needs of an Outpainter (``outpaint_file``, ``interrupt``),
  run by a worker: progress polled, cancel forwarded.

Every node needs the engines folder at the same path, and the files of a job (inputs, outputs, work dirs)
where the worker runs them: shared storage, as on KubeRay with a shared volume.
"""
from __future__ import annotations

import logging
import os
import threading
import uuid
from functools import partial
from pathlib import Path

from m3ddm.errors import EnginesError, InputError, check_cancel
from runtime.cluster_connect import connect, last_line  # noqa: F401 (cluster.connect); first: Ray token auth

try:
    import ray
    from ray.util import ActorPool
except ImportError as exc:  # the runtime works without it; this module is imported only when asked for
    raise EnginesError("scale-out needs Ray: pip install 'm3ddm-runtime[cluster]' "
                       f"(cannot import {exc.name})") from None

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a waiting driver looks at cancel tokens and progress
RETRIES = 2  # a task whose worker died (node lost, process killed) runs again on the restarted worker
CANCELLED_KEPT = 4096  # cancelled window-pool runs a worker remembers (their queued batches are skipped)


def worker_resources(gpus_per_worker: float | None, cpus_per_worker: float | None, threads: int | None) -> dict:
    """What one worker asks Ray for: ``gpus_per_worker`` GPUs (default: 1 where the cluster has GPUs, else 0)
    and ``cpus_per_worker`` CPUs (default: its ONNX Runtime threads, or 1)."""
    gpus = gpus_per_worker if gpus_per_worker is not None else (1 if ray.cluster_resources().get("GPU") else 0)
    cpus = cpus_per_worker if cpus_per_worker is not None else (threads or 1)
    if gpus < 0 or cpus <= 0:
        raise InputError("a worker needs more than 0 CPUs and 0 or more GPUs")
    return {"num_gpus": gpus, "num_cpus": cpus}


def default_workers(resources: dict) -> int:
    """As many workers as the cluster has room for: its GPUs over the GPUs of one, else its CPUs."""
    have = ray.cluster_resources()
    key, each = ("GPU", resources["num_gpus"]) if resources["num_gpus"] else ("CPU", resources["num_cpus"])
    return max(1, int(have.get(key, 0) // each))


def get(ref, timeout=None):
    """``ray.get`` with a worker's failure re-raised as the failure itself (its one line, its exit code)."""
    try:
        return ray.get(ref, timeout=timeout)
    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
        _reraise(exc)


def _reraise(exc):
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        raise (cause or RuntimeError(last_line(exc))) from None
    raise EnginesError(f"a Ray worker died: {last_line(exc)}") from None


# Ray's stubs know the options of remote functions only: concurrency_groups (an actor's) is refused by them.
@ray.remote(concurrency_groups={"control": 2}, max_restarts=-1, max_task_retries=RETRIES)  # type: ignore[call-overload]
class Worker:
    """One engine set (one GPU, or CPU threads) on some node of the cluster. Its engine calls run one at a
    time; ``progress`` and ``cancel`` answer while one runs."""

    def __init__(self, engines: str, backend: str = "auto", threads: int | None = None,
                 gpu_memory_gb: float | None = None):
        from runtime.api import Outpainter
        if not Path(engines, "manifest.json").is_file():
            raise EnginesError(f"no engines folder at {engines} on {ray.util.get_node_ip_address()}: every node "
                               "needs it at the same path")
        self.outpainter = Outpainter(engines, backend=backend, threads=threads, gpu_memory_gb=gpu_memory_gb)
        self.outpainter.backend.load()
        self.cancelled = CancelledJobs()
        self.last: dict = {}
        self.incarnation = uuid.uuid4().hex  # a new one each time Ray restarts this actor (its process or node lost)
        self.current: str | None = None  # the job whose call runs now

    def info(self) -> dict:
        return {"node": ray.util.get_node_ip_address(), "pid": os.getpid(), "gpus": ray.get_gpu_ids(),
                "backend": self.outpainter.backend.name, "model_size": self.outpainter.size}

    def sample_batch(self, job: str, batch, first: int, video, guides: dict, settings):
        token = self._token(job)
        check_cancel(token)  # queued behind the batch that was running when its job was cancelled

        def report(k, t):
            check_cancel(token)
        self.current = job
        try:
            return self.outpainter.pipeline.sample_batch(batch, first, video, guides, settings, report=report)
        finally:
            self.current = None

    def outpaint_file(self, job: str, input: str, output: str, settings, **options) -> dict:
        self.last.pop(job, None)

        def progress(event):
            self.last[job] = event
        self.current = job
        try:
            return self.outpainter.outpaint_file(input, output, settings=settings, progress=progress,
                                                 cancel=self._token(job), **options)
        finally:
            self.current = None
            self.cancelled.discard(job)
            self.last.pop(job, None)

    @ray.method(concurrency_group="control")
    def progress(self, job: str) -> tuple[str, dict | None]:
        """(this actor's incarnation, the job's latest progress event): a driver that sees the incarnation
        change knows the call it waits on was started again by Ray."""
        return self.incarnation, self.last.get(job)

    @ray.method(concurrency_group="control")
    def cancel(self, job: str) -> None:
        self.cancelled.add(job)
        if self.current == job:  # never abort another job's engine call
            self.outpainter.interrupt()

    def _token(self, job: str) -> _JobToken:
        return _JobToken(self.cancelled, job)


class CancelledJobs:
    """The jobs a worker was told to cancel. A file job is forgotten when its call ends; a window-pool run has
    no end call on the worker (its batches may still be queued there), so the oldest of those are forgotten
    past ``kept``: a long-lived worker does not grow with every cancelled run."""

    def __init__(self, kept: int = CANCELLED_KEPT):
        self.kept = kept
        self.jobs: dict[str, None] = {}  # insertion-ordered: the oldest first
        self.lock = threading.Lock()  # cancels arrive on the control threads while a batch runs

    def add(self, job: str) -> None:
        with self.lock:
            self.jobs.pop(job, None)
            self.jobs[job] = None
            while len(self.jobs) > self.kept:
                del self.jobs[next(iter(self.jobs))]

    def discard(self, job: str) -> None:
        with self.lock:
            self.jobs.pop(job, None)

    def __contains__(self, job: str) -> bool:
        return job in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)


class _JobToken:
    """A cancel token (``is_set``) of one job on a worker: set once the driver cancels that job."""

    def __init__(self, cancelled: CancelledJobs, job: str):
        self.cancelled, self.job = cancelled, job

    def is_set(self) -> bool:
        return self.job in self.cancelled


def start_workers(engines, workers: int | None, *, backend: str = "auto", threads: int | None = None,
                  gpu_memory_gb: float | None = None, gpus_per_worker: float | None = None,
                  cpus_per_worker: float | None = None) -> list:
    """``workers`` Worker actors (default: as many as fit), each with its engines loaded."""
    resources = worker_resources(gpus_per_worker, cpus_per_worker, threads)
    n = workers or default_workers(resources)
    if n < 1:
        raise InputError("--workers must be 1 or more")
    engines = str(Path(engines).resolve())
    threads = threads or max(1, int(resources["num_cpus"]))  # ONNX Runtime would take every core of the node
    actors = [Worker.options(**resources).remote(engines, backend, threads, gpu_memory_gb)  # type: ignore[attr-defined]
              for _ in range(n)]
    infos = [get(a.info.remote()) for a in actors]
    log.info(f"{n} Ray workers ready ({infos[0]['backend']}, {resources['num_gpus']} GPU and "
             f"{resources['num_cpus']} CPU each, on {len({i['node'] for i in infos})} node(s))")
    return actors


def window_pool(engines, workers: int, *, address: str | None = None, backend: str = "auto",
                threads: int | None = None, gpu_memory_gb: float | None = None, gpus_per_worker: float | None = None,
                cpus_per_worker: float | None = None) -> WindowPool:
    """``workers`` Ray workers on the cluster at ``address`` (None: a local one), each with its own engine set, as
    an Outpainter's ``spread``: ``Outpainter(engines, spread=window_pool(engines, 4))``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer of 1 or more, not {workers!r}")
    connect(address)
    return WindowPool(start_workers(engines, workers, backend=backend, threads=threads, gpu_memory_gb=gpu_memory_gb,
                                    gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker))


def stop_workers(actors) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:
            pass


def _sample_remote(actor, video, *, job, batch, first, guides, settings):
    return actor.sample_batch.remote(job, batch, first, video, guides, settings)


class WindowPool:
    """An Outpainter's ``spread`` over Ray workers: a run's independent batches sampled in parallel, returned in plan
    order. The first level (whose windows guide each other in turn) never comes here: it has one batch a run."""

    def __init__(self, actors):
        self.actors = list(actors)
        self.pool = ActorPool(self.actors)
        self._video: tuple = (None, None)  # (the video, its object ref)
        self._jobs: list[str] = []

    def __call__(self, tasks, video, stored, s, sampler, cancel, reporter):
        if self._video[0] is not video:  # in the object store once per video; each node fetches it once
            self._video = (video, ray.put(video))
        ref, job = self._video[1], uuid.uuid4().hex
        last_step = len(sampler.timesteps) - 1
        self._jobs.append(job)
        given = 0
        for batch, first in tasks:
            guides = {w.frames[p]: stored[w.frames[p]] for w in batch for p in w.guides}
            self.pool.submit(partial(_sample_remote, job=job, batch=batch, first=first, guides=guides, settings=s), ref)
        try:
            for batch, first in tasks:
                while True:
                    check_cancel(cancel)
                    try:
                        out = self.pool.get_next(timeout=POLL_S)
                        break
                    except TimeoutError:
                        continue
                    except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                        _reraise(exc)
                reporter(batch, first)(last_step, None)  # progress: the batch has done its last step
                given += 1
                yield out
        finally:  # stopped early (cancelled, a failure here or in the caller): the rest is not wanted
            if given < len(tasks):
                self._cancel(job)
            self._jobs.remove(job)

    def interrupt(self) -> None:
        """Stop what the workers run for this pool now (their batch raises Cancelled). Safe from any thread."""
        for job in list(self._jobs):
            for actor in self.actors:
                actor.cancel.remote(job)

    def _cancel(self, job: str) -> None:
        for actor in self.actors:
            actor.cancel.remote(job)
        self.pool = ActorPool(self.actors)  # the cancelled batches' results are never read

    def close(self) -> None:
        stop_workers(self.actors)


class RemoteOutpainter:
    """An Outpainter whose ``outpaint_file`` runs on a Ray worker (the service's job queue with ``--ray``):
    progress polled from the worker, a cancel token forwarded to it. Paths must mean the same on the worker."""

    def __init__(self, actor):
        self.actor = actor
        self.info = get(actor.info.remote())
        self._running: str | None = None
        self.restarts = 0  # runs of a job that Ray started again on this worker, restarted (the service's metric)

    def outpaint_file(self, input, output, *, settings=None, progress=None, cancel=None, **options) -> dict:
        job = uuid.uuid4().hex
        self._running = job
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
        ref = self.actor.outpaint_file.remote(job, str(input), str(output), settings, **options)
        last, seen = None, None
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if cancel is not None and cancel.is_set():
                    self.actor.cancel.remote(job)
                try:
                    incarnation, event = ray.get(self.actor.progress.remote(job))
                except ray.exceptions.RayActorError:  # lost, or restarting: Ray runs the call again (RETRIES)
                    incarnation, event = seen, None
                if seen is not None and incarnation != seen:
                    self.restarts += 1  # the job resumes from its work dir on the restarted worker
                seen = incarnation
                if progress is not None and event and event is not last:
                    progress(event)
                    last = event
                if ready:
                    return get(ref)
        finally:
            self._running = None

    def interrupt(self) -> None:
        if self._running:
            self.actor.cancel.remote(self._running)

    def close(self) -> None:
        stop_workers([self.actor])
