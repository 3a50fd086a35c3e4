"""Live previews (runtime/preview.py): the clean-latent estimate is each sampler's own x0, the linear map is the known
4x3 one, previews never change a run (the same latents and frames, byte for byte, with and without), they reach
progress events and a JPEG file replaced atomically, and the preview thread keeps only the latest offer."""
import threading
import time

import cv2
import numpy as np
import pytest

import media
from conftest import outpaint_cli
from m3ddm.errors import InputError
from runtime import Outpainter, samplers
from runtime.plan import Window
from runtime.preview import LATENT_RGB, Previewer, PreviewOptions, latent_rgb
from runtime.settings import Settings


def test_the_clean_estimate_is_the_samplers_own_x0(rng):
    x = rng.standard_normal((2, 4, 16, 8, 8)).astype(np.float32)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    ddim = samplers.make_sampler("ddim", 20)
    for t, u in list(zip(ddim.timesteps, ddim.updates))[:3]:
        # DDIM (eta 0) moves to sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with x0 from this step's x and eps
        a, ap = float(ddim.ac[t]), ddim.alpha(t - 1000 // 20)
        x0 = (x.astype(np.float64) - np.sqrt(1 - a) * eps) / np.sqrt(a)
        np.testing.assert_allclose(samplers.apply(u, x, None, [eps]), np.sqrt(ap) * x0 + np.sqrt(1 - ap) * eps,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ddim.clean_estimate(x, eps, t), x0, rtol=1e-5, atol=1e-5)
    ddpm = samplers.make_sampler("ddpm", 10)  # its posterior mean c0 x0 + ct x, x0 the same estimate
    t, u = ddpm.timesteps[2], ddpm.updates[2]
    a, ap = float(ddpm.ac[t]), float(ddpm.ac[t - 100])
    beta = 1 - a / ap
    mean = ap ** 0.5 * beta / (1 - a) * ddpm.clean_estimate(x, eps, t) + (1 - beta) ** 0.5 * (1 - ap) / (1 - a) * x
    np.testing.assert_allclose(samplers.apply(u, x, None, [eps], np.zeros_like(x)), mean, rtol=1e-4, atol=1e-5)
    clean = rng.standard_normal(x.shape).astype(np.float32)  # the start: noised, then estimated back
    pndm = samplers.make_sampler("pndm", 50)
    np.testing.assert_allclose(pndm.clean_estimate(pndm.add_noise(clean, eps), eps, pndm.noise_timestep), clean,
                               atol=1e-4)


def test_the_linear_map_is_the_known_4x3_one():
    latent = np.zeros((4, 2, 3), np.float32)
    latent[:, 0, 0] = [1, 0, 0, 0]
    latent[:, 1, 2] = [0.5, -1, 2, 0.25]
    rgb = latent_rgb(latent)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    for (y, x) in ((0, 0), (1, 2), (0, 1)):
        v = latent[:, y, x] @ LATENT_RGB.astype(np.float64)
        np.testing.assert_array_equal(rgb[y, x], np.round(np.clip((v + 1) / 2, 0, 1) * 255))


def test_options_are_checked():
    assert PreviewOptions.of(None) is None and PreviewOptions.of("rgb").form == "rgb"
    for bad in ("png", 3, PreviewOptions(decoder="taesd"), PreviewOptions(every_s=float("nan")),
                PreviewOptions(size=0), PreviewOptions(path="/no/such/folder/p.jpg")):
        with pytest.raises(InputError):
            PreviewOptions.of(bad)


@pytest.fixture(scope="module")
def outpainter(engines):
    with Outpainter(engines, backend="ort", threads=1) as op:
        yield op


def test_previews_never_change_the_run_and_reach_the_progress_events(outpainter):
    frames = media.scene(20, 96, 54, seed=5)  # two windows
    events = []
    run = dict(ratio="9:16", steps=4, sampler="ddpm", seed=3)  # a stochastic sampler: its draws must not move
    plain = outpainter.outpaint(frames, 24, **run)
    seen = outpainter.outpaint(frames, 24, **run, progress=events.append,
                               preview=PreviewOptions(form="rgb", every_s=0))
    assert plain.latents.tobytes() == seen.latents.tobytes() and plain.frames.tobytes() == seen.frames.tobytes()
    images = [e["preview"] for e in events if "preview" in e]
    assert images and seen.stats["previews"] >= len(images) > 1
    h, w = images[-1].shape[:2]
    assert images[-1].dtype == np.uint8 and max(h, w) <= 320 and abs(w / h - 9 / 16) < 0.05
    # around a source frame, pasted as it is (a 96 x 171 output is under the preview's 320 px: not scaled)
    assert (h, w) == (171, 96)
    middle = images[-1][(171 - 54) // 2:][:54]
    assert any(np.array_equal(middle, frame) for frame in frames)
    assert 0 < seen.stats["preview_offer_s"] < 0.05 * seen.stats["sample_s"]


def test_the_vae_decoder_previews_too(outpainter):
    events = []
    outpainter.outpaint(media.scene(8, 96, 54, seed=2), 24, steps=3, progress=events.append,
                        preview=PreviewOptions(decoder="vae", every_steps=1, every_s=0))
    jpegs = [e["preview"] for e in events if "preview" in e]
    assert jpegs and cv2.imdecode(np.frombuffer(jpegs[-1], np.uint8), cv2.IMREAD_COLOR).shape[0] > 0


def test_the_command_line_keeps_a_jpeg_updated(engines, scene_clip, tmp_path):
    clip = scene_clip(8, seed=21)
    frames, summary = outpaint_cli(clip, tmp_path / "out.mp4", engines, "--steps", "3", "--threads", "1",
                                   "--preview", tmp_path / "live.jpg")
    image = cv2.imread(str(tmp_path / "live.jpg"))
    assert summary["preview_s"] > 0 and image is not None and image.shape[0] > image.shape[1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]  # written by rename only


class _Pipe:
    size = 64

    class backend:
        concurrent, name = True, "fake"


def test_the_sampler_copies_only_for_a_ready_preview_thread_and_never_waits_for_it():
    s = Settings(ratios=("1:1",))
    from runtime.geometry import letterbox_geometry
    box = letterbox_geometry(54, 96, s.ratios, 64)
    previewer = Previewer(PreviewOptions(form="number", every_s=0), _Pipe, s, box, 16)
    made, gate = [], threading.Event()

    def slow_render(frame, sampler, t, x, eps):
        gate.wait(10)  # the preview thread is busy while the sampler goes on
        made.append(float(x[0, 0, 0]))
        return np.zeros((8, 8, 3), np.uint8)
    previewer.render = slow_render
    sampler = samplers.make_sampler("ddim", 50)
    seen = previewer.watcher([Window(level=0, stride=1, frames=list(range(16)), guides=[])], sampler)

    def steps(first, last):
        for i in range(first, last):
            x = np.full((1, 4, 16, 8, 8), i, np.float32)
            seen(i, sampler.timesteps[i], x, x)
            x[:] = -1  # the sampler's arrays are its own again at once: the offer was a copy
    t0 = time.perf_counter()
    steps(0, 40)  # the thread is busy with step 0's preview all along
    offering = time.perf_counter() - t0
    gate.set()
    deadline = time.monotonic() + 10
    while not previewer.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    steps(40, 50)
    previewer.close()
    assert offering < 0.5 and made[:2] == [0.0, 40.0], made  # nothing of steps 1..39: the thread was busy
