"""``Settings``, the one description of a run, and the pipeline's batching over a stand-in backend."""
import numpy as np
import pytest

import media
from m3ddm.errors import InputError
from runtime import Outpainter, Settings
from runtime.engines.base import Backend


class Arithmetic(Backend):
    """A backend whose engines are cheap elementwise functions of every input the UNet sees (its own frames,
    the guides in its context latents, the mask, fps, timestep and context), row by row."""
    name, precision = "arithmetic", "fp32"

    def __init__(self):
        self.unet_rows = []

    @property
    def model_size(self):
        return 64

    def vae_encode(self, images):
        n = images.shape[0]
        pooled = images.reshape(n, 3, 8, 8, 8, 8).mean(axis=(3, 5))
        return np.concatenate([pooled, pooled[:, :1] * 0.5], axis=1).astype(np.float32)

    def vae_decode(self, latents):
        return np.tanh(latents[:, :3]).repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)

    def encode_global(self, g):
        return np.full((1, 64, 320), float(g.mean()), np.float32)

    def unet(self, sample, timestep, fps, context):
        self.unet_rows.append(len(sample))
        c = (context.mean(axis=(1, 2)) + fps / 100 + np.sin(timestep / 100))[:, None, None, None, None]
        x, local, mask = sample[:, :4], sample[:, 4:8], sample[:, 8:9]
        return (0.6 * x - 0.3 * local * (1 - mask) + 0.2 * np.roll(local, 1, axis=2) + c).astype(np.float32)


def test_build_applies_what_is_given_over_the_settings():
    base = Settings(ratios="9:16,1:1", steps=7, seed=3)
    assert base.ratios == ("9:16", "1:1") and base.labels == ["9:16", "1:1"]
    s = Settings.build(base, steps=None, seed=9, guidance=[1.5, 3])
    assert (s.steps, s.seed, s.guidance, s.ratios) == (7, 9, (1.5, 3), ("9:16", "1:1"))
    assert base.seed == 3  # built, not changed
    assert Settings.build(ratio="4:5").ratios == ("4:5",)
    assert Settings.build(pad=(0, 10, 0, 10)).labels == ["pad"]
    with pytest.raises(TypeError, match="colour"):
        Settings.build(colour="red")


@pytest.mark.parametrize("change,words", [
    (dict(ratios="wide"), "W:H"), (dict(ratios=()), "at least one"), (dict(sampler="euler"), "unknown sampler"),
    (dict(steps=0), "steps"), (dict(strides=(5, 2)), "ending in 1"), (dict(guidance=(1,)), "two scales"),
    (dict(batch_windows=0), "from 1 to"), (dict(window_noise="fresh"), "window_noise"),
    (dict(noise=np.zeros((4, 16, 4, 4))), "noise must have shape"), (dict(output_height=1), "from 2 to"),
    (dict(pad=(1, 2, 3)), "four values"),
    # accepted once, meaningless or explosive (issue: hardening)
    (dict(guidance=(float("nan"), float("nan"))), "finite"), (dict(guidance=(float("inf"), 1)), "finite"),
    (dict(guidance=(2, 1e6)), "finite number from 0 to 50"), (dict(feather=-1), "feather"),
    (dict(feather=float("nan")), "feather"), (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"),
    (dict(seed=1.5), "integer"), (dict(steps=10**6), "steps"), (dict(batch_windows=10**6), "batch_windows"),
    (dict(pad=(0, -1, 0, 4)), "padding"), (dict(pad=(0, 1.5, 0, 4)), "integer"), (dict(strides=(2.5, 1)), "strides"),
    (dict(noise=np.full((4, 16, 8, 8), np.nan)), "finite"), (dict(output_height=10**12), "output height"),
    (dict(max_pixels=0), "max_pixels"),
])
def test_check_refuses_what_cannot_run(change, words):
    with pytest.raises(InputError, match=words):
        Settings(**change).check(8)


def test_outpaint_takes_settings_or_keywords_alike():
    frames = media.scene(20, 48, 32, seed=1)
    op = Outpainter(engine=Arithmetic())
    s = Settings(ratios=("1:1",), steps=3, seed=5)
    a = op.outpaint(frames, 24, settings=s)
    b = op.outpaint(frames, 24, "1:1", steps=3, seed=5)
    c = op.outpaint(frames, 24, settings=s, seed=6)  # a keyword over the settings
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.latents, c.latents)
    with pytest.raises(InputError, match="unknown sampler"):
        op.outpaint(frames, 24, settings=s, sampler="euler")


@pytest.mark.parametrize("strides", [(15, 5, 1), (10, 1), (30, 15, 1)])
def test_batching_follows_what_windows_read(strides):
    """Windows of a level are batched only with windows they do not read from: with strides whose later
    levels guide within the level (10,1), batches of 4 run and give exactly what one window at a time does."""
    frames = media.scene(90, 48, 32, seed=2)
    one, many = Arithmetic(), Arithmetic()
    a = Outpainter(engine=one).outpaint(frames, 30, "1:1", steps=2, strides=strides, batch_windows=1)
    b = Outpainter(engine=many).outpaint(frames, 30, "1:1", steps=2, strides=strides, batch_windows=4)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert max(many.unet_rows) > 3 and set(one.unet_rows) == {3}  # batches of several windows did run


@pytest.mark.parametrize("sampler", ["pndm", "ddpm", "ddim", "dpmpp"])
def test_every_sampler_takes_every_step_count_it_accepts(sampler):
    """The most steps a sampler accepts build a valid schedule (1000 once reached timestep 1000: a crash, or a
    division by zero in DPM-Solver++); one more is refused as an input error."""
    import warnings

    from runtime import samplers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = samplers.make_sampler(sampler, samplers.MAX_STEPS)
    assert max(built.timesteps) < samplers.TRAIN_STEPS
    with pytest.raises(InputError, match="steps"):
        Settings(sampler=sampler, steps=samplers.MAX_STEPS + 1).check(8)
