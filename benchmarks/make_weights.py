"""Random checkpoints in the official formats, for benchmarks where the released weights are not at hand.

    python -m benchmarks.make_weights --out DIR [--full-size]

writes DIR/unet (config.json + fp16 safetensors) and DIR/vae (diffusers AutoencoderKL). With --full-size they
have the released UNet's and SD1.5 VAE's shapes, so a GPU run measures the real cost:

    python -m benchmarks.make_weights --out build/full --full-size
    python -m benchmarks.speed --unet build/full/unet --vae build/full/vae --size 256 --videos 40,100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.make_weights", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--full-size", action="store_true", help="the released model's shapes (2.6 GB + 0.3 GB)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from export.demo import make_checkpoints
    t0 = time.perf_counter()
    unet, vae = make_checkpoints(args.out, args.seed, args.full_size)
    print(f"{unet} and {vae} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
