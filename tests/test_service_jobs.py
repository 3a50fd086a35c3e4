"""The service's job model (runtime/service/jobs.py) on real engines and a real SQLite file: jobs in order,
the CLI's output, bad options refused before the queue, a bad video failing alone, delete, drain, and a
worker killed mid-job whose job resumes in the next process with the same output."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import media
from conftest import ROOT, outpaint_cli
from m3ddm.errors import InputError
from runtime import Outpainter
from runtime.service.jobs import JobQueue, QueueFull, settings_from_form

FORM = {"ratio": "9:16", "steps": "3"}


# The service test modules import these fixtures, and pytest makes an imported fixture anew in every module
# (even a session-scoped one): made once per session here instead, the same clip and the same CLI run.
_ONCE: dict = {}


def _once(key, make):
    if key not in _ONCE:
        _ONCE[key] = make()
    return _ONCE[key]


@pytest.fixture(scope="module")
def clip(scene_clip):
    """40 frames: three windows (the CLI's output is compared with this one's)."""
    return scene_clip(40, seed=21)


@pytest.fixture(scope="module")
def short_clip(scene_clip):
    """8 frames, one window: for jobs that only need to run (succeed, fail, be deleted), not a given output."""
    return scene_clip(8, seed=21)


@pytest.fixture(scope="module")
def cli_output(engines, clip, tmp_path_factory):
    return _once(("cli_output", str(engines), str(clip)), lambda: outpaint_cli(
        clip, tmp_path_factory.mktemp("cli") / "cli.mp4", engines, "--steps", "3", "--threads", "1")[0])


@pytest.fixture(scope="module")
def outpainter(engines):
    return Outpainter(engines, backend="ort", threads=1)


def upload(clip, tmp_path, name="clip.mp4"):
    copy = tmp_path / f"upload-{time.monotonic_ns()}"
    shutil.copy(clip, copy)
    return copy, name


def wait(queue, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = queue.store.get(job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_jobs_run_in_order_and_give_the_command_lines_output(outpainter, clip, short_clip, cli_output, tmp_path):
    queue = JobQueue(outpainter, tmp_path / "data").start()
    try:
        a = queue.submit(*upload(clip, tmp_path), FORM)
        b = queue.submit(*upload(short_clip, tmp_path), {**FORM, "ratio": "1:1,9:16"})
        assert a["status"] == "queued" and a["id"] != b["id"] and len(a["id"]) >= 20
        done_a, done_b = wait(queue, a["id"]), wait(queue, b["id"])
        assert done_a["status"] == done_b["status"] == "succeeded"
        assert done_a["finished"] <= done_b["started"]  # one at a time, in submission order
        assert np.array_equal(media.decode(queue.result(a["id"], "9x16"))[0], cli_output)
        assert set(done_b["outputs"]) == {"1x1", "9x16"} and done_a["progress"]["fraction"] == 1.0
        assert queue.result(a["id"], "1x1") is None and queue.result("nope", "9x16") is None
        assert [j["id"] for j in queue.store.list()] == [b["id"], a["id"]]  # newest first
        assert not (queue.folder(a["id"]) / "work").exists()  # checkpoints go with success
    finally:
        queue.drain()


@pytest.mark.parametrize("form,words", [
    ({"ratio": "wide"}, "W:H"), ({"steps": "0"}, "steps"), ({"guidance": "nan,1"}, "guidance"),
    ({"seed": "x"}, "seed"), ({"sampler": "euler"}, "sampler"), ({"pad": "1,2"}, "pad"),
    ({"path": "/etc/passwd"}, "unknown field"), ({"steps": ""}, "steps"), ({"ratio": "9:16,1e9:1"}, "ratio"),
])
def test_a_bad_option_never_enters_the_queue(outpainter, clip, tmp_path, form, words):
    queue = JobQueue(outpainter, tmp_path / "data")
    with pytest.raises(InputError, match=words):
        queue.submit(*upload(clip, tmp_path), form)
    assert queue.store.list() == [] and list((tmp_path / "data" / "jobs").iterdir()) == []


def test_the_queue_has_a_limit_and_a_bad_video_fails_alone(outpainter, short_clip, tmp_path):
    queue = JobQueue(outpainter, tmp_path / "data", max_queue=2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    first = queue.submit(bad, "bad.mp4", FORM)
    second = queue.submit(*upload(short_clip, tmp_path), FORM)
    with pytest.raises(QueueFull, match="2 jobs are already waiting"):
        queue.submit(*upload(short_clip, tmp_path), FORM)
    queue.start()
    try:
        failed, ok = wait(queue, first["id"]), wait(queue, second["id"])
        assert failed["status"] == "failed" and "\n" not in failed["error"] and "bad.mp4" not in failed["error"]
        assert failed["error"].startswith("cannot open") or "decod" in failed["error"], failed["error"]
        assert not queue.folder(first["id"]).exists()  # nothing of a failed job is left but its record
        assert ok["status"] == "succeeded"
    finally:
        queue.drain()


def test_delete_stops_a_running_job_within_a_step_and_removes_a_queued_one_at_once(outpainter, short_clip,
                                                                                     tmp_path):
    queue = JobQueue(outpainter, tmp_path / "data").start()
    try:
        running = queue.submit(*upload(short_clip, tmp_path), {**FORM, "steps": "50"})
        waiting = queue.submit(*upload(short_clip, tmp_path), FORM)
        while (queue.store.get(running["id"])["progress"] or {}).get("fraction", 0) == 0:
            time.sleep(0.05)
        t0 = time.monotonic()
        assert queue.delete(running["id"])["status"] == "running"
        assert queue.delete(waiting["id"])["status"] == "queued"
        assert queue.store.get(running["id"]) is None and queue.store.get(waiting["id"]) is None
        assert queue.delete(running["id"]) is None and queue.delete("nope") is None  # a second call finds nothing
        assert not queue.folder(waiting["id"]).exists()
        while queue.folder(running["id"]).exists():  # its worker stops it and removes its files
            assert time.monotonic() - t0 < 5
            time.sleep(0.05)
        after = queue.submit(*upload(short_clip, tmp_path), FORM)
        assert wait(queue, after["id"])["status"] == "succeeded"  # and goes on
        assert queue.delete(after["id"])["status"] == "succeeded" and not queue.folder(after["id"]).exists()
    finally:
        queue.drain()


WORKER = """
import sys, time
from runtime import Outpainter
from runtime.service.jobs import JobQueue
queue = JobQueue(Outpainter(sys.argv[1], backend="ort", threads=1), sys.argv[2]).start()
if len(sys.argv) > 3:
    job = queue.submit(__import__("pathlib").Path(sys.argv[3]), "clip.mp4", {"steps": "3", "ratio": "9:16"})
    print(job["id"], flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_worker_killed_mid_job_resumes_it_in_the_next_process(engines, clip, cli_output, tmp_path):
    data = tmp_path / "data"
    copy, _ = upload(clip, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(engines), str(data), str(copy)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    job_id = proc.stdout.readline().strip()
    db = data / "jobs.sqlite3"
    from runtime.service.jobs import JobStore
    store = JobStore(db)
    t0 = time.monotonic()
    while not (store.get(job_id)["progress"] or {}).get("windows_done"):  # a batch is checkpointed
        assert time.monotonic() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.get(job_id)["status"] == "running"
    state = json.loads((data / "jobs" / job_id / "work" / "state.json").read_text())
    assert state["windows_done"] >= 1
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(engines), str(data)], cwd=ROOT)
    try:
        t0 = time.monotonic()
        while store.get(job_id)["status"] != "succeeded":
            assert time.monotonic() - t0 < 300 and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    out = data / "jobs" / job_id / store.get(job_id)["outputs"]["9x16"]
    assert np.array_equal(media.decode(out)[0], cli_output)


