"""A tampered work dir is refused with one line (exit 2, "damaged work dir ... pass --restart"), never resumed
from and never followed outside its folder: state.json and job.json held to the exact records this version
writes, every array to the shape, dtype and finiteness the job implies, whatever its checksum says."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli

JOB = ["--steps", "3", "--batch-windows", "1", "--threads", "1"]  # 20 frames: two windows, a batch each


@pytest.fixture(scope="module")
def clip(scene_clip):
    return scene_clip(20)


@pytest.fixture(scope="module")
def finished(engines, clip, tmp_path_factory):
    """A finished run's frames and the work dir it kept: prepared latents and both batches."""
    work = tmp_path_factory.mktemp("finished") / "work"
    frames, summary = outpaint_cli(clip, work.parent / "out.mp4", engines, *JOB, "--work-dir", work, "--keep-work-dir")
    assert summary["windows_sampled"] == 2 and (work / "batch-000002.npz").is_file()
    return frames, work


@pytest.fixture(scope="module")
def outpainter(engines):
    from runtime import Outpainter
    with Outpainter(engines, backend="ort", threads=1) as op:
        yield op


@pytest.fixture
def work(finished, tmp_path):
    """The finished work dir as a run killed after its first batch left it (the second batch's file written,
    not yet recorded), to tamper with; beside it ``outside/``, a copy of its files."""
    shutil.copytree(finished[1], tmp_path / "outside")
    work = shutil.copytree(finished[1], tmp_path / "work")
    state = json.loads((work / "state.json").read_text())
    (work / "state.json").write_text(json.dumps({**state, "batches": state["batches"][:1], "windows_done": 1}))
    return work


def second_record(work):
    return json.loads((work.parent / "outside" / "state.json").read_text())["batches"][1]


def resume(outpainter, clip, work, **options):
    out = work.parent / "out.mp4"
    summary = outpainter.outpaint_file(clip, out, steps=3, batch_windows=1, work_dir=work, **options)
    return media.decode(out)[0], summary


def refused(outpainter, clip, work, *words):
    """The resume fails with one WorkDirError line holding ``words``, and leaves no output."""
    from runtime.workdir import WorkDirError
    with pytest.raises(WorkDirError) as info:
        resume(outpainter, clip, work)
    line = str(info.value)
    assert len(line.splitlines()) == 1 and all(w in line for w in words), line
    assert not (work.parent / "out.mp4").exists()
    return line


def edit_state(work, change):
    state = json.loads((work / "state.json").read_text())
    new = change(state, work)
    (work / "state.json").write_text(new if isinstance(new, str) else json.dumps(new))


def recorded(work, name):
    """Update the record of the data file ``name`` to its new size and checksum: what a hostile user can do."""
    import hashlib
    data = (work / name).read_bytes()

    def update(state, _):
        for record in [state["prepared"], *state["batches"]]:
            if record["file"] == name:
                record.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        return state
    edit_state(work, update)


def test_an_untampered_work_dir_resumes_to_the_same_frames(outpainter, clip, finished, work):
    frames, summary = resume(outpainter, clip, work)
    assert np.array_equal(frames, finished[0]) and summary["windows_sampled"] == 1 and summary["prepare_resumed"]
    assert not work.exists()  # removed on success, lock and all


def _set(path, value):
    def change(state, work):
        *parents, last = path
        node = state
        for key in parents:
            node = node[key]
        node[last] = value(state, work) if callable(value) else value
        return state
    return change


