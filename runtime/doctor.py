"""python -m runtime.doctor: can this machine run the GPU fast path? Exit 0 only when it can.

Reports the GPU, its compute capability, the driver and CUDA versions, TensorRT, ONNX Runtime and
cuda-python; compiles the device kernels with NVRTC and, on a GPU, runs them against numpy; builds a tiny
TensorRT engine and checks it (eager and CUDA-graph replay) against ONNX Runtime on the CPU
(runtime/engines/selftest.py); with --engines DIR also checks that folder's plans against this machine.
Says what is missing and how to fix it.
"""
from __future__ import annotations

import json
import platform
import sys
from typing import Any

from m3ddm.errors import first_line
from runtime import cli
from runtime.engines import trt_policy as policy


def _version(module: str) -> str | None:
    import importlib
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def _dist_version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def gpus() -> tuple[list[dict], str | None]:
    """[(name, compute capability, memory)] from the CUDA driver, or the reason there are none."""
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        return [], "cuda-python is not installed (pip install 'm3ddm-runtime[gpu]')"
    try:
        (err,) = cu.cuInit(0)
        if int(err) != 0:
            return [], f"no usable NVIDIA driver ({err})"
        err, count = cu.cuDeviceGetCount()
        if int(err) != 0 or count == 0:
            return [], "no NVIDIA GPU"
        err, driver = cu.cuDriverGetVersion()
        found = []
        for i in range(count):
            _, dev = cu.cuDeviceGet(i)
            _, name = cu.cuDeviceGetName(64, dev)
            _, major = cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
            _, minor = cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
            _, mem = cu.cuDeviceTotalMem(dev)
            found.append({"index": i, "name": name.split(b"\0")[0].decode(), "compute_capability": f"{major}.{minor}",
                          "memory_gb": round(mem / 2 ** 30, 1),
                          "driver_cuda": f"{driver // 1000}.{driver % 1000 // 10}"})
        return found, None
    except Exception as exc:  # no driver library, or a broken install: the doctor reports, never crashes
        if "NotFound" in type(exc).__name__:
            return [], "no NVIDIA GPU (no NVIDIA driver on this machine)"
        return [], f"the CUDA driver could not be queried ({type(exc).__name__}: {first_line(exc)})"


def _cuda_runtime_version() -> str:
    from runtime.engines import cuda
    v = cuda.call("cudaRuntimeGetVersion")
    return f"{v // 1000}.{v % 1000 // 10}"


def check_engines(report: dict, engines_dir, trt_version, found) -> None:
    """Can this folder's plans run here? Records the answer; a folder without plans is not a problem."""
    from runtime.engines import EnginesError, contract, open_engines
    try:
        engines = open_engines(engines_dir)
    except EnginesError as exc:
        report["problems"].append(str(exc))
        report["fixes"].append("make engines (or python -m export --out DIR)")
        return
    plans = engines.manifest.get("plans") or {}
    report["engines"] = {"folder": str(engines.folder), "model_size": engines.model_size,
                         "precisions": list(engines.precisions), "plans": sorted(plans),
                         "program_precisions": list(engines.program_precisions)}
    if not engines.precisions:
        report["engines"]["note"] = "no ONNX graphs (python -m export --torch-only): --backend torch runs its programs"
        return
    if not plans:
        report["engines"]["note"] = "no TensorRT plans (make plans on this GPU to add them)"
        return
    if trt_version is None or not found:
        return
    for comp in contract.ENGINES:
        key = comp.key("fp16")
        why = policy.plan_problem(key, plans.get(key), engines.manifest["components"].get(key, {}).get("fingerprint"),
                                  trt_version, found[0], engines.folder)
        if why:
            report["problems"].append(why)
            report["fixes"].append(f"make plans ENGINES={engines_dir}")


