"""Long jobs: a run killed at any point (SIGKILL, SIGINT, a cancel token) resumes from its work dir and ends
with the uninterrupted run's output, sampling only what was not finished; a work dir of another job, or a
damaged one, is refused; progress is one structured event stream."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli

CLI = [sys.executable, "-m", "runtime.outpaint"]
# 60 frames: levels of 1, 1 and 4 windows (strides 15,5,1), one window a batch: a checkpoint after each.
JOB = ["--steps", "3", "--batch-windows", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def clip(scene_clip):
    return scene_clip(60)


@pytest.fixture(scope="module")
def reference(engines, clip, tmp_path_factory):
    """The uninterrupted run, without a work dir: its decoded frames and summary."""
    return outpaint_cli(clip, tmp_path_factory.mktemp("ref") / "ref.mp4", engines, *JOB)


def run_until(cmd, stop, sig=signal.SIGKILL):
    """Run ``cmd`` with --progress jsonl; send ``sig`` at the first event ``stop(event)`` accepts.
    Returns (return code, the events seen, stderr's other lines)."""
    proc = subprocess.Popen([*cmd, "--progress", "jsonl"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    events, other = [], []
    for line in proc.stderr:
        if not line.startswith("{"):
            other.append(line.rstrip())
            continue
        events.append(json.loads(line))
        if stop(events[-1]):
            proc.send_signal(sig)
            break
    other += [l.rstrip() for l in proc.stderr if not l.startswith("{")]
    proc.wait(timeout=120)
    return proc.returncode, events, other


def windows_done(work):
    return json.loads((work / "state.json").read_text())["windows_done"]


@pytest.mark.parametrize("where,stop", [
    ("prepare", lambda e: e["stage"] == "prepare" and e["frames_done"] >= 16),
    ("after-first-level", lambda e: e["stage"] == "sample" and e["level"] == 1),
    ("mid-level", lambda e: e["stage"] == "sample" and e["level"] == 2 and e["windows_done"] >= 4),
    ("final-encode", lambda e: e["stage"] in ("decode", "finish")),
])
def test_a_killed_run_resumes_to_the_same_frames_sampling_only_what_was_left(engines, clip, reference, tmp_path,
                                                                              where, stop):
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    cmd = [*CLI, clip, "-o", out, "--engines", engines, *JOB, "--work-dir", work]
    code, events, _ = run_until(cmd, stop)
    assert code == -signal.SIGKILL and events and stop(events[-1])
    assert not out.exists()
    done = windows_done(work) if (work / "state.json").exists() else 0
    res = subprocess.run([*cmd, "--json", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    frames, (ref_frames, ref_summary) = media.decode(out)[0], reference
    assert np.array_equal(frames, ref_frames)  # bit-identical to the run that was never interrupted
    total = ref_summary["windows"]
    assert summary["resumed_windows"] == done and summary["windows_sampled"] == total - done
    expected = {"prepare": (0, False), "after-first-level": (1, True), "mid-level": (4, True),
                "final-encode": (total, True)}[where]
    assert (done, summary["prepare_resumed"]) == expected
    assert not work.exists()  # removed on success


def test_sigint_keeps_a_resumable_work_dir_and_says_how_to_resume(engines, clip, reference, tmp_path):
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    cmd = [*CLI, clip, "-o", out, "--engines", engines, *JOB, "--work-dir", work]
    code, events, other = run_until(cmd, lambda e: e["stage"] == "sample" and e["windows_done"] >= 2, signal.SIGINT)
    assert code == 130
    assert other == [f"error: interrupted by SIGINT; no output was written; {work} keeps {windows_done(work)} "
                     f"finished windows: run the same command again to resume"], other
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    res = subprocess.run([*cmd, "--json", "--quiet", "--keep-work-dir"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["resumed_windows"] >= 2 and work.is_dir()
    assert np.array_equal(media.decode(out)[0], reference[0])


def test_a_work_dir_of_another_job_or_a_damaged_one_is_refused(engines, clip, tmp_path):
    out, work = tmp_path / "out.mp4", tmp_path / "work"
    cmd = [*CLI, clip, "-o", out, "--engines", engines, *JOB, "--work-dir", work]
    code, _, _ = run_until(cmd, lambda e: e["stage"] == "sample" and e["windows_done"] >= 3)
    assert code == -signal.SIGKILL
    cmd.append("--quiet")
    other = subprocess.run([*CLI, clip, "-o", out, "--engines", engines, "--steps", "4", "--batch-windows", "1",
                            "--work-dir", work, "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_error_line(other)
    assert other.returncode == 2 and "belongs to another job (other settings: steps differ)" in line, line
    assert "--restart" in line

    batch = sorted(work.glob("batch-*.npz"))[-1]
    batch.write_bytes(batch.read_bytes()[:-100])  # truncated
    damaged = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_error_line(damaged)
    assert damaged.returncode == 2 and batch.name in line and "checksum" in line, line
    (work / "state.json").write_text('{"format": 1, "batch')
    damaged = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert damaged.returncode == 2 and "state.json is unreadable or truncated" in one_error_line(damaged)
    assert not out.exists()

    fresh = subprocess.run([*cmd, "--restart", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["resumed_windows"] == 0 and out.exists() and not work.exists()


def test_restart_never_deletes_what_is_not_the_jobs(engines, clip, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", engines, *JOB, "--quiet",
                          "--work-dir", folder, "--restart"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not empty and holds no job" in one_error_line(res)
    assert (folder / "notes.txt").read_text() == "keep me"


SERVICE_LIKE = """
import json, sys, threading
from m3ddm.errors import Cancelled
from runtime import Outpainter
engines, clip, out, again, work = sys.argv[1:]
op = Outpainter(engines, backend="ort", threads=1)
cancel = threading.Event()
options = dict(steps=3, batch_windows=1, work_dir=work)

def progress(event):
    if event["stage"] == "sample" and event["windows_done"] == 3 and event["step"] == 1:
        cancel.set()

try:
    op.outpaint_file(clip, out, progress=progress, cancel=cancel, **options)
    raise SystemExit("not cancelled")
except Cancelled:
    pass
state = json.load(open(work + "/state.json"))
summary = op.outpaint_file(clip, out, **options)
op.outpaint_file(clip, again, steps=3, batch_windows=1)
print(json.dumps({"done_at_cancel": state["windows_done"], **summary}))
"""


def test_a_cancelled_api_call_keeps_its_checkpoint_and_the_same_call_resumes(engines, clip, reference, tmp_path):
    """In one fresh process, as a service runs jobs: a call cancelled from its progress callback, the same call
    resuming from the work dir, then a fresh call; all three give the command line's frames, to the bit (the
    encoder's colour conversion once broke that after a cancel). A fresh process: the test suite's own process
    has run hundreds of other things. At the default lossy encoding: the same frames give the same bytes
    (tests/test_same_bytes.py)."""
    out, again, work = tmp_path / "out.mp4", tmp_path / "again.mp4", tmp_path / "work"
    res = subprocess.run([sys.executable, "-c", SERVICE_LIKE, str(engines), str(clip), str(out), str(again),
                          str(work)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["done_at_cancel"] == 3 and summary["resumed_windows"] == 3
    assert summary["windows_sampled"] == reference[1]["windows"] - 3
    assert np.array_equal(media.decode(out)[0], reference[0])
    assert again.read_bytes() == out.read_bytes()


def test_progress_is_one_event_stream_with_stages_and_an_eta(engines, clip, tmp_path):
    code, events, other = run_until([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", engines, *JOB],
                                    lambda e: False)
    assert code == 0 and not [l for l in other if l.startswith("error")]
    stages = [e["stage"] for e in events]
    assert stages[0] == "prepare" and "sample" in stages and stages[-1] == "finish"
    assert stages.index("prepared") < stages.index("sample")
    sample = [e for e in events if e["stage"] == "sample"]
    assert all(0 < e["fraction"] <= 1 and e["eta_s"] is not None and e["eta_s"] >= 0 for e in sample)
    assert [e["fraction"] for e in sample] == sorted(e["fraction"] for e in sample)
    assert sample[-1]["fraction"] == 1 and sample[-1]["windows"] == sample[-1]["windows_done"] + 1
