"""What live previews cost (issue 28): the same run with and without them, alternately, on one engines folder.

    python -m benchmarks.preview --engines DIR [--frames 40] [--steps 20] [--size 1080] [--repeats 3]

Reports per mode the median sampling seconds, and with previews how many were made, the preview thread's busy
seconds and the sampling thread's (the copies it hands over); the latents must be the same bytes in both modes.
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from runtime import Outpainter
from runtime.preview import PreviewOptions


def clip(frames: int, height: int) -> np.ndarray:
    """A moving 16:9 gradient with texture, ``height`` rows."""
    width = height * 16 // 9
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 40, (height, width), dtype=np.uint8)
    return np.stack([np.stack([(x + 7 * t) % 256, (y + 3 * t) % 256, noise + 100], -1).astype(np.uint8)
                     for t in range(frames)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", required=True)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=1080, help="source height")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decoder", default="linear")
    args = ap.parse_args(argv)
    frames = clip(args.frames, args.size)
    rows: dict = {"off": [], "on": []}
    latents = {}
    with Outpainter(args.engines, backend="ort") as op:
        op.outpaint(frames[:8], 24, steps=2)  # warm-up
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                preview = PreviewOptions(form="jpeg", decoder=args.decoder) if mode == "on" else None
                result = op.outpaint(frames, 24, steps=args.steps, preview=preview)
                rows[mode].append(result.stats)
                latents[mode] = result.latents.tobytes()
    report = {"frames": args.frames, "steps": args.steps, "source_height": args.size, "decoder": args.decoder,
              "same_latents": latents["on"] == latents["off"]}
    for mode, stats in rows.items():
        report[f"sample_s_{mode}"] = statistics.median(s["sample_s"] for s in stats)
    on = rows["on"]
    report.update(previews=statistics.median(s["previews"] for s in on),
                  preview_thread_s=statistics.median(s["preview_s"] for s in on),
                  sampling_thread_s=statistics.median(s["preview_offer_s"] for s in on))
    report["preview_thread_share"] = report["preview_thread_s"] / report["sample_s_on"]
    report["sampling_thread_share"] = report["sampling_thread_s"] / report["sample_s_on"]
    report["ms_per_preview"] = 1000 * report["preview_thread_s"] / max(report["previews"], 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
