"""The TensorRT path up to the TensorRT boundary: version/GPU policy, profiles, memory choice, the plan
builder's requests and manifest records (against a stand-in module with TensorRT's API), and the clear
refusals on machines without TensorRT or a GPU (this one)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, one_error_line
from runtime.engines import EnginesError, contract
from runtime.engines import trt_policy as policy
from runtime.engines.base import Backend

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_bytes": 80 * 2**30}
V100 = {"name": "Tesla V100-SXM2-16GB", "compute_capability": "7.0", "memory_bytes": 16 * 2**30}


@pytest.mark.parametrize("version, cc, ok, words", [
    ("10.4.0.26", "7.0", True, None),
    ("10.5.0.18", "7.0", False, "10.4"),
    ("11.1.0", "7.0", False, "10.4"),
    ("10.13.2", "7.5", True, None),
    ("11.0.0", "7.5", True, None),
    ("11.0.0", "9.0", True, None),
    ("10.0.1", "8.0", True, None),
    ("9.3.0", "8.0", False, "too old"),
    ("12.0.0", "9.0", False, "newer"),
    ("10.4.0", "6.1", False, "older than Volta"),
])
def test_support_policy(version, cc, ok, words):
    problem = policy.support_problem(version, cc, "GPU")
    assert (problem is None) == ok
    if words:
        assert words in problem


def test_plan_records_are_checked_against_this_machine():
    record = {"file": "unet.fp16.plan", "onnx_fingerprint": "abc", "tensorrt": "10.4.0.26", "gpu": V100["name"],
              "compute_capability": "7.0"}
    assert policy.plan_problem("unet.fp16", record, "abc", "10.4.0.26", V100) is None
    assert "no plan" in policy.plan_problem("unet.fp16", None, "abc", "10.4.0.26", V100)
    assert "older unet.fp16 ONNX" in policy.plan_problem("unet.fp16", record, "def", "10.4.0.26", V100)
    newer = policy.plan_problem("unet.fp16", record, "abc", "10.4.1", V100)
    assert "TensorRT 10.4.0.26, this machine has 10.4.1" in newer
    other = policy.plan_problem("unet.fp16", record, "abc", "10.4.0.26", H100)
    assert "compute 7.0" in other and "make plans" in other
    # Same architecture, another board: runs, with a note.
    t_pcie = {**V100, "name": "Tesla V100-PCIE-16GB"}
    assert policy.plan_problem("unet.fp16", record, "abc", "10.4.0.26", t_pcie) is None
    assert policy.plan_notes(record, t_pcie) and not policy.plan_notes(record, V100)


def test_window_counts_and_row_decomposition():
    assert policy.parse_windows("4,2") == (1, 2, 4)
    assert policy.parse_windows([3]) == (1, 3)
    for bad in ("0", "a,b", "", "100"):
        with pytest.raises(ValueError):
            policy.parse_windows(bad)
    assert policy.default_windows(V100["memory_bytes"]) == (1,)
    assert policy.default_windows(24 * 2**30) == (1, 2)
    assert policy.default_windows(H100["memory_bytes"]) == (1, 2, 4)
    assert policy.decompose_rows(12, [3, 6, 12]) == [12]
    assert policy.decompose_rows(21, [3, 6, 12]) == [12, 6, 3]
    assert policy.decompose_rows(9, [3]) == [3, 3, 3]
    for n in range(3, 60, 3):
        assert sum(policy.decompose_rows(n, [3, 6, 12])) == n
    with pytest.raises(ValueError):
        policy.decompose_rows(7, [3, 6])


def test_memory_choice_takes_what_fits():
    gib = 2**30
    profile = {1: 3 * gib, 2: 6 * gib, 4: 12 * gib}
    usable, buf = policy.choose_unet_profiles(profile, 1 * gib, free_bytes=13 * gib)
    assert usable == [1, 2, 4] and buf == 12 * gib
    usable, buf = policy.choose_unet_profiles(profile, 1 * gib, free_bytes=8 * gib)
    assert usable == [1, 2] and buf == 6 * gib
    # A 16 GB card with 2.8 GB of weights and a 9 GB cap on the rest: one window.
    usable, buf = policy.choose_unet_profiles(profile, 1 * gib, free_bytes=13 * gib, budget_bytes=4 * gib)
    assert usable == [1] and buf == 3 * gib
    # The VAE's need can be the largest: the buffer covers it.
    usable, buf = policy.choose_unet_profiles({1: gib}, 2 * gib, free_bytes=4 * gib)
    assert buf == 2 * gib
    with pytest.raises(EnginesError, match="not enough GPU memory for one window"):
        policy.choose_unet_profiles(profile, gib, free_bytes=3 * gib)


@pytest.fixture
def fake_trt(monkeypatch):
    import fake_tensorrt
    from runtime.engines import cuda
    fake_tensorrt.BUILDS.clear()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(cuda, "set_device", lambda index: None)
    monkeypatch.setattr(cuda, "device_properties", lambda index: dict(H100))
    return fake_tensorrt


@pytest.fixture
def folder(engines, tmp_path):
    out = tmp_path / "engines"
    shutil.copytree(engines, out)
    return out


def test_build_plans_requests_and_records(fake_trt, folder):
    from runtime.engines.trt_build import build_plans
    plans = build_plans(folder, windows="1,2,4")
    manifest = json.loads((folder / contract.MANIFEST).read_text())
    assert manifest["plans"] == plans and sorted(plans) == sorted(f"{c}.fp16" for c in contract.COMPONENTS)
    builds = {json.dumps(b["profiles"]): b for b in fake_trt.BUILDS}
    assert len(fake_trt.BUILDS) == 4 and all(b["flags"] == 1 << 1 for b in fake_trt.BUILDS)
    unet = next(b for b in fake_trt.BUILDS if "sample" in b["profiles"][0])
    lat = 8  # S = 64
    tokens = manifest["model"]["context_tokens"]
    assert [p["sample"][0] for p in unet["profiles"]] == [[3 * w, 9, 16, lat, lat] for w in (1, 2, 4)]
    assert all(p["sample"][0] == p["sample"][2] for p in unet["profiles"])  # static per window count
    assert unet["profiles"][2]["context"] == [[12, tokens, 320]] * 3
    assert unet["profiles"][1]["timestep"] == [[6]] * 3 and unet["profiles"][1]["fps"] == [[6]] * 3
    vae = next(b for b in builds.values() if "image" in b["profiles"][0])
    assert vae["profiles"][0]["image"] == [[1, 3, 64, 64], [16, 3, 64, 64], [16, 3, 64, 64]]
    rec = plans["unet.fp16"]
    assert rec["tensorrt"] == fake_trt.__version__ and rec["gpu"] == H100["name"] and rec["compute_capability"] == "9.0"
    assert rec["onnx_fingerprint"] == manifest["components"]["unet.fp16"]["fingerprint"]
    assert rec["profiles"] == [[3, 3, 3], [6, 6, 6], [12, 12, 12]]
    assert rec["device_memory"] == [30000, 60000, 120000]
    assert (folder / "unet.fp16.plan").stat().st_size == rec["bytes"]
    for key, r in plans.items():
        fingerprint = manifest["components"][key]["fingerprint"]
        assert policy.plan_problem(key, r, fingerprint, fake_trt.__version__, H100) is None
    # One timing cache per GPU and TensorRT version, handed from build to build.
    caches = list(folder.glob("timing_cache.*.bin"))
    assert [c.name for c in caches] == ["timing_cache.nvidia-h100-80gb-hbm3.sm90.trt10.4.0.26.bin"]
    assert [b["timing_cache_in"] for b in fake_trt.BUILDS] == ["", "+", "++", "+++"]
    assert caches[0].read_bytes() == b"++++"

    fake_trt.BUILDS.clear()
    build_plans(folder, windows="1,2,4")
    assert fake_trt.BUILDS == []  # up to date
    build_plans(folder, windows="1,2")
    assert len(fake_trt.BUILDS) == 1 and "sample" in fake_trt.BUILDS[0]["profiles"][0]  # only the UNet changes
    assert fake_trt.BUILDS[0]["timing_cache_in"] == "++++"


def test_build_refuses_volta_with_new_tensorrt(fake_trt, folder, monkeypatch):
    from runtime.engines import cuda
    from runtime.engines.trt_build import build_plans
    monkeypatch.setattr(cuda, "device_properties", lambda index: dict(V100))
    monkeypatch.setattr(fake_trt, "__version__", "10.5.0.18")
    with pytest.raises(EnginesError, match="tensorrt-cu12==10.4"):
        build_plans(folder)
    assert fake_trt.BUILDS == [] and not list(folder.glob("*.plan"))


def test_backend_refuses_plans_for_another_machine(fake_trt, folder):
    from runtime.engines.tensorrt import TensorRTBackend
    from runtime.engines.trt_build import build_plans
    build_plans(folder, windows="1")
    fake_trt.__version__ = "10.4.1.0"
    try:
        with pytest.raises(EnginesError, match="built with TensorRT 10.4.0.26, this machine has 10.4.1.0"):
            TensorRTBackend(folder)
    finally:
        fake_trt.__version__ = "10.4.0.26"
    (folder / "vae_decoder.fp16.plan").write_bytes(b"truncated")
    with pytest.raises(EnginesError, match="vae_decoder.fp16.plan is missing or has changed"):
        TensorRTBackend(folder)


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _one_error_line(res, code, words):
    assert res.returncode == code, res.stderr[-1500:]
    assert words in one_error_line(res)


def test_without_tensorrt_everything_says_so(engines, tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from runtime.engines.tensorrt import TensorRTBackend  # imports without TensorRT
    with pytest.raises(EnginesError, match="TensorRT is not installed"):
        TensorRTBackend(engines)
    _one_error_line(_run("-m", "export.tensorrt_build", "--engines", str(engines)), 3, "TensorRT is not installed")
    video = tmp_path / "in.mp4"
    from media import scene, write
    write(video, scene(4, 64, 48))
    out = tmp_path / "out.mp4"
    res = _run("-m", "runtime.outpaint", str(video), "-o", str(out), "--ratio", "1:1", "--engines", str(engines),
               "--backend", "tensorrt", "--steps", "2")
    _one_error_line(res, 3, "TensorRT is not installed")
    assert not out.exists()


def test_auto_passes_over_unusable_plans_and_says_why(folder):
    manifest = json.loads((folder / contract.MANIFEST).read_text())
    manifest["plans"] = {f"{c}.fp16": {"file": f"{c}.fp16.plan", "tensorrt": "10.4.0.26", "gpu": "x",
                                        "compute_capability": "9.0"} for c in contract.COMPONENTS}
    (folder / contract.MANIFEST).write_text(json.dumps(manifest))
    from runtime import Outpainter
    out = Outpainter(folder)
    assert out.backend.name == "ort"
    assert any("TensorRT plans not used" in n for n in out.backend.notes)


def test_make_engines_plans_flag(engines, folder, checkpoints):
    from conftest import make_engines
    unet, vae = checkpoints
    res = make_engines(folder, unet=unet, vae=vae)  # auto: no TensorRT here, the ONNX graphs stay usable
    assert res.returncode == 0, res.stderr[-1500:]
    assert "note: no TensorRT plans" in res.stderr and "make plans" in res.stderr
    res = make_engines(folder, "PLANS=yes", unet=unet, vae=vae)
    assert res.returncode != 0 and "error: TensorRT is not installed" in res.stderr
    assert "Traceback" not in res.stderr


# -- the backend's own logic on emulated CUDA and TensorRT runtimes (tests/fake_cuda.py) --------------------
@pytest.fixture
def fake_gpu(fake_trt, monkeypatch):
    import fake_cuda
    from runtime.engines import cuda
    monkeypatch.undo()  # the real cuda helpers, over the emulated runtime below
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(cuda, "_cudart", lambda: fake_cuda)
    monkeypatch.setattr(cuda, "_driver", lambda: fake_cuda.driver)
    fake_cuda.driver.LAUNCHES.clear()
    fake_cuda.reset()
    fake_trt.EXECUTIONS.clear()
    yield fake_cuda
    fake_cuda.reset()


class _StandIn(Backend):
    """What the fake engines compute, in numpy with the graphs' FP16 rounding: the reference backend."""
    name, precision = "numpy", "fp16"

    def __init__(self, engines_set):
        import fake_tensorrt
        self.engines, self.f = engines_set, fake_tensorrt.COMPUTE

    @staticmethod
    def _h(x):
        return np.asarray(x).astype(np.float16)

    def _out(self, x):
        return x.astype(np.float16).astype(np.float32)

    def unet(self, sample, timestep, fps, context):
        return self._out(self.f["eps"](self._h(sample), timestep, fps, self._h(context)))

    def encode_global(self, g):
        return self._out(self.f["context"](self._h(g), contract.global_tokens_per_frame(self.engines.latent_size)))

    def vae_encode(self, images):
        return self._out(self.f["latent"](self._h(images)))

    def vae_decode(self, latents):
        return self._out(self.f["image"](self._h(latents)))


