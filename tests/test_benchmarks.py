"""Benchmark helpers: FLOP counts against the specification's figure, the GPU peak table by device name."""
import pytest

from benchmarks.flops import fp16_peak_tflops, unet_flops


@pytest.mark.parametrize("name, peak", [
    ("Tesla V100-SXM2-16GB", 125), ("Tesla V100-PCIE-16GB", 112), ("Tesla T4", 65), ("NVIDIA A10G", 70),
    ("NVIDIA A10", 125), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
    ("Some Future GPU", None),
])
def test_fp16_peak_by_device_name(name, peak):
    assert fp16_peak_tflops(name) == peak


def test_official_unet_call_flops_match_the_specification():
    """docs/algorithm.md §4.1: one official call (4 branches x 16 frames at 32x32 latents) is 22.7 TFLOP."""
    f = unet_flops(size=256)
    assert f["official_call"] / 1e12 == pytest.approx(22.7, abs=0.05)
    assert f["unet_call"] < 0.7 * f["official_call"]  # 3 branches, context K/V once per item


@pytest.mark.parametrize("frames", [1, 2, 16, 20, 49, 50, 60, 100, 137, 600])
def test_the_official_driver_visits_the_windows_of_our_plan(frames):
    """benchmarks/official_loop.py drives the official pipeline window by window: the same windows, in the
    same order, as runtime.plan.official_plan (which tests/test_golden.py holds to the official run)."""
    from benchmarks.official_loop import windows
    from runtime.plan import official_plan
    if frames == 1:  # the official loop makes no window for a single frame (our plan covers it with one)
        assert windows(frames) == []
        return
    ours = [(w.stride, list(w.frames)) for level in official_plan(frames) for w in level]
    assert windows(frames) == ours


def test_the_official_benchmark_refuses_a_folder_that_is_not_the_official_repository(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT
    res = subprocess.run([sys.executable, "-m", "benchmarks.official", "--repo", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a checkout of the official repository (no src/model/unet_3d_condition_video.py)"]


def test_gpu_check_dry_run_writes_every_field(tmp_path, checkpoints, torch_engines):
    """`python -m benchmarks.gpu_check --dry-run`: the GPU sequence on the CPU at tiny size, as a GPU machine without
    PyAV runs it (a stand-in `av` that cannot be imported): every step done, every field written. Its work folder
    starts as a second run finds it (the checkpoints the dry run makes, seed 0, and their engines with programs),
    so the export step checks them and finds them up to date instead of exporting again (tests/test_torch_backend.py
    tests the export)."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for name, source in (("unet", checkpoints[0]), ("vae", checkpoints[1])):
        shutil.copytree(source, tmp_path / "work" / "checkpoints" / name)
    shutil.copytree(torch_engines, tmp_path / "work" / "engines")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "av.py").write_text("raise ImportError('PyAV is not on the GPU machines')\n")
    out = tmp_path / "check.json"
    env = {**__import__("os").environ, "PYTHONPATH": f"{fake}:{root}"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--dry-run", "--work",
                          str(tmp_path / "work")], cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    steps = json.loads(out.read_text())["steps"]
    assert set(steps) == {"machine", "doctor", "pytest_gpu", "weights", "export", "unet_call", "video", "memory"}
    assert not [k for k, v in steps.items() if "error" in v]
    assert set(steps["export"]["programs"]) == {f"{c}.fp32" for c in ("global_encoder", "unet", "vae_encoder",
                                                                       "vae_decoder")}
    assert steps["machine"]["torch"] and steps["pytest_gpu"]["counts"].get("skipped", 0) > 0
    assert steps["unet_call"]["w1"]["rows"] == 3 and steps["unet_call"]["w2"]["rows"] == 6
    assert all(steps["unet_call"][w]["ms"] > 0 for w in ("w1", "w2"))
    video = steps["video"]
    assert video["ours_s"] > 0 and video["baseline_s"] > 0
    assert abs(video["speedup"] - video["baseline_s"] / video["ours_s"]) < 0.05
    assert set(steps["memory"]["max_windows"]) == {"16", "24", "40", "80"}
    assert "video 20 frames S=64" in res.stdout and "UNet call 6 rows" in res.stdout
