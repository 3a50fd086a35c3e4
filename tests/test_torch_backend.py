"""The PyTorch backend (`--backend torch`) on the CPU: its programs in the engines folder, held to ONNX Runtime
FP32; its sampling loop in torch ops, held to runtime.samplers; the folder rules (stale, tampered, confined)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import media
from conftest import ROOT, export_torch_programs, unet_inputs, with_torch_programs
from m3ddm.errors import EnginesError
from runtime import guidance, samplers

torch = pytest.importorskip("torch", reason="the export extra (torch) is not installed")


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", ["pndm", "ddpm", "ddim", "dpmpp"])
def test_torch_sampling_loop_is_the_numpy_loop(name, rng):
    """The device loop's arithmetic (CFG combine, linear updates, history, saved samples, fresh noise) against
    runtime.samplers.run over the same eps function."""
    from runtime.engines import torch_sampling
    sampler = samplers.make_sampler(name, 6)
    w, shape = 2, (4, 3, 2, 2)
    x0, noise = rng.standard_normal((w, *shape)).astype(np.float32), rng.standard_normal((w, *shape)).astype(np.float32)
    rows = rng.standard_normal((3 * w, 5, *shape[1:])).astype(np.float32)
    weights = rng.standard_normal((9, 4)).astype(np.float32) * 0.3
    draws = {k: rng.standard_normal((w, *shape)).astype(np.float32) for k in range(6)}

    def eps_of(sample, t):  # a deterministic function of every input channel and the timestep
        return np.einsum("nc...,cd->nd...", sample, weights) * np.float32(t / 1000)

    def host_eps(x, t):
        sample = np.concatenate([guidance.per_branch(x), rows], axis=1)
        return guidance.combine(eps_of(sample, t), 1.5, 2.0)

    def device_unet(sample, timestep, fps, context):
        return torch.from_numpy(eps_of(sample.numpy(), float(timestep[0])))

    want = samplers.run(sampler, host_eps, x0, noise, step_noise=lambda k, s: draws[k])
    steps = []
    got = torch_sampling.run(sampler, device_unet, x0, noise, rows, np.ones(3 * w, np.float32),
                             np.zeros((3 * w, 1, 1), np.float32), 1.5, 2.0, torch.float32, "cpu",
                             step_noise=lambda k, s: draws[k], callback=lambda i, t: steps.append(t))
    assert steps == list(sampler.timesteps)
    assert _rel(got, want) <= 1e-6


@pytest.fixture(scope="module")
def programs_cpu(torch_engines):
    from runtime.engines.pytorch import TorchBackend
    backend = TorchBackend(torch_engines, device="cpu")
    yield backend
    backend.close()


@pytest.mark.parametrize("sampler", ["pndm", "ddpm"])
def test_torch_programs_give_the_ort_fp32_latents(torch_engines, programs_cpu, sampler):
    """A 60-frame coarse-to-fine run (three levels, guide frames, batches of 1 and 2 windows) on the PyTorch
    programs and on ONNX Runtime FP32: the final latents within 1e-4 of their scale with the VAE encoder's
    latents the same, within 2e-4 without.

    Why two bounds: the test checkpoint's VAE encodes the all-black null image ill-conditioned (a GroupNorm over a
    constant image: docs in test_runtime.py), so its latent differs by 1.2e-5 between PyTorch's and ONNX
    Runtime's FP32 kernels, eager PyTorch as well as the program, and every unconditional branch carries that
    (measured: 3.0e-5 with the encoder's latents shared, 1.09e-4 without, PNDM)."""
    from runtime.api import Outpainter
    from runtime.engines.ort import OrtBackend
    from runtime.engines.pytorch import TorchBackend
    ort = OrtBackend(torch_engines)

    class SharedEncoder(TorchBackend):
        def vae_encode(self, images):
            return ort.vae_encode(images)

    shared = SharedEncoder(torch_engines, device="cpu")
    shared._programs, shared._weights = programs_cpu._programs, programs_cpu._weights  # loaded once
    frames = media.scene(60, 96, 54)
    runs = {name: Outpainter(engine=backend).outpaint(frames, 24, ratio="9:16", steps=3, seed=5, sampler=sampler,
                                                      batch_windows=2).latents
            for name, backend in (("ort", ort), ("torch", programs_cpu), ("shared", shared))}
    assert runs["torch"].shape == (60, 4, 8, 8)
    assert _rel(runs["shared"], runs["ort"]) <= 1e-4
    assert _rel(runs["torch"], runs["ort"]) <= 2e-4


def test_cli_runs_the_torch_backend_and_auto_says_why_not_here(torch_engines, scene_clip, tmp_path):
    """`--backend torch` end to end; `auto` on a CPU keeps ONNX Runtime and says why the programs were passed
    over (PyTorch picks them only on a CUDA GPU)."""
    from runtime.engines.select import make_backend
    clip = scene_clip(17)
    out = tmp_path / "out.mp4"
    res = subprocess.run([sys.executable, "-m", "runtime.outpaint", str(clip), "-o", str(out), "--engines",
                          str(torch_engines), "--backend", "torch", "--steps", "2", "--json", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["backend"] == "torch" and len(media.decode(out)[0]) == 17
    chosen = make_backend(torch_engines, "auto")
    assert chosen.name == "ort"
    assert any("PyTorch programs not used" in note and "no NVIDIA GPU" in note for note in chosen.notes), chosen.notes
    code = ("import sys; from runtime.engines.select import make_backend; b = make_backend(sys.argv[1], 'auto');"
            "print(b.name, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(torch_engines)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.split() == ["ort", "False"], res.stderr[-2000:]  # auto never imported torch here


@pytest.fixture
def folder(torch_engines, tmp_path):
    copy = tmp_path / "engines"
    shutil.copytree(torch_engines, copy)
    return copy


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _load(folder):
    from runtime.engines.pytorch import TorchBackend
    backend = TorchBackend(folder, device="cpu")
    backend.load()
    return backend


def test_a_tampered_program_or_weights_file_is_refused(folder):
    record = _manifest(folder)["programs"]["unet.fp32"]
    for name in (record["graphs"][0]["file"], record["weights"]["file"]):
        path = folder / name
        original = path.read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0xFF  # the same size: only the hash tells
        path.write_bytes(bytes(data))
        with pytest.raises(EnginesError, match="SHA-256 differs"):
            _load(folder)
        path.write_bytes(original[:-1])
        with pytest.raises(EnginesError, match="changed or truncated"):
            _load(folder)
        path.write_bytes(original)
    _load(folder).close()


def test_programs_are_stale_once_the_graphs_are_exported_again(folder, checkpoints, torch_only_engines, scene_clip,
                                                               tmp_path):
    """`--torch` over graphs and the programs `--torch-only` made of the same checkpoints finds nothing to export.
    A re-export of the graphs (another option) leaves the programs naming an old fingerprint: refused, with the
    command that fixes it."""
    res = export_torch_programs(folder, checkpoints, "--precision", "fp32", "--windows", "1,2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _manifest(folder)["programs"] == _manifest(torch_only_engines)["programs"]  # kept, every record
    before = _manifest(folder)["programs"]["unet.fp32"]
    manifest = _manifest(folder)
    manifest["components"]["unet.fp32"]["fingerprint"] = "0" * 16  # what a new export of the graph records
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EnginesError, match=r"stale.*--torch"):
        _load(folder)
    res = subprocess.run([sys.executable, "-m", "runtime.outpaint", str(scene_clip(17)), "-o", str(tmp_path / "y.mp4"),
                          "--engines", str(folder), "--backend", "torch"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "stale" in res.stderr and "Traceback" not in res.stderr
    (folder / "manifest.json").write_text(json.dumps({**manifest, "programs": {}}))
    with pytest.raises(EnginesError, match="no PyTorch program for global_encoder.fp32"):
        _load(folder)
    assert before["weights"]["file"] in {p.name for p in folder.iterdir()}


def test_a_torch_only_folder_runs_on_its_programs_alone(torch_only_engines, torch_engines, programs_cpu, scene_clip,
                                                        tmp_path, capsys):
    """`python -m export --torch-only`: programs and no graph. Their records state the inputs and outputs the
    graphs of the same checkpoints have, and the graphs' fingerprints; `auto` runs them (on the CPU too: nothing
    else can) to the latents of the same programs beside graphs; a backend that needs graphs is refused in one line
    naming --backend torch, and so is `--torch-only` with what it cannot do."""
    from runtime.api import Outpainter
    from runtime.doctor import diagnose
    from runtime.doctor import main as doctor_main
    from runtime.engines.select import make_backend
    manifest, graphs = _manifest(torch_only_engines), _manifest(torch_engines)["components"]
    assert manifest["components"] == {} and not list(torch_only_engines.glob("*.onnx*"))
    assert set(manifest["programs"]) == {key for key in graphs if key.endswith(".fp32")}
    for key, record in manifest["programs"].items():
        assert [record[k] for k in ("fingerprint", "inputs", "outputs")] == \
            [graphs[key][k] for k in ("fingerprint", "inputs", "outputs")], key
    report = diagnose(torch_only_engines)["engines"]
    assert report["precisions"] == [] and report["program_precisions"] == ["fp32"], report
    assert "--backend torch" in report["note"]
    doctor_main(["--engines", str(torch_only_engines)])
    text = capsys.readouterr().out
    assert "(S=64; PyTorch programs fp32; plans: none)" in text
    assert "fast path: NOT usable (--backend torch runs this folder's programs)" in text
    chosen = make_backend(torch_only_engines, "auto")
    assert chosen.name == "torch" and any("PyTorch programs only" in note for note in chosen.notes), chosen.notes
    frames = media.scene(20, 96, 54)
    latents = [Outpainter(engine=b).outpaint(frames, 24, ratio="9:16", steps=2, seed=3).latents
               for b in (chosen, programs_cpu)]
    chosen.close()
    assert np.array_equal(*latents)
    out = tmp_path / "out.mp4"
    res = subprocess.run([sys.executable, "-m", "runtime.outpaint", str(scene_clip(17)), "-o", str(out), "--engines",
                          str(torch_only_engines), "--backend", "ort"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and not out.exists()
    assert len(res.stderr.strip().splitlines()) == 1 and "--backend torch" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "export.tensorrt_build", "--engines", str(torch_only_engines)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # `make plans`: from graphs only
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        f"error: engines folder {torch_only_engines} cannot be used: it has no complete fp16 engine set (has: none); "
        f"its PyTorch programs (fp32) run with --backend torch, or export the graphs (python -m export ... without "
        f"--torch-only)"]
    for flags in (["--torch", "--torch-only"], ["--torch-only", "--plans", "yes"]):
        res = subprocess.run([sys.executable, "-m", "export", "--out", str(tmp_path / "x"), *flags], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "error:" in res.stderr
        assert not (tmp_path / "x").exists()


def test_a_program_record_without_its_graph_must_state_the_contract(torch_only_engines, tmp_path):
    from runtime.engines.manifest import open_engines
    folder = tmp_path / "engines"
    shutil.copytree(torch_only_engines, folder)
    manifest = _manifest(folder)
    record = manifest["programs"]["unet.fp32"]
    record["outputs"][0]["shape"][1] = 8  # eps of 8 channels: exported for another model
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EnginesError, match=r"unet\.fp32 PyTorch programs outputs .*differ"):
        open_engines(folder)
    del record["outputs"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EnginesError, match=r"unet\.fp32 PyTorch programs outputs None differ"):
        open_engines(folder)


def test_a_program_record_leading_outside_the_folder_is_refused(folder, tmp_path):
    from runtime.engines.manifest import open_engines
    outside = tmp_path / "elsewhere.pt2"
    outside.write_bytes(b"x")
    for name in ("../elsewhere.pt2", str(outside)):
        manifest = _manifest(folder)
        manifest["programs"]["unet.fp32"]["graphs"][0]["file"] = name
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(EnginesError, match="outside the folder"):
            open_engines(folder)


def test_the_programs_need_no_export_code(torch_engines, tmp_path):
    """The backend loads the programs with PyTorch alone: neither export/ nor diffusers is imported."""
    code = ("import sys; from runtime.engines.pytorch import TorchBackend; b = TorchBackend(sys.argv[1], device='cpu');"
            "b.load(); import numpy as np; print(b.vae_decode(np.zeros((1, 4, 8, 8), np.float32)).shape);"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('export', 'diffusers')))")
    res = subprocess.run([sys.executable, "-c", code, str(torch_engines)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:2] == ["(1, 3, 64, 64)", "[]"]


@pytest.fixture(scope="module")
def programs_fp16(torch_engines, checkpoints, tmp_path_factory):
    """The test engines with FP16 programs too (one window): what a GPU runs."""
    return with_torch_programs(tmp_path_factory, "torch_fp16_cpu", torch_engines, checkpoints, "--precision", "fp16",
                               "--windows", "1")


def test_the_fp16_programs_a_gpu_runs_leave_the_cpu_and_hold_to_fp32(programs_fp16, programs_cpu):
    """No GPU here, so the FP16 programs are held two ways. Moved to another device (meta: shapes and dtypes,
    no data), through the backend's own loading, every component runs there: nothing the tracer saw on the CPU
    (a constant, an arange, a device assert) stays behind, and the FP16/FP32 edges agree. On the CPU, a UNet call
    within the FP16 tolerance (2e-2 of the scale) of the FP32 programs' (the GPU tests hold every component)."""
    from runtime.engines import contract
    from runtime.engines.pytorch import TorchBackend
    from runtime.engines.torch_programs import batch_ranges
    meta = TorchBackend(programs_fp16, device="meta", precision="fp16")  # loads each program as first called
    e, f16 = meta.engines, torch.float16
    lat, size, tokens = e.latent_size, e.model_size, e.context_tokens
    frames = batch_ranges(meta.records[contract.GLOBAL_ENCODER])[0][0]
    inputs = {contract.UNET: [(3, 9, 16, lat, lat), (3,), (3,), (3, tokens, 320)],
              contract.VAE_ENCODER: [(2, 3, size, size)], contract.VAE_DECODER: [(2, 4, lat, lat)],
              contract.GLOBAL_ENCODER: [(frames, 4, lat, lat)]}
    want = {contract.UNET: (3, 4, 16, lat, lat), contract.VAE_ENCODER: (2, 4, lat, lat),
            contract.VAE_DECODER: (2, 3, size, size), contract.GLOBAL_ENCODER: (1, tokens, 320)}
    for comp, shapes in inputs.items():
        args = [torch.empty(sh, dtype=f16 if len(sh) > 1 else torch.float32, device="meta") for sh in shapes]
        with torch.inference_mode():
            out = meta._program(comp, 0)(*args)
        assert (out.device.type, tuple(out.shape), out.dtype) == ("meta", want[comp], f16), comp.name
    meta.close()

    half = TorchBackend(programs_fp16, device="cpu", precision="fp16")
    args = unet_inputs(half.engines, 3, seed=3)
    assert _rel(half.unet(*args), programs_cpu.unet(*args)) <= 2e-2
    half.close()


def test_a_unet_that_cannot_be_captured_runs_eagerly_and_says_so(programs_cpu, monkeypatch):
    """A CUDA graph capture that fails (an op a torch release cannot capture) turns the graphs off for the run:
    the call is answered eagerly, the same values, and the notes say why."""
    from runtime.engines import pytorch
    args = unet_inputs(programs_cpu.engines, 3)
    eager = programs_cpu.unet(*args)

    def refuse(*a):
        raise RuntimeError("operation not permitted when stream is capturing\nmore lines")
    monkeypatch.setattr(pytorch, "CudaGraph", refuse)
    monkeypatch.setattr(pytorch.torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(programs_cpu, "_pool", None)
    monkeypatch.setattr(programs_cpu, "cuda_graphs", True)  # as on a GPU
    monkeypatch.setattr(programs_cpu, "notes", [])
    np.testing.assert_array_equal(programs_cpu.unet(*args), eager)
    assert programs_cpu.cuda_graphs is False
    assert programs_cpu.notes == ["CUDA graphs off: capturing the UNet failed (operation not permitted when stream "
                                  "is capturing)"]


def test_a_program_loads_the_same_with_its_schema_type_hints_looked_up_once(torch_engines, monkeypatch):
    """The backend's loads resolve each schema class's type hints once (half a UNet program's load time went
    to resolving them again per node): the same program, far fewer resolutions, torch's module left as it was."""
    import typing

    from torch._export.serde import serialize

    from runtime.engines.pytorch import _type_hints_cached
    path = str(next(torch_engines.glob("vae_decoder.fp32.rows*.pt2")))
    real, calls = typing.get_type_hints, []
    monkeypatch.setattr(typing, "get_type_hints", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    plain = torch.export.load(path)
    n_plain = len(calls)
    with _type_hints_cached():
        cached = torch.export.load(path)
    n_cached = len(calls) - n_plain
    assert n_plain > 1000 and n_cached == len(set(calls[n_plain:])) < n_plain / 20
    assert str(cached.graph) == str(plain.graph) and cached.graph_signature == plain.graph_signature
    assert serialize.typing is typing


def test_interrupt_stops_the_sampling_loop_in_flight_only(programs_cpu, rng):
    """interrupt() from another thread (a job being cancelled) stops the device loop at its next step; a loop begun
    after it runs to the end."""
    from runtime.engines.pytorch import Interrupted
    sampler = samplers.make_sampler("ddim", 4)
    x0, noise = rng.standard_normal((2, 1, 4, 16, 8, 8)).astype(np.float32)
    rows = rng.standard_normal((3, 5, 16, 8, 8)).astype(np.float32)
    args = (sampler, x0, noise, rows, np.full(3, 8.0, np.float32), np.zeros((3, 64, 320), np.float32), 2.0, 4.0)
    steps = []

    def step(i, t):
        steps.append(i)
        if i == 1:
            programs_cpu.interrupt()

    with pytest.raises(Interrupted):
        programs_cpu.sample_windows(*args, callback=step)
    assert steps == [0, 1]
    out = programs_cpu.sample_windows(*args)
    assert out.shape == (1, 4, 16, 8, 8) and np.isfinite(out).all()
