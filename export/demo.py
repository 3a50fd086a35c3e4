"""Offline demo of the whole product on what the project makes itself.

Makes a small random M3DDM checkpoint and a small SD1.5-structured VAE in the official formats, exports
them to an engines folder with ``python -m export`` (S = 64), writes a short synthetic clip with audio-free
H.264 (or takes ``--input``), and runs the product CLI ``python -m runtime.outpaint`` on it, which writes
a real outpainted video. With random weights the generated border is noise-like: the demo shows every
step of the product working offline, not the released model's quality.

    python -m export.demo --out build/demo [--input clip.mp4] [--ratio 9:16] [--steps 50]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("export.demo")  # not __name__: run as __main__
DEMO_SIZE = 64  # model size S: 8x8 latents keep the CPU run to seconds
DEMO_WIDTHS = (32, 64, 64, 64)


FULL_VAE_WIDTHS = (128, 256, 512, 512)  # SD1.5's VAE


def make_checkpoints(folder: Path, seed: int = 0, full_size: bool = False) -> tuple[Path, Path]:
    """A random UNet (fp16 safetensors) and VAE in the official formats: small (the demo's), or with the
    released model's and SD1.5 VAE's shapes (``full_size``: 2.6 GB + 0.3 GB, the real cost for benchmarks)."""
    import torch
    from diffusers import AutoencoderKL

    from export.model import UNetConfig, build_unet, save_unet
    unet_dir, vae_dir = folder / "unet", folder / "vae"
    if not (unet_dir / "config.json").is_file():
        torch.manual_seed(seed)
        model = build_unet(UNetConfig() if full_size else UNetConfig(block_out_channels=DEMO_WIDTHS))
        with torch.no_grad():  # zero-init parts would hide paths; give every weight a value
            for p in model.parameters():
                if p.ndim > 1:
                    p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        save_unet(model, unet_dir, dtype=torch.float16)
    if not (vae_dir / "config.json").is_file():
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(block_out_channels=FULL_VAE_WIDTHS if full_size else DEMO_WIDTHS, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4, norm_num_groups=32, sample_size=256 if full_size else DEMO_SIZE)
        vae.save_pretrained(vae_dir)
    return unet_dir, vae_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--input", type=Path, help="a video to outpaint instead of the synthetic clip")
    ap.add_argument("--frames", type=int, default=24, help="frames of the synthetic clip")
    ap.add_argument("--ratio", default="9:16")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)

    from export.engine_folder import export_engines
    from runtime import cli, outpaint
    from runtime.video import write_video
    from runtime.video.synthetic import synthetic_clip

    cli.setup_logging(sys.stdout)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    unet_dir, vae_dir = make_checkpoints(args.out / "checkpoints")
    export_engines(unet_dir, vae_dir, args.out / "engines", ("fp32",), DEMO_SIZE)
    t1 = time.perf_counter()
    clip = args.input
    if clip is None:
        clip = args.out / "clip.mp4"
        frames = synthetic_clip(args.frames)
        write_video(clip, frames, np.arange(len(frames)) / 24.0, 24.0)
    video = args.out / f"outpainted_{args.ratio.replace(':', 'x')}.mp4"
    code = outpaint.main([str(clip), "-o", str(video), "--ratio", args.ratio, "--engines", str(args.out / "engines"),
                          "--steps", str(args.steps), "--json"])
    if code == 0:
        log.info(f"demo: engines in {t1 - t0:.1f} s; outpainted {clip} -> {video}")
    return code


if __name__ == "__main__":
    sys.exit(main())
