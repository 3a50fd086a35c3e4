"""The parts that M3DDM shares with Stable Diffusion 1.5, against diffusers' own modules.

Weights go from the diffusers module into ours by the key mapping of docs/algorithm.md §1.6 (renamed
spatial convs, Conv2d kernels gaining a temporal axis of 1). Temporal parts are made the identity
(Dirac temporal convs, zero fps projection, zero temporal output projection) so that what remains is
exactly the SD1.5 computation, per frame.
"""
import math

import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D

from export.model.layers import (
    Downsample,
    EmbeddingMLP,
    ResnetBlockP3D,
    SpatioTemporalTransformer,
    TransformerBlock,
    Upsample,
    sinusoid,
)

N, FRAMES, H, W = 2, 3, 8, 8


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.ndim == 1 else 1.0 / math.sqrt(p[0].numel())))
    return module.eval()


def sd_to_m3ddm(state, ours):
    """docs/algorithm.md §1.6: SD key -> M3DDM key, Conv2d kernels reshaped to the Conv3d/Pseudo3DConv layout."""
    out = {}
    for key, value in state.items():
        for conv in ("conv1", "conv2"):
            if key.startswith(conv + "."):
                key = key.replace(conv + ".", conv + ".spatial_conv.", 1)
        target = ours[key]
        out[key] = value.reshape(target.shape)
    return out


def make_temporal_identity(module):
    """Dirac temporal convs, zero fps projections and temporal-branch output: the temporal path is a no-op."""
    with torch.no_grad():
        for name, sub in module.named_modules():
            if name.endswith("temporal_conv"):
                sub.weight.zero_()
                sub.weight[:, :, 1] = torch.eye(sub.weight.shape[0])
                sub.bias.zero_()
            if name.endswith(("fps_emb_proj", "proj_out2")):
                sub.weight.zero_()
                sub.bias.zero_()


def frames_of(x5):
    n, c, f, h, w = x5.shape
    return x5.transpose(1, 2).reshape(n * f, c, h, w)


@pytest.mark.parametrize("cin,cout", [(64, 64), (32, 64)])
def test_resnet_spatial_path_equals_sd_resnet(cin, cout):
    sd = randomize(ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=128, groups=32, eps=1e-5), 1)
    ours = ResnetBlockP3D(cin, cout, 128, 32, 1e-5).eval()
    randomize(ours, 2)
    ours.load_state_dict(sd_to_m3ddm(sd.state_dict(), ours.state_dict()), strict=False)
    make_temporal_identity(ours)
    # Identical frames: the all-frames GroupNorm then has each frame's own statistics.
    frame = torch.randn(N, cin, H, W)
    x5 = frame[:, :, None].expand(N, cin, FRAMES, H, W).contiguous()
    temb = torch.randn(N, 128)
    with torch.no_grad():
        want = sd(frame, temb)
        got = ours(x5, torch.nn.functional.silu(temb), torch.randn(N, 128))
    for f in range(FRAMES):
        torch.testing.assert_close(got[:, :, f], want, rtol=1e-5, atol=1e-5)


def test_transformer_block_equals_sd_block_with_context_shared_by_frames():
    dim, heads, ctx_len = 64, 8, 20
    sd = randomize(BasicTransformerBlock(dim, heads, dim // heads, cross_attention_dim=320, activation_fn="geglu"), 3)
    ours = TransformerBlock(dim, heads, 320).eval()
    ours.load_state_dict(sd.state_dict())
    x = torch.randn(N * FRAMES, H * W, dim)
    context = torch.randn(N, ctx_len, 320)
    with torch.no_grad():
        # diffusers sees the context copied per frame; ours projects K/V once per batch item.
        want = sd(x, encoder_hidden_states=context.repeat_interleave(FRAMES, dim=0))
        got = ours(x, context)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_spatial_half_equals_sd_transformer2d():
    dim = 64
    sd = randomize(Transformer2DModel(num_attention_heads=8, attention_head_dim=dim // 8, in_channels=dim,
                                      cross_attention_dim=320, norm_num_groups=32), 4)
    ours = randomize(SpatioTemporalTransformer(dim, 8, 320, 32), 5)
    ours.load_state_dict(sd_to_m3ddm(sd.state_dict(), ours.state_dict()), strict=False)
    make_temporal_identity(ours)
    x5 = torch.randn(N, dim, FRAMES, H, W)
    context = torch.randn(N, 12, 320)
    with torch.no_grad():
        want = sd(frames_of(x5), encoder_hidden_states=context.repeat_interleave(FRAMES, dim=0)).sample
        got = ours(x5, context)
    torch.testing.assert_close(frames_of(got), want, rtol=1e-5, atol=1e-5)


def test_temporal_half_mixes_frames_and_spatial_half_does_not():
    """Sanity of the layout: changing one frame changes others only through the temporal half."""
    ours = randomize(SpatioTemporalTransformer(64, 8, 320, 32), 6)
    x5 = torch.randn(1, 64, FRAMES, H, W)
    y5 = x5.clone()
    y5[:, :, 0] += 1.0
    ctx = torch.randn(1, 12, 320)
    with torch.no_grad():
        a, b = ours(x5, ctx), ours(y5, ctx)
        assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-4
        make_temporal_identity(ours)
        # GroupNorm `norm` is per frame: with the temporal half off, other frames are untouched.
        a, b = ours(x5, ctx), ours(y5, ctx)
    torch.testing.assert_close(a[:, :, 1:], b[:, :, 1:], rtol=0, atol=0)


def test_down_and_upsampler_equal_sd_per_frame():
    dim = 64
    x5 = torch.randn(N, dim, FRAMES, H, W)
    sd_down = randomize(Downsample2D(dim, use_conv=True, padding=1), 7)
    ours_down = Downsample(dim).eval()
    ours_down.conv.weight.data = sd_down.conv.weight.data[:, :, None].clone()
    ours_down.conv.bias.data = sd_down.conv.bias.data.clone()
    sd_up = randomize(Upsample2D(dim, use_conv=True), 8)
    ours_up = Upsample(dim).eval()
    ours_up.conv.weight.data = sd_up.conv.weight.data[:, :, None].clone()
    ours_up.conv.bias.data = sd_up.conv.bias.data.clone()
    with torch.no_grad():
        torch.testing.assert_close(frames_of(ours_down(x5)), sd_down(frames_of(x5)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frames_of(ours_up(x5)), sd_up(frames_of(x5)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_period", [1000, 30])
def test_sinusoid_against_its_formula_and_diffusers(max_period):
    values = torch.tensor([0.0, 1.0, 2.0, 15.0, 30.0, 961.0])
    got = sinusoid(values, 320, max_period).numpy()
    k = np.arange(160)
    args = values.numpy()[:, None].astype(np.float64) * np.exp(-np.log(max_period) * k / 160)[None]
    np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], 1), atol=2e-4)
    ref = get_timestep_embedding(values, 320, flip_sin_to_cos=True, downscale_freq_shift=0, max_period=max_period)
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=0, atol=0)


def test_embedding_mlp_equals_sd_timestep_embedding():
    sd = randomize(TimestepEmbedding(320, 1280), 9)
    ours = EmbeddingMLP(320, 1280).eval()
    ours.load_state_dict(sd.state_dict())
    x = torch.randn(4, 320)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), sd(x), rtol=0, atol=0)
