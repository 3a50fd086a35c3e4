"""Full-size M3DDM UNet on this machine: build time, checkpoint save/load time and peak RAM.

Each measurement runs in a fresh subprocess so that its peak RSS is its own.
    python -m benchmarks.full_size_model [--workdir DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = {
    "build_meta": "m = build_unet(UNetConfig(), device='meta'); n = m.num_parameters()",
    "build_random_fp32": "torch.manual_seed(0); m = build_unet(UNetConfig()); n = m.num_parameters()",
    "save_fp16_safetensors": ("torch.manual_seed(0); m = build_unet(UNetConfig()); n = m.num_parameters(); "
                              "t0 = time.perf_counter(); save_unet(m, W / 'ckpt', dtype=torch.float16); "
                              "extra['save_s'] = time.perf_counter() - t0; "
                              "extra['file_bytes'] = "
                              "(W / 'ckpt' / 'diffusion_pytorch_model.safetensors').stat().st_size"),
    # Summing every weight touches every page, so memory-mapped weights count in the RSS too.
    "load_fp16_file_as_fp32": "m = load_unet(W / 'ckpt'); n = m.num_parameters(); touch(m)",
    "load_fp16_file_as_fp16": "m = load_unet(W / 'ckpt', dtype=torch.float16); n = m.num_parameters(); touch(m)",
}

CHILD = """
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
import torch
from export.model import UNetConfig, build_unet, load_unet, save_unet
W = Path(sys.argv[1]); extra = {{}}
touch = lambda m: sum(float(p.sum()) for p in m.parameters())
t1 = time.perf_counter()
{code}
t2 = time.perf_counter()
print(json.dumps(dict(seconds=t2 - t1, import_s=t1 - t0, parameters=n,
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **extra)))
"""


def run(workdir: Path) -> dict:
    results = {}
    for name, code in STEPS.items():
        out = subprocess.run([sys.executable, "-c", CHILD.format(code=code), str(workdir)],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if out.returncode:
            raise SystemExit(f"error: step {name} failed: {out.stderr.strip().splitlines()[-1]}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:24s} {results[name]['seconds']:7.1f} s   peak RSS {results[name]['peak_rss_gb']:5.2f} GB",
              flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="where the 2.6 GB checkpoint is written (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = run(Path(tmp))
    record = dict(date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                  cpus=__import__("os").cpu_count(), python=platform.python_version(), results=results)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
