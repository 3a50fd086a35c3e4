"""Every GPU figure we owe, in one run, for a GPU machine where nothing can be installed (PyTorch is enough):

    python -m benchmarks.gpu_check --out gpu_check.json [--dry-run] [--work DIR]      (make gpu-check)

One JSON and a short table: the machine; the doctor's verdict and `pytest -m gpu`'s counts; then, on random
weights of the released shapes made here (nothing that large travels), exported to PyTorch programs: one UNet
call at 1 and 4 windows (ms, TFLOP/s against the card's FP16 dense peak); the GPU memory of one window under a
16 GB cap and the most windows that fit 16, 24, 40 and 80 GB; a 64-frame coarse-to-fine video at S = 256 end to
end, ours (`--backend torch`) against the official-cost baseline (export/reference.py: four branches, the context
every step, one window at a time), alternately in this process, its second repeat left out if it would not end
within ``--budget`` seconds of the start (or, given ``--official``, with the official code's time still left);
then, given ``--official CHECKOUT`` and time left, the official code itself on the same clip, in FP16 on the GPU as
its inference.py runs it (benchmarks/official_loop.py; its libraries from wheels/official: ``make gpu-wheels``).

``--dry-run``: the same sequence on the CPU at the fixtures' size (S = 64, 2 steps, 20 frames), FP32, so the
script is known to work before a GPU is at hand (the tests run it); memory figures are null there. A step that
fails is recorded with its error and the rest still run: the JSON is always written. What the GPU machine's
image lacks is known before anything runs (``needs``): the run stops at once, naming the wheels to bring.

The weights and the export (``--torch-only``: the programs without the ONNX graphs, whose FP16 tracing on the CPU
took 250 of the full-size export's 310 s here) need only the CPU: a second process makes them while this one
runs the doctor and ``pytest -m gpu``, so the GPU waits less.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPS_GB = (16, 24, 40, 80)
GPU_TESTS = ("tests/test_gpu.py", "tests/test_kernels.py")
PYTEST_OPTIONS = ("-q", "-p", "no:cacheprovider")  # nothing written into the checkout
BUDGET_S = 500  # the README runs it under `timeout 540`: a video repeat that would not end by then is left out
# What the official code's step takes, from the baseline's run: its loop costs what the baseline does and a third more
# (dry run: 2.2 s against 1.64 s), and its process starts, imports and loads the model first.
OFFICIAL_MARGIN, OFFICIAL_START_S = 1.4, 30.0
CLIP_FPS, CLIP_RATIO = 30.0, "9:16"  # the video step's clip, ours, the baseline and the official code alike
RESERVE_GB = 0.75  # CUDA context, cuBLAS/cuDNN workspaces: what the allocator does not see
# What the sequence imports beyond the standard library (module: distribution). The GPU machines' image has the
# first; the second are pure-Python wheels brought along, at the versions pyproject's export extra pins.
IMAGE = {"torch": "torch", "numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime", "sympy": "sympy",
         "safetensors": "safetensors", "huggingface_hub": "huggingface_hub", "pytest": "pytest",
         "cv2": "opencv-python-headless"}
CARRY = {"diffusers": "diffusers", "onnx_graphsurgeon": "onnx-graphsurgeon"}
# Modules the code it runs may import that it does without (tests/test_benchmarks.py holds the three lists to
# every import the sequence can reach).
WITHOUT = {"av": "PyAV: the clips are made in memory; the tests that read files skip",
           "tensorrt": "the doctor reports it missing; the TensorRT tests skip",
           "cuda": "cuda-bindings: the doctor reports the kernels' state; their GPU test uses CuPy",
           "ray": "the cluster, not in the sequence", "fsspec": "object storage, not in the sequence"}


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    size: int
    full_size: bool
    precision: str
    windows: tuple[int, ...]
    frames: int
    steps: int
    calls: int
    repeats: int

    @classmethod
    def make(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(True, 64, False, "fp32", (1, 2), 20, 2, 2, 1)
        return cls(False, 256, True, "fp16", (1, 2, 4), 64, 50, 10, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="the JSON to write (required)")
    ap.add_argument("--dry-run", action="store_true", help="the same sequence on the CPU at tiny size")
    ap.add_argument("--work", type=Path, help="where the weights and engines go (default: a temporary folder); "
                                              "a second run over the same folder reuses what the first made")
    ap.add_argument("--skip-pytest", action="store_true", help="leave out `pytest -m gpu`")
    ap.add_argument("--budget", type=float, default=BUDGET_S, metavar="S",
                    help=f"seconds the run should end within; the video's second repeat is left out if it would "
                         f"not (default {BUDGET_S})")
    ap.add_argument("--official", type=Path, metavar="CHECKOUT",
                    help="a clone of alimama-creative/M3DDM-Video-Outpainting: the official code is run too, last, "
                         "if the budget leaves time for it (its libraries: wheels/official, from make gpu-wheels)")
    ap.add_argument("--carry", action="store_true", help="print the wheels to bring to a GPU machine, and exit")
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the weights and export process
    args = ap.parse_args(argv)
    if args.carry:
        print(" ".join(carry_pins()))
        return 0
    if args.out is None:
        ap.error("the following arguments are required: --out")
    plan = Plan.make(args.dry_run)
    if args.prepare:
        prepare(plan, args.work)
        return 0
    report: dict = {"date": time.strftime("%Y-%m-%d"), "plan": asdict(plan), "steps": {}}
    missing = needs(plan)
    if missing:
        report["steps"]["needs"] = {"error": missing}
        args.out.write_text(json.dumps(report, indent=1))
        print(f"error: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="m3ddm-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_all(plan, work, report, args.skip_pytest, args.out, time.monotonic() + args.budget, args.official)
    print(table(report))
    return 0 if not any("error" in v for v in report["steps"].values()) else 1


def carry_pins() -> list[str]:
    """``CARRY``'s distributions as pyproject's export extra pins them (``name==version``)."""
    text = (ROOT / "pyproject.toml").read_text()
    return [re.search(rf'"({re.escape(dist)}==[^"]+)"', text).group(1) for dist in CARRY.values()]  # type: ignore[union-attr]


def needs(plan: Plan) -> str | None:
    """Why this machine cannot run the sequence at all (a module missing, no GPU for a full run), in one line."""
    lacking = [dist for mod, dist in IMAGE.items() if find_spec(mod) is None]
    to_carry = [pin for mod, pin in zip(CARRY, carry_pins()) if find_spec(mod) is None]
    if lacking or to_carry:
        wheels = " ".join(to_carry)
        return (f"this machine lacks {', '.join(lacking + to_carry)}"
                + (f"; bring the wheels: `pip download --no-deps -d wheels {wheels}` (or `make gpu-wheels`) where "
                   f"PyPI is reachable, `pip install --no-deps wheels/*.whl` here" if to_carry else ""))
    if not plan.dry_run:
        import torch
        if not torch.cuda.is_available():
            return f"PyTorch {torch.__version__} sees no CUDA GPU: the full run needs one (--dry-run runs on the CPU)"
    return None


def run_steps(sequence, steps: dict, write) -> None:
    """Each step's figures (or its error: the other figures are still worth having) and its time, written after
    each step: a run cut short keeps what it measured."""
    for name, step in sequence:
        t0 = time.perf_counter()
        try:
            steps[name] = step()
        except Exception as exc:
            steps[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                           "where": traceback.format_exc().splitlines()[-3:]}
        steps[name]["step_s"] = round(time.perf_counter() - t0, 1)
        print(f"gpu_check: {name} done in {steps[name]['step_s']} s", file=sys.stderr, flush=True)
        write()


def run_all(plan: Plan, work: Path, report: dict, skip_pytest: bool, out: Path, deadline: float,
            checkout: Path | None = None) -> None:
    steps = report["steps"]

    def write():
        out.write_text(json.dumps(report, indent=1))

    preparing = start_prepare(plan, work)
    first = [("machine", machine), ("doctor", doctor)] + ([] if skip_pytest else [("pytest_gpu", pytest_gpu)])
    run_steps(first, steps, write)
    steps.update(finish_prepare(preparing, work))
    write()
    # The memory figures before the video's: the video is the longest step, and the one that can be cut short.
    run_steps([("unet_call", lambda: unet_call(plan, work, steps)), ("memory", lambda: memory(plan, work)),
               ("video", lambda: video(plan, work, deadline, official=checkout is not None))], steps, write)
    _release()  # the official code loads its own copy of the model
    run_steps([("official", lambda: official_code(plan, work, checkout, deadline, steps.get("video", {})))],
              steps, write)


def prepare(plan: Plan, work: Path) -> None:
    """The ``--prepare`` process: the weights and the export, their records in ``work``/prepare.json."""
    steps: dict = {}
    path = work / "prepare.json"
    run_steps([("weights", lambda: weights(plan, work)), ("export", lambda: export(plan, work))], steps,
              lambda: path.write_text(json.dumps(steps, indent=1)))


def start_prepare(plan: Plan, work: Path) -> subprocess.Popen:
    (work / "prepare.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--prepare", "--out", os.devnull, "--work", str(work)]
    return subprocess.Popen(cmd + (["--dry-run"] if plan.dry_run else []), cwd=ROOT, stdout=subprocess.DEVNULL)


def finish_prepare(preparing: subprocess.Popen, work: Path) -> dict:
    """The weights and export steps, once their process has ended; what it did not record, as an error."""
    t0 = time.perf_counter()
    try:
        preparing.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        preparing.kill()
        preparing.wait()
    waited = round(time.perf_counter() - t0, 1)
    print(f"gpu_check: waited {waited} s for the weights and the export", file=sys.stderr, flush=True)
    try:
        steps = json.loads((work / "prepare.json").read_text())
    except (OSError, ValueError):
        steps = {}
    for name in ("weights", "export"):
        steps.setdefault(name, {"error": f"the preparing process ended (exit {preparing.returncode}) before this "
                                         f"step finished"})
    steps["export"]["waited_s"] = waited
    return steps


def machine() -> dict:
    import torch
    out: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                 "gpu": None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                      "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count}
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, IndexError, subprocess.TimeoutExpired):
            out["driver"] = None
    return out


def doctor() -> dict:
    res = subprocess.run([sys.executable, "-m", "runtime.doctor", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    try:
        verdict = json.loads(res.stdout)
    except ValueError:
        verdict = {"stdout": res.stdout[-1000:], "stderr": res.stderr[-1000:]}
    return {"exit": res.returncode, "report": verdict}


def pytest_gpu() -> dict:
    # The files that hold the gpu tests: the others import PyAV, which GPU images may lack.
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", *PYTEST_OPTIONS, *GPU_TESTS],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail)}
    failed = [line for line in res.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))][:20]
    return {"exit": res.returncode, "counts": counts, "summary": tail, "failed": failed}


def weights(plan: Plan, work: Path) -> dict:
    from export.demo import make_checkpoints
    unet, vae = make_checkpoints(work / "checkpoints", 0, plan.full_size)
    size = sum(f.stat().st_size for f in unet.iterdir())
    return {"unet": str(unet), "vae": str(vae), "unet_bytes": size}


def export(plan: Plan, work: Path) -> dict:
    ck = work / "checkpoints"
    cmd = [sys.executable, "-m", "export", "--unet", str(ck / "unet"), "--vae", str(ck / "vae"), "--out",
           str(work / "engines"), "--size", str(plan.size), "--precision", plan.precision,
           "--torch-only", "--windows", ",".join(map(str, plan.windows))]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if res.returncode:
        raise RuntimeError(f"python -m export failed: {res.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((work / "engines" / "manifest.json").read_text())
    return {"programs": {k: v.get("export_seconds") for k, v in manifest.get("programs", {}).items()}}


_SHARED: dict = {}  # the default backend, loaded once for the call and video steps (a UNet program loads in seconds)


def _backend(work: Path, **kwargs):
    from runtime.engines.pytorch import TorchBackend
    if not kwargs and work in _SHARED:
        return _SHARED[work]
    backend = TorchBackend(work / "engines", **kwargs)
    backend.load()
    if not kwargs:
        _SHARED[work] = backend
    return backend


def _release() -> None:
    for backend in _SHARED.values():
        backend.close()
    _SHARED.clear()


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _unet_inputs(backend, rows: int) -> list:
    """Random UNet inputs of ``rows`` rows on the backend's device, in its dtype (timestep and fps in FP32)."""
    import torch
    g = torch.Generator().manual_seed(rows)
    lat, tokens = backend.engines.latent_size, backend.engines.context_tokens
    args = [torch.randn(rows, 9, 16, lat, lat, generator=g), torch.full((rows,), 961.0), torch.full((rows,), 30.0),
            torch.randn(rows, tokens, 320, generator=g)]
    return [a.to(backend.device, backend.dtype if a.dim() > 1 else torch.float32) for a in args]


