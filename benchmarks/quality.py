"""The paper's quality protocol (Table 1): crop the sides of real videos, outpaint them back, score.

    python -m benchmarks.quality --videos DIR --ratio-mode horizontal --mask-ratio 0.25 [--engines DIR] ...

Horizontal mode removes ``mask-ratio`` of the width (half from each side), vertical mode of the height;
the runtime then outpaints the kept band back to the original frame with explicit padding, and the
output is scored against the original: MSE, PSNR and SSIM over the whole frame, PSNR over the generated
region only, and the temporal consistency (DIS-flow-warped error) of the output next to the original's.
LPIPS and FVD need pretrained backbones that cannot be downloaded here: asking for them without
``--weights DIR`` holding the files fails with a message naming them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import metrics

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v")


def crop_for(height: int, width: int, mode: str, mask_ratio: float):
    """(top, right, bottom, left) padding that the crop removed, as even pixel counts."""
    if not 0 < mask_ratio < 1:
        raise ValueError("mask ratio must be between 0 and 1")
    if mode == "horizontal":
        keep = max(2, int(round(width * (1 - mask_ratio) / 2)) * 2)
        left = (width - keep) // 2
        return 0, width - keep - left, 0, left
    if mode == "vertical":
        keep = max(2, int(round(height * (1 - mask_ratio) / 2)) * 2)
        top = (height - keep) // 2
        return top, 0, height - keep - top, 0
    raise ValueError(f"ratio mode must be horizontal or vertical, not {mode!r}")


def score_video(outpainter, frames: np.ndarray, fps: float, mode: str, mask_ratio: float, **kwargs) -> dict:
    t, h, w = frames.shape[:3]
    top, right, bottom, left = crop_for(h, w, mode, mask_ratio)
    kept = np.ascontiguousarray(frames[:, top:h - bottom, left:w - right])
    t0 = time.perf_counter()
    result = outpainter.outpaint(kept, fps, pad=(top, right, bottom, left), **kwargs)
    seconds = time.perf_counter() - t0
    out = result.frames
    if out.shape != frames.shape:
        raise RuntimeError(f"outpainted {list(out.shape)} for a {list(frames.shape)} original")
    generated = np.ones((h, w), bool)
    generated[top:h - bottom, left:w - right] = False
    return {"frames": t, "size": [w, h], "padding": [top, right, bottom, left], "seconds": round(seconds, 2),
            "mse": metrics.mse(out, frames), "psnr": metrics.psnr(out, frames), "ssim": metrics.ssim(out, frames),
            "psnr_generated": metrics.psnr(out, frames, generated),
            "temporal_consistency": metrics.temporal_consistency(out),
            "temporal_consistency_original": metrics.temporal_consistency(frames)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    ap.add_argument("--videos", required=True, type=Path, help="folder of videos (or one video)")
    ap.add_argument("--ratio-mode", choices=["horizontal", "vertical"], default="horizontal")
    ap.add_argument("--mask-ratio", type=float, default=0.25, help="fraction removed, e.g. 0.25 or 0.666")
    ap.add_argument("--engines", default="engines")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--sampler", default="pndm")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--max-frames", type=int, default=64, help="frames per video (the protocol's clip length)")
    ap.add_argument("--metrics", default="mse,psnr,ssim,temporal", help="add lpips and/or fvd given --weights")
    ap.add_argument("--weights", type=Path, help="folder with the LPIPS/FVD backbone weights")
    ap.add_argument("--json", type=Path, help="write per-video scores and their means here")
    args = ap.parse_args(argv)

    from runtime import Outpainter
    from runtime.engines import EnginesError
    from runtime.video import VideoError, read_video
    try:
        wanted = {m.strip() for m in args.metrics.split(",") if m.strip()}
        for learned in sorted({"lpips", "fvd"} & wanted):
            metrics.require_weights(learned, args.weights)
            raise metrics.MetricError(f"{learned.upper()} scoring is not part of this version; "
                                      f"run without it (the weights in {args.weights} are in place)")
        crop_for(10, 10, args.ratio_mode, args.mask_ratio)
        videos = sorted(p for p in ([args.videos] if args.videos.is_file() else args.videos.glob("*"))
                        if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise VideoError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {args.videos}")
        outpainter = Outpainter(args.engines, backend=args.backend)
        scores = {}
        for path in videos:
            frames, info = read_video(path, max_frames=args.max_frames)
            scores[path.name] = score_video(outpainter, frames, info.fps, args.ratio_mode, args.mask_ratio,
                                            steps=args.steps, sampler=args.sampler)
            print(f"{path.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores[path.name].items()
                                               if isinstance(v, float)), file=sys.stderr)
    except (metrics.MetricError, VideoError, ValueError, EnginesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = [k for k, v in next(iter(scores.values())).items() if isinstance(v, float)]
    mean = {k: float(np.mean([s[k] for s in scores.values()])) for k in keys}
    report = {"ratio_mode": args.ratio_mode, "mask_ratio": args.mask_ratio, "videos": scores, "mean": mean}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({"mean": mean}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
