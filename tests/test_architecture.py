"""The shape of the code: one-way layers, one error vocabulary, one CLI wrapper, atomic files, environment switches."""
import ast
import io
import logging
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from m3ddm import errors
from m3ddm.files import atomic_write, replacing


def _imports(folder: str) -> dict:
    """{file: {top-level package of every import in it, at any depth}} for the project's files under ``folder``."""
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


TORCH_BACKEND = ("runtime/engines/pytorch.py", "runtime/engines/torch_sampling.py", "runtime/engines/select.py")


@pytest.mark.parametrize("folder,forbidden", [
    ("m3ddm", {"kernels", "runtime", "export", "benchmarks"}),  # the base: imports nothing of ours
    ("kernels", {"runtime", "export", "benchmarks"}),  # CUDA sources and their compile only
    ("runtime", {"export", "benchmarks", "torch"}),  # the product: no torch (but its torch backend), no export side
    ("export/model", {"runtime", "benchmarks"}),  # the model knows nothing of the runtime
])
def test_layers_import_only_downwards(folder, forbidden):
    found = _imports(folder)
    for path in TORCH_BACKEND:  # imported only when `--backend torch` (or auto on a CUDA GPU) chooses it
        if path in found:
            found[path] -= {"torch"}
    wrong = {f: sorted(names & forbidden) for f, names in found.items() if names & forbidden}
    assert not wrong, f"{folder}/ reaches up or sideways: {wrong}"


def _runtime_graph() -> dict:
    """{module: {runtime modules it imports, at any depth, inside functions too}} for every module of runtime/.
    ``from runtime import x`` names the module runtime.x where there is one; a package's own __init__ is not an
    edge of every module below it (Python runs it first, but it imports nothing of theirs)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "runtime").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
                edges |= subs or {node.module}
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict) -> list | None:
    """One import cycle of ``graph``, as a list of modules, or None."""
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_runtime_has_no_import_cycle():
    graph = _runtime_graph()
    assert "runtime.cluster" not in graph["runtime.api"] and "runtime.api" in graph["runtime.cluster"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # it finds one


MAX_FILE_LINES, MAX_FUNCTION_LINES = 320, 80


def test_runtime_files_and_functions_stay_small():
    """Past these sizes a module holds two things and a function does three: split them (CONTRIBUTING.md)."""
    big_files, big_functions = {}, {}
    for path in (ROOT / "runtime").rglob("*.py"):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if len(text.splitlines()) > MAX_FILE_LINES:
            big_files[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    big_functions[f"{rel}:{node.name}"] = lines
    assert not big_files, f"files over {MAX_FILE_LINES} lines: {big_files}"
    assert not big_functions, f"functions over {MAX_FUNCTION_LINES} lines: {big_functions}"


def test_the_sampler_is_built_once_per_run(monkeypatch):
    """Pipeline.run builds the run's sampler and hands it on: to the plan loop and every batch of every level."""
    from runtime import samplers
    from runtime.geometry import letterbox_geometry
    from runtime.pipeline import Pipeline
    from runtime.plan import official_plan
    from runtime.settings import Settings
    from test_settings import Arithmetic
    frames = np.random.default_rng(0).integers(0, 255, (40, 18, 32, 3), np.uint8)
    s = Settings(steps=3, strides=(5, 1), batch_windows=1)
    s.check()
    built, make = [], samplers.make_sampler
    monkeypatch.setattr(samplers, "make_sampler", lambda *a: built.append(a) or make(*a))
    given = lambda wanted: ((i, frames[i]) for i in range(40))  # noqa: E731
    Pipeline(Arithmetic()).run(given, lambda start, chunk: None, s, count=40,
                               box=letterbox_geometry(18, 32, ["9:16"], 64), fps=24.0)
    assert len(official_plan(40, (5, 1))[1]) > 1 and built == [("pndm", 3)]


def test_first_line_never_raises():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    assert errors.first_line(ValueError("")) == "ValueError"
    assert errors.first_line(ValueError("\n\n  second\nthird")) == "second"
    assert errors.first_line(Broken()) == "Broken"


def test_every_domain_error_carries_its_exit_code():
    from export.model import CheckpointError
    from kernels import CudaError, KernelError
    from runtime.engines import EnginesError
    from runtime.engines.trt_build import BuildError
    from runtime.storage import StorageError, TransferError
    from runtime.video import VideoError
    for cls, code in [(VideoError, 2), (CheckpointError, 2), (errors.InputError, 2), (EnginesError, 3),
                      (CudaError, 3), (KernelError, 3), (BuildError, 3), (StorageError, 2), (TransferError, 1)]:
        assert issubclass(cls, errors.M3DDMError) and errors.exit_code(cls("x")) == code, cls
    assert issubclass(VideoError, ValueError)  # callers that catch ValueError keep working
    assert errors.exit_code(ValueError("x")) == 2 and errors.exit_code(KeyError("x")) == 1


