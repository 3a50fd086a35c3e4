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
    assert report["kernels"] == "compiled (NVRTC)"  # the kernels compile without a GPU
    assert any("TensorRT" in p for p in report["problems"]) or report["tensorrt"]


def test_volta_with_a_newer_tensorrt_is_refused(monkeypatch):
    from runtime import doctor
    monkeypatch.setattr(doctor, "gpus", lambda: ([{"index": 0, "name": "Tesla V100-SXM2-16GB", "compute_capability": "7.0",
                                                  "memory_gb": 16.0, "driver_cuda": "12.4"}], None))
    monkeypatch.setattr(doctor, "_version", lambda m: "10.5.0" if m == "tensorrt" else None)
    report = doctor.diagnose()
    assert not report["fast_path"]
    assert any("TensorRT <= 10.4" in f for f in report["fixes"])
    monkeypatch.setattr(doctor, "_version", lambda m: "10.4.0" if m == "tensorrt" else None)
    assert not any("V100" in p for p in doctor.diagnose()["problems"])
