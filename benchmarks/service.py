"""The service's cost: its overhead per job against the CLI on the same clip, and its memory with 100 jobs queued.

    python -m benchmarks.service [--engines DIR] [--frames 40] [--steps 3] [--jobs 5] [--queued 100] [--json OUT]

Overhead: a real `python -m runtime.serve` on a free port; each job timed from the POST (upload included) to
the poll that sees it succeeded, against the `total_s` the CLI reports for the same clip and options (its
outpaint_file time: the work both do). Memory: the server's resident set when ready, after those jobs, and
with ``--queued`` jobs waiting behind a long running one (read from /proc); then all are cancelled.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    import httpx
    import numpy as np

    from runtime.video import write_video
    from runtime.video.synthetic import synthetic_clip
    ap = argparse.ArgumentParser(prog="python -m benchmarks.service", description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=str(ROOT / "build" / "demo" / "engines"))
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = tmp / "clip.mp4"
        write_video(clip, synthetic_clip(args.frames), np.arange(args.frames) / 24.0, 24.0)
        cli = []
        for k in range(args.jobs):
            res = subprocess.run([sys.executable, "-m", "runtime.outpaint", clip, "-o", tmp / f"cli{k}.mp4",
                                  "--engines", args.engines, "--steps", str(args.steps), "--json", "--quiet"],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            cli.append(json.loads(res.stdout)["total_s"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", "--engines", args.engines, "--data",
                                 tmp / "data", "--port", str(port), "--max-queue", str(args.queued + 10)], cwd=ROOT,
                                stderr=subprocess.DEVNULL)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        try:
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            idle_mb = _rss_mb(proc.pid)

            def submit(steps):
                with open(clip, "rb") as f:
                    return client.post("/v1/jobs", files={"file": ("clip.mp4", f, "video/mp4")},
                                       data={"steps": str(steps)}).json()["id"]

            service = []
            for _ in range(args.jobs):
                t0 = time.perf_counter()
                job_id = submit(args.steps)
                while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed"):
                    time.sleep(0.02)
                service.append(time.perf_counter() - t0)
            busy_mb = _rss_mb(proc.pid)  # after jobs have run: the engines' arenas are in
            long_id = submit(999)
            ids = [submit(args.steps) for _ in range(args.queued)]
            queued_mb = _rss_mb(proc.pid)
            for job_id in [long_id, *ids]:
                client.delete(f"/v1/jobs/{job_id}")
        finally:
            client.close()
            proc.terminate()
            proc.wait(60)
    overhead = [s - c for s, c in zip(sorted(service), sorted(cli))]
    out = {"frames": args.frames, "steps": args.steps, "cli_total_s": cli, "service_job_s": service,
           "overhead_s_median": round(float(np.median(overhead)), 3),
           "server_rss_mb_idle": round(idle_mb, 1), "server_rss_mb_after_jobs": round(busy_mb, 1),
           "server_rss_mb_with_queued": round(queued_mb, 1),
           "queued": args.queued}
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
