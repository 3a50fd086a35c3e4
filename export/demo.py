"""Offline demo of what exists so far, on what the project makes itself.

Makes a small random M3DDM checkpoint and a small SD1.5-structured VAE in the official formats,
loads them back through ``load_unet``/``load_vae``, renders a short synthetic clip (or reads
``--input``), runs the reference pipeline (the official algorithm at three-branch cost) and writes
the outpainted clip. With random weights the generated border is noise-like: the demo shows the
whole path working, not the released model's quality.

    python -m export.demo --out build/demo [--input clip.mp4] [--ratio 9:16] [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

DEMO_SIZE = 64  # model size S: 8x8 latents keep the CPU run to seconds
DEMO_WIDTHS = (32, 64, 64, 64)


def make_checkpoints(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from diffusers import AutoencoderKL

    from export.model import UNetConfig, build_unet, save_unet
    unet_dir, vae_dir = folder / "unet", folder / "vae"
    if not (unet_dir / "config.json").is_file():
        torch.manual_seed(seed)
        model = build_unet(UNetConfig(block_out_channels=DEMO_WIDTHS))
        with torch.no_grad():  # zero-init parts would hide paths; give every weight a value
            for name, p in model.named_parameters():
                if p.ndim > 1:
                    p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
        save_unet(model, unet_dir, dtype=torch.float16)
    if not (vae_dir / "config.json").is_file():
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(block_out_channels=DEMO_WIDTHS, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4, norm_num_groups=32, sample_size=DEMO_SIZE)
        vae.save_pretrained(vae_dir)
    return unet_dir, vae_dir


def synthetic_clip(frames: int = 24, width: int = 160, height: int = 90) -> np.ndarray:
    """A panning gradient with moving shapes, RGB uint8 [T, H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(frames):
        img = np.stack([128 + 100 * np.sin((xx + 3 * t) / 23), 128 + 90 * np.cos(yy / 17 + t / 9),
                        np.full_like(xx, 60 + 4 * t)], -1).clip(0, 255).astype(np.uint8)
        cv2.circle(img, (20 + 5 * t, 45), 14, (250, 220, 40), -1)
        cv2.rectangle(img, (120 - 2 * t, 10), (150 - 2 * t, 40), (30, 90, 230), -1)
        out.append(img)
    return np.stack(out)


def read_clip(path: Path, limit: int) -> tuple[np.ndarray, float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise ValueError(f"no video frames could be read from {path}")
    return np.stack(frames), float(fps)


def crop_to_ratio(square: np.ndarray, ratio: float) -> np.ndarray:
    """The official central crop of the S x S output to the target ratio (spec 4.6)."""
    s = square.shape[0]
    if ratio < 1:
        w = int(s * ratio)
        left = (s - w) // 2
        return square[:, left:left + w]
    h = int(s / ratio)
    top = (s - h) // 2
    return square[top:top + h]


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--input", type=Path, help="a video to use instead of the synthetic clip (first --frames frames)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--ratio", default="9:16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args(argv)

    from runtime.geometry import parse_ratio
    try:
        ratio = parse_ratio(args.ratio)
        if args.input:
            frames, fps = read_clip(args.input, args.frames)
        else:
            frames, fps = synthetic_clip(args.frames), 24.0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from export.model import load_unet, load_vae
    from export.reference import ReferencePipeline
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    unet_dir, vae_dir = make_checkpoints(args.out / "checkpoints")
    unet, vae = load_unet(unet_dir), load_vae(vae_dir)
    t1 = time.perf_counter()
    pipe = ReferencePipeline(unet, vae, cost="three_branch", steps=args.steps)
    latents, written, plan = pipe.video(frames, fps, [args.ratio], DEMO_SIZE, seed=args.seed)
    t2 = time.perf_counter()
    out = np.stack([crop_to_ratio(written[i], ratio) for i in range(len(frames))])
    video = args.out / f"outpainted_{args.ratio.replace(':', 'x')}.mp4"
    write_video(video, out, fps)
    np.save(args.out / "latents.npy", latents.numpy())
    summary = dict(frames=len(frames), fps=fps, model_size=DEMO_SIZE, windows=sum(len(l) for l in plan),
                   unet_calls=pipe.unet_calls, vae_encoded_images=pipe.vae_encodes,
                   checkpoint_seconds=round(t1 - t0, 2), sampling_seconds=round(t2 - t1, 2),
                   output=str(video), output_size=[int(out.shape[2]), int(out.shape[1])])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
