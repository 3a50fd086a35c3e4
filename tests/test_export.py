"""`make engines` on the fixtures, the ONNX graphs against torch, and the engines-folder contract."""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT, make_engines
from export import onnx_export as ox
from export.trt_onnx_support import problems as trt_problems
from runtime.engines import EnginesError, contract, open_engines
from runtime.engines.ort import OrtBackend

SIZE = 64


def _tensor_types(model) -> dict:
    """Element type of every input and intermediate tensor of a shape-inferred graph."""
    return {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}


@pytest.fixture(scope="module")
def torch_models(tiny_models):
    return tiny_models


def test_make_engines_produces_a_complete_folder(engines):
    found = open_engines(engines)
    assert found.precisions == ("fp32", "fp16") and found.model_size == SIZE
    names = {p.name for p in engines.iterdir()}
    for comp in contract.COMPONENTS:
        for prec in contract.PRECISIONS:
            assert contract.onnx_file(comp, prec) in names
    manifest = json.loads((engines / "manifest.json").read_text())
    assert manifest["options"]["opset"] >= 17
    assert manifest["model"]["unet_config"]["block_out_channels"] == [32, 64, 64, 64]
    for key in ("unet", "vae"):
        files = manifest["sources"][key]["files"]
        assert "config.json" in files and all(len(f["sha256"]) == 64 for f in files.values())
    assert {"torch", "onnx", "diffusers"} <= set(manifest["tools"])


def test_rerun_does_nothing(engines, checkpoints):
    before = {p.name: p.stat().st_mtime_ns for p in engines.iterdir()}
    res = make_engines(engines, unet=checkpoints[0], vae=checkpoints[1])
    assert res.returncode == 0 and "up to date" in res.stdout
    after = {p.name: p.stat().st_mtime_ns for p in engines.iterdir() if p.name != "manifest.json"}
    assert all(before[k] == v for k, v in after.items())


