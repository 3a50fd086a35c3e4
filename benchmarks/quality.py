"""The paper's quality protocol (Table 1): crop the sides of real videos, outpaint them back, score.

    python -m benchmarks.quality --videos DIR --ratio-mode horizontal --mask-ratio 0.25 [--engines DIR] ...

Horizontal mode removes ``mask-ratio`` of the width (half from each side), vertical mode of the height;
the runtime then outpaints the kept band back to the original frame with explicit padding, and the
output is scored against the original: MSE, PSNR and SSIM over the whole frame, PSNR over the generated
region only, and the temporal consistency (DIS-flow-warped error) of the output next to the original's.

``--metrics ...,lpips,fvd --weights DIR`` adds the learned metrics, whose pretrained weights cannot be downloaded
here (the folder must hold them; without them the run stops with one ``error:`` line naming the files):

- ``lpips``: LPIPS v0.1 / AlexNet (``benchmarks.lpips``; DIR holds ``alexnet-owt-7be5be79.pth`` and ``alex.pth``),
  per frame at the video's own resolution, averaged per video like the other scores;
- ``fvd``: FVD over the whole set (``benchmarks.fvd``; DIR holds ``i3d_pretrained_400.pt``): the I3D logits of
  every 16-frame clip of every output against those of the originals, at 224x224. ``--fvd-clip-frames 0``
  takes whole videos as clips; ``--fvd-size`` changes the crop (numbers are then
  not comparable with published ones). A covariance needs at least 2 clips per side, checked before any
  outpainting. Weight files are checked (keys and shapes) before any outpainting too.
  Frames are squeezed whole to the square by default (``--fvd-frame full``, as the original TensorFlow FVD
  does): VideoGPT's centre crop (``--fvd-frame crop``) holds, in horizontal mode on landscape videos, (almost)
  none of the generated sides, and FVD then compares the untouched source with itself. The report gives
  ``fvd_generated_share`` (the share of the I3D input that is generated) and warns below 5%.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import metrics
from m3ddm.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v")
METRICS = ("mse", "psnr", "ssim", "temporal", "lpips", "fvd")


class LearnedScores:
    """LPIPS per video and the I3D features for FVD, with the networks loaded once from ``--weights``."""

    def __init__(self, wanted, folder, clip_frames=16, size=224, frame="crop", device=None):
        self.wanted, self.clip_frames, self.size, self.frame = set(wanted), clip_frames or None, size, frame
        self.lpips = self.i3d = None
        import importlib.util
        if importlib.util.find_spec("torch") is None:  # the learned metrics run on torch; the runtime does not
            raise metrics.MetricError("LPIPS and FVD run on PyTorch, which is not installed here: "
                                      "pip install '.[export]' (or torch alone)")
        if "lpips" in self.wanted:
            alexnet, lin = metrics.require_weights("lpips", folder)
            from benchmarks import lpips
            self.lpips = lpips.load(alexnet=alexnet, lin=lin, device=device)
        if "fvd" in self.wanted:
            (i3d,) = metrics.require_weights("fvd", folder)
            from benchmarks import fvd
            self.i3d = fvd.load(i3d, device=device)
        self.features_out, self.features_orig, self.generated_share = [], [], []

    def clips(self, frames: int) -> int:
        from benchmarks import fvd
        return fvd.clip_count(frames, self.clip_frames)

    def score(self, out, original, generated=None) -> dict:
        """{"lpips": mean over frames} when asked; keeps the FVD features of both videos and how much of the
        I3D input the ``generated`` region [H, W] makes up."""
        scores = {}
        if self.lpips is not None:
            from benchmarks import lpips
            scores["lpips"] = lpips.lpips_video(self.lpips, out, original)
        if self.i3d is not None:
            from benchmarks import fvd
            self.features_out.append(fvd.features(self.i3d, out, self.clip_frames, self.size, frame=self.frame))
            self.features_orig.append(fvd.features(self.i3d, original, self.clip_frames, self.size,
                                                   frame=self.frame))
            if generated is not None:
                self.generated_share.append(fvd.region_share(generated, self.size, self.frame))
        return scores

    def fvd(self) -> dict:
        """{"fvd": value, "fvd_clips": clips per side, "fvd_generated_share": mean share of the I3D input that
        is generated} over every video scored so far."""
        from benchmarks import fvd
        a, b = np.concatenate(self.features_out), np.concatenate(self.features_orig)
        out = {"fvd": fvd.frechet_distance(a, b), "fvd_clips": len(a)}
        if self.generated_share:
            out["fvd_generated_share"] = float(np.mean(self.generated_share))
        return out


def count_frames(path, limit=None) -> int:
    """Frames ``read_video(path, max_frames=limit)`` will return, counted without colour conversion."""
    from runtime.video import iter_frames
    frames = iter_frames(path, rgb=False)
    n = 0
    try:
        for _ in frames:
            n += 1
            if limit and n >= limit:
                break
    finally:
        frames.close()
    return n


def crop_for(height: int, width: int, mode: str, mask_ratio: float):
    """(top, right, bottom, left) padding that the crop removed, as even pixel counts."""
    if not 0 < mask_ratio < 1:
        raise InputError("mask ratio must be between 0 and 1")
    if mode == "horizontal":
        keep = max(2, int(round(width * (1 - mask_ratio) / 2)) * 2)
        left = (width - keep) // 2
        return 0, width - keep - left, 0, left
    if mode == "vertical":
        keep = max(2, int(round(height * (1 - mask_ratio) / 2)) * 2)
        top = (height - keep) // 2
        return top, 0, height - keep - top, 0
    raise InputError(f"ratio mode must be horizontal or vertical, not {mode!r}")


def score_video(outpainter, frames: np.ndarray, fps: float, mode: str, mask_ratio: float,
                learned: LearnedScores | None = None, **kwargs) -> dict:
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
    scores = {"frames": t, "size": [w, h], "padding": [top, right, bottom, left], "seconds": round(seconds, 2),
              "mse": metrics.mse(out, frames), "psnr": metrics.psnr(out, frames), "ssim": metrics.ssim(out, frames),
              "psnr_generated": metrics.psnr(out, frames, generated),
              "temporal_consistency": metrics.temporal_consistency(out),
              "temporal_consistency_original": metrics.temporal_consistency(frames)}
    if learned is not None:
        scores.update(learned.score(out, frames, generated))
    return scores


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
    ap.add_argument("--fvd-clip-frames", type=int, default=16, help="frames per FVD clip (0: each whole video)")
    ap.add_argument("--fvd-size", type=int, default=224, help="I3D input crop (224 is the standard)")
    ap.add_argument("--fvd-frame", choices=["crop", "full"], default="full",
                    help="full (default): whole frames squeezed to the square, as the original TF FVD does, so the "
                         "generated borders are in view; crop: VideoGPT's centre crop (sees almost none of them)")
    ap.add_argument("--json", type=Path, help="write per-video scores and their means here")
    args = ap.parse_args(argv)

    from runtime import Outpainter
    from runtime.engines import EnginesError
    from runtime.video import VideoError, read_video
    try:
        wanted = {m.strip() for m in args.metrics.split(",") if m.strip()}
        unknown = sorted(wanted - set(METRICS))
        if unknown:
            raise metrics.MetricError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        if args.fvd_clip_frames < 0 or args.fvd_size < 32:
            raise metrics.MetricError("--fvd-clip-frames must be >= 0 (0: whole videos) and --fvd-size >= 32")
        crop_for(10, 10, args.ratio_mode, args.mask_ratio)
        learned = None
        if {"lpips", "fvd"} & wanted:
            missing = []
            for name in sorted({"lpips", "fvd"} & wanted, reverse=True):  # every missing file, on one line
                try:
                    metrics.require_weights(name, args.weights)
                except metrics.MetricError as exc:
                    missing.append(str(exc))
            if missing:
                raise metrics.MetricError("; ".join(missing))
            learned = LearnedScores(wanted, args.weights, args.fvd_clip_frames, args.fvd_size, args.fvd_frame)
        videos = sorted(p for p in ([args.videos] if args.videos.is_file() else args.videos.glob("*"))
                        if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise VideoError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {args.videos}")
        if learned is not None and learned.i3d is not None:  # a counting pass, so that too few clips fail early
            counts = [count_frames(p, args.max_frames) for p in videos]
            clips = sum(learned.clips(n) for n in counts)
            if clips < 2:
                per = f"{args.fvd_clip_frames}-frame clips" if args.fvd_clip_frames else "whole-video clips"
                raise metrics.MetricError(
                    f"FVD needs at least 2 clips per side for a covariance; these {len(videos)} video(s) "
                    f"({', '.join(map(str, counts))} frames, --max-frames {args.max_frames}) give {clips} "
                    f"{per}: add videos, raise --max-frames or lower --fvd-clip-frames")
        outpainter = Outpainter(args.engines, backend=args.backend)
        scores = {}
        for path in videos:
            frames, info = read_video(path, max_frames=args.max_frames)
            scores[path.name] = score_video(outpainter, frames, info.fps, args.ratio_mode, args.mask_ratio,
                                            learned, steps=args.steps, sampler=args.sampler)
            print(f"{path.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores[path.name].items()
                                               if isinstance(v, float)), file=sys.stderr)
        set_scores = learned.fvd() if learned is not None and learned.i3d is not None else {}
    except (metrics.MetricError, VideoError, ValueError, EnginesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = [k for k, v in next(iter(scores.values())).items() if isinstance(v, float)]
    mean = {k: float(np.mean([s[k] for s in scores.values()])) for k in keys}
    report = {"ratio_mode": args.ratio_mode, "mask_ratio": args.mask_ratio, "videos": scores, "mean": mean,
              **set_scores}
    if set_scores:
        report.update(fvd_clip_frames=args.fvd_clip_frames, fvd_size=args.fvd_size, fvd_frame=args.fvd_frame)
        if set_scores.get("fvd_generated_share", 1.0) < 0.05:
            print(f"warning: only {100 * set_scores['fvd_generated_share']:.1f}% of the I3D input is generated "
                  f"border ({args.fvd_frame} frame), so FVD mostly compares the untouched source with itself; "
                  f"--fvd-frame full keeps the borders in view", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({"mean": mean, **set_scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
