"""The one interface every engine backend implements; the runtime never knows which one runs.

Host arrays in, host arrays out (float32 numpy); a backend converts to its own precision and device.
Batch dimensions are split into chunks of at most ``max_batch`` items where the engine has a limit.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from runtime.engines.manifest import EngineSet


class Backend(ABC):
    name: str = "backend"
    precision: str
    engines: EngineSet
    notes: tuple | list = ()  # what the user should know about this choice (e.g. why TensorRT was passed over)

    @property
    def model_size(self) -> int:
        return self.engines.model_size

    @abstractmethod
    def encode_global(self, global_latents: np.ndarray) -> np.ndarray:
        """[g, 4, h, w] scaled latents -> context [1, L, 320]."""

    @abstractmethod
    def unet(self, sample: np.ndarray, timestep: np.ndarray, fps: np.ndarray, context: np.ndarray) -> np.ndarray:
        """sample [N, 9, F, h, w], timestep/fps [N], context [N, L, 320] -> eps [N, 4, F, h, w]."""

    @abstractmethod
    def vae_encode(self, images: np.ndarray) -> np.ndarray:
        """[n, 3, S, S] in [-1, 1] -> scaled posterior means [n, 4, S/8, S/8]."""

    @abstractmethod
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """scaled latents [n, 4, S/8, S/8] -> images [n, 3, S, S] in about [-1, 1]."""

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
