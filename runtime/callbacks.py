"""The shapes of what a run calls back, in one place: every module that takes one of these names it from here.

They are structural (``Protocol``s and ``Callable`` aliases): a ``threading.Event`` is a ``CancelToken``, a plain
function a ``Progress``; nothing has to inherit from them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np

# A progress event: {"stage": "prepare" | "prepared" | "sample" | "decode" | "finish", ...} (README: --progress).
Progress = Callable[[dict], None]
# After each sampling step of a batch: (step index, timestep); it may raise Cancelled to stop the batch.
StepReport = Callable[[int, Any], None]
# Before each sampling step's update: (step index, timestep, its input x, its guided eps), arrays of the loop's own
# type (numpy, or torch on the device), to look at and never to change (a preview's clean-latent estimate).
Seen = Callable[[int, Any, Any, Any], None]
# The fresh noise of stochastic samplers, per window: (window number in plan order, step) -> [4, 16, h, w].
StepNoise = Callable[[int, int], np.ndarray]
# Generated S x S frames handed on as soon as they are final: (index of the first, RGB uint8 [n, S, S, 3]).
FrameSink = Callable[[int, np.ndarray], None]
# Frames finished by a batch, checkpointed before anyone else hears of it: ({frame: latent}, windows done).
Checkpoint = Callable[[dict, int], None]


def event_record(event: dict) -> dict:
    """A progress event as the JSON lines (``--progress jsonl``) and the service's event stream give it: floats to
    4 places; a preview as its number only (its image is a file, or the API caller's), none where it is an image."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in event.items()
            if k != "preview" or isinstance(v, int)}


class CancelToken(Protocol):
    """Anything with ``is_set()``: a ``threading.Event``, a job's token on a worker."""

    def is_set(self) -> bool: ...


class FrameSource(Protocol):
    """A video's frames as the preparing stage asks for them: ``source(wanted)`` yields (index, RGB uint8
    [H, W, 3] or None) for every frame in order, RGB for the indices in ``wanted`` (None: every frame). It
    may be called more than once (a file decoded again)."""

    def __call__(self, wanted: set | None) -> Iterator[tuple[int, np.ndarray | None]]: ...


class FileOutpainter(Protocol):
    """What a job queue needs of an engine set: ``runtime.Outpainter``, or one run by a Ray worker
    (``runtime.cluster.RemoteOutpainter``)."""

    def outpaint_file(self, input: Any, output: Any, **options: Any) -> dict: ...

    def interrupt(self) -> None: ...


class Spread(Protocol):
    """Samples a run's independent batches elsewhere (runtime/cluster.py: Ray workers) and yields their final
    latents in the order of ``tasks``: each is ``Pipeline.sample_batch`` of the same windows, numbers, guides
    and settings, so the video is the one-process video."""

    def __call__(self, tasks: list, video: Any, stored: dict, settings: Any, sampler: Any,
                 cancel: CancelToken | None, reporter: Callable[[list, int], StepReport]) -> Iterable: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...
