"""The device kernels: every one compiles with NVRTC here (no GPU needed); on a GPU each equals its numpy reference."""
import numpy as np
import pytest

import kernels
from runtime import samplers

ARCHS = ["compute_70", "compute_90"]  # V100 (the oldest supported) and Hopper
NVRTC_12 = [50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 103, 120, 121]  # what each reports
NVRTC_13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(kernels.SOURCES))
def test_kernel_compiles(name, arch, tmp_path, monkeypatch):
    if int(arch.split("_")[1]) not in kernels.supported_archs():
        pytest.skip(f"this NVRTC has no {arch} (NVRTC 13 dropped Volta; the kernels extra pins NVRTC 12)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ptx = kernels.compile_ptx(name, arch)
    assert f".target {arch.replace('compute', 'sm')}".encode() in ptx
    for entry in kernels.ENTRY_POINTS[name]:
        assert f".entry {entry}".encode() in ptx
    cached = list((tmp_path / "m3ddm" / "kernels").glob(f"{name}-{arch}-*.ptx"))
    assert len(cached) == 1 and cached[0].read_bytes() == ptx
    assert kernels.compile_ptx(name, arch) == ptx  # from the cache


@pytest.mark.parametrize("archs,default,hopper,blackwell,volta", [
    (NVRTC_12, "compute_70", "compute_90", "compute_120", "compute_70"),
    (NVRTC_13, "compute_75", "compute_90", "compute_120", None)])
def test_the_arch_is_one_this_nvrtc_has(archs, default, hopper, blackwell, volta, monkeypatch):
    """The default PTX target runs on every supported GPU; a GPU gets the newest target at or below its own; a
    V100 with NVRTC 13 (which cannot target it) gets a one-line reason."""
    monkeypatch.setattr(kernels, "supported_archs", lambda: archs)
    assert kernels.default_arch() == default
    assert kernels.arch_for("9.0") == hopper and kernels.arch_for("12.0") == blackwell
    assert kernels.arch_for("8.9") == "compute_89" and kernels.arch_for("10.3") == "compute_103"
    if volta:
        assert kernels.arch_for("7.0") == volta
    else:
        with pytest.raises(kernels.KernelError, match=r"cannot compile for compute 7\.0 .*CUDA 12"):
            kernels.arch_for("7.0")


def test_the_default_arch_compiles_with_this_nvrtc(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    arch = kernels.default_arch()
    assert int(arch.split("_")[1]) in kernels.supported_archs()
    assert f".target {arch.replace('compute', 'sm')}".encode() in kernels.compile_ptx("unet_input")


def test_compile_error_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }\n')
    for header in kernels.HEADERS:
        (tmp_path / header).write_bytes((kernels.HERE / header).read_bytes())
    monkeypatch.setattr(kernels, "HERE", tmp_path)
    monkeypatch.setitem(kernels.SOURCES, "bad", "bad.cu")
    with pytest.raises(kernels.KernelError, match="undefined_name"):
        kernels.compile_ptx("bad", use_cache=False)


def test_sampler_step_reference_is_the_update_written_out():
    """The kernel's reference is the runtime's own CFG combine and sampler update; written out here by hand."""
    from runtime.engines.device_kernels import sampler_step_reference
    rng = np.random.default_rng(0)
    w, shape = 2, (4, 16, 8, 8)
    eps = rng.standard_normal((3 * w, *shape)).astype(np.float32)
    x, saved, h0, h1, h2, z = (rng.standard_normal((w, *shape)).astype(np.float32) for _ in range(6))
    u = samplers.Update(x=1.1, saved=0.3, eps=(-0.2, 0.15, -0.05, 0.01), noise=0.07)
    got, g = sampler_step_reference(eps, x, u, 2.0, 4.0, saved, (h0, h1, h2), z)
    e0, e1, e2 = eps[:w], eps[w:2 * w], eps[2 * w:]
    want_g = e0 + 2 * (e1 - e0) + 4 * (e2 - e1)
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-6)
    want = 1.1 * x + 0.3 * saved - 0.2 * want_g + 0.15 * h0 - 0.05 * h1 + 0.01 * h2 + 0.07 * z
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_per_branch_is_the_pipeline_layout():
    """scatter_noisy's reference: every branch row of the 3W-row UNet batch holds its window's latents."""
    from runtime import guidance
    rng = np.random.default_rng(1)
    w = 3
    x = rng.standard_normal((w, 4, 16, 8, 8)).astype(np.float32)
    rows = guidance.per_branch(x)
    assert rows.shape == (3 * w, 4, 16, 8, 8)
    for b in range(guidance.NUM_BRANCHES):
        for i in range(w):
            np.testing.assert_array_equal(rows[b * w + i], x[i])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_kernels_equal_numpy_on_the_gpu(dtype, tmp_path):
    cp = pytest.importorskip("cupy", reason="the GPU kernel test needs CuPy")
    if cp.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no GPU")
    rng = np.random.default_rng(2)
    w, shape = 2, (4, 16, 32, 32)
    per_window = int(np.prod(shape))
    np_eps_t = np.float32 if dtype == "f32" else np.float16
    eps = rng.standard_normal((3 * w, *shape)).astype(np_eps_t)
    x, saved, h0, h1, h2, z = (rng.standard_normal((w, *shape)).astype(np.float32) for _ in range(6))
    u = samplers.Update(x=1.1, saved=0.3, eps=(-0.2, 0.15, -0.05, 0.01), noise=0.07)
    path = tmp_path / "k.ptx"
    path.write_bytes(kernels.compile_ptx("sampler_step", use_cache=False))
    fn = cp.RawModule(path=str(path)).get_function(f"sampler_step_{dtype}")
    d = [cp.asarray(a) for a in (eps, x, saved, h0, h1, h2, z)]
    x_out, g_out = cp.empty_like(d[1]), cp.empty_like(d[1])
    args = (*d, x_out, g_out, np.int64(per_window), np.int32(w), np.float32(2.0), np.float32(4.0), np.float32(u.x),
            np.float32(u.saved), *[np.float32(b) for b in u.eps], np.float32(u.noise))
    fn((256,), (256,), args)
    from runtime import guidance
    from runtime.engines.device_kernels import sampler_step_reference
    want, g = sampler_step_reference(eps.astype(np.float32), x, u, 2.0, 4.0, saved, (h0, h1, h2), z)
    np.testing.assert_allclose(cp.asnumpy(g_out), g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(x_out), want, rtol=1e-5, atol=1e-5)

    sample = rng.standard_normal((3 * w, 9, *shape[1:])).astype(np.float32 if dtype == "f32" else np.float16)
    path.write_bytes(kernels.compile_ptx("unet_input", use_cache=False))
    fn = cp.RawModule(path=str(path)).get_function(f"scatter_noisy_{dtype}")
    d_sample = cp.asarray(sample)
    fn((256,), (256,), (cp.asarray(x), d_sample, np.int64(per_window // 4), np.int32(w)))
    want = sample.copy()
    want[:, :4] = guidance.per_branch(x.astype(sample.dtype))
    np.testing.assert_array_equal(cp.asnumpy(d_sample), want)
