"""The one interface every engine backend implements; the runtime never knows which one runs.

Host arrays in, host arrays out (float32 numpy); a backend converts to its own precision and device.
The VAE's batches are split here, once for every backend, into chunks of at most ``vae_chunk`` images (the
engine's limit within the caller's ``max_batch``): a backend implements the per-chunk calls.

Inputs are the caller's: a backend never writes to them. An input array that is read-only
(``flags.writeable`` False) may be kept on the device and not uploaded again while the same array object
is passed again (the pipeline's CFG context, the same for every step of a batch); a caller that wants
fresh data passes a new or a writeable array.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from runtime.engines.manifest import EngineSet


class Backend(ABC):
    name: str = "backend"  # reported in stats and summaries ("ort", "tensorrt", ...)
    precision: str
    engines: EngineSet
    notes: tuple | list = ()  # what the user should know about this choice (e.g. why TensorRT was passed over)
    concurrent: bool = False  # its engines take calls from two threads at once (the VAE while the UNet runs)
    windows: Sequence[int] | None = None  # window counts W (3W UNet rows) the backend runs best, e.g. its TensorRT
    #                                       profiles; the pipeline sizes its batches to them. None: any size is as good.
    max_batch: int | None = None  # the caller's cap on the rows of one engine call (activation memory); None: none
    vae_batch: int | None = None  # the most images one VAE engine call takes (TensorRT: its plans' profile)

    @property
    def model_size(self) -> int:
        return self.engines.model_size

    @abstractmethod
    def encode_global(self, global_latents: np.ndarray) -> np.ndarray:
        """[g, 4, h, w] scaled latents -> context [1, L, 320]."""

    @abstractmethod
    def unet(self, sample: np.ndarray, timestep: np.ndarray, fps: np.ndarray, context: np.ndarray) -> np.ndarray:
        """sample [N, 9, F, h, w], timestep/fps [N], context [N, L, 320] -> eps [N, 4, F, h, w]."""

    def vae_encode(self, images: np.ndarray) -> np.ndarray:
        """[n, 3, S, S] in [-1, 1] -> scaled posterior means [n, 4, S/8, S/8]: ``vae_encode_chunk`` per chunk."""
        return self._in_chunks(self.vae_encode_chunk, images)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """scaled latents [n, 4, S/8, S/8] -> images [n, 3, S, S] in about [-1, 1]: ``vae_decode_chunk`` per chunk."""
        return self._in_chunks(self.vae_decode_chunk, latents)

    # Not abstract: a stand-in without a batch limit (the tests', the torch reference) may override
    # vae_encode / vae_decode whole instead.
    def vae_encode_chunk(self, images: np.ndarray) -> np.ndarray:
        """``vae_encode`` of at most ``vae_chunk`` images, in the engine's own float type (made float32 after)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither vae_encode_chunk nor vae_encode")

    def vae_decode_chunk(self, latents: np.ndarray) -> np.ndarray:
        """``vae_decode`` of at most ``vae_chunk`` latents, in the engine's own float type (made float32 after)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither vae_decode_chunk nor vae_decode")

    @property
    def vae_chunk(self) -> int | None:
        """Images per VAE engine call: the engine's limit within the caller's; None: all in one call."""
        limits = [n for n in (self.vae_batch, self.max_batch) if n and n > 0]
        return min(limits) if limits else None

    def _in_chunks(self, call, x: np.ndarray) -> np.ndarray:
        parts = [call(x[s]) for s in chunks(x.shape[0], self.vae_chunk)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def sample_windows(self, sampler, x0, noise, rows, fps_rows, ctx_rows, s1, s2, step_noise=None,
                       callback=None, seen=None) -> np.ndarray | None:
        """Optional: sample a whole batch of W windows on the device, the same arithmetic as
        ``runtime.samplers.run`` over ``unet`` and ``runtime.guidance.combine``. ``x0``/``noise`` [W, 4, F, h, w],
        ``rows`` [3W, 5, F, h, w] the UNet input's channels 4..8 (context latents, mask), branch-major;
        ``step_noise(step, shape)`` the fresh noise of stochastic samplers, ``callback(step, t)`` after each step,
        ``seen(step, t, x, eps)`` before each update where the backend can show it (``samplers.iterate``; a live
        preview's look, which a backend may leave out). Returns the final latents [W, 4, F, h, w], or None where
        this backend (or this batch) cannot: the pipeline then runs the host loop over ``unet``."""
        return None

    def load(self) -> None:
        """Optional: load every engine now (a backend may load them when first used), so that an engines
        folder that cannot work fails before a video is decoded, not after."""

    def interrupt(self) -> None:
        """Optional: abort the engine calls in flight (they raise), from any thread; later calls run as usual.
        A job being cancelled uses it so that it stops now, not when a long call returns."""

    def close(self) -> None:
        """Release sessions and device memory (a closed backend must not be used again)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def chunks(n: int, size: int | None):
    size = n if not size or size <= 0 else size
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
