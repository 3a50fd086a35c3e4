"""The UNet configuration, read from an official ``config.json``."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from export.model.errors import CheckpointError

DOWN_BLOCKS = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlockP3D")
UP_BLOCKS = ("UpBlockP3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")


@dataclass(frozen=True)
class UNetConfig:
    """Fields of the official UNet3DConditionModel config that shape the network.

    Defaults are the released model's (docs/algorithm.md §1.6). ``attention_head_dim`` is, as in the official
    code, the number of heads, not their width.
    """

    in_channels: int = 9
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = DOWN_BLOCKS
    up_block_types: tuple[str, ...] = UP_BLOCKS
    layers_per_block: int = 2
    cross_attention_dim: int = 320
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "silu"
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    center_input_sample: bool = False
    sample_size: int | None = 32

    def __post_init__(self):
        problems = []
        if tuple(self.down_block_types) != DOWN_BLOCKS:
            problems.append(f"down_block_types {list(self.down_block_types)} (expected {list(DOWN_BLOCKS)})")
        if tuple(self.up_block_types) != UP_BLOCKS:
            problems.append(f"up_block_types {list(self.up_block_types)} (expected {list(UP_BLOCKS)})")
        if len(self.block_out_channels) != 4:
            problems.append(f"block_out_channels {list(self.block_out_channels)} must have 4 entries")
        if self.act_fn != "silu":
            problems.append(f"act_fn {self.act_fn!r} (only 'silu' exists in the official model)")
        if any(c % self.norm_num_groups or c % self.attention_head_dim for c in self.block_out_channels):
            problems.append("block_out_channels must be multiples of norm_num_groups and of the head count")
        if self.downsample_padding != 1:
            problems.append(f"downsample_padding {self.downsample_padding} (the official blocks use 1)")
        if problems:
            raise CheckpointError("unsupported UNet config: " + "; ".join(problems))
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        object.__setattr__(self, "down_block_types", tuple(self.down_block_types))
        object.__setattr__(self, "up_block_types", tuple(self.up_block_types))

    @classmethod
    def from_dict(cls, raw: dict) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        # Keys such as _class_name, _diffusers_version or sample_size-like extras do not shape the net.
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def from_file(cls, path: str | Path) -> UNetConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read UNet config {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"UNet config {path} is not a JSON object")
        try:
            return cls.from_dict(raw)
        except TypeError as exc:
            raise CheckpointError(f"bad UNet config {path}: {exc}") from None

    def to_dict(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return {"_class_name": "UNet3DConditionModel", **out}

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4
