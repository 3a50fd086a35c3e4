"""Held to what the official code computes on the fixtures (../shared/golden)."""
import json

import numpy as np
import pytest
import torch

from export.reference import ReferencePipeline, sample_pndm
from runtime import guidance


@pytest.fixture(scope="module")
def unet_golden():
    from conftest import _need
    return np.load(_need("golden/unet_forward.npz"))


def test_global_encoder_matches_official_context(tiny_unet, unet_golden):
    g = torch.from_numpy(unet_golden["global_latents"])
    with torch.no_grad():
        c, c0 = tiny_unet.encode_global(g), tiny_unet.encode_global(torch.zeros_like(g))
    np.testing.assert_allclose(c.numpy(), unet_golden["context"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c0.numpy(), unet_golden["null_context"], rtol=1e-5, atol=1e-5)


def _four_branch(unet, d):
    g = torch.from_numpy(d["global_latents"])
    with torch.no_grad():
        c, c0 = unet.encode_global(g), unet.encode_global(torch.zeros_like(g))
        context = torch.cat([c if real else c0 for real in guidance.OFFICIAL_GLOBAL])
        n = context.shape[0]
        return unet(torch.from_numpy(d["sample"]), torch.full((n,), float(d["timestep"])),
                    torch.full((n,), float(d["fps"])), context), (c0, c)


def test_unet_call_matches_official_four_branch_eps(tiny_unet, unet_golden):
    eps, _ = _four_branch(tiny_unet, unet_golden)
    want = unet_golden["eps"]
    err = np.abs(eps.numpy() - want).max() / np.abs(want).max()
    assert err < 1e-5, f"max relative error {err:.2e}"


def test_three_branch_batch_equals_official_rows(tiny_unet, unet_golden):
    sample = torch.from_numpy(unet_golden["sample"])
    _, (c0, c) = _four_branch(tiny_unet, unet_golden)
    rows = list(guidance.OFFICIAL_ROWS)
    context = torch.cat([c if b.global_ else c0 for b in guidance.BRANCHES])
    with torch.no_grad():
        eps3 = tiny_unet(sample[rows], torch.full((3,), 961.0), torch.full((3,), 24.0), context)
    want = unet_golden["eps"][rows]
    assert np.abs(eps3.numpy() - want).max() / np.abs(want).max() < 1e-5


def test_fps_is_truncated_to_an_integer(tiny_unet, unet_golden):
    sample = torch.from_numpy(unet_golden["sample"][:1])
    g = torch.from_numpy(unet_golden["global_latents"])
    with torch.no_grad():
        ctx = tiny_unet.encode_global(g)
        run = lambda fps: tiny_unet(sample, torch.tensor([961.0]), torch.tensor([fps]), ctx)
        a, b, c = run(24.0), run(24.9), run(25.0)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_pndm_trajectory_matches_official(shared):
    d = np.load(shared("golden/pndm_official_50.npz"))
    trajectory = []
    sample_pndm(lambda x, t: 0.9 * x + 0.1 * torch.sin(3 * x + t / 100), torch.from_numpy(d["x0"]),
                torch.from_numpy(d["noise"]), 50, trajectory)
    got = torch.stack(trajectory).numpy()
    assert got.shape == d["trajectory"].shape
    np.testing.assert_allclose(got, d["trajectory"], rtol=0, atol=1e-5)


def _golden_run(shared, pipe):
    d = np.load(shared("golden/run_dense_realshort_9x16.npz"))
    meta = json.loads(shared("golden/run_dense_realshort_9x16.json").read_text())
    return d, meta, pipe.video(d["source_frames"], float(d["fps"]), meta["ratios"].split(","), meta["S"],
                               noise=d["noise"][0])


def test_reference_pipeline_reproduces_the_official_run(shared, tiny_unet, tiny_vae):
    """The official cost (the benchmarks' baseline: four branches, the global encoder in every call, the window's
    images encoded again for every window) on the golden 20-frame run."""
    pipe = ReferencePipeline(tiny_unet, tiny_vae, cost="official")
    d, meta, (latents, written, plan) = _golden_run(shared, pipe)
    windows = [w for level in plan for w in level]
    assert [list(w.frames) for w in windows] == [w["frames"] for w in meta["windows"]]
    assert [list(w.guides) for w in windows] == [w["guide_positions"] for w in meta["windows"]]
    scale = np.abs(d["latents"]).max()
    assert np.abs(latents.numpy() - d["latents"]).max() < 1e-5 * scale
    # What the official code writes, its extra indexes past T-1 included (docs/algorithm.md §6.4).
    assert sorted(written) == list(d["written_index"])
    frames = np.stack([written[i] for i in d["written_index"]]).astype(int)
    diff = np.abs(frames - d["written_frames"])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 boundaries only
    assert pipe.unet_calls == 100
    assert pipe.vae_encodes == 2 * (33 + 16)  # per window: its 33 images and the 16 global frames


def test_the_three_branch_cost_is_the_official_result_for_less(shared, tiny_unet, tiny_vae):
    """The three branches the guidance reads, the contexts once a video, each frame encoded once: the latents and
    frames of the official cost (held to the golden run above), over the golden clip's plan at 4 steps."""
    runs = {cost: ReferencePipeline(tiny_unet, tiny_vae, cost=cost, steps=4) for cost in ("official", "three_branch")}
    out = {cost: _golden_run(shared, pipe)[2] for cost, pipe in runs.items()}
    (want, want_written, _), (got, written, _) = out["official"], out["three_branch"]
    assert np.abs(got.numpy() - want.numpy()).max() < 1e-5 * np.abs(want.numpy()).max()
    assert sorted(written) == sorted(want_written)
    assert max(np.abs(written[i].astype(int) - want_written[i].astype(int)).max() for i in written) <= 1
    assert runs["three_branch"].unet_calls == runs["official"].unet_calls == 8
    # Each image once: the inpainted and the letterboxed frames, the null image, the global frames.
    assert runs["three_branch"].vae_encodes == 20 + 20 + 1 + 16
