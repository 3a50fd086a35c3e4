"""The UNet runs at latent sizes beyond the released 32x32, and batches mix branches correctly."""
import pytest
import torch

from export.model import build_unet
from export.model.global_encoder import GlobalEncoder
from runtime import guidance


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return build_unet(tiny_config)


@pytest.mark.parametrize("latent,frames", [(8, 16), (16, 4), (24, 2), (12, 3)])
def test_latent_sizes(model, latent, frames):
    with torch.no_grad():
        context = model.encode_global(torch.randn(2, 4, latent, latent))
        assert context.shape == (1, 2 * GlobalEncoder.tokens_per_frame(latent), 320)
        sample = torch.randn(2, 9, frames, latent, latent)
        eps = model(sample, torch.tensor([961.0, 1.0]), torch.tensor([30.0, 2.0]), context.expand(2, -1, -1))
    assert eps.shape == (2, 4, frames, latent, latent)
    assert torch.isfinite(eps).all()


def test_batch_rows_are_independent(model):
    """Each row's eps depends on its own inputs only: a window batch equals its windows run alone."""
    torch.manual_seed(1)
    sample = torch.randn(3, 9, 4, 8, 8)
    ctx = model.encode_global(torch.randn(4, 4, 8, 8))
    ctx0 = model.encode_global(torch.zeros(4, 4, 8, 8))
    contexts = torch.cat([ctx0, ctx, ctx])
    t, fps = torch.tensor([961.0, 941.0, 21.0]), torch.tensor([30.0, 6.0, 2.0])
    with torch.no_grad():
        together = model(sample, t, fps, contexts)
        alone = torch.cat([model(sample[i:i + 1], t[i:i + 1], fps[i:i + 1], contexts[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_timestep_scalar_broadcasts(model):
    sample = torch.randn(2, 9, 2, 8, 8)
    ctx = model.encode_global(torch.randn(1, 4, 8, 8)).expand(2, -1, -1)
    with torch.no_grad():
        a = model(sample, 961.0, 30.0, ctx)
        b = model(sample, torch.full((2,), 961.0), torch.full((2,), 30.0), ctx)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_combine_is_the_paper_formula_in_branch_order():
    e = torch.randn(3 * 2, 4)  # two windows, branch-major
    out = guidance.combine(e, 2.0, 4.0)
    e0, e1, e2 = e[0:2], e[2:4], e[4:6]
    torch.testing.assert_close(out, e0 + 2 * (e1 - e0) + 4 * (e2 - e1))
    assert guidance.BRANCHES[0] == (False, False) and guidance.BRANCHES[2] == (True, True)
    with pytest.raises(ValueError):
        guidance.combine(torch.zeros(4, 1), 2, 4)


def test_attention_beyond_the_kernels_grid_is_chunked_and_unchanged(model, monkeypatch):
    """The temporal attention's batch (rows x pixels) past CUDA's 65,535 grid limit runs in chunks: here the
    limit is lowered below a small call's temporal batch (2 rows x 64 pixels), and eps is unchanged."""
    from export.model import layers
    torch.manual_seed(2)
    sample, context = torch.randn(2, 9, 4, 8, 8), torch.randn(2, 16, 320)
    args = (sample, torch.tensor([961.0, 1.0]), torch.tensor([30.0, 2.0]), context)
    calls = []
    sdpa = layers.F.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention",
                        lambda q, k, v: calls.append(q.shape[0]) or sdpa(q, k, v))
    with torch.no_grad():
        whole = model(*args)
        n_whole = len(calls)
        monkeypatch.setattr(layers, "SDPA_MAX_BATCH", 5)
        chunked = model(*args)
    assert max(calls[:n_whole]) == 2 * 8 * 8  # the temporal attention: one sequence per pixel
    assert max(calls[n_whole:]) <= 5 and len(calls) - n_whole > n_whole
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
