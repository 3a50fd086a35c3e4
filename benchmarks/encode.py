"""What the encoder's threading costs: x264 (crf 18, preset medium) as PyAV leaves it (slice threads, one per CPU
the process may run on: the bytes follow the machine) against fixed thread counts (frame threads, x264's
deterministic mode: the same bytes anywhere), and with x264's macroblock tree on (before) or off (now: with it on,
the bytes follow uninitialised memory, runtime/video/sink.py), per output size and number of cores.

    python -m benchmarks.encode [--sizes 1920x3412,1280x1280] [--frames 40] [--cores 1,all] [--json OUT]
                                                                                         (make bench-encode)

Per size, config and core count, in a process of its own pinned to those cores: ms per frame, KiB per frame,
PSNR of the decoded video against the lossless (crf 0) encode of the same frames, and the file's SHA-256, so
that the table also says which configs give the same bytes on 1 core and on all of them.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np

from runtime.video.sink import X264_PARAMS

CONFIGS = {  # name: (thread_type, thread_count, x264-params); None: PyAV's own choice
    "auto (first)": (None, None, ""),
    "frame x4 + mbtree (second)": ("FRAME", 4, ""),
    "1 thread": ("FRAME", 1, X264_PARAMS),
    "frame x2": ("FRAME", 2, X264_PARAMS),
    "frame x4 (default)": ("FRAME", 4, X264_PARAMS),
    "frame x8": ("FRAME", 8, X264_PARAMS),
}
TB = Fraction(1, 90000)


def frames(width: int, height: int, count: int) -> list:
    """A moving picture at the output size, converted once to the encoder's YUV (not part of the timing)."""
    import av
    import cv2

    from runtime.video.synthetic import synthetic_clip
    span = width + 4 * count
    base = cv2.resize(synthetic_clip(1)[0], (span, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    # Texture at a quarter of the resolution, as a generated border has: a smooth picture alone is too easy.
    noise = np.random.default_rng(0).integers(0, 255, (height // 4 + 1, span // 4 + 1, 3)).astype(np.float32)
    base = (0.5 * base + 0.5 * cv2.resize(noise, (span, height), interpolation=cv2.INTER_CUBIC)).clip(0, 255)
    base = base.astype(np.uint8)
    return [av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, 4 * t:4 * t + width]), format="rgb24")
            .reformat(format="yuv420p", threads=1) for t in range(count)]


def encode(yuv: list, crf: int, thread_type, thread_count, params: str = "") -> tuple[float, bytes]:
    import av
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = yuv[0].width, yuv[0].height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = TB
        if thread_type:
            stream.codec_context.thread_type = thread_type
            stream.codec_context.thread_count = thread_count
        stream.options = {"crf": str(crf), "preset": "medium", **({"x264-params": params} if params else {})}
        t0 = time.perf_counter()
        for i, frame in enumerate(yuv):
            frame.pts, frame.time_base = i * 3000, TB
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        seconds = time.perf_counter() - t0
    return seconds, buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    import av
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def child(width: int, height: int, count: int, cores: str) -> dict:
    n = os.cpu_count() if cores == "all" else int(cores)
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:n]))
    yuv = frames(width, height, count)
    lossless = decoded(encode(yuv, 0, "FRAME", 1)[1])
    rows = {}
    for name, (thread_type, thread_count, params) in CONFIGS.items():
        seconds, data = encode(yuv, 18, thread_type, thread_count, params)
        rows[name] = {"ms_per_frame": round(1000 * seconds / count, 1),
                      "kib_per_frame": round(len(data) / count / 1024, 1),
                      "psnr_db": round(psnr(decoded(data), lossless), 3), "sha256": hashlib.sha256(data).hexdigest()}
    return {"size": f"{width}x{height}", "cores": n, "frames": count, "configs": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.encode", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1920x3412,1280x1280")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--cores", default="1,all")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        w, h, cores = args.child.split(":")
        print(json.dumps(child(int(w), int(h), args.frames, cores)))
        return 0
    results = []
    for size in args.sizes.split(","):
        w, h = size.split("x")
        for cores in args.cores.split(","):
            out = subprocess.run([sys.executable, "-m", "benchmarks.encode", "--child", f"{w}:{h}:{cores}",
                                  "--frames", str(args.frames)], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout))
            r = results[-1]
            for name, row in r["configs"].items():
                print(f"{r['size']:>10} {r['cores']:>2} cores  {name:20s} {row['ms_per_frame']:8.1f} ms/frame "
                      f"{row['kib_per_frame']:8.1f} KiB/frame  {row['psnr_db']:6.2f} dB  {row['sha256'][:12]}",
                      flush=True)
    for size in {r["size"] for r in results}:
        runs = [r for r in results if r["size"] == size]
        same = {name: len({r["configs"][name]["sha256"] for r in runs}) == 1 for name in CONFIGS}
        print(f"{size}: same bytes on {', '.join(str(r['cores']) for r in runs)} cores: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "cpu_count": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
