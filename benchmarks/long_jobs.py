"""Long jobs: what resuming saves, what checkpointing costs, and what a long video costs in RAM and disk.

    python -m benchmarks.long_jobs [--engines DIR] [--frames 100] [--steps 50] [--memory-frames 150,450]
                                   [--json OUT]                                        (make bench-long)

1. Resume: the CLI on a synthetic clip (``--frames``), once without a work dir, once with one (its
   ``checkpoint_s`` against its ``sample_s``: the cost of a checkpoint after every batch), and once killed
   (SIGKILL) when the last level starts, then resumed: the resumed run's time against a run from scratch.
   Engines: the demo's (``make demo``; S = 64), the CPU, so the figures are about the plumbing.
2. Memory: the file path at S = 256 with an instant backend (fixed outputs, no model) on 1080p clips of
   ``--memory-frames`` frames, each in its own process: peak RSS and the work dir's size, their growth per
   frame, and both extrapolated to a 10-minute 1080p video at 30 fps.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "runtime.outpaint"]


def _clip(path: Path, frames: int, width: int, height: int) -> Path:
    from runtime.video import write_video
    from runtime.video.synthetic import synthetic_clip
    if width == 160 and height == 90:
        rgb = synthetic_clip(frames)
        write_video(path, rgb, np.arange(frames) / 24.0, 24.0)
    else:  # a large clip, made a frame at a time
        import cv2
        base = cv2.resize(synthetic_clip(1)[0], (width, height), interpolation=cv2.INTER_CUBIC)
        write_video(path, (np.roll(base, 4 * t, axis=1) for t in range(frames)), np.arange(frames) / 30.0, 30.0)
    return path


def _run(cmd) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"benchmark run failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout), time.perf_counter() - t0


def resume(engines: Path, frames: int, steps: int, folder: Path) -> dict:
    clip = _clip(folder / "clip.mp4", frames, 160, 90)
    base = [*CLI, clip, "--engines", engines, "--steps", str(steps), "--json", "--quiet"]
    plain, plain_wall = _run([*base, "-o", folder / "plain.mp4"])
    with_dir, with_dir_wall = _run([*base, "-o", folder / "dir.mp4", "--work-dir", folder / "work1"])
    # Killed as the last level starts (the coarse levels done), then the same command again.
    cmd: list[str | Path] = [*CLI, clip, "--engines", engines, "--steps", str(steps), "-o", folder / "killed.mp4",
           "--work-dir", folder / "work2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--progress", "jsonl"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None  # a pipe, asked for
    last_level = None
    for line in proc.stderr:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["stage"] == "sample":
            from runtime.plan import official_plan
            last_level = last_level if last_level is not None else len(official_plan(frames)) - 1
            if event["level"] == last_level:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    killed_wall = time.perf_counter() - t0
    resumed, resumed_wall = _run([*cmd, "--json", "--quiet"])
    return {
        "frames": frames, "steps": steps, "windows": plain["windows"],
        "plain_wall_s": round(plain_wall, 2), "plain_sample_s": plain["sample_s"],
        "work_dir_wall_s": round(with_dir_wall, 2), "work_dir_sample_s": with_dir["sample_s"],
        "checkpoint_s": with_dir["checkpoint_s"],
        "checkpoint_share_of_sampling": round(with_dir["checkpoint_s"] / max(with_dir["sample_s"], 1e-9), 5),
        "killed_after_s": round(killed_wall, 2), "resumed_windows": resumed["resumed_windows"],
        "resumed_windows_sampled": resumed["windows_sampled"], "resumed_sample_s": resumed["sample_s"],
        "resumed_prepare_s": resumed["prepare_s"], "fresh_prepare_s": with_dir["prepare_s"],
        "resumed_wall_s": round(resumed_wall, 2),
        "saved_against_a_fresh_run": round(1 - resumed_wall / with_dir_wall, 3),
    }


def _instant_backend(size: int = 256):
    """A backend whose engines return fixed outputs of the right shapes at once: what is left of a run is
    the host's work."""
    from runtime.engines.base import Backend
    from runtime.engines.manifest import EngineSet

    class InstantBackend(Backend):
        name, precision, concurrent = "instant", "fp32", True

        def __init__(self):
            self.engines = EngineSet(Path("."), {"components": {}}, size, ("fp32",))

        def encode_global(self, g):
            return np.zeros((1, 64, 320), np.float32)

        def unet(self, sample, timestep, fps, context):
            return np.zeros((sample.shape[0], 4, *sample.shape[2:]), np.float32)

        def vae_encode(self, images):
            return np.zeros((images.shape[0], 4, size // 8, size // 8), np.float32)

        def vae_decode(self, latents):
            return np.zeros((latents.shape[0], 3, size, size), np.float32)

    return InstantBackend()


def _memory_child(frames: int, folder: Path) -> dict:
    from runtime import Outpainter
    clip = folder / f"clip{frames}.mp4"
    if not clip.exists():
        _clip(clip, frames, 1920, 1080)
    op = Outpainter(engine=_instant_backend())
    summary = op.outpaint_file(clip, folder / f"out{frames}.mp4", steps=2, work_dir=folder / f"work{frames}",
                               keep_work_dir=True)
    return {"frames": frames, "peak_rss_mb": peak_rss_mb(),
            "work_dir_bytes": summary["work_dir_bytes"], "total_s": summary["total_s"]}


def memory(counts, folder: Path) -> dict:
    rows = []
    for n in counts:
        code = (f"import json, sys; from pathlib import Path; from benchmarks.long_jobs import _memory_child; "
                f"print(json.dumps(_memory_child({n}, Path({str(folder)!r}))))")
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"memory run failed: {res.stderr.strip()[-800:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    a, b = rows[0], rows[-1]
    per_frame_rss = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["frames"] - a["frames"])
    per_frame_disk = (b["work_dir_bytes"] - a["work_dir_bytes"]) / (b["frames"] - a["frames"])
    ten_minutes = 10 * 60 * 30
    more = ten_minutes - a["frames"]
    return {"runs": rows, "rss_mb_per_frame": round(per_frame_rss, 4),
            "work_dir_kb_per_frame": round(per_frame_disk / 1024, 2),
            "ten_minutes_1080p30": {"frames": ten_minutes,
                                    "peak_rss_gb": round((a["peak_rss_mb"] + per_frame_rss * more) / 1024, 2),
                                    "work_dir_gb": round((a["work_dir_bytes"] + per_frame_disk * more) / 2**30, 2)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.long_jobs", description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=str(ROOT / "build" / "demo" / "engines"))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--memory-frames", default="150,450")
    ap.add_argument("--skip", choices=["resume", "memory"], help="leave one part out")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    out = {"machine": {"cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "resume":
            if not (Path(args.engines) / "manifest.json").is_file():
                raise SystemExit(f"no engines at {args.engines}: run `make demo` first (or pass --engines)")
            out["resume"] = resume(Path(args.engines), args.frames, args.steps, Path(tmp))
            print(json.dumps(out["resume"]), flush=True)
        if args.skip != "memory":
            out["memory"] = memory([int(n) for n in args.memory_frames.split(",")], Path(tmp))
            print(json.dumps(out["memory"]), flush=True)
    if args.json:
        old = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
        Path(args.json).write_text(json.dumps({**old, **out}, indent=1) + "\n")  # a part skipped keeps its figures
    return 0


if __name__ == "__main__":
    sys.exit(main())