@pytest.mark.parametrize("exc,code,words", [
    (errors.InputError("bad ratio\nmore"), 2, "error: bad ratio"),
    (errors.EnginesError("no plans"), 3, "error: no plans"),
    (KeyboardInterrupt(), 130, "error: interrupted; no output was written"),
    (MemoryError(), 1, "error: out of memory; smaller"),
    (KeyError("k"), 1, "error: unexpected KeyError: 'k' (M3DDM_DEBUG=1 shows the traceback)"),
])
def test_cli_run_turns_failures_into_one_line_and_a_code(exc, code, words, capsys, monkeypatch):
    from runtime import cli
    monkeypatch.delenv("M3DDM_DEBUG", raising=False)

    def body():
        raise exc

    assert cli.run(body, out_of_memory="smaller") == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(words), err
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 4) == 4


def test_debug_shows_the_traceback_of_unexpected_errors(monkeypatch):
    from runtime import cli
    monkeypatch.setenv("M3DDM_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.run(lambda: {}["missing"])


def test_logging_progress_notes_and_quiet(monkeypatch):
    from runtime import cli
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    log = logging.getLogger("runtime.some_module")
    try:
        cli.setup_logging(out)
        log.info("step 1")
        log.warning("plans not used")
        assert out.getvalue() == "step 1\n" and err.getvalue() == "note: plans not used\n"
        cli.setup_logging(out, quiet=True)
        log.info("step 2")
        log.warning("hidden")
        assert out.getvalue() == "step 1\n" and err.getvalue() == "note: plans not used\n"
    finally:
        for name in cli.PACKAGES:
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(OSError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full (simulated)")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_environment_switches_are_read_when_asked(monkeypatch, tmp_path):
    from runtime import env
    monkeypatch.delenv(env.ENGINES, raising=False)
    assert env.engines_dir() == "engines"
    monkeypatch.setenv(env.ENGINES, str(tmp_path))
    assert env.engines_dir() == str(tmp_path)
    monkeypatch.setenv(env.DEVICE_LOOP, "0")
    assert not env.device_loop()
    monkeypatch.setenv(env.SHARED, str(tmp_path))
    assert env.shared_dir(ROOT) == tmp_path
    readme = (ROOT / "README.md").read_text()
    assert all(name in readme for name in (env.ENGINES, env.DEVICE_LOOP, env.DEBUG, env.SHARED))


def test_plan_builder_entry_point_is_thin_and_runs_without_torch():
    code = ("import sys, runtime.engines.trt_build, runtime.engines.selftest, runtime.engines.device_kernels, kernels\n"
            "print('torch' in sys.modules, 'export' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["False", "False"], res.stderr
    res = subprocess.run([sys.executable, "-m", "export.tensorrt_build", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--windows" in res.stdout


RAY_ABSENT = """
import sys
sys.modules["ray"] = None  # as on an install without the cluster extra
import runtime.api, runtime.outpaint, runtime.batch, runtime.serve
from runtime.outpaint import main
sys.exit(main(sys.argv[1:]))
"""


def test_ray_is_optional_and_its_absence_is_one_line(engines, tmp_path):
    """The runtime imports no Ray until scale-out is asked for; asked for without the extra, one line, exit 3."""
    import media
    code = ("import sys, runtime, runtime.api, runtime.outpaint, runtime.batch, runtime.serve\n"
            "print('ray' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["False"], res.stderr
    clip = tmp_path / "clip.mp4"
    media.write(clip, media.scene(4, 32, 18, seed=1), fps=24)
    res = subprocess.run([sys.executable, "-c", RAY_ABSENT, str(clip), "-o", str(tmp_path / "out.mp4"), "--engines",
                          str(engines), "--workers", "2", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3 and "pip install 'm3ddm-runtime[cluster]'" in res.stderr.strip(), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.mp4").exists()


STORAGE_LIBRARIES = {"fsspec", "s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "boto3"}


def test_object_storage_is_one_module_imported_for_a_url_only():
    """runtime/storage.py alone imports fsspec (the storage extra), and only when a URL is given: the runtime
    and its commands import none of it for local files."""
    wrong = {f: sorted(n & STORAGE_LIBRARIES) for f, n in _imports("runtime").items()
             if n & STORAGE_LIBRARIES and f != "runtime/storage.py"}
    assert not wrong, f"only runtime/storage.py may import the storage libraries: {wrong}"
    code = ("import sys, runtime.api, runtime.outpaint, runtime.batch, runtime.serve, runtime.storage\n"
            f"print(sorted(set(sys.modules) & set({sorted(STORAGE_LIBRARIES)})))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


ENGINES_MAY_IMPORT = ("runtime.engines", "runtime.samplers", "runtime.guidance")  # the device loop's numpy references


def test_engines_import_no_other_runtime_module():
    """runtime/engines/ sits on m3ddm/ and kernels/: the commands, the environment switches and the pipeline
    above it reach down into it, never the other way (a switch is read by the caller and passed in)."""
    wrong = []
    for path in sorted((ROOT / "runtime" / "engines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = path.relative_to(ROOT).parent.parts  # where a relative import starts from
                module = ".".join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ())) \
                    if node.level else node.module
                names = [f"{module}.{a.name}" for a in node.names] if module == "runtime" else [module]
            else:
                continue
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] == "runtime"
                      and not any(name == ok or name.startswith(ok + ".") for ok in ENGINES_MAY_IMPORT)]
    assert not wrong, f"runtime/engines/ reaches up into the runtime: {wrong}"
