"""Building blocks of the M3DDM pseudo-3D UNet, named as the official checkpoint names them.

Activations are 5-D and channel-first, [N, C, F, H, W], as in the official model. No conv changes the
layout: a spatial 3x3 runs as a Conv3d with kernel (1, 3, 3), equal to per-frame Conv2d; the temporal k=3
conv as a Conv2d with kernel (3, 1) over [N, C, F, H*W], a free reshape. In torch that is bit-identical to
the official permute + Conv1d (and to a (3, 1, 1) Conv3d, 1.75x faster than the permutes); in ONNX Runtime
the 2-D conv takes the fast NCHWc kernels, 1.3-2x faster than the Conv3d at S = 64 and 256.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Channels of every sinusoidal embedding input to the temporal-position MLPs (fixed in the model).
TEMPORAL_POSITION_CHANNELS = 320
TIME_MAX_PERIOD = 1000  # diffusion timestep and temporal position (docs/algorithm.md §1.3)
FPS_MAX_PERIOD = 30
# CUDA's grid y/z limit: PyTorch's flash and memory-efficient attention kernels put the batch there, and some
# releases fail beyond it ("invalid configuration argument"; pytorch/pytorch#146704). The temporal attention's
# batch is rows x h x w: 22 windows at S = 256 (66 rows x 1,024 pixels) pass it.
SDPA_MAX_BATCH = 65535


def sinusoid(values: torch.Tensor, channels: int, max_period: float,
             flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding [N, channels] of N scalar values (docs/algorithm.md §1.3)."""
    half = channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = values.float()[:, None] * freqs[None, :]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    if channels % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed in FP32 whatever the activation dtype.

    FP16 variance overflows once activations pass ~256; the FP16 ONNX graph then carries explicit
    casts around every normalisation, which a strongly typed TensorRT build keeps. No-op in FP32.
    """

    def forward(self, x):
        if x.dtype == torch.float32:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm with FP32 statistics (TensorRT warns that FP16 LayerNorm after attention overflows)."""

    def forward(self, x):
        if x.dtype == torch.float32:
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class EmbeddingMLP(nn.Module):
    """Linear -> SiLU -> Linear; keys linear_1, linear_2."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class Pseudo3DConv(nn.Module):
    """A spatial 3x3 conv per frame followed by a temporal k=3 conv per pixel (zero-padded ends)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.spatial_conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.temporal_conv = nn.Conv1d(cout, cout, 3, padding=1)

    def forward(self, x):
        s, t = self.spatial_conv, self.temporal_conv
        x = F.conv3d(x, s.weight.unsqueeze(2), s.bias, padding=(0, 1, 1))
        n, c, f, h, w = x.shape
        y = F.conv2d(x.reshape(n, c, f, h * w), t.weight[..., None], t.bias, padding=(1, 0))
        return y.reshape(n, y.shape[1], f, h, w)


def frame_conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv3d:
    """A per-frame 2-D conv stored as the official Conv3d with temporal kernel 1."""
    pad = kernel // 2
    return nn.Conv3d(cin, cout, (1, kernel, kernel), stride=(1, stride, stride), padding=(0, pad, pad))


