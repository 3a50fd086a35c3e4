"""GPU tests (`make test-gpu` / `pytest -m gpu`): kernels, the TensorRT backend and ORT CUDA against the
CPU reference on the tiny fixtures. Each skips, saying what is missing, on a machine without that part."""
import shutil

import numpy as np
import pytest

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


def _inputs(engines_set, rows, seed=0):
    rng = np.random.default_rng(seed)
    lat, tokens = engines_set.latent_size, engines_set.context_tokens
    return (rng.standard_normal((rows, 9, 16, lat, lat)).astype(np.float32),
            np.linspace(1, 961, rows).astype(np.float32), np.full(rows, 24, np.float32),
            rng.standard_normal((rows, tokens, 320)).astype(np.float32))


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
            args = _inputs(trt.engines, rows, rows)
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
        args = _inputs(eager.engines, 6)
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
    args = _inputs(gpu.engines, 6)
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
