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