def test_drain_checkpoints_the_running_job_and_expire_removes_old_ones(outpainter, clip, tmp_path):
    queue = JobQueue(outpainter, tmp_path / "data").start()
    # three windows of 6 steps: once the first is checkpointed, ten steps or more are left to drain in
    job = queue.submit(*upload(clip, tmp_path), {**FORM, "steps": "6"})
    while (queue.store.get(job["id"])["progress"] or {}).get("windows_done", 0) < 1:
        time.sleep(0.05)
    queue.drain()
    with pytest.raises(InputError, match="shutting down"):
        queue.submit(*upload(clip, tmp_path), FORM)
    assert queue.store.get(job["id"])["status"] == "queued"
    assert (queue.folder(job["id"]) / "work" / "state.json").is_file()
    again = JobQueue(outpainter, tmp_path / "data")
    again.store.finish(job["id"], "failed", error="x")
    assert again.expire(keep_hours=1) == 0 and again.expire(keep_hours=0) == 1
    assert again.store.get(job["id"]) is None and not again.folder(job["id"]).exists()


def test_form_fields_become_settings():
    s = settings_from_form({"ratio": "9:16,1:1", "steps": "20", "seed": "3", "sampler": "ddim",
                            "strides": "30,15,1", "guidance": "2.5,4"})
    assert (s.ratios, s.steps, s.seed, s.sampler, s.strides, s.guidance) == \
        (("9:16", "1:1"), 20, 3, "ddim", (30, 15, 1), (2.5, 4.0))
    assert settings_from_form({"pad": "0,10,0,10"}).labels == ["pad"]
