"""Full-size UNet: ONNX export (FP32, FP16) and one UNet call, ORT CPU against torch eager CPU.

Random full-size weights (seed 0), 3 CFG branches x 16 frames x 32x32 latents (S = 256).
Each step runs in its own process, so each peak RSS is that step's own.
    python -m benchmarks.export_full_size --workdir DIR [--json OUT] [--skip-call]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = """
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
W = Path(sys.argv[1]); extra = {}
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
def model():
    from export.model import UNetConfig, build_unet
    torch.manual_seed(0)
    return build_unet(UNetConfig())
def inputs():
    from export.onnx_export import example_inputs
    return [x.numpy() for x in example_inputs("unet", 256, "fp32", 3, torch.Generator().manual_seed(1))]
"""

STEPS = {
    "export_fp32": """
from export import onnx_export as ox
m = model(); t0 = time.perf_counter()
ox.export_component("unet", ox.graph_module("unet", unet=ox.prepare(m, "fp32")), 256, "fp32", W / "unet.fp32.onnx")
seconds = time.perf_counter() - t0
""",
    "export_fp16": """
from export import onnx_export as ox
m = model(); t0 = time.perf_counter()
ox.export_component("unet", ox.graph_module("unet", unet=ox.prepare(m, "fp16")), 256, "fp16", W / "unet.fp16.onnx")
seconds = time.perf_counter() - t0
""",
    "torch_eager_call": """
m = model(); x = [torch.from_numpy(a) for a in inputs()]
with torch.no_grad():
    t0 = time.perf_counter(); eps = m(*x); seconds = time.perf_counter() - t0
np.save(W / "eps_torch.npy", eps.numpy())
""",
    "ort_cpu_call": """
import onnxruntime as ort
opts = ort.SessionOptions()
t0 = time.perf_counter()
s = ort.InferenceSession(str(W / "unet.fp32.onnx"), opts, providers=["CPUExecutionProvider"])
extra["session_s"] = time.perf_counter() - t0
x = inputs()
t0 = time.perf_counter(); eps = s.run(None, dict(zip(["sample", "timestep", "fps", "context"], x)))[0]
seconds = time.perf_counter() - t0
ref = np.load(W / "eps_torch.npy")
extra["max_abs_err"] = float(np.abs(eps - ref).max()); extra["ref_max_abs"] = float(np.abs(ref).max())
""",
}
TAIL = """
def size(p): return p.stat().st_size if p.exists() else 0
extra["files"] = {p.name: size(p) for p in sorted(W.glob("unet.*.onnx*"))}
print(json.dumps(dict(seconds=seconds, peak_rss_gb=rss(), **extra)))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="needs ~9 GB of disk")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--steps", default=",".join(STEPS))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.steps.split(","):
        out = subprocess.run([sys.executable, "-c", COMMON + STEPS[name] + TAIL, str(args.workdir)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"error: step {name} failed")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), results=results), indent=2))


if __name__ == "__main__":
    main()
