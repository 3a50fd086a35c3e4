"""python -m runtime.doctor on a machine without a GPU: a clean report, exit 1, no traceback."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT


def run(*args):
    return subprocess.run([sys.executable, "-m", "runtime.doctor", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_doctor_reports_no_gpu_cleanly():
    from runtime.doctor import gpus
    found, why = gpus()
    if found:
        pytest.skip("this machine has a GPU")
    res = run()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "GPU:          none" in res.stdout and "fast path: NOT usable" in res.stdout
    assert "missing: no NVIDIA GPU" in res.stdout or "missing: cuda-python" in res.stdout
    report = json.loads(run("--json").stdout)
    assert report["fast_path"] is False and report["gpus"] == []
    assert report["kernels"] == "compiled (NVRTC, compute_70)"  # without a GPU; NVRTC 12 (the kernels extra)
    assert any("TensorRT" in p for p in report["problems"]) or report["tensorrt"]
    # The PyTorch backend's own verdict: here torch is installed (the export extra) and there is no GPU.
    assert report["torch"] and report["torch_backend"].startswith("no NVIDIA GPU here")
    assert "PyTorch:      " in res.stdout and "--backend torch on a GPU: no NVIDIA GPU here" in res.stdout


def test_volta_with_a_newer_tensorrt_is_refused(monkeypatch):
    from runtime import doctor
    monkeypatch.setattr(doctor, "gpus", lambda: ([{"index": 0, "name": "Tesla V100-SXM2-16GB",
                                                   "compute_capability": "7.0", "memory_gb": 16.0,
                                                   "driver_cuda": "12.4"}], None))
    monkeypatch.setattr(doctor, "_version", lambda m: "10.5.0" if m == "tensorrt" else None)
    report = doctor.diagnose()
    assert not report["fast_path"]
    assert any("tensorrt-cu12==10.4" in p for p in report["problems"])
    monkeypatch.setattr(doctor, "_version", lambda m: "10.4.0" if m == "tensorrt" else None)
    assert not any("V100" in p for p in doctor.diagnose()["problems"])


def test_doctor_checks_an_engines_folder_plans(monkeypatch, engines, tmp_path):
    import shutil

    from runtime import doctor
    from runtime.engines import contract
    folder = tmp_path / "engines"
    shutil.copytree(engines, folder)
    h100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gb": 79.1,
            "driver_cuda": "12.8"}
    monkeypatch.setattr(doctor, "gpus", lambda: ([h100], None))
    monkeypatch.setattr(doctor, "_version", lambda m: "10.13.2.6" if m == "tensorrt" else None)
    report = doctor.diagnose(folder)
    assert report["engines"]["plans"] == [] and "make plans" in report["engines"]["note"]
    manifest = json.loads((folder / contract.MANIFEST).read_text())
    fp = manifest["components"]["unet.fp16"]["fingerprint"]
    manifest["plans"] = {f"{c}.fp16": {"file": f"{c}.fp16.plan", "tensorrt": "10.4.0.26",
                                        "gpu": "Tesla V100-SXM2-16GB", "compute_capability": "7.0",
                                        "onnx_fingerprint": fp} for c in contract.COMPONENTS}
    (folder / contract.MANIFEST).write_text(json.dumps(manifest))
    report = doctor.diagnose(folder)
    assert not report["fast_path"]
    assert any("built with TensorRT 10.4.0.26, this machine has 10.13.2.6" in p for p in report["problems"])
    assert any("make plans" in f for f in report["fixes"])