class _Counting:
    def __init__(self, inner):
        self.inner, self.unet_calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def unet(self, *args):
        self.unet_calls += 1
        return self.inner.unet(*args)


def _video():
    from media import scene
    return scene(70, 96, 54, seed=5)


def test_backend_runs_the_pipeline_exactly_on_emulated_gpu(fake_gpu, folder):
    """The host loop over the UNet engine: rows split over the profiles that fit, VAE chunks, CUDA graphs
    replayed, context kept resident; the outputs equal the same functions computed in numpy."""
    import fake_tensorrt
    from runtime import Outpainter
    from runtime.engines.manifest import open_engines
    from runtime.engines.tensorrt import TensorRTBackend
    from runtime.engines.trt_build import build_plans
    build_plans(folder, windows="1,2,4")
    kw = dict(steps=3, strides=(15, 5, 1), batch_windows=4)
    want = Outpainter(engine=_StandIn(open_engines(folder, "fp16"))).outpaint(_video(), 24, "1:1", **kw)

    # Memory for the 1- and 2-window profiles only: 4 windows' 12 rows run as 6 + 6.
    fake_gpu.reset(free=policy.RESERVE_BYTES + 100_000)
    with TensorRTBackend(folder, device_loop=False) as trt:
        assert trt.windows == [1, 2] and trt.memory["activation_bytes"] == 60_000
        counted = _Counting(trt)
        got = Outpainter(engine=counted).outpaint(_video(), 24, "1:1", **kw)
        np.testing.assert_array_equal(got.latents, want.latents)
        np.testing.assert_array_equal(got.frames, want.frames)
        unet = trt._engines[contract.UNET]
        assert len(unet.graphs) == 2  # one per (profile, shapes): 6 rows and 3 rows
        launches = sum(1 for e in fake_gpu.LOG if e[0] == "graph")
        assert launches > counted.unet_calls  # nearly every chunk replayed a graph
    assert not fake_gpu.ALLOCATED  # close() gave everything back

    # Everything fits: one 12-row call per batch, and its CFG context is uploaded once, not every step.
    fake_gpu.reset()
    fake_tensorrt.EXECUTIONS.clear()
    with TensorRTBackend(folder, device_loop=False) as trt:
        assert trt.windows == [1, 2, 4]
        counted = _Counting(trt)
        got = Outpainter(engine=counted).outpaint(_video(), 24, "1:1", **kw)
        np.testing.assert_array_equal(got.latents, want.latents)
        ctx = trt._engines[contract.UNET].device["context"].ptr
        uploads = sum(1 for kind, dst, _ in fake_gpu.LOG if kind == "h2d" and dst == ctx)
        assert uploads * kw["steps"] == counted.unet_calls
        assert fake_tensorrt.EXECUTIONS.count("eps") == counted.unet_calls


