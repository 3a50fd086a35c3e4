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
