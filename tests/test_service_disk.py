"""The service on a full disk, for real: --data is a small tmpfs mounted in a user + mount namespace of its own
(`unshare --user --map-root-user --mount`), the server started inside it, and the test filling it with a
ballast file through /proc/PID/root. An upload that does not fit and a disk already full give 507 and leave
nothing; an output that does not fit and a disk that fills mid-job fail the job with one line; /readyz says so
and comes back when space is freed; the worker lives on; no traceback in the log. Skips, saying why, where the
machine cannot make such a filesystem."""
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT
from test_service_http import finished, server, submit
from test_service_jobs import clip, short_clip  # noqa: F401 (fixtures)

pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'


def in_small_disk(size_mb: float, folder) -> list:
    """A command prefix: what follows runs with ``folder`` a tmpfs of ``size_mb``, in namespaces of its own."""
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh", f"{int(size_mb * 1024)}k",
            str(folder)]


@pytest.fixture(scope="module")
def small_disks(tmp_path_factory):
    probe = tmp_path_factory.mktemp("probe")
    if shutil.which("unshare") is None:
        pytest.skip("no small filesystem: unshare (util-linux) is not installed")
    res = subprocess.run([*in_small_disk(1, probe), "true"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"no small filesystem: a tmpfs in a user namespace cannot be mounted here ({res.stderr.strip()})")


@contextmanager
def disk_server(engines, data, size_mb, *extra):
    data.mkdir()
    with server(engines, data, *extra, wrap=in_small_disk(size_mb, data)) as client:
        client.inside = Path(f"/proc/{client.proc.pid}/root") / str(data).lstrip("/")  # the tmpfs, seen from here
        yield client


def fill(path, leave: int = 0) -> None:
    """Write ``path`` until the disk is full, or until about ``leave`` bytes are free."""
    with open(path, "ab", buffering=0) as f:
        for block in (65536, 4096):
            try:
                while free(path.parent) - block >= leave:
                    f.write(bytes(block))
            except OSError:
                pass


def free(folder) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def files(inside) -> list[str]:
    """What the data dir holds besides the records and the ballast."""
    return sorted(str(p.relative_to(inside)) for p in inside.rglob("*")
                  if not p.name.startswith("jobs.sqlite3") and p.name != "ballast"
                  and p.name not in ("jobs", "uploads"))


def ready(client, timeout=10):
    t0 = time.monotonic()
    while (res := client.get("/readyz")).status_code != 200:
        assert time.monotonic() - t0 < timeout, res.text
        time.sleep(0.1)


def test_an_upload_that_does_not_fit_and_a_full_disk_answer_507_and_leave_nothing(small_disks, engines, short_clip,
                                                                                 tmp_path):
    with disk_server(engines, tmp_path / "data", 8) as client:
        inside, before = client.inside, free(client.inside)
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(before + 2**20))
        res = submit(client, big)
        detail = res.json()["detail"]
        assert res.status_code == 507 and "disk is full" in detail and "\n" not in detail, res.text
        assert files(inside) == [] and free(inside) > before - 2**16  # the partial upload is gone

        fill(inside / "ballast")
        res = submit(client, short_clip, steps=2)
        assert res.status_code == 507 and "disk is full" in res.json()["detail"]
        assert files(inside) == []
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "disk is full" in not_ready.json()["detail"]

        (inside / "ballast").unlink()
        ready(client)
        assert finished(client, submit(client, short_clip, steps=2).json()["id"])["status"] == "succeeded"
    assert "Traceback" not in client.log, client.log


def test_a_job_that_does_not_fit_fails_with_one_line_and_the_service_comes_back(small_disks, engines, clip,
                                                                                short_clip, tmp_path):
    with disk_server(engines, tmp_path / "data", 8) as client:
        inside = client.inside
        fill(inside / "ballast", leave=clip.stat().st_size + 160 * 1024)  # the upload and its record fit
        cramped = submit(client, clip, steps=2, ratio="9:16,1:1,4:5")  # its outputs do not
        assert cramped.status_code == 202, cramped.text
        job = finished(client, cramped.json()["id"], timeout=120)
        assert job["status"] == "failed" and "disk is full" in job["error"] and "\n" not in job["error"], job
        assert files(inside) == []  # nothing of the failed job but its record
        (inside / "ballast").unlink()
        ready(client)

        # three windows of 6 steps: once the first is checkpointed, ten steps or more are left to fill the disk in
        running = submit(client, clip, steps=6).json()["id"]
        while not client.get(f"/v1/jobs/{running}").json()["progress"]["windows_done"]:
            time.sleep(0.05)
        fill(inside / "ballast")  # the disk fills mid-job
        job = finished(client, running, timeout=120)
        assert job["status"] == "failed" and "disk is full" in job["error"], job
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "disk is full" in not_ready.json()["detail"]
        assert files(inside) == []

        (inside / "ballast").unlink()
        ready(client)  # readiness comes back: the worker is alive
        assert finished(client, submit(client, short_clip, steps=2).json()["id"])["status"] == "succeeded"
        assert 'm3ddm_job_failures_total{reason="disk_full"} 2.0' in client.get("/metrics").text
    assert "Traceback" not in client.log, client.log


WORKER = """
import json, shutil, sys, time
from pathlib import Path
from runtime import Outpainter
from runtime.service.jobs import JobQueue
data = Path(sys.argv[2])
queue = JobQueue(Outpainter(sys.argv[1], backend="ort", threads=1), data)
shutil.copy(sys.argv[3], data / "upload")
job = queue.submit(data / "upload", "clip.mp4", {"steps": "2"})
try:
    with open(data / "ballast", "ab") as f:
        while True:
            f.write(bytes(4096))
            f.flush()
except OSError:
    pass
queue.start()  # its first write, the claim of the job, does not fit
t0 = time.monotonic()
while "waits for space" not in (queue.problem() or "") and time.monotonic() - t0 < 60:
    time.sleep(0.05)
time.sleep(1.2)  # and it still waits after trying again (every RETRY_S = 1 s)
print(json.dumps([queue.store.get(job["id"])["status"], queue.problem(), queue.alive()]), flush=True)
(data / "ballast").unlink()
t0 = time.monotonic()
while queue.store.get(job["id"])["status"] != "succeeded" and time.monotonic() - t0 < 120:
    time.sleep(0.1)
print(json.dumps([queue.store.get(job["id"])["status"], queue.problem(), queue.alive()]), flush=True)
queue.drain()
"""


def test_a_worker_that_cannot_write_its_records_waits_for_space_and_goes_on(small_disks, engines, short_clip,
                                                                             tmp_path):
    import json
    data = tmp_path / "data"
    data.mkdir()
    res = subprocess.run([*in_small_disk(4, data), sys.executable, "-c", WORKER, str(engines), str(data),
                          str(short_clip)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    waiting, done = (json.loads(line) for line in res.stdout.splitlines())
    assert waiting[0] == "queued" and "disk is full" in waiting[1] and "waits for space" in waiting[1], waiting
    assert waiting[2] is True  # the worker lives on
    assert done == ["succeeded", None, True]
    assert "Traceback" not in res.stderr, res.stderr
