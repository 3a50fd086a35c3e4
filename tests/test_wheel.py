"""The package as a user installs it: an sdist of the source tree, the wheel built from that sdist, installed into
an empty folder, and its console scripts (m3ddm-outpaint, -serve, -batch, -export, -doctor) run from outside the
source tree with an environment that can import only the install: the doctor's report, an export of tiny
checkpoints and an outpaint of a clip with it, the service's page over HTTP, every command's --help."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import media
from conftest import ROOT, one_error_line

SCRIPTS = ("m3ddm-outpaint", "m3ddm-serve", "m3ddm-batch", "m3ddm-export", "m3ddm-doctor")
PACKAGES = ("m3ddm", "kernels", "runtime", "export", "benchmarks")
# What a checkout holds that no distribution should (the .gitignore's build outputs and caches).
NOT_SOURCE_AT_TOP = {".git", ".venv", "build", "engines", ".whl", ".gl", ".ruff_cache", ".mypy_cache"}


def _not_source(folder, names):
    top = NOT_SOURCE_AT_TOP if Path(folder) == ROOT else ()
    return [n for n in names
            if n in top or n in ("__pycache__", ".pytest_cache") or n.endswith((".pyc", ".egg-info"))]


def _ok(res):
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    return res


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel): the sdist of a clean copy of the source tree (a build writes beside the sources, and a
    stale build/ would leak into the wheel), and the wheel pip builds from that sdist, offline."""
    tmp = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, tmp / "src", ignore=_not_source)
    _ok(subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                        "print(build_meta.build_sdist(sys.argv[1]))", str(tmp)], cwd=tmp / "src",
                       capture_output=True, text=True, timeout=120))
    sdist, = tmp.glob("*.tar.gz")
    _ok(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp), str(sdist)], cwd=tmp, capture_output=True, text=True, timeout=300))
    wheel, = tmp.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory):
    """(bin folder, environment, working folder): the wheel installed into an empty folder; the environment
    finds only the install (it comes first on the path, before the venv's editable checkout, and the working
    folder is an empty one outside the source tree)."""
    tmp = tmp_path_factory.mktemp("installed")
    target = tmp / "site"
    _ok(subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                        str(target), str(dist[1])], capture_output=True, text=True, timeout=300))
    (tmp / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3DDM_")}
    env.update(PYTHONPATH=str(target), XDG_CACHE_HOME=str(tmp / "cache"), PYTHONDONTWRITEBYTECODE="1")
    found = _ok(subprocess.run([sys.executable, "-c", "import m3ddm, kernels, runtime, export, benchmarks; print("
                                "'\\n'.join(m.__file__ for m in (m3ddm, kernels, runtime, export, benchmarks)))"],
                               cwd=tmp / "work", env=env, capture_output=True, text=True))
    for path in found.stdout.split():
        assert Path(path).is_relative_to(target), f"{path} is imported from outside the install"
    return target / "bin", env, tmp / "work"


def command(installed, script, *args, timeout=300):
    bin_dir, env, work = installed
    return subprocess.run([str(bin_dir / script), *map(str, args)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


def package_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for pkg in PACKAGES for p in (root / pkg).rglob("*")
            if p.is_file() and p.suffix != ".pyc" and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_source_file_of_the_runtime(dist):
    """Every module and every file read at run time (kernel sources, the service's page and assets) is in the
    wheel; only the benchmarks' recorded results stay in the source tree."""
    with zipfile.ZipFile(dist[1]) as z:
        in_wheel = {n for n in z.namelist() if n.split("/")[0] in PACKAGES}
        scripts = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    source = package_files(ROOT)
    assert {"runtime/service/page.html", "kernels/sampler_step.cu", "kernels/half_bits.cuh"} <= in_wheel
    left_out = source - in_wheel
    assert all(n.startswith("benchmarks/") and not n.endswith(".py") for n in left_out), sorted(left_out)
    assert in_wheel <= source, sorted(in_wheel - source)
    for script in SCRIPTS:
        assert f"{script} = " in scripts


def test_the_sdist_holds_what_the_tests_and_the_wheel_need(dist):
    with tarfile.open(dist[0]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    tests = {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}
    assert tests <= names, sorted(tests - names)
    assert {"Makefile", "README.md", "pyproject.toml", "docs/algorithm.md"} <= names
    assert {n for n in package_files(ROOT) if not n.startswith("benchmarks/")} <= names


def test_every_command_is_installed_with_its_help(installed):
    for script in SCRIPTS:
        res = _ok(command(installed, script, "--help", timeout=120))
        assert res.stdout.startswith(f"usage: {script} "), res.stdout[:200]
    # errors name the command the user typed
    assert one_error_line(command(installed, "m3ddm-outpaint", "--no-such-option")).startswith(
        "m3ddm-outpaint: error: ")


def test_the_installed_doctor_reports(installed):
    """Exit 0 only where the GPU fast path works (1 elsewhere), a report either way; the NVRTC kernels compile
    from the installed sources (into an empty cache) wherever cuda-python is installed."""
    res = command(installed, "m3ddm-doctor", "--json", timeout=300)
    report = json.loads(res.stdout)
    assert res.returncode == (0 if report["fast_path"] else 1), res.stderr
    if report["cuda_python"]:
        assert report["kernels"].startswith("compiled"), report["kernels"]
    text = command(installed, "m3ddm-doctor", timeout=300)
    assert text.returncode == res.returncode and "fast path: " in text.stdout and "Traceback" not in text.stderr


@pytest.fixture(scope="module")
def installed_engines(installed, checkpoints, tmp_path_factory):
    """An engines folder (FP32, S = 64) exported by the installed m3ddm-export from the tiny checkpoints."""
    pytest.importorskip("torch", reason="the export extra is not installed (pip install '.[export]')")
    out = tmp_path_factory.mktemp("wheel_engines")
    _ok(command(installed, "m3ddm-export", "--unet", checkpoints[0], "--vae", checkpoints[1], "--out", out,
                "--precision", "fp32", "--size", 64, "--plans", "no"))
    assert (out / "manifest.json").is_file() and (out / "unet.fp32.onnx").is_file()
    return out


def test_the_installed_commands_export_and_outpaint(installed, installed_engines, tmp_path):
    frames = media.scene(10, 96, 54)
    clip, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    media.write(clip, frames)
    res = _ok(command(installed, "m3ddm-outpaint", clip, "-o", out, "--ratio", "9:16", "--engines",
                      installed_engines, "--backend", "ort", "--steps", 2, "--threads", 1, "--json", "--quiet"))
    summary = json.loads(res.stdout)
    video, source = media.decode(out)[0], media.decode(clip)[0]
    assert summary["frames"] == len(video) == len(frames)
    assert summary["output_size"] == [video.shape[2], video.shape[1]]
    assert abs(video.shape[2] / video.shape[1] - 9 / 16) < 0.02, video.shape
    top = (video.shape[1] - source.shape[1]) // 2  # the source at its own resolution, centred in the new border
    inside = video[:, top:top + source.shape[1], :source.shape[2]].astype(int)
    assert abs(inside - source).mean() < 10  # two lossy encodes; two rows off is 39
    assert "Traceback" not in res.stderr


def test_the_installed_service_serves_its_page(installed, installed_engines, tmp_path):
    """The page at / is the one in the source tree; /docs and whatever local files the two pages load answer."""
    pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
    from test_service_http import server
    bin_dir, env, work = installed
    with server(installed_engines, tmp_path / "data", command=[bin_dir / "m3ddm-serve"], cwd=work, env=env) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == (ROOT / "runtime" / "service" / "page.html").read_text()
        docs = client.get("/docs")
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
        for asset in re.findall(r'(?:src|href)="(/[^"/][^"]*)"', page.text + docs.text):  # served from the install
            assert client.get(asset).status_code == 200, asset
