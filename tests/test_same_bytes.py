"""Same job, same bytes, in every entry point, at the default encoder settings (lossy x264, crf 18): the command
line run twice, the Python API called twice in one process (and once more in this long-lived test process),
the service, the service's jobs on a Ray worker, and runtime.batch's Ray actors, on two clips and settings.

The bytes depend on the encoder's threads (runtime/video/sink.py), so the test also runs the command line on a
single CPU (taskset): a fixed thread count must give the same file on any machine and in any CPU set."""
import hashlib
import shutil
import subprocess
import sys

import pytest

import media
from conftest import ROOT
from runtime import Outpainter, Settings

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
from test_service_http import finished, server, submit  # noqa: E402 - after the extras are known to be there

# (clip: frames, width, height, seed, audio; job: ratio, steps, seed). Sizes that are not multiples of 16,
# a clip with audio to remux, and two settings: the effect the issue saw depended on the content.
CASES = {
    "square": ((68, 300, 168, 3, True), ("1:1", 2, 6)),
    "portrait": ((44, 212, 120, 7, False), ("9:16", 3, 11)),
}

API_TWICE = """
import sys
from runtime import Outpainter, Settings
engines, clip, a, b, ratio, steps, seed = sys.argv[1:]
op = Outpainter(engines)
for out in (a, b):
    op.outpaint_file(clip, out, settings=Settings(ratios=(ratio,), steps=int(steps), seed=int(seed)))
"""


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd, **kw):
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    (frames, width, height, seed, audio), job = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    clip = folder / "in" / f"{request.param}.mp4"
    clip.parent.mkdir()
    media.write(clip, media.scene(frames, width, height, seed=seed), fps=24, audio=audio)
    return clip, job, folder


def test_every_entry_point_writes_the_same_bytes(engines, case, ray_cluster):
    clip, (ratio, steps, seed), folder = case
    job = ["--ratio", ratio, "--steps", str(steps), "--seed", str(seed)]
    outputs = {}

    for name, prefix in (("cli", []), ("cli again", []), ("cli on one cpu", ["taskset", "-c", "0"])):
        if prefix and not shutil.which("taskset"):
            continue
        out = folder / f"{name.replace(' ', '-')}.mp4"
        run([*prefix, sys.executable, "-m", "runtime.outpaint", str(clip), "-o", str(out), "--engines", str(engines),
             *job, "--quiet"])
        outputs[name] = out

    a, b = folder / "api-1.mp4", folder / "api-2.mp4"
    run([sys.executable, "-c", API_TWICE, str(engines), str(clip), str(a), str(b), ratio, str(steps), str(seed)])
    outputs.update({"api": a, "api, second call": b})

    here = folder / "api-in-test-process.mp4"  # a process that has run many other things before
    Outpainter(engines).outpaint_file(clip, here, settings=Settings(ratios=(ratio,), steps=steps, seed=seed))
    outputs["api in the test process"] = here

    for name, extra in (("service", ()), ("service on a ray worker", ("--ray", ray_cluster, "--workers", "1"))):
        with server(engines, folder / f"data-{len(extra)}", *extra) as client:
            res = submit(client, clip, ratio=ratio, steps=steps, seed=seed)
            assert res.status_code == 202, res.text
            done = finished(client, res.json()["id"])
            assert done["status"] == "succeeded", done
            out = folder / f"{name.replace(' ', '-')}.mp4"
            out.write_bytes(client.get(done["outputs"][ratio.replace(":", "x")]).content)
            outputs[name] = out

    batch_out = folder / "batch"
    run([sys.executable, "-m", "runtime.batch", str(clip), "--out-dir", str(batch_out), "--engines", str(engines),
         "--address", ray_cluster, *job, "--quiet"])
    outputs["batch (a ray actor)"] = batch_out / clip.name

    groups: dict[str, list] = {}
    for name, path in outputs.items():
        groups.setdefault(digest(path)[:12], []).append(name)
    assert len(groups) == 1, f"entry points by the file they wrote: {groups}"
