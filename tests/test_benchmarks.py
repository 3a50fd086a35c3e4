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


def test_gpu_check_dry_run_writes_every_field(tmp_path, checkpoints, torch_only_engines):
    """`python -m benchmarks.gpu_check --dry-run`: the GPU sequence on the CPU at tiny size, as a GPU machine without
    PyAV runs it (a stand-in `av` that cannot be imported): every step done, every field written. Its work folder
    starts as a second run finds it (the checkpoints the dry run makes, seed 0, and their `--torch-only` programs),
    so the export step checks them and finds them up to date instead of exporting again (tests/test_torch_backend.py
    tests the export)."""
    import json
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for name, source in (("unet", checkpoints[0]), ("vae", checkpoints[1])):
        shutil.copytree(source, tmp_path / "work" / "checkpoints" / name)
    shutil.copytree(torch_only_engines, tmp_path / "work" / "engines")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "av.py").write_text("raise ImportError('PyAV is not on the GPU machines')\n")
    out = tmp_path / "check.json"
    env = {**__import__("os").environ, "PYTHONPATH": f"{fake}:{root}"}
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--dry-run", "--work",
                          str(tmp_path / "work")], cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    steps = json.loads(out.read_text())["steps"]
    assert set(steps) == {"machine", "doctor", "pytest_gpu", "weights", "export", "unet_call", "video", "memory",
                          "official"}
    assert not [k for k, v in steps.items() if "error" in v]
    assert set(steps["export"]["programs"]) == {f"{c}.fp32" for c in ("global_encoder", "unet", "vae_encoder",
                                                                       "vae_decoder")}
    assert steps["machine"]["torch"] and steps["pytest_gpu"]["counts"].get("skipped", 0) > 0
    assert steps["unet_call"]["w1"]["rows"] == 3 and steps["unet_call"]["w2"]["rows"] == 6
    assert all(steps["unet_call"][w]["ms"] > 0 for w in ("w1", "w2"))
    video = steps["video"]
    assert video["ours_s"] > 0 and video["baseline_s"] > 0
    assert abs(video["speedup"] - video["baseline_s"] / video["ours_s"]) < 0.05
    assert set(steps["memory"]["max_windows"]) == {"16", "24", "40", "80"}
    assert "video 20 frames S=64" in res.stdout and "UNet call 6 rows" in res.stdout
    assert "--official" in steps["official"]["skipped"]
    assert re.search(r"official code itself +left out: no --official", res.stdout), res.stdout


def test_the_official_step_says_why_it_is_left_out_or_cannot_run(tmp_path):
    """gpu_check's last step, the official code itself: without a checkout, or without the time, it is left out
    saying why; a folder that is not the official checkout, or no libraries to run it with, is one line."""
    import time

    from benchmarks import gpu_check, official_run
    plan = gpu_check.Plan.make(dry_run=True)
    assert "no --official CHECKOUT" in gpu_check.official_code(plan, tmp_path, None, float("inf"), {})["skipped"]
    checkout = tmp_path / "official"
    (checkout / official_run.OFFICIAL_MODEL).parent.mkdir(parents=True)
    (checkout / official_run.OFFICIAL_MODEL).write_text("")
    late = gpu_check.official_code(plan, tmp_path, checkout, time.monotonic() + 10, {"baseline_s": 60.0})
    assert "would not end within --budget" in late["skipped"]
    with pytest.raises(official_run.OfficialError, match="is not a checkout of the official repository"):
        gpu_check.official_code(plan, tmp_path, tmp_path / "elsewhere", float("inf"), {"baseline_s": 1.0})
    with pytest.raises(official_run.OfficialError, match=r"no wheels in .*make gpu-wheels"):
        official_run.libraries(tmp_path / "libs", tmp_path / "wheels")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "broken-1.0-py3-none-any.whl").write_text("not a zip")
    with pytest.raises(official_run.OfficialError, match=r"installing .* failed"):
        official_run.libraries(tmp_path / "libs", tmp_path / "wheels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official", "wheels"]  # no half-made libraries folder


