"""The service as users reach it: a real `python -m runtime.serve` process on a free local port, a real HTTP
client. Submit, poll, download (with ranges), the CLI's frames; 401/413/422/429; a bad video fails alone;
delete; a server killed with SIGKILL mid-job finishes the job after a restart; /metrics counts it all."""
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest

import media
from conftest import ROOT
from test_service_jobs import cli_output, clip, short_clip  # noqa: F401 (fixtures: clips, the CLI's frames of one)

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")


@pytest.fixture(params=["in-process", "ray"])
def mode(request):
    """Where the jobs run: in the server process, or on a Ray worker of a local cluster (--ray)."""
    if request.param == "ray":
        return ("--ray", request.getfixturevalue("ray_cluster"), "--workers", "1")
    return ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(engines, data, *extra, command=(sys.executable, "-m", "runtime.serve"), wrap=(), cwd=ROOT, env=None):
    """A ready server on a free port (``command``: the python -m form, or an installed m3ddm-serve; ``wrap``: a
    command that runs it, ``wrap... command ...``), an httpx client to it."""
    port = free_port()
    proc = subprocess.Popen([*wrap, *command, "--engines", str(engines), "--data", str(data),
                             "--port", str(port), "--threads", "1", *map(str, extra)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        t0 = time.monotonic()
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() - t0 < 120, "the server did not become ready"
            time.sleep(0.05)
        client.proc = proc
        yield client
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client.log = proc.communicate()[1]  # the server's stderr, for a test to read after the `with`


@contextmanager
def token_server(engines, data, token, *extra):
    """``server`` with ``--token``, its client sending that token; the server's log must hold no traceback."""
    with server(engines, data, "--token", token, *extra) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client
    assert "Traceback" not in client.log, client.log


def submit(client, path, **fields):
    with open(path, "rb") as f:
        return client.post("/v1/jobs", files={"file": (path.name, f, "video/mp4")},
                           data={k: str(v) for k, v in fields.items()})


def finished(client, job_id, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_submit_poll_download_gives_the_command_lines_frames(engines, clip, cli_output, tmp_path, mode):
    with server(engines, tmp_path / "data", *mode) as client:
        res = submit(client, clip, ratio="9:16", steps=3)
        assert res.status_code == 202 and res.json()["status"] == "queued"
        job = finished(client, res.json()["id"])
        assert job["status"] == "succeeded" and job["error"] is None and job["progress"]["fraction"] == 1
        assert job["outputs"] == {"9x16": f"/v1/jobs/{job['id']}/result/9x16"}
        video = client.get(job["outputs"]["9x16"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        (tmp_path / "got.mp4").write_bytes(video.content)
        assert np.array_equal(media.decode(tmp_path / "got.mp4")[0], cli_output)
        part = client.get(job["outputs"]["9x16"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == video.content[100:200]
        listed = client.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}/result/1x1").status_code == 404
        page = client.get("/")
        assert page.status_code == 200 and "<form" in page.text
        assert client.get("/openapi.json").json()["paths"]["/v1/jobs"]
        metrics = client.get("/metrics").text
        assert 'm3ddm_jobs{status="succeeded"} 1.0' in metrics and "m3ddm_job_seconds_count 1.0" in metrics
        assert 'm3ddm_backend_info{backend="ort"} 1.0' in metrics


def test_token_limits_and_bad_options(engines, clip, short_clip, tmp_path, mode):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    with server(engines, tmp_path / "data", *mode, "--token", "s3cret", "--max-upload-mb", "1",
                "--max-queue", "1") as client:
        assert submit(client, clip).status_code == 401
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
        client.headers["Authorization"] = "Bearer s3cret"
        too_big = submit(client, big)
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        bad = submit(client, clip, ratio="wide")
        assert bad.status_code == 422 and "W:H" in bad.json()["detail"]
        assert submit(client, clip, steps="nan").status_code == 422
        assert client.get("/v1/jobs").json()["jobs"] == []  # none of these entered the queue
        long_job = submit(client, short_clip, steps=50).json()["id"]
        while client.get(f"/v1/jobs/{long_job}").json()["status"] != "running":
            time.sleep(0.05)
        waiting = submit(client, short_clip, steps=2)
        assert waiting.status_code == 202
        full = submit(client, short_clip, steps=2)
        assert full.status_code == 429
        t0 = time.time()
        deleted = client.delete(f"/v1/jobs/{long_job}")
        assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
        assert client.get(f"/v1/jobs/{long_job}").status_code == 404
        after = finished(client, waiting.json()["id"])
        assert after["status"] == "succeeded" and after["started"] - t0 < 10  # the deleted job stopped at once
        gone = client.delete(f"/v1/jobs/{waiting.json()['id']}")
        assert gone.status_code == 200 and client.get(f"/v1/jobs/{waiting.json()['id']}").status_code == 404
        assert not list((tmp_path / "data" / "uploads").iterdir())


def test_a_bad_video_fails_alone_and_a_killed_server_resumes_its_job(engines, clip, cli_output, tmp_path, mode):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    data = tmp_path / "data"
    with server(engines, data, *mode) as client:
        failed = finished(client, submit(client, bad, steps=3).json()["id"])
        assert failed["status"] == "failed" and failed["error"] and "\n" not in failed["error"]
        job_id = submit(client, clip, steps=3).json()["id"]
        while (client.get(f"/v1/jobs/{job_id}").json()["progress"]["windows_done"] or 0) < 1:
            time.sleep(0.05)
        client.proc.send_signal(signal.SIGKILL)
        client.proc.wait()
    with server(engines, data, *mode) as client:
        job = finished(client, job_id)
        assert job["status"] == "succeeded"
        (tmp_path / "got.mp4").write_bytes(client.get(job["outputs"]["9x16"]).content)
        assert np.array_equal(media.decode(tmp_path / "got.mp4")[0], cli_output)
        assert client.get(f"/v1/jobs/{failed['id']}").json()["status"] == "failed"
        metrics = client.get("/metrics").text
        assert 'm3ddm_jobs{status="failed"} 1.0' in metrics and 'm3ddm_jobs{status="succeeded"} 1.0' in metrics


def test_sigterm_drains_the_running_job_and_a_restart_finishes_it(engines, clip, tmp_path, mode):
    from runtime.service.jobs import JobStore
    data = tmp_path / "data"
    with server(engines, data, "--workers", "1", *mode) as client:
        # three windows of 6 steps: once the first is checkpointed, ten steps or more are left to drain in
        job_id = submit(client, clip, steps=6).json()["id"]
        while (client.get(f"/v1/jobs/{job_id}").json()["progress"]["windows_done"] or 0) < 1:
            time.sleep(0.05)
        t0 = time.monotonic()
        client.proc.send_signal(signal.SIGTERM)
        assert client.proc.wait(60) == 0 and time.monotonic() - t0 < 30
    assert JobStore(data / "jobs.sqlite3").get(job_id)["status"] == "queued"  # checkpointed, not lost
    assert (data / "jobs" / job_id / "work" / "state.json").is_file()
    with server(engines, data, *mode) as client:
        assert finished(client, job_id)["status"] == "succeeded"