class ResnetBlockP3D(nn.Module):
    """GroupNorms pool over all frames of a clip (they see the 5-D tensor)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, eps: float, output_scale: float = 1.0):
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=eps)
        self.conv1 = Pseudo3DConv(cin, cout)
        self.time_emb_proj = nn.Linear(temb_dim, cout)
        self.fps_emb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = GroupNorm(groups, cout, eps=eps)
        self.conv2 = Pseudo3DConv(cout, cout)
        self.conv_shortcut = nn.Conv3d(cin, cout, 1) if cin != cout else None
        self.output_scale = output_scale

    def forward(self, x, temb_act, femb_act):
        """``temb_act``/``femb_act`` are SiLU(emb) [N, temb_dim], computed once per UNet call."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(temb_act)[:, :, None, None, None]
        h = h + self.fps_emb_proj(femb_act)[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale == 1.0 else out / self.output_scale


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = frame_conv(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = frame_conv(channels, channels, 3)

    def forward(self, x, size=None):
        # Per-frame nearest x2; an explicit size lets odd skip sizes line up (latents not a multiple of 8).
        if size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=(x.shape[2], *size), mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head attention; heads split the channels into contiguous blocks (docs/algorithm.md §1.2).

    Eager runs use PyTorch's fused SDPA. For export (``explicit = True``, set by ``export_mode``)
    the graph spells out MatMul -> Softmax -> MatMul, which ONNX parsers and TensorRT's attention fusion
    recognise. In FP16 graphs the softmax runs in FP32 between Casts by default (``softmax_fp32``), which
    keeps FP16 scores from overflowing but may keep TensorRT from fusing the attention; with it off the
    whole pattern is FP16, as the official model computes it (its CrossAttention does not upcast).
    """

    explicit = False
    softmax_fp32 = True

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        kv_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        """x [B, L, C]; context [Bc, Lk, Cc] with B a multiple of Bc.

        When several query rows share one context (all frames of a batch item see the same global
        tokens), their queries are folded into one sequence per context: K and V are projected once
        per batch item instead of once per frame, and softmax rows are unchanged.
        """
        b, length, c = x.shape
        src = x if context is None else context
        bc = src.shape[0]
        q = self.to_q(x).reshape(bc, -1, self.heads, c // self.heads).transpose(1, 2)
        k = self.to_k(src).reshape(bc, -1, self.heads, c // self.heads).transpose(1, 2)
        v = self.to_v(src).reshape(bc, -1, self.heads, c // self.heads).transpose(1, 2)
        if self.explicit:
            scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2))
            upcast = q.dtype != torch.float32 and self.softmax_fp32
            probs = scores.float().softmax(-1).to(q.dtype) if upcast else scores.softmax(-1)
            out = torch.matmul(probs, v)
        else:
            out = fused_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, length, c)
        return self.to_out[0](out)


def fused_attention(q, k, v):
    """``scaled_dot_product_attention`` in batch chunks of at most ``SDPA_MAX_BATCH``: rows are independent, so
    the chunks give the same values, and every kernel launch stays within the grid."""
    max_batch = SDPA_MAX_BATCH
    if q.shape[0] <= max_batch:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + max_batch], k[i:i + max_batch], v[i:i + max_batch])
                      for i in range(0, q.shape[0], max_batch)])


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, second attention (cross or self), GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int | None):
        super().__init__()
        self.attn1 = Attention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatioTemporalTransformer(nn.Module):
    """Spatial transformer per frame (cross-attending to the global tokens), then a temporal one.

    Official key names: norm/proj_in/transformer_blocks/proj_out for the spatial half, and
    norm2/proj_in2/transformer_blocks2/proj_out2/temporal_position_embed_proj for the temporal half.
    """

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim)])
        self.proj_out = nn.Conv2d(channels, channels, 1)
        self.temporal_position_embed_proj = EmbeddingMLP(TEMPORAL_POSITION_CHANNELS, channels)
        self.norm2 = GroupNorm(groups, channels, eps=1e-6)
        self.proj_in2 = nn.Conv3d(channels, channels, 1)
        self.transformer_blocks2 = nn.ModuleList([TransformerBlock(channels, heads, None)])
        self.proj_out2 = nn.Conv3d(channels, channels, 1)

    def forward(self, x, context):
        n, c, f, h, w = x.shape
        # Spatial half: frames folded into the batch; GroupNorm statistics per frame.
        frames = x.transpose(1, 2).reshape(n * f, c, h, w)
        y = self.proj_in(self.norm(frames))
        y = y.permute(0, 2, 3, 1).reshape(n * f, h * w, c)
        y = self.transformer_blocks[0](y, context)
        y = y.reshape(n * f, h, w, c).permute(0, 3, 1, 2)
        y = self.proj_out(y) + frames
        x = y.reshape(n, f, c, h, w).transpose(1, 2)

        # Temporal half: GroupNorm over all frames, then one sequence of F tokens per pixel.
        y = self.proj_in2(self.norm2(x))
        y = y.permute(0, 3, 4, 2, 1).reshape(n * h * w, f, c)
        # int64 Range then Cast: TensorRT's parser takes a float Range only with constant inputs.
        positions = torch.arange(f, device=x.device).float()
        pos = self.temporal_position_embed_proj(
            sinusoid(positions, TEMPORAL_POSITION_CHANNELS, TIME_MAX_PERIOD).to(y.dtype))
        y = y + pos[None]
        y = self.transformer_blocks2[0](y)
        y = y.reshape(n, h, w, f, c).permute(0, 4, 3, 1, 2)
        return self.proj_out2(y) + x


class export_mode:
    """Within this context, attention is spelled out for ONNX export (see ``Attention``)."""

    def __init__(self, softmax_fp32: bool = True):
        self.softmax_fp32 = softmax_fp32

    def __enter__(self):
        self._saved = Attention.explicit, Attention.softmax_fp32
        Attention.explicit, Attention.softmax_fp32 = True, self.softmax_fp32
        return self

    def __exit__(self, *exc):
        Attention.explicit, Attention.softmax_fp32 = self._saved
        return False