def test_backend_memory_cap_and_corrupt_plans_fail_cleanly(fake_gpu, folder):
    from runtime.engines.tensorrt import TensorRTBackend
    from runtime.engines.trt_build import build_plans
    build_plans(folder, windows="1,2")
    with pytest.raises(EnginesError, match="--gpu-memory 1e-05 GB is too little"):
        TensorRTBackend(folder, gpu_memory_gb=1e-5)
    assert not fake_gpu.ALLOCATED
    fake_gpu.reset(free=policy.RESERVE_BYTES + 20_000)
    with pytest.raises(EnginesError, match="not enough GPU memory for one window"):
        TensorRTBackend(folder)
    assert not fake_gpu.ALLOCATED
    fake_gpu.reset()
    plan = folder / "vae_encoder.fp16.plan"
    plan.write_bytes(b"x" * plan.stat().st_size)  # same size, not a plan
    with pytest.raises(EnginesError, match="TensorRT cannot load vae_encoder.fp16.plan"):
        TensorRTBackend(folder)
    assert not fake_gpu.ALLOCATED


@pytest.mark.parametrize("sampler", ["pndm", "ddpm", "dpmpp"])
def test_sampling_on_the_device_equals_the_host_loop(fake_gpu, folder, sampler):
    """The per-step math on the device (timestep table, scatter, UNet graph, fused CFG + update with its
    history and saved sample, pointer rotation) gives the host loop's latents; batches whose rows are not
    one profile fall back to the host loop."""
    from runtime import Outpainter
    from runtime.engines.manifest import open_engines
    from runtime.engines.tensorrt import TensorRTBackend
    from runtime.engines.trt_build import build_plans
    build_plans(folder, windows="1,2,4")
    kw = dict(steps=6, strides=(15, 5, 1), batch_windows=4, sampler=sampler)
    want = Outpainter(engine=_StandIn(open_engines(folder, "fp16"))).outpaint(_video(), 24, "1:1", **kw)
    with TensorRTBackend(folder) as trt:
        counted = _Counting(trt)
        got = Outpainter(engine=counted).outpaint(_video(), 24, "1:1", **kw)
        assert trt.device_loop and not trt.notes
    launches = fake_gpu.driver.LAUNCHES
    steps = launches.count("sampler_step_f16")
    assert steps and launches.count("scatter_noisy_f16") == steps
    np.testing.assert_array_equal(got.latents, want.latents)
    plan_windows = sum(len(level) for level in got.plan)
    # Level 0 runs one window at a time (3 rows: a profile), so every batch here ran on the device.
    assert counted.unet_calls == 0 and steps % kw["steps"] == 0 and steps // kw["steps"] < plan_windows
    assert not fake_gpu.ALLOCATED


