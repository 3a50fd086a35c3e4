"""The M3DDM masked 3-D diffusion UNet (docs/algorithm.md §1), with official checkpoint key names.

Deployment-minded split of the official forward: the global encoder runs once per video
(``encode_global``), and ``forward`` takes the finished cross-attention context per batch row, so
that a batch can mix the null and the real global context freely (the CFG branches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.model.config import UNetConfig
from export.model.global_encoder import GlobalEncoder
from export.model.layers import (
    FPS_MAX_PERIOD,
    TIME_MAX_PERIOD,
    Downsample,
    EmbeddingMLP,
    GroupNorm,
    Pseudo3DConv,
    ResnetBlockP3D,
    SpatioTemporalTransformer,
    Upsample,
    frame_conv,
    sinusoid,
)


class DownBlock(nn.Module):
    """CrossAttnDownBlock3D (with attentions) or DownBlockP3D (without)."""

    def __init__(self, cin, cout, cfg: UNetConfig, attention: bool, downsample: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(
            ResnetBlockP3D(cin if i == 0 else cout, cout, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps)
            for i in range(n))
        self.attentions = nn.ModuleList(
            SpatioTemporalTransformer(cout, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups)
            for _ in range(n)) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x, temb, femb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb, femb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """CrossAttnUpBlock3D (with attentions) or UpBlockP3D (without)."""

    def __init__(self, prev_out, cout, skip_in, cfg: UNetConfig, attention: bool, upsample: bool):
        super().__init__()
        n = cfg.layers_per_block + 1
        ins = [(prev_out if i == 0 else cout) + (skip_in if i == n - 1 else cout) for i in range(n)]
        self.resnets = nn.ModuleList(
            ResnetBlockP3D(c, cout, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps) for c in ins)
        self.attentions = nn.ModuleList(
            SpatioTemporalTransformer(cout, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups)
            for _ in range(n)) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x, skips, temb, femb, context, size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb, femb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels, cfg: UNetConfig):
        super().__init__()
        args = (cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor)
        self.resnets = nn.ModuleList([ResnetBlockP3D(channels, channels, *args) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [SpatioTemporalTransformer(channels, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups)])

    def forward(self, x, temb, femb, context):
        x = self.resnets[0](x, temb, femb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb, femb)


class M3DDMUNet(nn.Module):
    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch = cfg.block_out_channels
        self.conv_in = frame_conv(cfg.in_channels, ch[0])
        self.time_embedding = EmbeddingMLP(ch[0], cfg.time_embed_dim)
        self.fps_embedding = EmbeddingMLP(ch[0], cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        prev = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            last = i == len(ch) - 1
            self.down_blocks.append(DownBlock(prev, ch[i], cfg, kind.startswith("CrossAttn"), not last))
            prev = ch[i]
        self.mid_block = MidBlock(ch[-1], cfg)

        rev = ch[::-1]
        self.up_blocks = nn.ModuleList()
        prev = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            last = i == len(ch) - 1
            skip_in = rev[min(i + 1, len(ch) - 1)]
            self.up_blocks.append(UpBlock(prev, rev[i], skip_in, cfg, kind.startswith("CrossAttn"), not last))
            prev = rev[i]

        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = Pseudo3DConv(ch[0], cfg.out_channels)
        self.global_img_encoder = GlobalEncoder()

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def encode_global(self, global_latents: torch.Tensor) -> torch.Tensor:
        """[g, 4, h, w] scaled VAE latents of the global frames -> context [1, g*h'*w', 320].

        Zeros in, the null context out: the official null global input is all-zero latents.
        """
        return self.global_img_encoder(global_latents.to(self.dtype))

    def _embed(self, values, max_period, mlp):
        cfg = self.config
        emb = sinusoid(values, cfg.block_out_channels[0], max_period, cfg.flip_sin_to_cos, cfg.freq_shift)
        return F.silu(mlp(emb.to(self.dtype)))

    def forward(self, sample, timestep, fps, context):
        """sample [N, 9, F, h, w]; timestep, fps float32 [N] (or scalars); context [N, L, 320] -> eps [N, 4, F, h, w].

        fps is truncated to an integer, as the official model's int64 cast does.
        """
        n = sample.shape[0]
        sample = sample.to(self.dtype)
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device).reshape(-1).expand(n)
        # floor == trunc for the non-negative fps values (ONNX has Floor, not Trunc)
        fps = torch.floor(torch.as_tensor(fps, dtype=torch.float32, device=sample.device)).reshape(-1).expand(n)
        context = context.to(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # SiLU of both embeddings, shared by every resnet's projections.
        temb = self._embed(timestep, TIME_MAX_PERIOD, self.time_embedding)
        femb = self._embed(fps, FPS_MAX_PERIOD, self.fps_embedding)

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, femb, context)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, femb, context)
        for block in self.up_blocks:
            # Upsample to the size of the skip that the next block pops, so odd latent sizes work.
            # (ModuleList gives its items as Module; these are UpBlocks)
            size = (skips[-len(block.resnets) - 1].shape[-2:]  # type: ignore[arg-type]
                    if block.upsamplers is not None else None)
            x = block(x, skips, temb, femb, context, size)
        x = F.silu(self.conv_norm_out(x))
        return self.conv_out(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
