"""Loading official checkpoints: local folders or Hugging Face hub repos, safetensors or .bin, fp16 or fp32.

A folder in the official format holds ``config.json`` and ``diffusion_pytorch_model.safetensors``
(or ``.bin``; diffusers' ``.fp16`` variants and sharded ``*.index.json`` files are accepted too),
either at its top or in a ``unet/`` (``vae/``) subfolder.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from export.model.config import UNetConfig
from export.model.errors import CheckpointError
from m3ddm.errors import first_line
from m3ddm.facts import RELEASED_UNET_REPO, RELEASED_VAE_REPO, RELEASED_VAE_SUBFOLDER

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "diffusion_pytorch_model.fp16.bin",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_LISTED = 8


def _hub_snapshot(repo_id: str, subfolder: str | None, what: str) -> Path:
    """Download (or find in the local cache) the files of one model folder of a hub repo."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is part of the export extra
        raise CheckpointError(
            f"'{repo_id}' is not a local folder and huggingface_hub is not installed; "
            f"pip install '.[export]' or pass a local {what} folder") from None
    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [prefix + "config.json"] + [prefix + name for name in WEIGHT_NAMES] + [prefix + "*.safetensors"]
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # network, auth, missing repo: all end here with one line
        raise CheckpointError(
            f"cannot get {what} '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {first_line(exc)}); "
            f"without network access, download it elsewhere and pass its local folder instead "
            f"(a folder with config.json and diffusion_pytorch_model.safetensors or .bin)") from None
    return root / subfolder if subfolder else root


def resolve_folder(source: str | os.PathLike, subfolder: str, what: str) -> Path:
    """A local folder that holds config.json: ``source`` itself, its ``subfolder``, or a hub download."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{what} source {path} is a file; pass the folder that holds config.json")
        for candidate in (path, path / subfolder):
            if (candidate / "config.json").is_file():
                return candidate
        raise CheckpointError(f"{what} folder {path} has no config.json (nor {subfolder}/config.json)")
    text = str(source)
    if not _REPO_ID.match(text):
        raise CheckpointError(f"{what} source '{text}' is neither an existing folder nor a hub repo id (owner/name)")
    root = _hub_snapshot(text, None, what)
    if (root / "config.json").is_file():
        return root
    sub = _hub_snapshot(text, subfolder, what)
    if (sub / "config.json").is_file():
        return sub
    raise CheckpointError(f"hub repo '{text}' has no config.json at its top or in {subfolder}/")


def _weight_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has no weights: expected one of {', '.join(WEIGHT_NAMES[:1] + WEIGHT_NAMES[3:4])}")


def _load_one(path: Path, convert) -> dict[str, torch.Tensor]:
    """Tensors of one weights file, each passed through ``convert`` as it is read (keeps peak RAM low)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: convert(f.get_tensor(k)) for k in f.keys()}
        # Checkpoints are data, never code: refuse pickled objects beyond tensors.
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (pre-zip) pickles cannot be memory-mapped
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} holds non-tensor entries: {_listing(bad)}")
    return {k: convert(state[k]) for k in list(state)}


def read_state_dict(folder: Path, convert=lambda t: t) -> dict[str, torch.Tensor]:
    path = _weight_file(folder)
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"bad shard index {path}: {exc}") from None
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_one(folder / shard, convert))
        return state
    return _load_one(path, convert)


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def check_state_dict(expected: dict[str, tuple], state: dict[str, torch.Tensor], origin: str) -> None:
    """Refuse a state dict whose keys or shapes differ from the model's, listing what differs."""
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    mis_shaped = [f"{k} {list(state[k].shape)} (expected {list(expected[k])})"
                  for k in sorted(expected.keys() & state.keys()) if tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped keys: {_listing(mis_shaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {origin} does not fit the M3DDM UNet of its config.json: "
                              + "; ".join(problems))


def build_unet(config: UNetConfig, device="cpu", dtype=torch.float32):
    """An M3DDM UNet with uninitialised (meta) or random weights of the given config."""
    from export.model.unet import M3DDMUNet
    with torch.device(device):
        model = M3DDMUNet(config)
    if str(device) != "meta":
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def load_unet(source=RELEASED_UNET_REPO, dtype=torch.float32, device="cpu"):
    """The M3DDM UNet from a local checkpoint folder or a hub repo id, in eval mode.

    ``source``: a folder with config.json and diffusion_pytorch_model.safetensors/.bin (fp16 or
    fp32 storage), or a folder with them under ``unet/``, or a Hugging Face repo id.
    """
    folder = resolve_folder(source, "unet", "UNet")
    config = UNetConfig.from_file(folder / "config.json")
    model = build_unet(config, device="meta")
    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    cast = read_state_dict(folder, convert)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, cast, str(folder))
    model.load_state_dict(cast, strict=True, assign=True)
    model.source = str(folder)
    return model.eval().requires_grad_(False)


def save_unet(model, folder, safe: bool = True, dtype=None) -> Path:
    """Write ``model`` in the official format (config.json + diffusion_pytorch_model.*)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2))
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    if safe:
        from safetensors.torch import save_file
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(state, str(path))
    else:
        path = folder / "diffusion_pytorch_model.bin"
        torch.save(state, str(path))
    return path


def load_vae(source=RELEASED_VAE_REPO, dtype=torch.float32, device="cpu"):
    """The SD1.5 VAE (diffusers AutoencoderKL) from a folder or a hub repo (subfolder ``vae``)."""
    from diffusers import AutoencoderKL
    folder = resolve_folder(source, RELEASED_VAE_SUBFOLDER, "VAE")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype, low_cpu_mem_usage=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load the VAE from {folder}: {type(exc).__name__}: {first_line(exc)}") from None
    vae.source = str(folder)
    return vae.to(device).eval().requires_grad_(False)