def unet_call(plan: Plan, work: Path, steps: dict) -> dict:
    import numpy as np
    import torch

    from benchmarks.flops import fp16_peak_tflops, unet_flops
    from export.model import UNetConfig
    backend = _backend(work)
    config = UNetConfig.from_dict(json.loads((work / "checkpoints" / "unet" / "config.json").read_text()))
    name = (steps.get("machine", {}).get("gpu") or {}).get("name", "")
    peak = fp16_peak_tflops(name) if backend.on_gpu else None
    out: dict = {"backend": f"torch {backend.precision} on {backend.device}", "fp16_peak_tflops": peak}
    for windows in (1, max(plan.windows)):
        n = 3 * windows
        args = _unet_inputs(backend, n)
        times = []
        with torch.inference_mode():
            for _ in range(plan.calls + 2):  # the first two: loading, capture
                _sync()
                t0 = time.perf_counter()
                backend._unet(*args)
                _sync()
                times.append(time.perf_counter() - t0)
        seconds = float(np.median(times[2:]))
        flops = unet_flops(config, plan.size, rows=n)["unet_call"]
        out[f"w{windows}"] = {"rows": n, "ms": round(seconds * 1e3, 2), "tflops": round(flops / seconds / 1e12, 2),
                              "of_peak": round(flops / seconds / 1e12 / peak, 3) if peak else None}
    out.update(cuda_graphs=backend.cuda_graphs, notes=list(backend.notes))  # graphs turned off, and why
    return out