def _imports_reachable(entries: list[str], root) -> dict[str, set[str]]:
    """{third-party top-level module: the project modules that import it} over every import statement (module
    level or in a function) of ``entries`` and of the project modules they reach, transitively."""
    import ast
    import sys
    ours = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    ours |= {p.stem for p in (root / "tests").glob("*.py")}
    seen: set[str] = set()
    found: dict[str, set[str]] = {}
    todo = list(entries)
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        paths = [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts) / "__init__.py",
                 root / "tests" / f"{parts[0]}.py"]
        path = next((p for p in paths if p.is_file()), None)
        if mod in seen or path is None:
            continue
        seen.add(mod)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top in ours:
                    todo.append(name)
                elif top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(mod)
    return found


def test_gpu_check_reaches_no_import_beyond_the_gpu_image_and_its_wheels():
    """Every module the GPU sequence can import (gpu_check, the export it runs, the doctor, `pytest -m gpu`'s
    files) is in the GPU machines' image, among the wheels it says to bring, or one it does without: the first
    GPU run must not end on an import (it once would have: the export's onnx_graphsurgeon was on no list)."""
    from pathlib import Path

    from benchmarks import gpu_check
    root = Path(gpu_check.__file__).resolve().parents[1]
    entries = ["benchmarks.gpu_check", "export.__main__", "runtime.doctor", "conftest",
               *(Path(f).stem for f in gpu_check.GPU_TESTS)]
    reached = _imports_reachable(entries, root)
    assert {"torch", "diffusers", "onnx_graphsurgeon", "av"} <= set(reached)  # the walk sees what it should
    known = set(gpu_check.IMAGE) | set(gpu_check.CARRY) | set(gpu_check.WITHOUT)
    assert {m: sorted(by) for m, by in reached.items() if m not in known} == {}


def test_gpu_check_stops_at_once_naming_the_wheels_to_bring(tmp_path, monkeypatch, capsys):
    import json
    import re
    from importlib.util import find_spec

    from benchmarks import gpu_check
    assert gpu_check.carry_pins() == ["diffusers==0.42.1", "onnx-graphsurgeon==0.6.1"]  # pyproject's export pins
    monkeypatch.setattr(gpu_check, "find_spec", lambda m: None if m == "onnx_graphsurgeon" else find_spec(m))
    monkeypatch.setattr(gpu_check, "run_all", lambda *a: pytest.fail("the sequence ran"))
    out = tmp_path / "check.json"
    assert gpu_check.main(["--out", str(out), "--dry-run"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == json.loads(out.read_text())["steps"]["needs"]["error"].join(["error: ", ""])
    assert "lacks onnx-graphsurgeon==0.6.1" in line
    assert "pip download --no-deps -d wheels onnx-graphsurgeon==0.6.1" in line and "--no-deps wheels/*.whl" in line
    # The table of a run whose steps failed lists the failures (an error record is no figure).
    steps = {"machine": {"torch": "2.11"}, "unet_call": {"error": "OutOfMemoryError: x", "where": ["a", "b"]},
             "video": {"error": "EnginesError: y"}}
    text = gpu_check.table({"steps": steps})
    assert re.search(r"error in unet_call +OutOfMemoryError: x", text) and "error in video" in text


def test_the_fixtures_of_the_gpu_tests_work_as_gpu_check_runs_pytest():
    """gpu_check runs `pytest -m gpu` without pytest's cache, which the checkpoints fixture kept its folder in: on a
    GPU every torch test would have failed in its fixtures (here they skip before them). A test that needs that
    fixture, run with gpu_check's options, passes."""
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks import gpu_check
    root = Path(gpu_check.__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "pytest", *gpu_check.PYTEST_OPTIONS,
                          "tests/test_checkpoint.py::test_load_in_fp16"], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-2000:]


def test_the_video_repeats_only_while_another_ends_within_the_budget():
    from benchmarks.gpu_check import another_repeat
    assert another_repeat(0, 2, 0.0, deadline=10.0, now=50.0)  # the first always runs: no figure without it
    assert another_repeat(1, 2, 30.0, deadline=100.0, now=60.0)  # 60 + 36 <= 100
    assert not another_repeat(1, 2, 40.0, deadline=100.0, now=60.0)  # 60 + 48 > 100
    assert not another_repeat(2, 2, 1.0, deadline=1e9, now=0.0)  # as many as planned
    assert not another_repeat(1, 2, 30.0, deadline=100.0, now=60.0, keep_s=10.0)  # 60 + 36 + 10 > 100: the
    #                                                                               official code's time kept
