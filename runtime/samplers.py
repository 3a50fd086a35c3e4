"""Diffusion samplers as host-side coefficient plans over one linear update (numpy, no torch).

Every step of every sampler here is

    x' = a * x + a_saved * x_saved + sum_k b_k * eps_k + c * z

with eps_0 this step's (guided) eps, eps_1.. earlier ones, x_saved a sample kept from an earlier step and
z fresh Gaussian noise. A sampler object computes the coefficients once (``updates``), in float64 from
the scheduler's float32 alphas; ``run`` applies them in float32. A device kernel applies the same
coefficients, and this file is its reference.

- ``pndm``: PLMS as SD1.5's PNDMScheduler (skip_prk_steps) computes it, driven as the official
  M3DDM pipeline drives it: start noise at the second PLMS timestep (961 for 50 steps), then the loop
  over the list from there, which misaligns the warm-up (docs/algorithm.md §5.3). The default: it reproduces
  the released model's sampling trajectory.
- ``ddpm`` (the paper's sampler), ``ddim`` (eta 0) and ``dpmpp`` (DPM-Solver++ 2M) on the same betas.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from m3ddm.errors import InputError

TRAIN_STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
STEPS_OFFSET = 1  # SD1.5's scheduler config: "leading" spacing plus this offset
MAX_STEPS = TRAIN_STEPS - STEPS_OFFSET  # with the offset, 1000 leading steps would reach timestep 1000


def alphas_cumprod() -> np.ndarray:
    """SD1.5's scaled-linear schedule, float32 as diffusers computes it."""
    betas = (np.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=np.float32) ** 2).astype(np.float32)
    return np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32)


def leading_timesteps(steps: int) -> np.ndarray:
    """Ascending 'leading' timesteps with SD1.5's offset: 1, 21, ..., 981 for 50 steps."""
    ratio = TRAIN_STEPS // steps
    return (np.arange(steps) * ratio).round().astype(np.int64) + STEPS_OFFSET


@dataclass(frozen=True)
class Update:
    x: float
    saved: float = 0.0
    eps: tuple = ()  # coefficients of eps_0 (this step), eps_1, ...
    noise: float = 0.0
    save: bool = False  # keep this step's input x as x_saved for later steps
    keep_eps: bool = True  # push this step's eps onto the history