def diagnose(engines_dir=None) -> dict:
    report: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "problems": [],
                              "fixes": []}
    found, why = gpus()
    report["gpus"] = found
    trt = _version("tensorrt")
    report["tensorrt"] = trt
    report["onnxruntime"] = _version("onnxruntime")
    report["cuda_python"] = _dist_version("cuda-bindings")
    try:
        import onnxruntime
        report["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        report["onnxruntime_providers"] = []
    try:
        import kernels
        arch = kernels.default_arch()
        for name in kernels.SOURCES:
            kernels.compile_ptx(name, arch)
        report["kernels"] = f"compiled (NVRTC, {arch})"
    except Exception as exc:
        report["kernels"] = f"not compiled: {first_line(exc)}"
        report["problems"].append("the device kernels do not compile")
        report["fixes"].append("pip install 'm3ddm-runtime[kernels]' (cuda-bindings 12.x and NVRTC for CUDA 12)")
    if why:
        report["problems"].append(why)
        report["fixes"].append("the fast path needs an NVIDIA GPU with its driver; on this machine use --backend ort "
                               "(ONNX Runtime on the CPU; --backend torch for a folder of PyTorch programs only)")
    if trt is None:
        report["problems"].append("TensorRT is not installed")
        report["fixes"].append(policy.INSTALL_HINT)
    else:
        for g in found:
            why_not = policy.support_problem(trt, g["compute_capability"], g["name"])
            if why_not:
                report["problems"].append(why_not)
                report["fixes"].append("install a TensorRT that supports this GPU (see above)")
    if found and not report["problems"]:
        try:
            from runtime.engines import cuda
            cuda.set_device(found[0]["index"])
            report["cuda_runtime"] = _cuda_runtime_version()
            from runtime.engines import device_kernels
            errors = device_kernels.check(kernels.arch_for(found[0]["compute_capability"]))
            report["kernels_on_gpu"] = errors
            if max(errors.values()) > 1e-5:
                report["problems"].append(f"the device kernels differ from numpy ({errors})")
                report["fixes"].append("report this with the doctor's --json output")
            from runtime.engines import selftest
            report["tensorrt_selftest"] = selftest.run()
        except Exception as exc:  # the doctor reports, never crashes
            report["problems"].append(f"the GPU self-test failed: {type(exc).__name__}: {first_line(exc)}")
            report["fixes"].append("check the TensorRT / CUDA install (python -m runtime.doctor --json shows details)")
    if engines_dir is not None:
        check_engines(report, engines_dir, trt, found)
    report["fast_path"] = not report["problems"]
    # The PyTorch backend needs neither TensorRT nor the kernels: its own verdict, beside the fast path's.
    from runtime.engines.select import torch_on_gpu_problem
    report["torch"] = _dist_version("torch")
    report["torch_backend"] = ("not installed" if report["torch"] is None else torch_on_gpu_problem()) or "usable"
    return report


def main(argv=None) -> int:
    ap = cli.Parser(prog="python -m runtime.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--engines", help="also check this engines folder's TensorRT plans against this machine")
    args = ap.parse_args(argv)
    report = diagnose(args.engines)
    if args.json:
        print(json.dumps(report))
    else:
        gpu_line = "; ".join(f"{g['name']} (compute {g['compute_capability']}, {g['memory_gb']} GB, driver CUDA "
                             f"{g['driver_cuda']})" for g in report["gpus"]) or "none"
        print(f"GPU:          {gpu_line}")
        print(f"TensorRT:     {report['tensorrt'] or 'not installed'}")
        print(f"ONNX Runtime: {report['onnxruntime'] or 'not installed'} "
              f"({', '.join(report['onnxruntime_providers']) or '-'})")
        print(f"cuda-python:  {report['cuda_python'] or 'not installed'}")
        print(f"PyTorch:      {report['torch'] or 'not installed'} (--backend torch on a GPU: "
              f"{report['torch_backend']})")
        print(f"kernels:      {report['kernels']}"
              + (f"; on the GPU vs numpy: max error {max(report['kernels_on_gpu'].values()):.1e}"
                 if report.get("kernels_on_gpu") else ""))
        if report.get("tensorrt_selftest"):
            st = report["tensorrt_selftest"]
            print(f"TensorRT test engine: built in {st['build_seconds']} s, vs ONNX Runtime CPU "
                  f"{st['max_rel_error']:.1e} of scale, "
                  f"CUDA graph {'replayed exactly' if st['replay_equals_eager'] else 'NOT equal'}")
        e = report.get("engines")
        if e:
            sets = [f"{kind} {', '.join(precs)}" for kind, precs in (("graphs", e["precisions"]),
                                                                     ("PyTorch programs", e["program_precisions"]))
                    if precs]
            print(f"engines:      {e['folder']} (S={e['model_size']}; {'; '.join(sets)}; "
                  f"plans: {', '.join(e['plans']) or 'none'})" + (f"; {e['note']}" if e.get("note") else ""))
        for problem, fix in zip(report["problems"], report["fixes"]):
            print(f"missing: {problem}. Fix: {fix}")
        other = ("--backend torch runs this folder's programs" if e and not e["precisions"]
                 else "the ONNX Runtime CPU path works")
        print("fast path: usable" if report["fast_path"] else f"fast path: NOT usable ({other})")
    return 0 if report["fast_path"] else 1


if __name__ == "__main__":
    sys.exit(main())