def video_clip(plan: Plan):
    """The video step's clip (``plan.frames`` synthetic frames, 160 x 90, to ``CLIP_RATIO`` at ``CLIP_FPS``), which
    the official code's step runs too."""
    from runtime.video.synthetic import synthetic_clip
    return synthetic_clip(plan.frames, 160, 90)


def another_repeat(done: int, planned: int, last_s: float, deadline: float, now: float, keep_s: float = 0.0) -> bool:
    """Whether the video runs another alternating repeat: planned, and one more ends by the deadline with ``keep_s``
    still left (the official code's run: a figure of its own is worth more than a second repeat)."""
    return done < planned and (done == 0 or now + 1.2 * last_s + keep_s <= deadline)


def video(plan: Plan, work: Path, deadline: float = float("inf"), official: bool = False) -> dict:
    """Ours and the official-cost baseline on one clip, alternately, in this process (the same GPU state); with
    ``official``, the time the official code will take (about the baseline's) kept for it."""
    import numpy as np
    import torch

    from export.model import load_unet, load_vae
    from export.reference import ReferencePipeline
    from runtime.api import Outpainter
    frames = video_clip(plan)
    backend = _backend(work)
    ours = Outpainter(engine=backend)
    device, dtype = backend.device, backend.dtype
    ck = work / "checkpoints"
    baseline = ReferencePipeline(load_unet(ck / "unet", dtype=dtype, device=device),
                                 load_vae(ck / "vae").to(device, dtype), cost="official", steps=plan.steps)
    times: dict = {"ours": [], "baseline": []}
    stats = {}
    last_s = 0.0  # one repeat's time, ours and the baseline's
    while another_repeat(len(times["ours"]), plan.repeats, last_s, deadline, time.monotonic(),
                         official_needs_s(times["baseline"][-1]) if official and times["baseline"] else 0.0):
        _sync()
        t0 = time.perf_counter()
        result = ours.outpaint(frames, CLIP_FPS, ratio=CLIP_RATIO, steps=plan.steps)
        _sync()
        times["ours"].append(time.perf_counter() - t0)
        stats = {k: v for k, v in result.stats.items() if isinstance(v, (int, float))}
        t0 = time.perf_counter()
        with torch.inference_mode():
            baseline.video(frames, CLIP_FPS, (CLIP_RATIO,), plan.size)
        _sync()
        times["baseline"].append(time.perf_counter() - t0)
        last_s = times["ours"][-1] + times["baseline"][-1]
    ours_s, base_s = float(np.median(times["ours"])), float(np.median(times["baseline"]))
    return {"frames": plan.frames, "size": plan.size, "steps": plan.steps, "ours_s": round(ours_s, 2),
            "baseline_s": round(base_s, 2), "speedup": round(base_s / ours_s, 2), "runs": times, "ours_stats": stats,
            "repeats_left_out": plan.repeats - len(times["ours"])}