class Sampler:
    name = "base"
    history = 0  # earlier eps kept

    def __init__(self, steps: int):
        if not 1 <= steps <= MAX_STEPS:  # every sampler's schedule, leading or not, ends inside the betas
            raise InputError(f"steps must be between 1 and {MAX_STEPS}, not {steps}")
        self.steps = steps
        self.ac = alphas_cumprod().astype(np.float64)
        self.ac32 = alphas_cumprod()
        self.timesteps, self.noise_timestep, self.updates = self._plan(steps)

    def _plan(self, steps):
        raise NotImplementedError

    def clean_estimate(self, x, eps, t: int):
        """The estimate of the clean latents at step ``t`` from its input and guided eps,
        x0 = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t), over any array type (every sampler here predicts eps)."""
        a = self.alpha(int(t))
        return (x - (1 - a) ** 0.5 * eps) * (1 / a ** 0.5)

    def alpha(self, t: int) -> float:
        """alpha_cumprod at t; a negative t is the final step's 'previous' alpha, alpha_cumprod[0]
        (SD1.5 sets set_alpha_to_one False)."""
        return float(self.ac[t]) if t >= 0 else float(self.ac[0])

    def add_noise(self, x0: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """sqrt(ac) x0 + sqrt(1 - ac) noise at the start timestep, with float32 coefficients as diffusers uses."""
        a = self.ac32[self.noise_timestep]
        return (np.sqrt(a) * x0 + np.sqrt(np.float32(1) - a) * noise).astype(np.float32)

    @property
    def uses_noise(self) -> bool:
        return any(u.noise for u in self.updates)


def _eps_step(a_t: float, a_prev: float) -> tuple[float, float]:
    """PNDM's _get_prev_sample as x' = cx * x + ce * eps (diffusers pndm; docs/algorithm.md §5.3)."""
    cx = (a_prev / a_t) ** 0.5
    denom = a_t * (1 - a_prev) ** 0.5 + (a_t * (1 - a_t) * a_prev) ** 0.5
    return cx, -(a_prev - a_t) / denom


class PNDM(Sampler):
    name = "pndm"
    history = 3

    def _plan(self, steps):
        if steps < 2:
            raise InputError("the PNDM sampler needs at least 2 steps")
        asc = leading_timesteps(steps)
        plms = np.concatenate([asc[:-1], asc[-2:-1], asc[-1:]])[::-1]  # 981, 961, 961, 941, ..., 1
        ratio = TRAIN_STEPS // steps
        # The official pipeline: strength 1, init_timestep = min(steps + offset, steps) = steps,
        # noise at plms[-steps] (= plms[1]), loop from t_start = offset.
        noise_t = int(plms[-steps])
        loop = plms[STEPS_OFFSET:]
        updates, n_ets = [], 0
        for counter, t in enumerate(loop):
            t = int(t)
            prev = t - ratio
            if counter == 1:  # PLMS warm-up: re-step from the saved sample, averaging two eps
                prev, t = t, t + ratio
            cx, ce = _eps_step(self.alpha(t), self.alpha(prev))
            if counter != 1:
                n_ets = min(n_ets + 1, 4)  # diffusers keeps ets[-3:] and appends this eps
            w: tuple[float, ...]
            if counter == 0:
                w = (1.0,)
            elif counter == 1:
                w = (0.5, 0.5)
            elif n_ets == 2:
                w = (1.5, -0.5)
            elif n_ets == 3:
                w = (23 / 12, -16 / 12, 5 / 12)
            else:
                w = (55 / 24, -59 / 24, 37 / 24, -9 / 24)
            if counter == 1:
                updates.append(Update(x=0.0, saved=cx, eps=tuple(ce * v for v in w), keep_eps=False))
            else:
                updates.append(Update(x=cx, eps=tuple(ce * v for v in w), save=counter == 0))
        return [int(t) for t in loop], noise_t, updates


class DDIM(Sampler):
    """Deterministic DDIM (eta 0), SD1.5's settings."""
    name = "ddim"

    def _plan(self, steps):
        ts = leading_timesteps(steps)[::-1]
        ratio = TRAIN_STEPS // steps
        updates = []
        for t in ts:
            a, ap = self.alpha(int(t)), self.alpha(int(t) - ratio)
            cx = (ap / a) ** 0.5
            ce = (1 - ap) ** 0.5 - (ap * (1 - a) / a) ** 0.5
            updates.append(Update(x=cx, eps=(ce,)))
        return [int(t) for t in ts], int(ts[0]), updates


class DDPM(Sampler):
    """Ancestral DDPM ("fixed_small" variance) over the leading timesteps, as diffusers' DDPMScheduler."""
    name = "ddpm"

    def _plan(self, steps):
        ts = leading_timesteps(steps)[::-1]
        ratio = TRAIN_STEPS // steps
        updates = []
        for t in ts:
            t = int(t)
            prev = t - ratio
            a, ap = self.alpha(t), (self.alpha(prev) if prev >= 0 else 1.0)
            beta_t = 1 - a / ap
            # x0 = (x - sqrt(1-a) eps)/sqrt(a); mean = c0 x0 + ct x
            c0 = ap ** 0.5 * beta_t / (1 - a)
            ct = (1 - beta_t) ** 0.5 * (1 - ap) / (1 - a)
            var = max((1 - ap) / (1 - a) * beta_t, 1e-20) if t > 0 else 0.0
            updates.append(Update(x=c0 / a ** 0.5 + ct, eps=(-c0 * (1 - a) ** 0.5 / a ** 0.5,),
                                  noise=var ** 0.5 if t > 0 else 0.0))
        return [int(t) for t in ts], int(ts[0]), updates


class DPMSolverPP(Sampler):
    """DPM-Solver++ 2M (multistep, second order, first order on the first and last step), as diffusers'
    DPMSolverMultistepScheduler with algorithm_type dpmsolver++, solver_order 2, lower_order_final."""
    name = "dpmpp"
    history = 1

    def _plan(self, steps):
        ts = np.linspace(0, TRAIN_STEPS - 1, steps + 1).round()[::-1][:-1].astype(np.int64)  # linspace spacing
        alpha: Callable[[int], float] = lambda t: self.ac[t] ** 0.5
        sigma: Callable[[int], float] = lambda t: (1 - self.ac[t]) ** 0.5
        lam: Callable[[int], float] = lambda t: np.log(alpha(t)) - np.log(sigma(t))
        updates = []
        for i, t in enumerate(ts):
            t = int(t)
            last = i == len(ts) - 1
            if last:  # to the final "sample": alpha_cumprod[0] (final_sigmas_type "zero" is diffusers' default)
                a_n, s_n, lam_n = 1.0, 0.0, np.inf
            else:
                tn = int(ts[i + 1])
                a_n, s_n, lam_n = alpha(tn), sigma(tn), lam(tn)
            a_t, s_t = alpha(t), sigma(t)
            h = lam_n - lam(t)
            em = -np.expm1(-h) if np.isfinite(h) else 1.0  # 1 - e^{-h}
            # first-order: x' = (s_n/s_t) x + a_n (1 - e^-h) m0, m0 = (x - s_t e)/a_t
            ratio = s_n / s_t
            if i == 0 or last and steps < 15 or last:
                cm0, cm1 = a_n * em, 0.0
            else:
                tp = int(ts[i - 1])
                r = (lam(t) - lam(tp)) / h
                cm0 = a_n * em * (1 + 1 / (2 * r))
                cm1 = -a_n * em / (2 * r)
            # m0 from (x, eps0); m1 from (x_saved, eps1) at the previous timestep
            cx = ratio + cm0 / a_t
            ce0 = -cm0 * s_t / a_t
            if cm1:
                tp = int(ts[i - 1])
                updates.append(Update(x=cx, saved=cm1 / alpha(tp), eps=(ce0, -cm1 * sigma(tp) / alpha(tp)), save=True))
            else:
                updates.append(Update(x=cx, eps=(ce0,), save=True))
        return [int(t) for t in ts], int(ts[0]), updates


SAMPLERS = {cls.name: cls for cls in (PNDM, DDPM, DDIM, DPMSolverPP)}
DEFAULT_STEPS = {"pndm": 50, "ddpm": 50, "ddim": 50, "dpmpp": 20}


def make_sampler(name: str, steps: int | None = None) -> Sampler:
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
    return cls(DEFAULT_STEPS[name] if steps is None else int(steps))


def apply(u: Update, x: np.ndarray, saved, eps_terms, z=None) -> np.ndarray:
    """The linear update in float32 (the numpy reference of the device kernel)."""
    out = np.float32(u.x) * x if u.x else np.zeros_like(x)
    if u.saved:
        out = out + np.float32(u.saved) * saved
    for b, e in zip(u.eps, eps_terms):
        out = out + np.float32(b) * e
    if u.noise:
        out = out + np.float32(u.noise) * z
    return out.astype(np.float32, copy=False)


def iterate(sampler: Sampler, x, eps_fn, draw, update=apply, after=None, seen=None):
    """The sampler's steps from the noisy ``x``, over any array type: the bookkeeping every loop shares (the saved
    sample, the eps history). ``eps_fn(x, t)`` the guided eps, ``draw(i, shape)`` the fresh noise of a stochastic
    step, ``update`` the linear update (``apply``, or its torch twin), ``after(i, t, x)`` once a step is done,
    ``seen(i, t, x, eps)`` before the update with this step's input and guided eps (to look at, never to change:
    a preview's estimate of the clean latents, runtime/preview.py)."""
    saved = None
    hist: list = []
    for i, (t, u) in enumerate(zip(sampler.timesteps, sampler.updates)):
        e = eps_fn(x, t)
        if seen is not None:
            seen(i, t, x, e)
        z = draw(i, x.shape) if u.noise else None
        new = update(u, x, saved, [e] + hist, z)
        if u.save:
            saved = x
        if u.keep_eps:
            hist = ([e] + hist)[:sampler.history]
        x = new
        if after is not None:
            after(i, t, x)
    return x


def run(sampler: Sampler, eps_fn, x0: np.ndarray, noise: np.ndarray, rng=None, trajectory=None,
        step_noise=None, callback=None, seen=None) -> np.ndarray:
    """Sample from x0 (clean latents) and start ``noise``; ``eps_fn(x, t) -> guided eps``.

    ``step_noise(i, shape)`` (or ``rng``) draws the fresh noise of stochastic samplers;
    ``callback(i, t)`` runs after each step; ``seen`` as for ``iterate``.
    """
    x = sampler.add_noise(x0.astype(np.float32), noise.astype(np.float32))
    if trajectory is not None:
        trajectory.append(x.copy())

    def draw(i, shape):
        if step_noise:
            return step_noise(i, shape)
        return (rng or np.random.default_rng()).standard_normal(shape).astype(np.float32)

    def after(i, t, x):
        if trajectory is not None:
            trajectory.append(x.copy())
        if callback is not None:
            callback(i, t)

    return iterate(sampler, x, lambda x, t: eps_fn(x, t).astype(np.float32, copy=False), draw, apply, after, seen)