STATES = {
    "batch-absolute-path": _set(["batches", 0, "file"], lambda s, w: str(w.parent / "outside" / "batch-000001.npz")),
    "batch-dotdot": _set(["batches", 0, "file"], "../outside/batch-000001.npz"),
    "prepared-absolute-path": _set(["prepared", "file"],
                                   lambda s, w: str(w.parent / "outside" / "prepared-latents.npz")),
    "batches-a-string": _set(["batches"], "batch-000001.npz"),
    "batches-a-number": _set(["batches"], 3),
    "record-without-sha256": lambda s, w: (s["batches"][0].pop("sha256"), s)[1],
    "bytes-a-float": _set(["batches", 0, "bytes"], 17024.0),
    "windows-done-huge": _set(["windows_done"], 10 ** 30),
    "windows-done-1e400": lambda s, w: json.dumps(s).replace('"windows_done": 1', '"windows_done": 1e400'),
    "windows-done-nan": lambda s, w: json.dumps(s).replace('"windows_done": 1', '"windows_done": NaN'),
    "windows-done-a-string": _set(["windows_done"], "2"),
    "windows-done-true": _set(["windows_done"], True),
    "windows-done-negative": _set(["windows_done"], -1),
    "windows-done-beyond-the-records": _set(["windows_done"], 2),
    "batches-out-of-order": lambda s, w: {**s, "batches": [second_record(w), *s["batches"]], "windows_done": 2},
    "batch-recorded-twice": lambda s, w: {**s, "batches": [s["batches"][0]] * 2, "windows_done": 2},
    "batch-of-a-later-window": lambda s, w: {**s, "batches": [second_record(w)]},
    "prepared-a-list": lambda s, w: {**s, "prepared": [s["prepared"]]},
    "prepared-names-a-batch-file": lambda s, w: {**s, "prepared": s["batches"][0]},
    "format-missing": lambda s, w: {k: v for k, v in s.items() if k != "format"},
    "a-list": lambda s, w: [s],
    "nested-too-deep": lambda s, w: "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("name", sorted(STATES))
def test_a_tampered_state_is_a_damaged_work_dir(outpainter, clip, work, name):
    outside = {p.name: p.read_bytes() for p in (work.parent / "outside").iterdir()}
    edit_state(work, STATES[name])
    refused(outpainter, clip, work, "damaged work dir", "pass --restart")
    assert {p.name: p.read_bytes() for p in (work.parent / "outside").iterdir()} == outside


def _poke(value):
    def change(a):
        a = a.copy()
        a.flat[len(a.flat) // 2] = value
        return a
    return change


def _changed(key, how):
    return lambda arrays: {**arrays, key: how(arrays[key])}


BATCH, PREPARED = "batch-000001.npz", "prepared-latents.npz"
ARRAYS = {  # (file, how its arrays change, how it is saved): each with its record updated
    "nan-latents": (BATCH, _changed("latents", _poke(np.nan)), np.savez),
    "inf-inits": (PREPARED, _changed("inits", _poke(np.inf)), np.savez),
    "nan-context": (PREPARED, _changed("context", _poke(np.nan)), np.savez),
    "wrong-shape": (BATCH, _changed("latents", lambda x: x[..., :-1]), np.savez),
    "float64": (BATCH, _changed("latents", lambda x: x.astype(np.float64)), np.savez),
    "frames-shifted": (BATCH, _changed("frames", lambda x: x + 1), np.savez),
    "frames-out-of-range": (BATCH, _changed("frames", _poke(10 ** 9)), np.savez),
    "an-extra-array": (BATCH, lambda a: {**a, "more": np.zeros(3)}, np.savez),
    "compressed": (BATCH, lambda a: a, np.savez_compressed),
    "object-array": (BATCH, _changed("latents", lambda x: np.array(list(x), dtype=object)),
                     lambda f, **a: np.savez(f, allow_pickle=True, **a)),
    "canvases-shorter-than-inits": (PREPARED, _changed("canvases", lambda x: x[:-1]), np.savez),
    "context-wrong-shape": (PREPARED, _changed("context", lambda x: x[:, :-1]), np.savez),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_arrays_of_another_shape_dtype_or_not_finite_are_refused_whatever_their_checksum(outpainter, clip, work, name):
    file, change, save = ARRAYS[name]
    with np.load(work / file) as data:
        arrays = {k: data[k] for k in data.files}
    save(work / file, **change(arrays))
    recorded(work, file)
    assert file in refused(outpainter, clip, work, "damaged work dir", "pass --restart")


def test_a_data_file_that_is_no_npz_is_refused(outpainter, clip, work):
    (work / BATCH).write_bytes(b"\x93NUMPY not an npz at all")
    recorded(work, BATCH)
    refused(outpainter, clip, work, "damaged work dir", "batch-000001.npz", "not an array file")


@pytest.mark.parametrize("change,words", [
    (lambda job: {**job, "format": 2}, ["format 2", "another version", "pass --restart"]),
    (lambda job: {**job, "settings": "steps=3"}, ["damaged work dir", "job.json", "pass --restart"]),
    (lambda job: {k: v for k, v in job.items() if k != "engines"}, ["damaged work dir", "job.json"]),
])
def test_a_job_record_of_another_version_or_malformed_is_refused(outpainter, clip, work, change, words):
    job = json.loads((work / "job.json").read_text())
    (work / "job.json").write_text(json.dumps(change(job)))
    refused(outpainter, clip, work, *words)


@pytest.mark.parametrize("name", ["batch-absolute-path", "windows-done-1e400", "batches-a-string"])
def test_the_command_says_damaged_in_one_line_and_exits_2(engines, clip, work, name):
    edit_state(work, STATES[name])
    out = work.parent / "out.mp4"
    res = subprocess.run([sys.executable, "-m", "runtime.outpaint", clip, "-o", out, "--engines", engines, *JOB,
                          "--work-dir", work, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_error_line(res)
    assert res.returncode == 2 and "damaged work dir" in line and "--restart" in line, line
    assert not out.exists()
    if name != "batch-absolute-path":
        return
    fresh = subprocess.run([sys.executable, "-m", "runtime.outpaint", clip, "-o", out, "--engines", engines, *JOB,
                            "--work-dir", work, "--quiet", "--restart"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert fresh.returncode == 0 and out.exists() and not work.exists(), fresh.stderr
