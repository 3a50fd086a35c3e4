"""A work dir against other runs and hostile folders: one run at a time (a second one, resuming or restarting, is
refused with one line while the first finishes as if alone), --restart removes only the job's own files, a work
dir in the way of the input or an output is refused before anything is made, and neither symlinks, folders,
FIFOs, huge files nor unreadable ones in it lead to a traceback, a hang or a write outside it."""
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli
from test_workdir_hardening import JOB, clip, finished, outpainter, refused, resume, work  # noqa: F401 - fixtures

CLI = [sys.executable, "-m", "runtime.outpaint"]


def command(clip, out, engines, work, *extra):
    return [*CLI, clip, "-o", out, "--engines", engines, *JOB, "--work-dir", work, *extra]


def run(args, timeout=300):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def listing(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def test_a_second_run_on_a_work_dir_in_use_is_refused_and_the_first_finishes_alone(engines, clip, finished, tmp_path):
    out, other, work = tmp_path / "out.mp4", tmp_path / "other.mp4", tmp_path / "work"
    first = subprocess.Popen([*command(clip, out, engines, work, "--progress", "jsonl")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if '"stage": "sample"' in line:
                first.send_signal(signal.SIGSTOP)  # holding the work dir, mid-sampling
                break
        before = listing(work)
        for extra in ([], ["--restart"]):  # neither a resume nor a restart may touch it meanwhile
            res = run(command(clip, other, engines, work, "--quiet", *extra))
            line = one_error_line(res)
            assert res.returncode == 2 and f"work dir {work} is in use by another run" in line, line
        assert listing(work) == before and not other.exists()
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert np.array_equal(media.decode(out)[0], finished[0]) and not work.exists()


def test_the_same_folder_opened_twice_in_one_process_is_refused_too(tmp_path):
    from runtime.plan import official_plan
    from runtime.workdir import LATENT_FIELDS, Expected, WorkDir, WorkDirError
    job = {"format": 1, "input": {"bytes": 1, "sha256": "0" * 64}, "stream": 0, "frames": 20, "engines": {},
           "settings": {**dict.fromkeys(LATENT_FIELDS), "batch_windows": 1}}
    expected = Expected.of(official_plan(20), 20, 8)
    wd = WorkDir.open(tmp_path / "w", job, expected=expected)
    with pytest.raises(WorkDirError, match="in use by another run"):
        WorkDir.open(tmp_path / "w", job, expected=expected)
    wd.close()
    WorkDir.open(tmp_path / "w", job, restart=True, expected=expected).clear()
    assert not (tmp_path / "w").exists()


USER_FILES = {"state.json": '{"windows_done": 3}', "job.json": '{"format": 1, "name": "my job"}',
              "batch-2024.npz": "slides", "prepared-slides.npz": "talk", "draft.partial": "half a letter",
              "notes.txt": "keep me", "lock": "my lock"}


def test_restart_on_a_folder_of_the_users_own_files_deletes_none(engines, clip, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in USER_FILES.items():
        (folder / name).write_text(text)
    res = run(command(clip, tmp_path / "out.mp4", engines, folder, "--restart", "--quiet"))
    assert res.returncode == 2 and "is not empty and holds no job" in one_error_line(res)
    assert {p.name: p.read_text() for p in folder.iterdir()} == USER_FILES and not (tmp_path / "out.mp4").exists()


def test_restart_removes_only_what_the_jobs_records_name(engines, clip, finished, tmp_path):
    work = tmp_path / "work"
    outpaint_cli(clip, tmp_path / "first.mp4", engines, *JOB, "--work-dir", work, "--keep-work-dir")
    theirs = {k: v for k, v in USER_FILES.items() if k not in ("state.json", "job.json", "lock")}
    for name, text in theirs.items():  # dropped into our work dir by its user
        (work / name).write_text(text)
    frames, summary = outpaint_cli(clip, tmp_path / "out.mp4", engines, *JOB, "--work-dir", work, "--restart")
    assert summary["resumed_windows"] == 0 and np.array_equal(frames, finished[0])
    assert {p.name: p.read_text() for p in work.iterdir()} == theirs  # the folder stays: it is not empty


@pytest.mark.parametrize("relation", ["is-the-output", "inside-the-output", "holds-the-output", "holds-the-input",
                                      "is-the-input", "a-symlink-to-the-outputs-folder"])
def test_a_work_dir_in_the_way_of_the_input_or_an_output_is_refused_before_anything_is_made(engines, clip, tmp_path,
                                                                                             relation):
    source = tmp_path / "in" / "clip.mp4"
    source.parent.mkdir()
    source.write_bytes(Path(clip).read_bytes())
    out = tmp_path / "out.mp4"
    work = {"is-the-output": out, "inside-the-output": out / "work", "holds-the-output": tmp_path,
            "holds-the-input": source.parent, "is-the-input": source, "a-symlink-to-the-outputs-folder":
            tmp_path / "alias"}[relation]
    if relation.startswith("a-symlink"):
        work.symlink_to(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = run([*command(source, out, engines, work), "--progress", "jsonl"])  # a progress event would be a 2nd line
    line = one_error_line(res)
    assert res.returncode == 2 and f"work dir {work}" in line and "name a folder of its own" in line, line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_the_api_refuses_a_work_dir_that_is_the_output_too(outpainter, clip, tmp_path):
    from runtime.workdir import WorkDirError
    with pytest.raises(WorkDirError, match="is the output"):
        outpainter.outpaint_file(clip, tmp_path / "out.mp4", steps=3, work_dir=tmp_path / "out.mp4")
    assert not list(tmp_path.iterdir())


def _link(work, name):
    (work / name).unlink()
    (work / name).symlink_to(work.parent / "outside" / name)


def _folder(work, name):
    (work / name).unlink()
    (work / name).mkdir()


def _sparse(work, name, size, record=False):
    with open(work / name, "wb") as f:
        f.truncate(size)
    if record:
        state = json.loads((work / "state.json").read_text())
        state["batches"][0]["bytes"] = size
        (work / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("tamper,words", [
    (lambda w: _link(w, "batch-000001.npz"), ["batch-000001.npz is a symlink"]),
    (lambda w: _link(w, "state.json"), ["state.json is a symlink"]),
    (lambda w: _link(w, "job.json"), ["job.json is a symlink"]),
    (lambda w: _folder(w, "batch-000001.npz"), ["batch-000001.npz is not a file this runtime wrote"]),
    (lambda w: _folder(w, "state.json"), ["state.json is not a file this runtime wrote"]),
    (lambda w: _sparse(w, "state.json", 2 ** 31), ["state.json is not a file this runtime wrote (2147483648 bytes)"]),
    (lambda w: _sparse(w, "batch-000001.npz", 2 ** 33, record=True), ["more than this job's arrays take"]),
])
def test_links_folders_and_huge_files_in_a_work_dir_are_refused(outpainter, clip, work, tamper, words):
    tamper(work)
    refused(outpainter, clip, work, "damaged work dir", *words)


@pytest.mark.parametrize("tamper,why", [(lambda w: _folder(w, "lock"), "cannot be used (Is a directory)"),
                                        (lambda w: _link(w, "lock"), "is a symlink")])
def test_a_lock_file_replaced_says_to_remove_it(outpainter, clip, work, tamper, why):
    tamper(work)
    refused(outpainter, clip, work, f"its lock file {why}; remove it or name another folder")


def test_a_work_dir_that_is_a_symlink_is_refused(outpainter, clip, work):
    from runtime.workdir import WorkDirError
    alias = work.parent / "alias"
    alias.symlink_to(work)
    with pytest.raises(WorkDirError, match=f"work dir {alias} is a symlink; name the folder itself"):
        resume(outpainter, clip, alias)
    assert not (work.parent / "out.mp4").exists()


def test_restart_says_what_to_do_with_a_folder_in_place_of_a_record(outpainter, clip, work):
    from runtime.workdir import WorkDirError
    _folder(work, "state.json")
    with pytest.raises(WorkDirError, match="its state.json is a folder, not a file of ours; remove it"):
        resume(outpainter, clip, work, restart=True)


def test_a_fifo_in_place_of_the_state_is_refused_not_waited_on(engines, clip, work):
    (work / "state.json").unlink()
    os.mkfifo(work / "state.json")
    res = run(command(clip, work.parent / "out.mp4", engines, work, "--quiet"), timeout=120)
    assert res.returncode == 2 and "state.json is not a file this runtime wrote" in one_error_line(res)


def test_temporary_names_planted_as_links_are_never_written_through(outpainter, clip, finished, work):
    victim = work.parent / "victim.txt"
    victim.write_text("precious")
    for name in ("state.json", "batch-000002.npz"):  # the names this process would write under
        (work / f".{name}.{os.getpid()}.partial").symlink_to(victim)
    frames, summary = resume(outpainter, clip, work)
    assert np.array_equal(frames, finished[0]) and summary["windows_sampled"] == 1
    assert victim.read_text() == "precious"


PERMISSIONS = """
import json, os, sys
from m3ddm.errors import exit_code
from runtime.plan import official_plan
from runtime.workdir import Expected, WorkDir
work, case = sys.argv[1:]
job = json.load(open(work + "/job.json"))
if os.getuid() == 0:  # root reads everything: drop to nobody, once the interpreter (under /root) has started
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    wd = WorkDir.open(work, job, expected=Expected.of(official_plan(job["frames"]), job["frames"], 8))
    wd.finished() if case == "unreadable-batch" else wd.save_batch({}, 2)
    print("no error")
except Exception as exc:
    print(type(exc).__name__, exit_code(exc), exc)
"""


@pytest.mark.parametrize("case", ["unreadable-batch", "read-only-folder"])
def test_unreadable_files_and_read_only_folders_are_one_line_exit_2(finished, case):
    """As an ordinary user (root reads everything: the test then drops to nobody, on a copy it owns)."""
    import shutil
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        work = shutil.copytree(finished[1], base / "work")
        root = os.getuid() == 0
        if root:
            for p in [work, *work.iterdir()]:
                os.chown(p, 65534, 65534)
        os.chmod(work / "batch-000001.npz", 0) if case == "unreadable-batch" else os.chmod(work, 0o555)
        res = subprocess.run([sys.executable, "-c", PERMISSIONS, str(work), case], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        words = ("batch-000001.npz cannot be used (Permission denied)" if case == "unreadable-batch" else
                 "cannot write state.json (Permission denied)")
        assert res.stdout.startswith("WorkDirError 2 ") and words in res.stdout, res.stdout + res.stderr
    finally:
        os.chmod(base / "work", 0o755)
        shutil.rmtree(base)