def test_device_loop_can_be_turned_off(fake_gpu, folder, monkeypatch):
    """M3DDM_DEVICE_LOOP=0 is read by the Outpainter, which passes it down; the backend reads no environment."""
    from runtime import Outpainter
    from runtime.engines.trt_build import build_plans
    build_plans(folder, windows="1,2")
    monkeypatch.setenv("M3DDM_DEVICE_LOOP", "0")
    kw = dict(steps=3, strides=(15, 5, 1), batch_windows=2)
    with Outpainter(folder, "tensorrt") as op:
        assert op.backend.name == "tensorrt" and not op.backend.device_loop
        got = op.outpaint(_video(), 24, "1:1", **kw)
    assert not fake_gpu.driver.LAUNCHES
    monkeypatch.delenv("M3DDM_DEVICE_LOOP")
    with Outpainter(folder, "tensorrt") as op:
        on = op.outpaint(_video(), 24, "1:1", **kw)
    assert fake_gpu.driver.LAUNCHES
    np.testing.assert_array_equal(got.latents, on.latents)


@pytest.mark.parametrize("vae_batch, max_batch, sizes", [
    (None, None, [5]), (None, 2, [2, 2, 1]), (4, None, [4, 1]), (4, 2, [2, 2, 1]), (2, 3, [2, 2, 1]), (4, 0, [4, 1]),
])
def test_every_backend_gets_the_vae_in_chunks_of_its_limit(vae_batch, max_batch, sizes):
    """The VAE batching is the base class's: chunks of the engine's limit within the caller's, each in the
    engine's own type, joined in order and made float32."""
    class Halving(Backend):
        encode_global = unet = None

        def __init__(self):
            self.vae_batch, self.max_batch, self.calls = vae_batch, max_batch, []

        def vae_encode_chunk(self, images):
            self.calls.append(len(images))
            return (images / 2).astype(np.float16)

        vae_decode_chunk = vae_encode_chunk

    images = np.random.default_rng(0).uniform(-1, 1, (5, 3, 8, 8)).astype(np.float32)
    for run in ("vae_encode", "vae_decode"):
        backend = Halving()
        got = getattr(backend, run)(images)
        assert backend.calls == sizes and got.dtype == np.float32
        np.testing.assert_array_equal(got, (images / 2).astype(np.float16).astype(np.float32))
