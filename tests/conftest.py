"""Fixtures. Tests that need only *some* tiny model use checkpoints the project makes itself (``checkpoints``,
``tiny_models``, ``engines``: seeded, the shared fixtures' architecture, cached under the pytest cache); only the
comparisons with what the official code computes use ../shared (``shared``, ``tiny_unet``, ``golden_engines``),
and skip, saying why, where it is absent."""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.env import shared_dir  # noqa: E402 - after the path is set

SHARED = shared_dir(ROOT)


def _need(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs ../shared/{rel} (the project's shared data, present in CI); not found at {path}")
    return path


def outpaint_cli(clip, out, engines, *args, timeout=300):
    """`python -m runtime.outpaint clip -o out --engines engines *args --json --quiet`, which must succeed:
    (the output's decoded frames, the run's summary)."""
    import json
    import subprocess

    import media
    res = subprocess.run([sys.executable, "-m", "runtime.outpaint", clip, "-o", out, "--engines", engines, *args,
                          "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return media.decode(out)[0], json.loads(res.stdout)


def one_error_line(res):
    """A failed command's stderr: exactly one line, an `error:` one, no traceback; returns it."""
    assert res.returncode != 0
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.fixture(scope="session")
def shared():
    """Path to a file or folder under ../shared; skips the test, saying why, when it is absent."""
    return _need


@pytest.fixture(scope="session")
def tiny_unet():
    """The official-format fixture UNet, the one the golden data was computed with."""
    from export.model import load_unet
    return load_unet(_need("fixtures/tiny_unet"))


@pytest.fixture(scope="session")
def tiny_vae():
    """The official-format fixture VAE, the one the golden data was computed with."""
    from export.model import load_vae
    return load_vae(_need("fixtures/tiny_vae"))


def _maker_key() -> str:
    """Changes when the code that makes or loads the checkpoints does: the cache is then made anew."""
    files = [ROOT / "export" / "demo.py", *sorted((ROOT / "export" / "model").glob("*.py"))]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]


@pytest.fixture(scope="session")
def checkpoints(request, tmp_path_factory) -> tuple[Path, Path]:
    """(UNet folder, VAE folder): a tiny random M3DDM UNet (fp16 safetensors) and SD1.5-structured VAE in the
    official formats, widths 32,64,64,64 as the shared fixtures, made by the project (export.demo, seed 0). Kept in
    pytest's cache between runs; made for this run alone under ``-p no:cacheprovider`` (as gpu_check runs pytest)."""
    from export.demo import make_checkpoints
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("m3ddm-checkpoints") if cache is not None else tmp_path_factory.mktemp("m3ddm-checkpoints")
    folder = Path(root) / _maker_key()
    if not (folder / "done").is_file():  # made whole, then renamed: an interrupted run never leaves half
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        make_checkpoints(tmp, seed=0)
        (tmp / "done").write_text("")
        tmp.rename(folder)
    return folder / "unet", folder / "vae"


@pytest.fixture(scope="session")
def tiny_models(checkpoints):
    """(unet, vae) torch models of ``checkpoints``."""
    from export.model import load_unet, load_vae
    return load_unet(checkpoints[0]), load_vae(checkpoints[1])


@pytest.fixture(scope="session")
def tiny_config():
    """The fixtures' architecture (widths 32, 64, 64, 64), for models the tests make themselves."""
    from export.model import UNetConfig
    return UNetConfig(block_out_channels=(32, 64, 64, 64))


@pytest.fixture(scope="session")
def scene_clip(tmp_path_factory):
    """``scene_clip(frames, width=96, height=54, seed=11, fps=24, audio=False)``: the path of an H.264 clip of
    ``media.scene``, written once per session for each set of arguments (the test modules' clips)."""
    import media
    made: dict = {}

    def make(frames: int, width: int = 96, height: int = 54, seed: int = 11, fps: int = 24, audio: bool = False):
        key = (frames, width, height, seed, fps, audio)
        if key not in made:
            path = tmp_path_factory.mktemp("clip") / "clip.mp4"
            media.write(path, media.scene(frames, width, height, seed=seed), fps=fps, audio=audio)
            made[key] = path
        return made[key]
    return make


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_engines(out, *extra, unet, vae, size=64):
    """`make engines` on the given checkpoints into ``out``; outside the project's venv (a GPU machine's own python,
    where make's setup step cannot install anything) the `python -m export` it runs, with the same arguments."""
    import subprocess
    cmd = ["make", "-s", "engines", f"UNET={unet}", f"VAE={vae}", f"ENGINES={out}", f"SIZE={size}", *extra]
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        flags = {"PRECISION": "--precision", "PLANS": "--plans", "WINDOWS": "--windows"}
        cmd = [sys.executable, "-m", "export", "--unet", str(unet), "--vae", str(vae), "--out", str(out), "--size",
               str(size), "--precision", "both", "--plans", "auto"]
        for item in extra:
            key, _, value = item.partition("=")
            cmd += value.split() if key == "EXPORT_ARGS" else [flags[key], value]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def engines(tmp_path_factory, checkpoints):
    """An engines folder (FP32 and FP16 ONNX) made by `make engines` from ``checkpoints``, S = 64."""
    out = tmp_path_factory.mktemp("engines")
    res = make_engines(out, unet=checkpoints[0], vae=checkpoints[1])
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def golden_engines(tmp_path_factory):
    """An engines folder (FP32 ONNX) of the shared fixtures, whose official results are the golden data."""
    unet, vae = _need("fixtures/tiny_unet"), _need("fixtures/tiny_vae")
    out = tmp_path_factory.mktemp("golden_engines")
    res = make_engines(out, "PRECISION=fp32", unet=unet, vae=vae)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


RAY_HEAD = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 2**20)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the tests close it
ray.shutdown()
"""


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster, 2 CPUs, started by ``ray.init`` in a process of its own (the test process never
    joins it), with Ray's token auth; yields its address for ``--address`` / ``--ray``."""
    yield from ray_head()


def ray_head(env=None):
    """``ray_cluster``'s generator, its processes (the workers too) in the environment ``env`` (default: this one)."""
    import subprocess
    pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
    # Token auth, as every new local Ray cluster has it (with the token in ~/.ray/auth_token, made if missing):
    # the commands join it with that token; tests/test_cluster_nodes.py has clusters without.
    head = subprocess.Popen([sys.executable, "-c", RAY_HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**(env or os.environ), "RAY_AUTH_MODE": "token"})
    address = head.stdout.readline().strip()
    assert address, "the local Ray cluster did not start"
    try:
        yield address
    finally:
        head.stdin.close()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()


def export_torch_programs(folder, checkpoints, *args, flag="--torch"):
    """`python -m export --torch` (or ``flag`` --torch-only) into ``folder`` (an engines folder of ``checkpoints``,
    S = 64): its programs."""
    import subprocess
    cmd = [sys.executable, "-m", "export", "--unet", str(checkpoints[0]), "--vae", str(checkpoints[1]), "--out",
           str(folder), "--size", "64", "--plans", "no", flag, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def unet_inputs(engines_set, rows: int, seed: int = 0) -> tuple:
    """Random host inputs of one UNet call of ``rows`` rows for the engines folder ``engines_set`` (an EngineSet)."""
    rng = np.random.default_rng(seed)
    lat, tokens = engines_set.latent_size, engines_set.context_tokens
    return (rng.standard_normal((rows, 9, 16, lat, lat)).astype(np.float32),
            np.linspace(1, 961, rows).astype(np.float32), np.full(rows, 24, np.float32),
            rng.standard_normal((rows, tokens, 320)).astype(np.float32))


def with_torch_programs(tmp_path_factory, name: str, source, checkpoints, *args) -> Path:
    """A copy of the engines folder ``source`` with the programs `python -m export --torch *args` adds to it."""
    folder = tmp_path_factory.mktemp(name) / "engines"
    shutil.copytree(source, folder)
    res = export_torch_programs(folder, checkpoints, *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return folder


@pytest.fixture(scope="session")
def torch_only_engines(tmp_path_factory, checkpoints):
    """`python -m export --torch-only`: the FP32 PyTorch programs of ``checkpoints``, window counts 1 and 2, and no
    ONNX graph."""
    folder = tmp_path_factory.mktemp("torch_only") / "engines"
    res = export_torch_programs(folder, checkpoints, "--precision", "fp32", "--windows", "1,2", flag="--torch-only")
    assert res.returncode == 0, res.stderr[-2000:]
    return folder


@pytest.fixture(scope="session")
def torch_engines(tmp_path_factory, engines, torch_only_engines):
    """A copy of ``engines`` with the FP32 PyTorch programs, window counts 1 and 2: the ``torch_only_engines``
    programs (the same checkpoints and options), as an export of the graphs into that folder leaves them, or as
    `python -m export --torch` makes them beside the graphs (test_torch_backend.py holds both: the fingerprints
    agree, and `--torch` over this folder finds nothing to export). Made by copying: the programs' export is the
    slow part, and once is enough."""
    folder = tmp_path_factory.mktemp("torch_engines") / "engines"
    shutil.copytree(engines, folder)
    records = json.loads((torch_only_engines / "manifest.json").read_text())["programs"]
    for record in records.values():
        for entry in [record["weights"], *record["graphs"]]:
            shutil.copy2(torch_only_engines / entry["file"], folder / entry["file"])
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "programs": records}, indent=1))
    return folder
