"""python -m runtime.doctor: can this machine run the GPU fast path? Exit 0 only when it can.

Reports the GPU, its compute capability, the driver and CUDA versions, TensorRT, ONNX Runtime and
cuda-python; compiles the device kernels with NVRTC; and says what is missing and how to fix it.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

VOLTA = (7, 0)
LAST_TENSORRT_FOR_VOLTA = (10, 4)


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
                          "memory_gb": round(mem / 2 ** 30, 1), "driver_cuda": f"{driver // 1000}.{driver % 1000 // 10}"})
        return found, None
    except Exception as exc:  # no driver library, or a broken install: the doctor reports, never crashes
        if "NotFound" in type(exc).__name__:
            return [], "no NVIDIA GPU (no NVIDIA driver on this machine)"
        return [], f"the CUDA driver could not be queried ({type(exc).__name__}: {str(exc).splitlines()[0]})"


def diagnose() -> dict:
    report = {"python": platform.python_version(), "machine": platform.machine(), "problems": [], "fixes": []}
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
        for name in kernels.SOURCES:
            kernels.compile_ptx(name, "compute_70")
        report["kernels"] = "compiled (NVRTC)"
    except Exception as exc:
        report["kernels"] = f"not compiled: {str(exc).splitlines()[0]}"
        report["problems"].append("the device kernels do not compile")
        report["fixes"].append("pip install 'm3ddm-runtime[kernels]' (cuda-bindings 12.x and NVRTC for CUDA 12)")
    if why:
        report["problems"].append(why)
        report["fixes"].append("the fast path needs an NVIDIA GPU with its driver; on this machine use --backend ort "
                               "(ONNX Runtime on the CPU)")
    if trt is None:
        report["problems"].append("TensorRT is not installed")
        report["fixes"].append("install TensorRT from NVIDIA (pip install --extra-index-url https://pypi.nvidia.com "
                               "tensorrt-cu12; a V100 needs tensorrt-cu12<=10.4 with CUDA 12)")
    else:
        tv = tuple(int(p) for p in trt.split(".")[:2] if p.isdigit())
        for g in found:
            cc = tuple(int(p) for p in g["compute_capability"].split("."))
            if cc <= VOLTA and tv > LAST_TENSORRT_FOR_VOLTA:
                report["problems"].append(f"{g['name']} (sm_{cc[0]}{cc[1]}) is not supported by TensorRT {trt}")
                report["fixes"].append("a V100 needs TensorRT <= 10.4 with CUDA 12 (tensorrt-cu12==10.4.*)")
    try:
        import runtime.engines.tensorrt  # noqa: F401 - the TensorRT backend module
    except ImportError:
        report["problems"].append("this build has no TensorRT backend yet")
        report["fixes"].append("use --backend ort (ONNX Runtime, CPU or CUDA provider) until the TensorRT path lands")
    report["fast_path"] = not report["problems"]
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.doctor", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = diagnose()
    if args.json:
        print(json.dumps(report))
    else:
        gpu_line = "; ".join(f"{g['name']} (compute {g['compute_capability']}, {g['memory_gb']} GB, driver CUDA "
                             f"{g['driver_cuda']})" for g in report["gpus"]) or "none"
        print(f"GPU:          {gpu_line}")
        print(f"TensorRT:     {report['tensorrt'] or 'not installed'}")
        print(f"ONNX Runtime: {report['onnxruntime'] or 'not installed'} ({', '.join(report['onnxruntime_providers']) or '-'})")
        print(f"cuda-python:  {report['cuda_python'] or 'not installed'}")
        print(f"kernels:      {report['kernels']}")
        for problem, fix in zip(report["problems"], report["fixes"]):
            print(f"missing: {problem}. Fix: {fix}")
        print("fast path: usable" if report["fast_path"] else "fast path: NOT usable (the ONNX Runtime CPU path works)")
    return 0 if report["fast_path"] else 1


if __name__ == "__main__":
    sys.exit(main())
