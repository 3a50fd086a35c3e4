"""One long video over several Ray workers: the sampling of a 600-frame plan with N = 1, 2, 4 CPU workers
against one process, and whether the latents are the one-process latents.

    python -m benchmarks.cluster [--engines DIR] [--frames 600] [--steps 10] [--workers 1,2,4]
                                 [--batch-windows 4] [--json OUT]                   (make bench-cluster)

The demo engines (S = 64, the tiny fixtures' architecture; ``make demo``), ONNX Runtime on the CPU with one
thread per engine set (this process's too), a local Ray with as many logical CPUs as the largest N. The
video is prepared once (VAE encodes, context); what is timed is ``Pipeline.sample`` (the plan's windows),
where the workers act. The first level is serial (its windows guide each other in turn): Amdahl's ceiling
is total / (first level + (rest) / N), and a 2-core machine caps any N at about 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=str(ROOT / "build" / "demo" / "engines"))
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--batch-windows", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from runtime import Outpainter, cluster
    from runtime.geometry import letterbox_geometry
    from runtime.plan import official_plan
    from runtime.settings import Settings
    from runtime.video.synthetic import synthetic_clip

    counts = [int(n) for n in args.workers.split(",")]
    cluster.connect("local", num_cpus=max(counts))
    rgb = synthetic_clip(args.frames)
    op = Outpainter(args.engines, backend="ort", threads=1)
    box = letterbox_geometry(rgb.shape[1], rgb.shape[2], ["9:16"], op.size)
    video = op.pipeline.prepare(iter(rgb), len(rgb), box, 24.0)
    plan = official_plan(len(rgb))
    results = {"frames": args.frames, "steps": args.steps, "model_size": op.size, "cpus": os.cpu_count(),
               "windows_per_level": [len(level) for level in plan], "batch_windows": {}}

    for bw in sorted({1, args.batch_windows}):
        s = Settings(steps=args.steps, batch_windows=bw)
        op.pipeline.spread = None
        marks: dict[str, float] = {}

        def checkpoint(new, windows_done, marks=marks):  # when the serial first level ends
            if windows_done == len(plan[0]):
                marks["first"] = time.perf_counter()
        t0 = time.perf_counter()
        alone, _, _ = op.pipeline.sample(video, s, checkpoint=checkpoint)
        alone_s = time.perf_counter() - t0
        first_s = marks["first"] - t0
        row: dict[str, Any] = {"one_process_s": round(alone_s, 2), "first_level_s": round(first_s, 2), "workers": {}}
        for n in counts:
            if bw == 1 and n != max(counts):
                continue  # the bit-identity check; the scaling is measured at the default batch size
            actors = cluster.start_workers(args.engines, n, backend="ort", threads=1, cpus_per_worker=1)
            op.pipeline.spread = cluster.WindowPool(actors)
            op.pipeline.sample(video, Settings(steps=2, batch_windows=bw))  # every worker warm
            t0 = time.perf_counter()
            spread, _, _ = op.pipeline.sample(video, s)
            spread_s = time.perf_counter() - t0
            op.pipeline.spread.close()
            op.pipeline.spread = None
            ceiling = alone_s / (first_s + (alone_s - first_s) / n)
            row["workers"][n] = {"seconds": round(spread_s, 2), "speedup": round(alone_s / spread_s, 2),
                                 "amdahl_ceiling": round(ceiling, 2),
                                 "bit_identical": bool(np.array_equal(spread, alone)),
                                 "max_abs_diff": float(np.abs(spread - alone).max())}
            print(f"batch {bw}, {n} workers: {spread_s:.1f} s against {alone_s:.1f} s in one process "
                  f"(x{alone_s / spread_s:.2f}, ceiling x{ceiling:.2f}), "
                  f"identical: {row['workers'][n]['bit_identical']}",
                  flush=True)
        results["batch_windows"][bw] = row
    op.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