def test_changed_checkpoint_reexports_only_what_it_feeds(tmp_path, checkpoints, engines):
    from safetensors.torch import load_file, save_file
    unet, vae = tmp_path / "unet", checkpoints[1]
    shutil.copytree(checkpoints[0], unet)
    # The session's folder, from the same bytes: fingerprints hash the files, not their folder, so the copy
    # is this checkpoint's up-to-date export without a first export of its own.
    out = _copy(engines, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    first = json.loads((out / "manifest.json").read_text())["components"]
    weights = unet / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["conv_in.bias"] = state["conv_in.bias"] + 1
    time.sleep(0.01)
    save_file(state, str(weights))
    res = make_engines(out, "PRECISION=fp32", unet=unet, vae=vae)
    assert res.returncode == 0, res.stderr
    second = json.loads((out / "manifest.json").read_text())["components"]
    assert second["unet.fp32"]["fingerprint"] != first["unet.fp32"]["fingerprint"]
    assert second["global_encoder.fp32"]["fingerprint"] != first["global_encoder.fp32"]["fingerprint"]
    for vae_part in ("vae_encoder.fp32.onnx", "vae_decoder.fp32.onnx"):
        assert (out / vae_part).stat().st_mtime_ns == stamps[vae_part]
    assert (out / "unet.fp32.onnx").stat().st_mtime_ns != stamps["unet.fp32.onnx"]


def test_bad_source_is_one_line_and_nonzero(tmp_path):
    res = subprocess.run([sys.executable, "-m", "export", "--unet", str(tmp_path / "missing"), "--vae",
                          str(tmp_path / "missing"), "--out", str(tmp_path / "e"), "--size", "64"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.stderr


def _torch_reference(component, unet, vae, xs):
    module = ox.graph_module(component, unet=unet, vae=vae)
    with torch.no_grad():
        return module(*[torch.from_numpy(x) for x in xs]).numpy()


def _inputs(component, batch, seed=0):
    return [x.numpy() for x in ox.example_inputs(component, SIZE, "fp32", batch, torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("component", contract.COMPONENTS)
def test_ort_cpu_fp32_matches_torch(engines, torch_models, component):
    backend = OrtBackend(engines, device="cpu")
    for batch in (1, 3):
        xs = _inputs(component, batch, seed=batch)
        want = _torch_reference(component, *torch_models, xs)
        names = [s.name for s in contract.component_io(component, SIZE)[0]]
        got = backend.session(component).run(None, dict(zip(names, xs)))[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), component


# FP16 has a 2^-11 relative rounding step; through the tiny UNet's ~40 stacked layers (normalisation and
# softmax in FP32) the observed error is about 1e-3 of the output's scale. The bound leaves a 5x margin
# while still catching a norm or softmax left in FP16 (>= 1e-2 on these fixtures) or a wrong cast.
FP16_BOUND = 5e-3


@pytest.mark.parametrize("component", contract.COMPONENTS)
def test_fp16_graphs_against_torch_fp32(engines, torch_models, component):
    backend = OrtBackend(engines, device="cpu", precision="fp16")
    xs = _inputs(component, 2, seed=7)
    want = _torch_reference(component, *torch_models, xs)
    ins = contract.component_io(component, SIZE)[0]
    feeds = {s.name: x.astype(np.float32 if s.dtype == "float32" else np.float16) for s, x in zip(ins, xs)}
    got = backend.session(component).run(None, feeds)[0]
    assert got.dtype == np.float16
    scale = np.abs(want).max()
    err = np.abs(got.astype(np.float32) - want)
    assert err.max() <= FP16_BOUND * scale, f"{component}: {err.max() / scale:.2e}"
    assert err.mean() <= FP16_BOUND * scale / 10


def test_fp16_graph_keeps_statistics_and_softmax_in_fp32(engines):
    model = onnx.load(str(engines / "unet.fp16.onnx"))
    model = onnx.shape_inference.infer_shapes(model)
    types = _tensor_types(model)
    for node in model.graph.node:
        if node.op_type in ("InstanceNormalization", "LayerNormalization", "Softmax"):
            assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (node.op_type, node.name)
    # Weight matrices and kernels are FP16; FP32 stays only for norm affines and embedding frequencies.
    matrices = [t for t in model.graph.initializer if sum(d > 1 for d in t.dims) >= 2]
    assert matrices and {t.data_type for t in matrices} == {onnx.TensorProto.FLOAT16}


def test_graphs_pass_tensorrt_parser_check(engines):
    for path in sorted(engines.glob("*.onnx")):
        model = onnx.load(str(path))
        assert trt_problems(model) == [], path.name
        assert model.opset_import[0].version >= 17


def test_unet_batch_is_dynamic(engines, torch_models):
    backend = OrtBackend(engines)
    for n in (1, 2, 6):
        xs = _inputs("unet", n, seed=n)
        want = _torch_reference("unet", *torch_models, xs)
        got = backend.unet(*xs)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_backend_interface_and_session_reuse(engines, torch_models):
    unet, vae = torch_models
    a, b = OrtBackend(engines, threads=1), OrtBackend(engines, threads=1)
    assert a.session("unet") is a.session("unet")  # built once per backend
    assert a.session("unet") is not b.session("unet")  # each backend owns its sessions
    b.close()  # releases them: a closed backend is not used again
    with pytest.raises(EnginesError, match="closed"):
        b.session("unet")
    images = np.random.default_rng(0).uniform(-1, 1, (5, 3, SIZE, SIZE)).astype(np.float32)
    small = OrtBackend(engines, max_batch=2)
    np.testing.assert_allclose(small.vae_encode(images), a.vae_encode(images), rtol=1e-5, atol=1e-5)
    lat = a.vae_encode(images)
    with torch.no_grad():
        want = vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy() * 0.18215
    np.testing.assert_allclose(lat, want, atol=1e-4 * np.abs(want).max())
    decoded = a.vae_decode(lat)
    assert decoded.shape == (5, 3, SIZE, SIZE)
    g = np.random.default_rng(1).standard_normal((16, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = unet.encode_global(torch.from_numpy(g)).numpy()
    np.testing.assert_allclose(a.encode_global(g), want, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 16])
def test_row_slices_cover_every_row_once_and_balance(threads):
    from runtime.engines.ort import row_slices
    for rows in range(1, 50):
        slices = row_slices(rows, threads)
        covered = [i for s in slices for i in range(rows)[s]]
        assert covered == list(range(rows))  # in order, each row once: the output concatenates back
        sizes = [s.stop - s.start for s in slices]
        assert max(sizes) - min(sizes) <= 1 and len(sizes) <= 2 * threads
        if threads == 1 or rows == 1:
            assert sizes == [rows]
        elif rows < threads:
            assert sizes == [1] * rows  # a row each: no thread holds two while another idles
        even = [k for k in range(threads, 2 * threads + 1) if rows % k == 0]
        if threads > 1 and even:
            assert len(sizes) == even[0] and len(set(sizes)) == 1  # equal slices, the fewest that balance


def test_a_small_graph_runs_its_rows_in_parallel_slices_with_the_same_result(engines, monkeypatch):
    """On the CPU a call whose rows split evenly runs as one slice per thread on a single-threaded twin of the
    session: the same eps as the whole call on the threaded session, and only for the components whose rows
    are independent, only for small graphs."""
    from runtime.engines import ort as ort_backend
    parallel, whole = OrtBackend(engines, threads=2), OrtBackend(engines, threads=1)
    assert parallel.row_threads(contract.UNET) == 2 and whole.row_threads(contract.UNET) == 1
    assert parallel.row_threads(contract.GLOBAL_ENCODER) == 1  # 16 frames -> one context: rows not independent
    xs = _inputs("unet", 6, seed=4)
    got = parallel.unet(*xs)
    assert set(parallel._row_sessions) == {"unet"}  # the call did run as slices
    want = whole.unet(*xs)
    assert np.array_equal(got, want)
    images = np.random.default_rng(2).uniform(-1, 1, (4, 3, SIZE, SIZE)).astype(np.float32)
    assert np.array_equal(parallel.vae_encode(images), whole.vae_encode(images))
    three = _inputs("unet", 3, seed=5)  # on 2 threads: 1 + 1 + 1
    assert np.array_equal(parallel.unet(*three), whole.unet(*three))
    one = _inputs("unet", 1, seed=6)  # a single row is never split: the threaded session runs it
    np.testing.assert_allclose(parallel.unet(*one), whole.unet(*one), rtol=0, atol=1e-4)
    monkeypatch.setattr(ort_backend, "ROW_PARALLEL_MAX_BYTES", 1000)  # a large graph: its ops use the threads
    assert OrtBackend(engines, threads=2).row_threads(contract.UNET) == 1
    parallel.close()
    with pytest.raises(EnginesError, match="closed"):
        parallel.unet(*xs)


def test_an_interrupt_stops_a_call_running_as_slices(engines):
    import threading
    backend = OrtBackend(engines, threads=2)
    xs = _inputs("unet", 12, seed=6)
    backend.unet(*xs)  # sessions built
    timer = threading.Timer(0.05, backend.interrupt)
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="(?i)terminat|exiting"):
        for _ in range(50):
            backend.unet(*xs)
    timer.join()
    assert time.perf_counter() - t0 < 10
    assert backend.unet(*xs).shape[0] == 12  # later calls run as usual


def test_cuda_without_onnxruntime_gpu_says_what_to_install(engines):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(EnginesError, match="onnxruntime-gpu"):
        OrtBackend(engines, device="cuda")


def _copy(engines, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(engines, dst)
    return dst


def test_runtime_refuses_folders_that_do_not_match(engines, tmp_path):
    with pytest.raises(EnginesError, match="does not exist"):
        open_engines(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnginesError, match="no manifest.json"):
        open_engines(tmp_path / "empty")

    other = _copy(engines, tmp_path)  # another model: its manifest says the UNet takes 32x32 latents
    m = json.loads((other / "manifest.json").read_text())
    m["model"]["size"] = 256
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EnginesError, match="differ from what this runtime expects"):
        open_engines(other)

    trunc = tmp_path / "trunc"
    shutil.copytree(engines, trunc)
    p = trunc / "unet.fp32.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(EnginesError, match="changed or truncated"):
        open_engines(trunc, "fp32")

    old = tmp_path / "old"
    shutil.copytree(engines, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format"] = 0
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EnginesError, match="re-export"):
        open_engines(old)

    half = tmp_path / "half"
    shutil.copytree(engines, half)
    m = json.loads((half / "manifest.json").read_text())
    del m["components"]["vae_decoder.fp16"]
    (half / "manifest.json").write_text(json.dumps(m))
    assert open_engines(half).precisions == ("fp32",)
    with pytest.raises(EnginesError, match="no complete fp16 engine set"):
        open_engines(half, "fp16")


def test_runtime_engines_modules_import_without_torch():
    code = ("import sys, runtime.engines, runtime.engines.ort, runtime.engines.base\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


def test_external_data_graph_loads_and_is_checked(tmp_path, torch_models, engines):
    """Graphs over 2 GB keep weights beside them; forced here with a 1 MB threshold on the tiny UNet."""
    unet, _ = torch_models
    path = ox.export_component("unet", ox.graph_module("unet", unet=unet), SIZE, "fp32", tmp_path / "unet.fp32.onnx",
                               external_above=2 ** 20)
    data = tmp_path / "unet.fp32.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    xs = _inputs("unet", 2, seed=3)
    import onnxruntime
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, dict(zip(["sample", "timestep", "fps", "context"], xs)))[0]
    want = _torch_reference("unet", unet, None, xs)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()

    folder = tmp_path / "set"
    shutil.copytree(engines, folder)
    shutil.copy(path, folder / "unet.fp32.onnx")
    shutil.copy(data, folder / "unet.fp32.onnx.data")
    m = json.loads((folder / "manifest.json").read_text())
    m["components"]["unet.fp32"].update(bytes=path.stat().st_size,
                                        external_data={"file": data.name, "bytes": data.stat().st_size})
    (folder / "manifest.json").write_text(json.dumps(m))
    assert open_engines(folder, "fp32")
    (folder / data.name).unlink()
    with pytest.raises(EnginesError, match="missing or has the wrong size"):
        open_engines(folder, "fp32")


def test_graph_traced_small_is_exact_at_a_larger_size(tmp_path, torch_models):
    """The exporter traces at 8x8 latents; the graph must compute the contract's larger size exactly."""
    unet, vae = torch_models
    import onnxruntime
    for comp, module in (("unet", ox.graph_module("unet", unet=unet)),
                         ("vae_decoder", ox.graph_module("vae_decoder", vae=vae)),
                         ("global_encoder", ox.graph_module("global_encoder", unet=unet))):
        path = ox.export_component(comp, module, 128, "fp32", tmp_path / f"{comp}.onnx", trace_size=64)
        ins = contract.component_io(comp, 128)[0]
        xs = [x.numpy() for x in ox.example_inputs(comp, 128, "fp32", 2, torch.Generator().manual_seed(5))]
        got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {s.name: x for s, x in zip(ins, xs)})[0]
        with torch.no_grad():
            want = module(*[torch.from_numpy(x) for x in xs]).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), comp
        # Exporting must leave the model in eval mode (BatchNorm running statistics).
        assert not any(m.training for m in module.modules()), comp


def test_fp16_attention_softmax_option(engines, torch_models, tmp_path, checkpoints):
    """--attention-softmax fp16: only the FP16 UNet is re-exported; its softmax is FP16 (the whole attention
    pattern in one precision, for TensorRT's fusion) and it still matches torch FP32 within the FP16 bound."""
    from export.engine_folder import export_engines

    def softmax_types(path):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        types = _tensor_types(model)
        return model, [types.get(n.input[0]) for n in model.graph.node if n.op_type == "Softmax"]

    assert set(softmax_types(engines / "unet.fp16.onnx")[1]) == {onnx.TensorProto.FLOAT}  # the default
    out = tmp_path / "engines"
    shutil.copytree(engines, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}
    manifest = export_engines(*checkpoints, out, ("fp32", "fp16"), SIZE,
                              attention_softmax="fp16")
    changed = sorted(n for n, t in stamps.items() if (out / n).stat().st_mtime_ns != t)
    assert changed == ["unet.fp16.onnx"]
    assert manifest["components"]["unet.fp16"]["options"]["attention_softmax"] == "fp16"
    model, softmax = softmax_types(out / "unet.fp16.onnx")
    assert softmax and set(softmax) == {onnx.TensorProto.FLOAT16}
    assert trt_problems(model) == []
    xs = _inputs("unet", 2, seed=11)
    want = _torch_reference("unet", *torch_models, xs)
    backend = OrtBackend(out, device="cpu", precision="fp16")
    ins = contract.component_io("unet", SIZE)[0]
    feeds = {s.name: x.astype(np.float32 if s.dtype == "float32" else np.float16) for s, x in zip(ins, xs)}
    got = backend.session("unet").run(None, feeds)[0].astype(np.float32)
    assert np.abs(got - want).max() <= FP16_BOUND * np.abs(want).max()
