"""Several Ray nodes (tests/ray_nodes.py: ``ray.cluster_utils.Cluster``, a CPU-less head and 1-CPU worker
nodes, each its own raylet and object store) and the faults of a real cluster, each held to the product's
promises: the outputs are the one-process command's frames, nothing is sampled twice from scratch, nothing
partial is left. ``ray.cluster_utils.Cluster`` rather than ``ray start`` in network namespaces: it needs no
root and no veth set-up on a CI machine, and it is what Ray's own tests use for multi-node behaviour (node
removal kills the node's processes as a lost machine would); objects still cross nodes (each node has its own
object store), only over loopback.

The clusters here run WITHOUT token auth, and every driver has a stale ~/.ray/auth_token in its home (Ray
writes one on any local ``ray.init``): what once made every actor die unexplained. (The token-auth side:
tests/test_cluster.py, whose cluster uses it.) Marked slow (minutes): ``make test-cluster``."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line, outpaint_cli
from ray_nodes import Nodes

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
pytestmark = pytest.mark.slow

RUN = ("--steps", "12", "--threads", "1", "--batch-windows", "1")


@pytest.fixture
def nodes(tmp_path):
    started = []

    def start(workers: int = 2) -> Nodes:
        started.append(Nodes(tmp_path / f"cluster-home-{len(started)}", workers))
        return started[-1]
    yield start
    for n in started:
        n.close()


@pytest.fixture
def driver_env(tmp_path):
    """A driver's environment: its own home with a stale token in ~/.ray/auth_token, no RAY_AUTH_* set."""
    home = tmp_path / "driver-home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nodes-in")
    for i in range(4):
        media.write(folder / f"clip{i}.mp4", media.scene(30, 96, 54, seed=60 + i), fps=24)
    return folder


@pytest.fixture(scope="module")
def references(engines, clips, tmp_path_factory):
    """The outpaint command's frames of each clip: one process, no Ray."""
    out = tmp_path_factory.mktemp("nodes-ref")
    return {p.stem: outpaint_cli(p, out / p.name, engines, *RUN)[0] for p in sorted(clips.glob("*.mp4"))}


def batch_cmd(inputs, out_dir, engines, address, *args):
    return [sys.executable, "-m", "runtime.batch", *map(str, inputs), "--out-dir", str(out_dir), "--engines",
            str(engines), "--address", address, *RUN, *map(str, args), "--quiet"]


def report(out_dir) -> dict:
    lines = [json.loads(l) for l in (out_dir / "report.jsonl").read_text().splitlines()]
    return {Path(r["input"]).stem: r for r in lines}


def assert_outputs(out_dir, references, names=None):
    for name in names or references:
        assert np.array_equal(media.decode(out_dir / f"{name}.mp4")[0], references[name]), name
    assert not [p for p in out_dir.iterdir() if "partial" in p.name]


def wait_for(condition, proc, timeout=300, what="the condition"):
    t0 = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended first: {proc.communicate()[1][-3000:]}")
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def checkpointed(out_dir) -> set:
    """The videos with at least one sampled batch in their work dir."""
    return {p.parent.name for p in out_dir.glob(".work/*/batch-*.npz")}


