"""Classifier-free guidance over the three branches the model needs.

The official pipeline evaluates four branches, (local, global) in {none, real}^2 ordered
[(none, none), (real, none), (none, real), (real, real)], and discards the third. We evaluate only
the three that the guidance formula reads, always in the order of ``BRANCHES``, as one batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Branch(NamedTuple):
    local: bool  # the window's own (masked) frames enter the context latents
    global_: bool  # the video's global frames enter the cross-attention context


# The one place that fixes the CFG batch order: eps rows come back in this order.
BRANCHES = (
    Branch(local=False, global_=False),
    Branch(local=True, global_=False),
    Branch(local=True, global_=True),
)
NUM_BRANCHES = len(BRANCHES)

# Rows of the official four-branch batch that correspond to BRANCHES (its row 2 is unused).
OFFICIAL_ROWS = (0, 1, 3)
OFFICIAL_GLOBAL = (False, False, True, True)
OFFICIAL_LOCAL = (False, True, False, True)


def combine(eps, s1: float, s2: float):
    """eps = e0 + s1 (e1 - e0) + s2 (e2 - e1) over the leading branch axis (paper Eq. 4).

    Works on numpy arrays and torch tensors alike: ``eps`` has shape [3, ...] or [3*W, ...]
    laid out branch-major ([b0 w0..wW-1, b1 ..., b2 ...]).
    """
    n = eps.shape[0]
    if n % NUM_BRANCHES:
        raise ValueError(f"eps batch {n} is not a multiple of {NUM_BRANCHES} branches")
    w = n // NUM_BRANCHES
    e0, e1, e2 = eps[:w], eps[w:2 * w], eps[2 * w:]
    return e0 + s1 * (e1 - e0) + s2 * (e2 - e1)


def per_branch(x):
    """W windows' rows [W, ...] repeated once per branch, branch-major [3W, ...]: the layout of the UNet batch
    (the reference of the device kernel ``scatter_noisy``, which writes it into the UNet input)."""
    return np.concatenate([x] * NUM_BRANCHES)