def official_needs_s(baseline_s: float) -> float:
    """Seconds the official code's step will take where the official-cost baseline's run took ``baseline_s``."""
    return OFFICIAL_START_S + OFFICIAL_MARGIN * baseline_s


def official_code(plan: Plan, work: Path, checkout: Path | None, deadline: float, video_step: dict) -> dict:
    """The official code itself over the video step's clip (its pipeline and UNet from ``checkout``, FP16 on the
    GPU as its inference.py runs them; FP32 on the CPU in a dry run), against ours' time there. Left out, saying why,
    without a checkout or when it would not end within the budget (it costs about what the baseline did)."""
    from benchmarks import official_run
    if checkout is None:
        return {"skipped": "no --official CHECKOUT (a clone of alimama-creative/M3DDM-Video-Outpainting)"}
    official_run.check_checkout(checkout)
    estimate, left = video_step.get("baseline_s") or 0.0, deadline - time.monotonic()
    if left < official_needs_s(estimate):
        return {"skipped": f"it would not end within --budget ({left:.0f} s left, the baseline took {estimate} s)"}
    import numpy as np
    clip = work / f"clip{plan.frames}.npy"
    np.save(clip, video_clip(plan))
    ck = work / "checkpoints"
    device, dtype = ("cpu", "fp32") if plan.dry_run else ("cuda", "fp16")
    result = official_run.run_official(sys.executable, checkout, ck / "unet", ck / "vae", clip, plan.size, "--steps",
                                       str(plan.steps), "--fps", str(CLIP_FPS), "--ratio", CLIP_RATIO,
                                       "--device", device, "--dtype", dtype,
                                       libs=official_run.libraries(), timeout=max(60.0, left))
    ours = video_step.get("ours_s")
    return {**result, "official_s": round(result["seconds"], 2), "ours_s": ours,
            "speedup": round(result["seconds"] / ours, 2) if ours else None}


