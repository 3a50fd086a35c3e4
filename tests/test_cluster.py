"""Scale-out on a real local Ray cluster (2 CPUs, ``ray_cluster``), never mocked: many videos with
`python -m runtime.batch` (a broken one failing alone, a second run skipping, a killed batch completing
when run again) and one video over several workers (`runtime.outpaint --workers`), each against the
one-process command's frames."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")

# At the default (lossy) encoding: an actor that encodes several videos writes the command line's bytes
# (tests/test_same_bytes.py), so its decoded frames are the command line's.
RUN = ("--steps", "2", "--threads", "1")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch-in")
    for i, name in enumerate(("clip0", "clip1", "lock")):  # lock: a work dir's name where the batch lock once was
        media.write(folder / f"{name}.mp4", media.scene(30, 96, 54, seed=40 + i), fps=24)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return folder


@pytest.fixture(scope="module")
def references(engines, clips, tmp_path_factory):
    """The outpaint command's frames of each good clip, one process, no Ray."""
    out = tmp_path_factory.mktemp("batch-ref")
    return {p.stem: outpaint_cli(p, out / p.name, engines, *RUN)[0] for p in sorted(clips.glob("*.mp4"))
            if p.stem != "broken"}


def batch_cmd(inputs, out_dir, engines, address, *args):
    return [sys.executable, "-m", "runtime.batch", *map(str, inputs), "--out-dir", str(out_dir), "--engines",
            str(engines), "--address", address, *RUN, *map(str, args), "--quiet"]


def batch(*args, **kw):
    return subprocess.run(batch_cmd(*args, **kw), cwd=ROOT, capture_output=True, text=True, timeout=600)


def report(out_dir) -> dict:
    lines = [json.loads(l) for l in (out_dir / "report.jsonl").read_text().splitlines()]
    return {r["input"].rsplit("/", 1)[-1]: r for r in lines}