def ray_processes(title: str) -> list[int]:
    """PIDs whose process title (Ray sets ``ray::Class.method`` while an actor runs a call) starts so."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(title):
                found.append(int(proc.name))
    return found


def test_a_node_lost_mid_batch_costs_only_its_windows_in_flight(engines, clips, references, nodes, driver_env,
                                                                 tmp_path):
    """4 clips over 2 workers, one on each node; a node removed (its raylet, store and workers killed) once
    both videos in flight have a checkpoint, a node added back: the batch finishes, exit 0, the CLI's frames,
    the lost video resumed from its work dir, the report saying which video was started again."""
    cluster = nodes()
    out = tmp_path / "out"
    proc = subprocess.Popen(batch_cmd(sorted(clips.glob("*.mp4")), out, engines, cluster.address, "--workers", "2"),
                            cwd=ROOT, env=driver_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(checkpointed(out)) >= 2, proc, what="two videos checkpointed")
    assert cluster.send("remove 1") == {"removed": 1}
    time.sleep(3)  # a while with one node short: the lost worker's video waits, the other goes on
    cluster.send("add")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = report(out)
    assert {n: l["status"] for n, l in lines.items()} == {f"clip{i}": "succeeded" for i in range(4)}
    again = [n for n, l in lines.items() if l["attempts"] > 1]
    assert len(again) == 1, lines  # the lost node's video, started again by Ray on the node added back
    assert lines[again[0]]["resumed_windows"] >= 1  # from its work dir, not from scratch
    assert all(l["attempts"] == 1 and l["resumed_windows"] == 0 for n, l in lines.items() if n not in again)
    assert_outputs(out, references)


def test_a_worker_killed_mid_level_reruns_its_batches_elsewhere(engines, nodes, driver_env, tmp_path):
    """One video over 2 workers (`runtime.outpaint --workers 2`), a worker process SIGKILLed while it samples:
    Ray restarts it and runs its batches again; the video is the one-process video."""
    cluster = nodes()
    clip = tmp_path / "long.mp4"
    media.write(clip, media.scene(100, 96, 54, seed=66), fps=24)
    alone, summary = outpaint_cli(clip, tmp_path / "alone.mp4", engines, *RUN)
    out = tmp_path / "spread.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.outpaint", clip, "-o", out, "--engines", engines, *RUN,
                             "--workers", "2", "--address", cluster.address, "--json", "--quiet"],
                            cwd=ROOT, env=driver_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(ray_processes("ray::Worker.sample_batch")) == 2, proc, what="both workers sampling")
    time.sleep(0.5)
    os.kill(ray_processes("ray::Worker.sample_batch")[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["windows"] == summary["windows"]
    assert np.array_equal(media.decode(out)[0], alone)


def test_a_worker_killed_during_a_service_job_the_job_completes_and_is_counted(engines, clips, nodes, driver_env,
                                                                                tmp_path):
    """`runtime.serve --ray`: the job's worker process SIGKILLed while it samples; Ray restarts it, the job
    resumes from its work dir and ends with the CLI's frames, and /metrics counts the retry."""
    pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
    from test_service_http import finished, server, submit
    want = outpaint_cli(clips / "clip0.mp4", tmp_path / "cli.mp4", engines, "--steps", "12", "--threads", "1")[0]
    cluster = nodes()
    with server(engines, tmp_path / "data", "--ray", cluster.address, "--workers", "1", env=driver_env) as client:
        job = submit(client, clips / "clip0.mp4", ratio="9:16", steps=12).json()
        wait_for(lambda: (client.get(f"/v1/jobs/{job['id']}").json().get("progress") or {}).get("fraction", 0) > 0.1,
                 None, what="the job sampling")
        [worker] = ray_processes("ray::Worker")  # the one worker (its title names the call of the moment)
        os.kill(worker, signal.SIGKILL)
        done = finished(client, job["id"])
        assert done["status"] == "succeeded", done
        metrics = client.get("/metrics").text
        assert re.search(r"^m3ddm_job_retries_total 1\.0$", metrics, re.M), metrics
        got = client.get(done["outputs"]["9x16"])
        assert got.status_code == 200
        (tmp_path / "job.mp4").write_bytes(got.content)
    assert np.array_equal(media.decode(tmp_path / "job.mp4")[0], want)


def test_the_cluster_gone_mid_batch_is_one_line_and_a_new_cluster_finishes_the_job(engines, clips, references, nodes,
                                                                                     driver_env, tmp_path):
    """The whole cluster gone during a batch (the head's GCS and raylet killed, then the worker nodes, as when
    its machines go): one line saying so and how to resume, exit 3,
    no partial output; the same command on a new cluster finishes from the work dirs. Ray alone ends the
    driver a minute later with exit 1 and no word of ours."""
    cluster = nodes()
    out = tmp_path / "out"
    inputs = sorted(clips.glob("*.mp4"))
    env = {**driver_env, "RAY_gcs_rpc_server_reconnect_timeout_s": "12"}  # the line after 9 s, not 45
    proc = subprocess.Popen(batch_cmd(inputs, out, engines, cluster.address, "--workers", "2"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(checkpointed(out)) >= 2, proc, what="two videos checkpointed")
    cluster.send("kill-head")
    for node in (0, 1):  # the whole cluster gone at once: no worker finishes a video after the head
        cluster.send(f"remove {node}")
    _, err = proc.communicate(timeout=120)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert proc.returncode == 3
    assert "the Ray cluster is gone" in line and "run the same command on a running cluster" in line
    cluster.close()
    assert not [p for p in out.iterdir() if "partial" in p.name]
    for video in out.glob("*.mp4"):  # any output there was finished whole before the head went
        assert np.array_equal(media.decode(video)[0], references[video.stem])
    stopped = {stem for stem in checkpointed(out) if not (out / f"{stem}.mp4").exists()}
    assert stopped  # the videos in flight, with a checkpoint and no output

    again = subprocess.run(batch_cmd(inputs, out, engines, nodes().address, "--workers", "2"), cwd=ROOT,
                           env=driver_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    lines = report(out)
    assert set(lines) == {f"clip{i}" for i in range(4)}
    assert all(lines[stem]["resumed_windows"] >= 1 for stem in stopped), lines  # went on, not afresh
    assert_outputs(out, references)