def memory(plan: Plan, work: Path) -> dict:
    """Peak GPU memory of one window's sampling under a 16 GB cap (--gpu-memory 16, --batch-windows 1); then,
    the cap lifted, of one UNet call per window count, fitted as weights + W x activations. A count that does
    not fit is recorded as such; the fit uses those that did."""
    import torch
    if not torch.cuda.is_available():
        return {"why": "no CUDA GPU (dry run): nothing to measure", "one_window_16gb_peak_gb": None,
                "per_window_gb": None, "weights_gb": None, "max_windows": {str(c): None for c in CAPS_GB}}
    from runtime.api import Outpainter
    from runtime.video.synthetic import synthetic_clip
    _release()  # the UNet call's backend: its memory would count against the cap
    out: dict = {"reserve_gb": RESERVE_GB}
    backend = _backend(work, gpu_memory_gb=16, cuda_graphs=False)
    torch.cuda.reset_peak_memory_stats()
    try:
        Outpainter(engine=backend).outpaint(synthetic_clip(16, 160, 90), 30.0, ratio="9:16", steps=2,
                                            batch_windows=1)
        out["one_window_16gb_peak_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    except Exception as exc:  # the figure is that it does not fit; the peaks below are still worth having
        out["one_window_16gb_peak_gb"] = None
        out["one_window_16gb_error"] = f"{type(exc).__name__}: {exc}"[:300]
    torch.cuda.set_per_process_memory_fraction(1.0, backend.device.index)
    peaks, failed = {}, {}
    for windows in plan.windows:
        try:
            peaks[windows] = _call_peak_gb(backend, 3 * windows)
        except torch.cuda.OutOfMemoryError as exc:
            failed[str(windows)] = str(exc)[:200]
        torch.cuda.empty_cache()
    backend.close()
    out["peaks_gb"] = {str(k): round(v, 2) for k, v in peaks.items()}
    if failed:
        out["out_of_memory"] = failed
    ws = sorted(peaks)
    if len(ws) < 2:
        out.update(per_window_gb=None, weights_gb=None, max_windows={str(c): None for c in CAPS_GB})
        return out
    slope = (peaks[ws[-1]] - peaks[ws[0]]) / (ws[-1] - ws[0])
    base = peaks[ws[0]] - slope * ws[0]
    out.update(weights_gb=round(base, 2), per_window_gb=round(slope, 3),
               max_windows={str(c): max(0, int((c - RESERVE_GB - base) // slope)) for c in CAPS_GB})
    return out


def _call_peak_gb(backend, rows: int) -> float:
    """Peak GPU memory allocated by one UNet call of ``rows`` rows (its inputs included), in GiB."""
    import torch
    args = _unet_inputs(backend, rows)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        backend._unet(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def table(report: dict) -> str:
    s = report["steps"]
    gpu = (s.get("machine") or {}).get("gpu") or {}
    rows = [("machine", f"{gpu.get('name', 'no GPU')}, torch {s.get('machine', {}).get('torch')}"),
            ("doctor exit", s.get("doctor", {}).get("exit")),
            ("pytest -m gpu", s.get("pytest_gpu", {}).get("summary"))]
    call = s.get("unet_call", {})
    for key in sorted((k for k in call if re.fullmatch(r"w\d+", k)), key=lambda k: int(k[1:])):
        rows.append((f"UNet call {call[key]['rows']} rows", f"{call[key]['ms']} ms, {call[key]['tflops']} TFLOP/s, "
                                                            f"{call[key]['of_peak']} of peak"))
    v = s.get("video", {})
    if "speedup" in v:
        rows.append((f"video {v['frames']} frames S={v['size']}", f"ours {v['ours_s']} s, baseline {v['baseline_s']} s,"
                                                                  f" {v['speedup']}x"))
    o = s.get("official", {})
    if "official_s" in o or "skipped" in o:
        rows.append(("official code itself", f"{o['official_s']} s, ours {o['ours_s']} s, {o['speedup']}x"
                     if "official_s" in o else f"left out: {o['skipped']}"))
    m = s.get("memory", {})
    rows.append(("one window, 16 GB cap", m.get("one_window_16gb_peak_gb")))
    rows.append(("windows that fit 16/24/40/80 GB", m.get("max_windows")))
    rows += [(f"error in {k}", v["error"][:160]) for k, v in s.items() if "error" in v]
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{str(k).ljust(width)}  {v}" for k, v in rows)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
