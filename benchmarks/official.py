"""Our runtime against the official M3DDM code itself, side by side on this machine (CPU, FP32, tiny fixtures).

    make official-env     # once: build/official-venv with the official code's pinned libraries
    python -m benchmarks.official --repo CHECKOUT [--frames 60] [--rounds 2] [--json OUT]
                                                                     (make bench-official OFFICIAL=CHECKOUT)

The official side is ``benchmarks/official_loop.py`` in its own interpreter (diffusers 0.18.2, transformers
4.30.2), importing the official pipeline and UNet from CHECKOUT (a clone of
alimama-creative/M3DDM-Video-Outpainting; nothing is downloaded here). Ours is the runtime on ONNX Runtime CPU,
as `make bench` runs it. Same synthetic clip (160x90 to 9:16), S = 64, PNDM 50 steps; each run in its own
process, the two sides alternately (this VM's speed drifts), the faster of the middle runs reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.official_run import OfficialError, check_checkout, run_official
from benchmarks.speed import ROOT, SHARED, bench_engines, clip, measure, median_run

OFFICIAL_PYTHON = ROOT / "build" / "official-venv" / "bin" / "python"


def official(python: Path, repo: Path, unet: str, vae: str, video: Path, size: int) -> dict:
    try:
        return run_official(python, repo, unet, vae, video, size)
    except OfficialError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.official", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a checkout of the official M3DDM repository")
    ap.add_argument("--python", type=Path, default=OFFICIAL_PYTHON,
                    help="the interpreter with the official code's libraries (default: make official-env's)")
    ap.add_argument("--unet", default=str(SHARED / "fixtures" / "tiny_unet"))
    ap.add_argument("--vae", default=str(SHARED / "fixtures" / "tiny_vae"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", default="60", help="clip lengths, comma-separated (50 and more: coarse-to-fine)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--engines", help="engines folder for --unet/--vae (default: exported into build/bench)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        check_checkout(args.repo)
    except OfficialError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not args.python.is_file():
        raise SystemExit(f"error: no interpreter at {args.python}: run `make official-env` or pass --python")
    lengths = [int(n) for n in args.frames.split(",") if n]

    engines = bench_engines(args.unet, args.vae, args.size, args.engines)
    common = {"unet": args.unet, "vae": args.vae, "size": args.size, "engines": engines, "calls": 0,
              "backend": "ort-cpu"}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "commit": commit.stdout.strip(), "size": args.size, "rounds": args.rounds, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for frames in lengths:
            video = Path(tmp) / f"clip{frames}.npy"
            np.save(video, clip(frames))
            runs: dict[str, list[dict]] = {"official": [], "ours": []}
            for _ in range(max(1, args.rounds)):
                runs["official"].append(official(args.python, args.repo, args.unet, args.vae, video, args.size))
                runs["ours"].append(measure("ours", "video", frames, common))
            row = {side: median_run(rs) for side, rs in runs.items()}
            row["speedup"] = round(row["official"]["seconds"] / row["ours"]["seconds"], 2)
            report["results"][f"video_{frames}"] = row
            print(f"video_{frames}", json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
