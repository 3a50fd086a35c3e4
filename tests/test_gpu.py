"""GPU tests (`make test-gpu` / `pytest -m gpu`): kernels, the TensorRT backend and ORT CUDA against the
CPU reference on the tiny fixtures. Each skips, saying what is missing, on a machine without that part."""
import shutil

import numpy as np
import pytest

from conftest import unet_inputs

pytestmark = pytest.mark.gpu


def _gpu() -> dict:
    from runtime.doctor import gpus
    found, why = gpus()
    if not found:
        pytest.skip(f"needs an NVIDIA GPU: {why}")
    return found[0]


def _tensorrt():
    try:
        import tensorrt
    except Exception as exc:
        pytest.skip(f"needs TensorRT ({type(exc).__name__})")
    return tensorrt


def _arch(gpu) -> str:
    return "compute_" + gpu["compute_capability"].replace(".", "")


def test_kernels_with_the_driver_api_equal_numpy():
    from runtime.engines import device_kernels
    errors = device_kernels.check(_arch(_gpu()))
    assert errors["sampler_step_f32"] <= 1e-5 and errors["sampler_step_f16"] <= 1e-5, errors
    assert errors["scatter_noisy_f32"] == 0 and errors["scatter_noisy_f16"] == 0, errors


def test_doctor_builds_and_checks_a_tiny_engine():
    _gpu()
    _tensorrt()
    from runtime.engines import selftest
    result = selftest.run()
    assert result["max_rel_error"] <= selftest.TOLERANCE and result["cuda_graph"] and result["replay_equals_eager"]
    from runtime.doctor import main
    assert main([]) == 0


@pytest.fixture(scope="module")
def planned(request, tmp_path_factory):
    _gpu()
    _tensorrt()
    engines = request.getfixturevalue("engines")  # only once a GPU and TensorRT are known to be here
    from runtime.engines.trt_build import build_plans
    folder = tmp_path_factory.mktemp("planned") / "engines"
    shutil.copytree(engines, folder)
    build_plans(folder, windows="1,2", opt_level=2)
    return folder


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_tensorrt_fp16_against_ort_cpu_fp32(planned, request):
    engines = request.getfixturevalue("engines")
    from runtime.engines.ort import OrtBackend
    from runtime.engines.tensorrt import TensorRTBackend
    cpu = OrtBackend(engines, "cpu")
    with TensorRTBackend(planned) as trt:
        assert trt.windows == [1, 2]
        for rows in (3, 6, 9):  # 9 rows run as the 6-row and 3-row profiles
            args = unet_inputs(trt.engines, rows, rows)
            assert _rel(trt.unet(*args), cpu.unet(*args)) <= 2e-2
        g = np.random.default_rng(1).standard_normal((16, 4, 8, 8)).astype(np.float32)
        assert _rel(trt.encode_global(g), cpu.encode_global(g)) <= 2e-2
        images = np.random.default_rng(2).uniform(-1, 1, (5, 3, 64, 64)).astype(np.float32)
        latents = cpu.vae_encode(images)
        assert _rel(trt.vae_encode(images), latents) <= 2e-2
        decoded, want = trt.vae_decode(latents), cpu.vae_decode(latents)
        psnr = 10 * np.log10(4.0 / np.mean((decoded - want) ** 2))  # images span [-1, 1]
        assert psnr >= 35, psnr


def test_cuda_graph_replay_equals_eager(planned):
    from runtime.engines import contract
    from runtime.engines.tensorrt import TensorRTBackend
    with TensorRTBackend(planned, cuda_graphs=False) as eager:
        args = unet_inputs(eager.engines, 6)
        want = eager.unet(*args)
    with TensorRTBackend(planned) as graphed:
        first = graphed.unet(*args)  # eager, then captured
        replay = graphed.unet(*args)
        assert graphed._engines[contract.UNET].graphs, "no CUDA graph was captured"
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(replay, want)


def test_one_window_run_memory_and_output(planned, request):
    engines = request.getfixturevalue("engines")
    from benchmarks.speed import GpuMemoryWatch
    from media import scene
    from runtime import Outpainter
    from runtime.engines.tensorrt import TensorRTBackend
    frames = scene(20, 96, 64)
    with GpuMemoryWatch() as watch:
        with TensorRTBackend(planned, max_windows=1) as backend:
            result = Outpainter(engine=backend).outpaint(frames, 24, "1:1", steps=5, batch_windows=1)
            memory = backend.memory
    peak = watch.added_bytes
    print(f"one-window run: {peak / 2**20:.0f} MiB peak on the GPU, weights {memory['weights_bytes'] / 2**20:.0f} MiB, "
          f"activations {memory['activation_bytes'] / 2**20:.0f} MiB")
    assert peak < 12 * 2**30
    reference = Outpainter(engines, backend="ort-cpu").outpaint(frames, 24, "1:1", steps=5, batch_windows=1)
    err = np.abs(result.latents - reference.latents).max() / np.abs(reference.latents).max()
    assert err <= 5e-2, err


