"""Samplers as coefficient plans: the official PNDM trajectory, and each option against diffusers."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from runtime import samplers as S

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def synthetic_eps(x, t):
    """The golden file's fixed stand-in model: depends on x and t, so each step's arithmetic shows."""
    return (0.9 * x + 0.1 * np.sin(3 * x + t / 100)).astype(np.float32)


@pytest.fixture(scope="module")
def start():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1, 4, 16, 8, 8)).astype(np.float32),
            rng.standard_normal((1, 4, 16, 8, 8)).astype(np.float32))


def test_pndm_reproduces_the_official_trajectory(shared):
    g = np.load(shared("golden/pndm_official_50.npz"))
    sampler = S.make_sampler("pndm", 50)
    assert sampler.noise_timestep == int(g["t0"]) == 961
    assert sampler.timesteps == [int(t) for t in g["timesteps"]]
    trajectory = []
    S.run(sampler, synthetic_eps, g["x0"], g["noise"], trajectory=trajectory)
    np.testing.assert_allclose(np.stack(trajectory), g["trajectory"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [50, 25, 10])
def test_pndm_against_diffusers_driven_the_official_way(start, steps):
    x0, noise = start
    sched = PNDMScheduler(**SD15, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    sched.set_timesteps(steps)
    init = min(steps + 1, steps)
    x = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), sched.timesteps[-init].reshape(1))
    for t in sched.timesteps[max(steps - init + 1, 0):]:
        x = sched.step(torch.from_numpy(synthetic_eps(x.numpy(), float(t))), t, x).prev_sample
    ours = S.run(S.make_sampler("pndm", steps), synthetic_eps, x0, noise)
    np.testing.assert_allclose(ours, x.numpy(), rtol=0, atol=2e-5)


def _diffusers_run(sched, steps, x0, noise, gen=None, noises=None):
    sched.set_timesteps(steps)
    x = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), sched.timesteps[:1])
    for t in sched.timesteps:
        eps = torch.from_numpy(synthetic_eps(x.numpy(), float(t)))
        if gen is not None:  # record the variance noise diffusers is about to draw
            g2 = torch.Generator()
            g2.set_state(gen.get_state())
            noises.append(torch.randn(x.shape, generator=g2).numpy())
            x = sched.step(eps, t, x, generator=gen).prev_sample
        else:
            x = sched.step(eps, t, x).prev_sample
    return x.numpy(), [int(t) for t in sched.timesteps]


@pytest.mark.parametrize("steps", [50, 10])
def test_ddim_against_diffusers(start, steps):
    x0, noise = start
    sched = DDIMScheduler(**SD15, set_alpha_to_one=False, steps_offset=1, clip_sample=False, timestep_spacing="leading")
    want, ts = _diffusers_run(sched, steps, x0, noise)
    sampler = S.make_sampler("ddim", steps)
    assert sampler.timesteps == ts
    np.testing.assert_allclose(S.run(sampler, synthetic_eps, x0, noise), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("steps", [20, 8])
def test_dpmpp_2m_against_diffusers(start, steps):
    x0, noise = start
    sched = DPMSolverMultistepScheduler(**SD15, algorithm_type="dpmsolver++", solver_order=2,
                                        timestep_spacing="linspace")
    want, ts = _diffusers_run(sched, steps, x0, noise)
    sampler = S.make_sampler("dpmpp", steps)
    assert sampler.timesteps == ts
    np.testing.assert_allclose(S.run(sampler, synthetic_eps, x0, noise), want, rtol=0, atol=2e-5)


def test_ddpm_against_diffusers_with_the_same_noise(start):
    x0, noise = start
    sched = DDPMScheduler(**SD15, steps_offset=1, clip_sample=False, timestep_spacing="leading")
    drawn = []
    want, ts = _diffusers_run(sched, 25, x0, noise, gen=torch.Generator().manual_seed(3), noises=drawn)
    sampler = S.make_sampler("ddpm", 25)
    assert sampler.timesteps == ts and sampler.uses_noise
    got = S.run(sampler, synthetic_eps, x0, noise, step_noise=lambda i, shape: drawn[i])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_unknown_sampler_and_bad_steps():
    with pytest.raises(ValueError, match="unknown sampler"):
        S.make_sampler("euler")
    with pytest.raises(ValueError, match="steps"):
        S.make_sampler("ddim", 0)