def test_a_batch_gives_the_command_lines_outputs_a_broken_file_fails_alone_and_a_rerun_skips(
        engines, clips, references, ray_cluster, tmp_path):
    out = tmp_path / "out"
    res = batch([clips], out, engines, ray_cluster, "--workers", "2")
    assert res.returncode == 1, res.stderr  # one video failed
    lines = report(out)
    assert sorted(lines) == ["broken.mp4", "clip0.mp4", "clip1.mp4", "lock.mp4"]
    broken = lines.pop("broken.mp4")
    assert broken["status"] == "failed" and broken["outputs"] == {} and "broken.mp4" in broken["error"]
    assert "\n" not in broken["error"]
    for name, line in lines.items():
        assert line["status"] == "succeeded" and line["frames"] == 30 and line["seconds"] > 0 and line["error"] is None
        assert line["outputs"] == {"9x16": str(out / name)}
        assert np.array_equal(media.decode(out / name)[0], references[name[:-4]]), name
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert not [p for p in out.iterdir() if "partial" in p.name]
    assert not list((out / ".work").iterdir())  # work dirs removed on success

    again = batch([clips / "clip0.mp4", clips / "clip1.mp4", clips / "lock.mp4", clips / "broken.mp4"], out,
                  engines, ray_cluster, "--workers", "2")
    assert again.returncode == 1, again.stderr
    lines = report(out)
    assert {n: l["status"] for n, l in lines.items()} == {"clip0.mp4": "skipped", "clip1.mp4": "skipped",
                                                         "lock.mp4": "skipped", "broken.mp4": "failed"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamps  # nothing sampled again


# Slow (make test-cluster): the same resume is held there on several nodes with the head killed
# (test_cluster_nodes.py); the default suite's time goes to what nothing else holds.
@pytest.mark.slow
def test_a_killed_batch_completes_when_run_again(engines, clips, references, ray_cluster, tmp_path):
    out = tmp_path / "out"
    inputs = [clips / "clip0.mp4", clips / "clip1.mp4"]
    proc = subprocess.Popen(batch_cmd(inputs, out, engines, ray_cluster, "--workers", "1", "--batch-windows", "1",
                                      "--steps", "12"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list(out.glob(".work/*/batch-*.npz")):  # a window of the first video checkpointed
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "clip1.mp4").exists()
    time.sleep(2)  # Ray stops the dead driver's actors

    res = batch(inputs, out, engines, ray_cluster, "--workers", "1", "--batch-windows", "1", "--steps", "12")
    assert res.returncode == 0, res.stderr
    lines = report(out)
    assert {n: l["status"] for n, l in lines.items()} in (
        {"clip0.mp4": "succeeded", "clip1.mp4": "succeeded"}, {"clip0.mp4": "skipped", "clip1.mp4": "succeeded"})
    assert sum(l.get("resumed_windows", 0) for l in lines.values()) >= 1  # the stopped video went on, not afresh
    for name in ("clip0", "clip1"):
        want = outpaint_cli(clips / f"{name}.mp4", tmp_path / f"{name}-ref.mp4", engines, *RUN, "--steps", "12")[0]
        assert np.array_equal(media.decode(out / f"{name}.mp4")[0], want), name
    assert not [p for p in out.iterdir() if "partial" in p.name]


def test_batch_refuses_bad_arguments_in_one_line(engines, clips, tmp_path):
    res = batch([tmp_path / "missing.mp4"], tmp_path / "out", engines, "local")
    assert "no such file" in one_error_line(res) and res.returncode == 2
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clip0.mp4").write_bytes((clips / "clip0.mp4").read_bytes())
    res = batch([clips / "clip0.mp4", tmp_path / "a" / "clip0.mp4"], tmp_path / "out", engines, "local")
    assert "rename one" in one_error_line(res) and res.returncode == 2
    res = batch([clips / "clip0.mp4"], tmp_path / "out", engines, "local", "--workers", "0")
    assert "--workers" in one_error_line(res) and res.returncode == 2
    res = batch([clips / "clip0.mp4"], tmp_path / "out", tmp_path / "no-engines", "local")
    assert "engines" in one_error_line(res) and res.returncode == 3
    res = batch([clips / "clip0.mp4"], clips / "clip1.mp4", engines, "local")
    assert "is a file, not a folder" in one_error_line(res) and res.returncode == 2


def test_one_video_over_two_workers_equals_one_process(engines, ray_cluster, tmp_path):
    clip = tmp_path / "long.mp4"
    media.write(clip, media.scene(100, 96, 54, seed=44), fps=24)
    for windows in ("1",):  # other batch sizes: benchmarks/cluster.py measures them
        alone, summary = outpaint_cli(clip, tmp_path / f"alone{windows}.mp4", engines, *RUN,
                                      "--batch-windows", windows)
        spread, spread_summary = outpaint_cli(clip, tmp_path / f"spread{windows}.mp4", engines, *RUN,
                                              "--batch-windows", windows, "--workers", "2",
                                              "--address", ray_cluster)
        assert spread_summary["windows"] == summary["windows"] == 10
        assert np.array_equal(spread, alone), f"--batch-windows {windows}"


def test_a_worker_remembers_its_newest_cancelled_runs_only():
    """Window-pool runs are cancelled on every worker and never ended there: the record is bounded, the oldest
    forgotten first, a file job forgotten when its call ends, and cancels from two threads never collide."""
    import threading

    from runtime.cluster import CancelledJobs, _JobToken
    jobs = CancelledJobs(kept=3)
    token = _JobToken(jobs, "a")
    for job in "abc":
        jobs.add(job)
    assert token.is_set() and len(jobs) == 3
    jobs.add("a")  # cancelled again: the newest now
    jobs.add("d")
    assert "a" in jobs and "b" not in jobs and "c" in jobs and "d" in jobs and len(jobs) == 3
    jobs.discard("a")
    assert not token.is_set() and len(jobs) == 2

    many = CancelledJobs(kept=50)
    threads = [threading.Thread(target=lambda k=k: [many.add(f"{k}-{i}") for i in range(2000)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(many) == 50 and all(job.split("-")[0] in "0123" for job in many.jobs)


def test_batch_reads_no_playlist_or_script_and_its_quiet_is_silent(engines, ray_cluster, tmp_path):
    """A playlist and an ffconcat script (named .mp4) fail alone, in the opener's line, with no output; the
    clip beside them is outpainted from its own frames; and --quiet means nothing on stdout or stderr, Ray's
    own lines included (a note per actor, Ray Data's progress-bar warning)."""
    (tmp_path / "in").mkdir()
    media.reading_traps(tmp_path / "in")
    inputs = [tmp_path / "in" / name for name in ("sub/play.m3u8", "list.mp4", "clip.mp4")]
    out = tmp_path / "out"
    res = batch(inputs, out, engines, ray_cluster, "--workers", "1")
    assert res.returncode == 1, res.stderr
    assert res.stdout == "" and res.stderr == "", (res.stdout, res.stderr)
    lines = report(out)
    for name in ("play.m3u8", "list.mp4"):
        assert lines[name]["status"] == "failed" and "not a media file" in lines[name]["error"], lines[name]
    assert lines["clip.mp4"]["status"] == "succeeded"
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip.mp4"]
    assert not media.shows_secret(media.decode(out / "clip.mp4")[0])


def test_batch_never_writes_over_its_inputs(engines, clips, tmp_path):
    """Refused before anything is skipped or written (exit 2, one line), the inputs' bytes unchanged: the
    inputs' own folder as --out-dir, a report naming an input, and an output of one video named as another."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "a_1x1.mp4"):
        (folder / name).write_bytes((clips / "clip0.mp4").read_bytes())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    cases = [([folder / "a.mp4"], folder, ()),
             ([folder / "a.mp4"], tmp_path / "out", ("--report", folder / "a.mp4")),
             ([folder / "a.mp4", folder / "a_1x1.mp4"], folder, ("--ratio", "9:16,1:1"))]
    for inputs, out_dir, args in cases:
        res = batch(inputs, out_dir, engines, "local", *args)
        assert "an input of this batch" in one_error_line(res) and res.returncode == 2
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        assert not (out_dir / "report.jsonl").exists()


@pytest.mark.parametrize("command", ["batch", "outpaint"])
def test_a_cluster_that_does_not_answer_is_one_line_in_seconds(engines, clips, tmp_path, command):
    """Nothing listens at 127.0.0.1:1: Ray alone retries for 14 minutes, logging some 60 lines."""
    cmd = batch_cmd([clips / "clip0.mp4"], tmp_path / "out", engines, "127.0.0.1:1") if command == "batch" else \
        [sys.executable, "-m", "runtime.outpaint", clips / "clip0.mp4", "-o", tmp_path / "out.mp4", "--engines",
         engines, *RUN, "--workers", "2", "--address", "127.0.0.1:1"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "127.0.0.1:1" in one_error_line(res) and res.returncode == 3
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "out.mp4").exists() and not list((tmp_path / "out").glob("*.mp4"))


def token_env(tmp_path, **env):
    """The environment of a driver on another machine: its own home (no ~/.ray/auth_token unless written),
    Ray's auth variables only as given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**clean, "HOME": str(home), **env}


@pytest.mark.parametrize("case", ["no token here", "another token", "auth off here"])
def test_a_token_auth_mismatch_is_one_line_saying_which_side_wants_a_token(engines, clips, ray_cluster, tmp_path,
                                                                           case):
    """The cluster uses Ray's token auth (``ray_cluster``); a driver without its token used to join, then see
    every actor die unexplained (``SystemException``)."""
    env = token_env(tmp_path, **{"no token here": {}, "another token": {"RAY_AUTH_TOKEN": "0" * 32},
                                 "auth off here": {"RAY_AUTH_MODE": "disabled"}}[case])
    t0 = time.monotonic()
    res = subprocess.run(batch_cmd([clips / "clip0.mp4"], tmp_path / "out", engines, ray_cluster), cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=env)
    line = one_error_line(res)
    assert res.returncode == 3 and time.monotonic() - t0 < 30
    assert f"the Ray cluster at {ray_cluster} wants a token" in line or "refuses this machine's token" in line
    assert {"no token here": "this machine has none", "another token": "(from RAY_AUTH_TOKEN)",
            "auth off here": "RAY_AUTH_MODE=disabled here"}[case] in line
    assert not list((tmp_path / "out").glob("*.mp4"))
