"""The host side alone: the real file path (decode, canvases, TELEA inits, compositing, encoding) over an engine
that answers at once, so the wall time is what the host would cost next to an infinitely fast GPU.

    python -m benchmarks.host [--sizes 1280x720,1920x1080] [--frames 100,600] [--cores 1,all] [--steps 2]
                              [--json OUT]                                                (make bench-host)

Per run (each in its own process, pinned to its cores with sched_setaffinity, the libraries' thread pools sized
to them): wall per frame, time to the first sampling step, the summary's stages, peak RSS. Per size, the
stages measured one at a time on one core (decode, canvas + TELEA init, composite, encode: ms per frame); a
run's wall per frame against their sum says how much of the host work overlaps. 16:9 to 9:16 at source
resolution, S = 256. Clips are made once under build/bench-host/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "build" / "bench-host"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def clip(width: int, height: int, frames: int) -> Path:
    path = CLIPS / f"clip_{width}x{height}_{frames}.mp4"
    if not path.exists():
        import cv2

        from runtime.video import write_video
        from runtime.video.synthetic import synthetic_clip
        CLIPS.mkdir(parents=True, exist_ok=True)
        base = cv2.resize(synthetic_clip(1)[0], (width, height), interpolation=cv2.INTER_CUBIC)
        tmp = path.with_suffix(".tmp.mp4")
        write_video(tmp, (np.roll(base, 4 * t, axis=1) for t in range(frames)), np.arange(frames) / 30.0, 30.0)
        tmp.rename(path)
    return path


def _pin(cores: str) -> int:
    """Pin this process to ``cores`` ("all" or a count) before the libraries start their pools."""
    n = (os.cpu_count() or 1) if cores == "all" else int(cores)
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:n]))
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    import cv2
    cv2.setNumThreads(n)
    return n


def run_child(width: int, height: int, frames: int, cores: str, steps: int) -> dict:
    n = _pin(cores)
    from benchmarks.long_jobs import _instant_backend
    from runtime import Outpainter
    path = clip(width, height, frames)
    op = Outpainter(engine=_instant_backend(256))
    first = {}

    def progress(event):
        if event.get("stage") == "sample" and "sample" not in first:
            first["sample"] = time.perf_counter()
    out = CLIPS / f"out_{width}x{height}_{frames}_{cores}.mp4"
    t0 = time.perf_counter()
    summary = op.outpaint_file(path, out, steps=steps, progress=progress)
    wall = time.perf_counter() - t0
    out.unlink(missing_ok=True)
    return {"size": f"{width}x{height}", "frames": frames, "cores": n, "wall_s": round(wall, 2),
            "wall_ms_per_frame": round(1000 * wall / frames, 1),
            "first_step_s": round(first["sample"] - t0, 2),
            "stages_s": {k: v for k, v in summary.items() if k.endswith("_s")},
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def stages_child(width: int, height: int, count: int = 48) -> dict:
    """Each stage alone on one core, ms per frame."""
    _pin("1")
    from runtime import composite, geometry
    from runtime.settings import Settings
    from runtime.video import EncodeOptions, VideoWriter, iter_frames
    path = clip(width, height, 100)
    t0 = time.perf_counter()
    frames = [rgb for rgb, _, _ in iter_frames(path)][:count]
    decode = (time.perf_counter() - t0) / 100
    s = Settings()
    box, targets = s.layout(height, width, 256)
    t0 = time.perf_counter()
    canvases = [geometry.canvas_and_init(f, box) for f in frames]
    canvas = (time.perf_counter() - t0) / count
    generated = [c for c, _ in canvases]
    t0 = time.perf_counter()
    outs = [composite.finish(f, g, box, targets, s.feather, None)[0][1] for f, g in zip(frames, generated)]
    comp = (time.perf_counter() - t0) / count
    writer = VideoWriter(CLIPS / "stage-encode.mp4", 30.0, EncodeOptions(audio=False))
    t0 = time.perf_counter()
    for i, o in enumerate(outs):
        writer.write(o, i / 30)
    writer.commit()
    encode = (time.perf_counter() - t0) / count
    (CLIPS / "stage-encode.mp4").unlink(missing_ok=True)
    ms = {"decode": decode, "canvas_and_init": canvas, "composite": comp, "encode": encode}
    ms = {k: round(1000 * v, 1) for k, v in ms.items()}
    return {"size": f"{width}x{height}", "ms_per_frame": ms, "sum_ms": round(sum(ms.values()), 1),
            "output": list(outs[0].shape[1::-1])}


def _child(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"benchmark child failed: {res.stderr.strip()[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1280x720,1920x1080")
    ap.add_argument("--frames", default="100,600")
    ap.add_argument("--cores", default="1,all")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.frames.split(",")]
    results: dict[str, Any] = {"cpus": os.cpu_count(), "stages": [], "runs": []}
    for w, h in sizes:
        for n in counts:
            clip(w, h, n)
        stage = _child("import json; from benchmarks.host import stages_child; "
                       f"print(json.dumps(stages_child({w}, {h})))")
        results["stages"].append(stage)
        print(json.dumps(stage), flush=True)
        for n in counts:
            for cores in args.cores.split(","):
                row = _child(f"import json; from benchmarks.host import run_child; "
                             f"print(json.dumps(run_child({w}, {h}, {n}, {cores!r}, {args.steps})))")
                row["wall_over_stage_sum"] = round(row["wall_ms_per_frame"] / stage["sum_ms"], 2)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
