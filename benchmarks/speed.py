"""Speed and memory: the official-equivalent baseline against our runtime, in one run on one machine.

    python -m benchmarks.speed [--unet DIR --vae DIR --size S] [--videos 40,100,600] [--json OUT]   (make bench)

Baseline: the torch reference pipeline at the official cost (four CFG branches, the global encoder inside
every UNet call, the window's VAE encodes redone per window; FP32 on the CPU, FP16 on a GPU). Ours: the
runtime on every backend this machine has (ORT CPU; on a GPU also ORT CUDA and TensorRT, whose plans are
built first). On a GPU also: peak GPU memory per process, achieved TFLOP/s per UNet call and its share of
the GPU's FP16 tensor peak. Per UNet call, per window (50 PNDM steps), per video (dense
under 50 frames, coarse-to-fine above), output frames per second and peak RAM, each measured in its own
process; ratios against the baseline. Defaults: the tiny fixtures at S = 64 (the full-size CPU cost of one
UNet call is `benchmarks.export_full_size`). Also FLOPs per call and the host-side cost per frame.
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

from benchmarks import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def rss_gb() -> float:
    return peak_rss_mb() / 1024


class GpuMemoryWatch:
    """Peak device memory in use while a block runs (polls cudaMemGetInfo: counts every allocator)."""

    def __enter__(self):
        import threading

        from runtime.engines import cuda
        self.cuda = cuda
        self.free0, self.total = cuda.mem_info()
        self.lowest, self.stop = self.free0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.is_set():
            self.lowest = min(self.lowest, self.cuda.mem_info()[0])
            self.stop.wait(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False

    @property
    def peak_gb(self) -> float:
        """In use on the whole device at the peak."""
        return (self.total - self.lowest) / 2 ** 30

    @property
    def added_bytes(self) -> int:
        """Taken at the peak beyond what was in use when the block started."""
        return self.free0 - self.lowest


def _on_gpu(fn):
    """Run ``fn`` and add the peak GPU memory (whole device) when there is a GPU."""
    from runtime.doctor import gpus
    if not gpus()[0]:
        return fn()
    with GpuMemoryWatch() as watch:
        result = fn()
    result["peak_gpu_gb"] = round(watch.peak_gb, 3)
    return result


def clip(frames: int, width: int = 160, height: int = 90) -> np.ndarray:
    from runtime.video.synthetic import synthetic_clip
    return synthetic_clip(frames, width, height)


# -- one measurement per process ---------------------------------------------------------------------
def _baseline(args, what: str, frames: int) -> dict:
    import torch

    from export.model import load_unet, load_vae
    from export.reference import ReferencePipeline
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32  # the official code runs fp16 on GPUs
    pipe = ReferencePipeline(load_unet(args["unet"], dtype=dtype, device=device),
                             load_vae(args["vae"]).to(device, dtype), cost="official")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if what == "call":
        s = args["size"] // 8
        x = torch.randn(4, 9, 16, s, s, device=device, dtype=dtype)
        g = torch.randn(16, 4, s, s, device=device, dtype=dtype)
        times = []
        for _ in range(args["calls"] + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                c0, c = pipe.global_contexts(g)  # the official model re-encodes the global frames every call
                pipe.unet(x, torch.full((4,), 961.0, device=device), torch.full((4,), 30.0, device=device),
                          torch.cat([c0, c0, c, c]))
            sync()
            times.append(time.perf_counter() - t0)
        return {"seconds": float(np.median(times[1:]))}
    video = clip(frames)
    t0 = time.perf_counter()
    pipe.video(video, 30.0, ("9:16",), args["size"])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "unet_calls": pipe.unet_calls, "vae_images": pipe.vae_encodes}


def _ours(args, what: str, frames: int) -> dict:
    from runtime import Outpainter
    o = Outpainter(args["engines"], backend=args["backend"])
    if what == "call":
        s = args["size"] // 8
        tokens = o.backend.engines.context_tokens
        rng = np.random.default_rng(0)
        out = {}
        for windows in (1, 4):
            n = 3 * windows
            x = rng.standard_normal((n, 9, 16, s, s)).astype(np.float32)
            ctx = rng.standard_normal((n, tokens, 320)).astype(np.float32)
            times = []
            for _ in range(args["calls"] + 1):
                t0 = time.perf_counter()
                o.backend.unet(x, np.full(n, 961.0, np.float32), np.full(n, 30.0, np.float32), ctx)
                times.append(time.perf_counter() - t0)
            out[f"seconds_w{windows}"] = float(np.median(times[1:]))
        out["seconds"] = out["seconds_w1"]
        return out
    if what == "file":
        # The file path at 1080p: composite + encode run on a worker thread while the engines sample.
        from runtime.video import write_video
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.mp4", Path(tmp) / "out.mp4"
            write_video(src, clip(frames, 1920, 1080), np.arange(frames) / 30, 30.0)
            t0 = time.perf_counter()
            summary = o.outpaint_file(src, dst, "9:16")
            seconds = time.perf_counter() - t0
        stages = {k: v for k, v in summary.items() if k.endswith("_s")}
        serial = stages["prepare_s"] + stages["sample_s"] + stages["decode_s"] + stages["encode_s"]
        return {"seconds": seconds, "stages": stages, "serial_s": round(serial, 3),
                "overlapped_s": round(serial - stages["generate_and_encode_s"], 3)}
    calls = []
    orig = o.backend.unet
    def counted(*a):
        calls.append(1)
        return orig(*a)
    o.backend.unet = counted
    t0 = time.perf_counter()
    r = o.outpaint(clip(frames), 30.0, ratio="9:16")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "unet_calls": len(calls), "windows": r.stats["windows"],
            "stages": {k: round(v, 3) for k, v in r.stats.items() if k.endswith("_s")}}


def _child(spec: str) -> None:
    args = json.loads(spec)
    fn = _baseline if args["side"] == "baseline" else _ours
    result = _on_gpu(lambda: fn(args, args["what"], args["frames"]))
    result["peak_rss_gb"] = rss_gb()
    print("RESULT " + json.dumps(result))


def measure(side: str, what: str, frames: int, common: dict) -> dict:
    spec = json.dumps({**common, "side": side, "what": what, "frames": frames})
    out = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--child", spec], cwd=ROOT,
                         capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"error: {side} {what} {frames} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1][7:])


# -- host side per frame -------------------------------------------------------------------------------
def host_side(size: int, heights=(720, 1080), frames: int = 24) -> dict:
    from runtime import geometry
    from runtime.composite import composite
    from runtime.video import VideoWriter, iter_frames, write_video
    out = {}
    for h in heights:
        w = h * 16 // 9
        video = clip(frames, w, h)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.mp4", Path(tmp) / "out.mp4"
            write_video(src, video, np.arange(frames) / 30, 30.0)
            t0 = time.perf_counter()
            decoded = [f for f, _, _ in iter_frames(src)]
            t_decode = (time.perf_counter() - t0) / frames
            box = geometry.letterbox_geometry(h, w, ["9:16"], size)
            target = geometry.ratio_target(h, w, "9:16")
            t0 = time.perf_counter()
            canvases = [geometry.letterbox_frame(f, box) for f in decoded]
            t_geometry = (time.perf_counter() - t0) / frames
            t0 = time.perf_counter()
            for c in canvases:
                geometry.inpaint_init(c, box)
            t_inpaint = (time.perf_counter() - t0) / frames
            generated = np.zeros((size, size, 3), np.uint8)
            t0 = time.perf_counter()
            comps = [composite(f, generated, box, target) for f in decoded]
            t_composite = (time.perf_counter() - t0) / frames
            writer = VideoWriter(dst, 30.0)
            t0 = time.perf_counter()
            for i, c in enumerate(comps):
                writer.write(c, i / 30)
            writer.commit()
            t_encode = (time.perf_counter() - t0) / frames
        out[f"{h}p"] = {"output": f"{target.width}x{target.height}",
                        **{k: round(v * 1000, 2) for k, v in dict(decode_ms=t_decode, geometry_ms=t_geometry,
                                                                  inpaint_ms=t_inpaint, composite_ms=t_composite,
                                                                  encode_ms=t_encode).items()}}
    return out


def bench_engines(unet: str, vae: str, size: int, engines: str | None = None) -> str:
    """The engines folder the benchmarks run: ``engines``, else build/bench/engines-S, exported (FP32 and FP16)
    from ``unet``/``vae`` where missing or stale."""
    from export.engine_folder import export_engines
    engines = engines or str(ROOT / "build" / "bench" / f"engines-{size}")
    export_engines(unet, vae, engines, ("fp32", "fp16"), size)
    return engines


def median_run(runs: list[dict]) -> dict:
    """The run of median time (the faster of the middle two), with every run's seconds beside it."""
    ranked = sorted(runs, key=lambda r: r["seconds"])
    pick = dict(ranked[(len(ranked) - 1) // 2])
    if len(runs) > 1:
        pick["seconds_runs"] = [round(r["seconds"], 3) for r in runs]
    return pick


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--unet", default=str(SHARED / "fixtures" / "tiny_unet"))
    ap.add_argument("--vae", default=str(SHARED / "fixtures" / "tiny_vae"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--engines", help="engines folder for --unet/--vae (default: exported into build/bench)")
    ap.add_argument("--videos", default="40,100", help="video lengths (frames); 600 is the long case")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2,
                    help="each case measured this many times, baseline and ours alternately; medians reported "
                         "(a shared VM's speed drifts by up to a third over minutes)")
    ap.add_argument("--file-frames", type=int, default=64,
                    help="frames of the 1080p file-path case (host work overlapped with sampling); 0 skips it")
    ap.add_argument("--backends", help="comma list of ours to measure (default: every one usable here)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0

    from runtime.doctor import gpus
    from runtime.engines.ort import available_providers
    engines = bench_engines(args.unet, args.vae, args.size, args.engines)
    found = gpus()[0]
    backends = args.backends.split(",") if args.backends else (
        ["ort-cpu"] + (["ort-cuda"] if "CUDAExecutionProvider" in available_providers() else [])
        + (["tensorrt"] if found and _has_tensorrt() else []))
    if "tensorrt" in backends:
        from runtime.engines.trt_build import build_plans
        build_plans(engines)
    common = {"unet": args.unet, "vae": args.vae, "size": args.size, "engines": engines, "calls": args.calls}
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "rounds": args.rounds,
              "gpu": found[0]["name"] if found else None, "size": args.size, "unet": args.unet,
              "backends": backends, "results": {}}
    cases = [("call", 0)] + [("video", int(n)) for n in args.videos.split(",") if n]
    if args.file_frames:
        cases.append(("file", args.file_frames))
    for what, frames in cases:
        key = what if what == "call" else f"video_{frames}"
        if what == "file":
            key = f"file_1080p_{frames}"
            row = {b: measure("ours", what, frames, {**common, "backend": b}) for b in backends}
            report["results"][key] = row
            print(key, json.dumps(row), flush=True)
            continue
        runs: dict[str, list[dict]] = {side: [] for side in ["baseline", *backends]}
        for _ in range(max(1, args.rounds)):  # alternately, so that a drift of the machine hits both sides
            runs["baseline"].append(measure("baseline", what, frames, common))
            for b in backends:
                runs[b].append(measure("ours", what, frames, {**common, "backend": b}))
        row = {side: median_run(rs) for side, rs in runs.items()}
        for b in backends:
            row[b]["speedup"] = round(row["baseline"]["seconds"] / row[b]["seconds"], 2)
            if what == "video":
                row[b]["output_fps"] = round(frames / row[b]["seconds"], 3)
                row[b]["seconds_per_window"] = round(row[b]["stages"]["sample_s"] / max(1, row[b]["windows"]), 3)
        if what == "video":
            row["baseline"]["output_fps"] = round(frames / row["baseline"]["seconds"], 3)
            if "unet_calls" in row["baseline"]:
                row["baseline"]["seconds_per_window"] = round(row["baseline"]["seconds"] /
                                                              max(1, row["baseline"]["unet_calls"] // 50), 3)
        report["results"][key] = row
        print(key, json.dumps(row), flush=True)
    from benchmarks.flops import fp16_peak_tflops, unet_flops
    report["flops_full_size"] = unet_flops(size=256)
    if found and args.size == 256 and "call" in report["results"]:
        # Achieved rate on the full-size call (meaningful only with full-size weights at S = 256).
        flops = unet_flops(size=256, rows=3)
        peak = fp16_peak_tflops(found[0]["name"])
        rates = {}
        for side, r in report["results"]["call"].items():
            work = flops["official_call"] if side == "baseline" else flops["unet_call"]
            tflops = work / r["seconds"] / 1e12
            rates[side] = {"tflops": round(tflops, 1), "share_of_fp16_peak": round(tflops / peak, 3) if peak else None}
        report["achieved"] = {"fp16_peak_tflops": peak, **rates}
        print("achieved", json.dumps(report["achieved"]), flush=True)
    report["host_side_per_frame"] = host_side(256)
    print("host", json.dumps(report["host_side_per_frame"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