def test_ort_cuda_fp16_against_cpu_fp32(request):
    _gpu()
    from runtime.engines.ort import OrtBackend, available_providers
    if "CUDAExecutionProvider" not in available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDA provider)")
    engines = request.getfixturevalue("engines")
    cpu, gpu = OrtBackend(engines, "cpu"), OrtBackend(engines, "cuda")
    args = unet_inputs(gpu.engines, 6)
    assert _rel(gpu.unet(*args), cpu.unet(*args)) <= 2e-2


def test_device_sampling_equals_the_host_loop(planned):
    """The kernels' loop on the GPU against the host loop over the same engines (FP32 update, so only
    rounding-order differences)."""
    from media import scene
    from runtime import Outpainter
    from runtime.engines.tensorrt import TensorRTBackend
    frames = scene(40, 96, 64)
    results = {}
    for on in (False, True):
        with TensorRTBackend(planned, device_loop=on) as backend:
            results[on] = Outpainter(engine=backend).outpaint(frames, 24, "1:1", steps=8, batch_windows=2,
                                                               sampler="dpmpp").latents
            assert backend.device_loop == on and not [n for n in backend.notes if "host" in n]
    err = np.abs(results[True] - results[False]).max() / np.abs(results[False]).max()
    assert err <= 1e-3, err


# -- the PyTorch backend (`--backend torch`): needs only PyTorch with CUDA ------------------------------------
def _torch_cuda():
    torch = pytest.importorskip("torch", reason="needs PyTorch")
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA GPU that PyTorch {torch.__version__} sees")
    return torch


@pytest.fixture(scope="module")
def torch_fp16(request, tmp_path_factory):
    """The test engines with FP32 and FP16 PyTorch programs (windows 1 and 2)."""
    _torch_cuda()
    from conftest import with_torch_programs
    engines, checkpoints = request.getfixturevalue("torch_engines"), request.getfixturevalue("checkpoints")
    return with_torch_programs(tmp_path_factory, "torch_fp16", engines, checkpoints, "--precision", "both",
                               "--windows", "1,2")


def test_torch_fp16_on_the_gpu_is_fp32_within_the_fp16_tolerance(torch_fp16):
    """The FP16 programs on the GPU against the FP32 programs on the CPU: every component within 2e-2 of the
    output's scale (the TensorRT tests' FP16 tolerance), and a whole run's latents too."""
    _torch_cuda()
    from runtime.api import Outpainter
    from runtime.engines.pytorch import TorchBackend
    from runtime.video.synthetic import synthetic_clip
    gpu, cpu = TorchBackend(torch_fp16), TorchBackend(torch_fp16, device="cpu")
    assert gpu.precision == "fp16" and gpu.on_gpu
    args = unet_inputs(gpu.engines, 6)
    assert _rel(gpu.unet(*args), cpu.unet(*args)) <= 2e-2
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    assert _rel(gpu.vae_encode(images), cpu.vae_encode(images)) <= 2e-2
    latents = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    assert _rel(gpu.vae_decode(latents), cpu.vae_decode(latents)) <= 2e-2
    frames = synthetic_clip(20, 96, 54)  # not tests/media.py: GPU images may lack PyAV
    a = Outpainter(engine=gpu).outpaint(frames, 24, steps=3, seed=2).latents
    b = Outpainter(engine=cpu).outpaint(frames, 24, steps=3, seed=2).latents
    assert _rel(a, b) <= 2e-2


def test_torch_cuda_graph_replay_equals_eager(torch_fp16):
    torch = _torch_cuda()
    from runtime.engines.pytorch import TorchBackend
    graphed, eager = TorchBackend(torch_fp16), TorchBackend(torch_fp16, cuda_graphs=False)
    assert graphed.cuda_graphs and not eager.cuda_graphs
    for rows in (3, 6, 9):  # 9 rows: a 6-row and a 3-row graph in turn
        args = unet_inputs(graphed.engines, rows, seed=rows)
        want = eager.unet(*args)
        assert np.array_equal(graphed.unet(*args), want)
        assert np.array_equal(graphed.unet(*args), want)  # replayed
    assert set(graphed._graphs) == {3, 6}
    del torch


def test_torch_gpu_memory_cap_is_honoured(torch_fp16):
    """--gpu-memory caps PyTorch's allocator: a cap below what one window needs fails with an out-of-memory
    error, not by taking more; a cap above the GPU's memory is refused in one line."""
    torch = _torch_cuda()
    from m3ddm.errors import EnginesError
    from runtime.engines.pytorch import TorchBackend
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    with pytest.raises(EnginesError, match="more than this GPU has"):
        TorchBackend(torch_fp16, gpu_memory_gb=total + 1)
    backend = TorchBackend(torch_fp16, gpu_memory_gb=0.001, cuda_graphs=False)
    with pytest.raises((EnginesError, torch.cuda.OutOfMemoryError)):  # the weights, or the first activations
        backend.load()
        backend.unet(*unet_inputs(backend.engines, 3))
    torch.cuda.set_per_process_memory_fraction(1.0)
