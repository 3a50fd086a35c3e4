"""What a lost node costs a batch: `runtime.batch` over N clips on a cluster of a CPU-less head and two 1-CPU
nodes (tests/ray_nodes.py, ``ray.cluster_utils.Cluster``), undisturbed, then with one worker node removed
once both videos in flight have a checkpoint and a node added back ``--down`` seconds later.

    python -m benchmarks.cluster_faults [--engines DIR] [--clips 4] [--frames 30] [--steps 12]
                                        [--repeats 2] [--down 3] [--json OUT]   (make bench-faults)

Recorded: the wall time of each run (the seconds a loss costs), the windows each video had finished when its
node went and the windows it resumed from its work dir (their difference, plus the batch that was in flight,
is what was sampled twice), and whether every output is the undisturbed run's, byte for byte.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_batch(args, clips: list[Path], out: Path, home: Path, lose_node: bool) -> dict:
    from ray_nodes import Nodes  # type: ignore[import-not-found]  # tests/ray_nodes.py: the tests' cluster
    from runtime.workdir import finished_windows
    nodes = Nodes(home / "cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [sys.executable, "-m", "runtime.batch", *map(str, clips), "--out-dir", str(out), "--engines", args.engines,
           "--address", nodes.address, "--workers", "2", "--steps", str(args.steps), "--threads", "1",
           "--batch-windows", "1", "--quiet"]
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at_loss: dict[str, int | None] = {}
        if lose_node:
            while len({p.parent.name for p in out.glob(".work/*/batch-*.npz")}) < 2:
                if proc.poll() is not None:
                    raise SystemExit(f"the batch ended first: {proc.communicate()[1]}")
                time.sleep(0.02)
            at_loss = {d.name: finished_windows(d) for d in (out / ".work").iterdir() if d.is_dir()}
            nodes.send("remove 1")
            lost_at = time.perf_counter() - t0
            time.sleep(args.down)
            nodes.send("add")
        _, err = proc.communicate(timeout=1800)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"the batch failed: {err}")
    finally:
        nodes.close()
    lines = [json.loads(l) for l in (out / "report.jsonl").read_text().splitlines()]
    result: dict[str, Any] = {"seconds": round(seconds, 2), "videos": {}}
    for line in lines:
        stem = Path(line["input"]).stem
        result["videos"][stem] = {"attempts": line["attempts"], "resumed_windows": line.get("resumed_windows", 0),
                                  "windows_finished_at_loss": at_loss.get(stem)}
    if lose_node:
        result["node_lost_after_s"] = round(lost_at, 2)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=str(ROOT / "build" / "demo" / "engines"))
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--down", type=float, default=3.0, help="seconds between the loss and a node added back")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import media  # type: ignore[import-not-found]  # the tests' scenes (tests/media.py): textured, moving
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="m3ddm-faults-") as tmp:
        work = Path(tmp)
        clips = []
        for i in range(args.clips):
            clips.append(work / "in" / f"clip{i}.mp4")
            clips[-1].parent.mkdir(exist_ok=True)
            media.write(clips[-1], media.scene(args.frames, 96, 54, seed=60 + i), fps=24)
        for r in range(args.repeats):
            for lose in (False, True):
                out = work / f"out-{r}-{int(lose)}"
                run = run_batch(args, clips, out, work / f"home-{r}-{int(lose)}", lose)
                run.update(repeat=r, node_lost=lose)
                run["outputs"] = {p.name: p.read_bytes() for p in sorted(out.glob("*.mp4"))}
                runs.append(run)
                print(f"repeat {r} {'node lost' if lose else 'undisturbed'}: {run['seconds']:.1f} s", flush=True)
        same = all(run["outputs"] == runs[0]["outputs"] for run in runs)
    for run in runs:
        del run["outputs"]
    base = [r["seconds"] for r in runs if not r["node_lost"]]
    lost = [r["seconds"] for r in runs if r["node_lost"]]
    summary = {"machine": "2-core x86-64 CPU VM, no GPU; ONNX Runtime CPU, 1 thread per worker",
               "clips": args.clips, "frames": args.frames, "steps": args.steps, "batch_windows": 1,
               "down_s": args.down, "undisturbed_s": base, "node_lost_s": lost,
               "seconds_lost_per_node_loss": round(sum(lost) / len(lost) - sum(base) / len(base), 2),
               "outputs_identical": same, "runs": runs}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
