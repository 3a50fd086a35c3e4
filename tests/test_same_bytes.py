"""Same job, same bytes, in every entry point, at the default encoder settings (lossy x264, crf 18): the command
line run twice, the Python API called twice in one process, the service, the service's jobs on a Ray worker, and
runtime.batch's Ray actors, on two clips and settings.

The bytes depend on the encoder's threads (runtime/video/sink.py), so the test also runs the command line on a
single CPU (taskset): a fixed thread count must give the same file on any machine and in any CPU set."""
import hashlib
import shutil
import subprocess
import sys

import pytest

import media
from conftest import ROOT

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
pytest.importorskip("fastapi", reason="the service extra is not installed (pip install '.[serve]')")
from test_service_http import finished, server, submit  # noqa: E402 - after the extras are known to be there

# (clip: frames, width, height, seed, audio; job: ratio, steps, seed). Sizes that are not multiples of 16,
# a clip with audio to remux, and two settings: the effect the issue saw depended on the content.
CASES = {
    "square": ((40, 300, 168, 3, True), ("1:1", 2, 6)),
    "portrait": ((44, 212, 120, 7, False), ("9:16", 3, 11)),
}

API_TWICE = """
import sys
from runtime import Outpainter, Settings
engines, out, *jobs = sys.argv[1:]
op = Outpainter(engines)
for clip, ratio, steps, seed in zip(*[iter(jobs)] * 4):
    for call in (1, 2):
        op.outpaint_file(clip, f"{out}/{call}-{clip.rsplit('/', 1)[-1]}",
                         settings=Settings(ratios=(ratio,), steps=int(steps), seed=int(seed)))
"""


def run(cmd):
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def job_args(name):
    ratio, steps, seed = CASES[name][1]
    return ["--ratio", ratio, "--steps", str(steps), "--seed", str(seed)]


@pytest.fixture(scope="module")
def written(engines, ray_cluster, tmp_path_factory):
    """{case: {entry point: the file it wrote}}, every entry point given every case."""
    folder = tmp_path_factory.mktemp("same-bytes")
    clips = {}
    for name, ((frames, width, height, seed, audio), _) in CASES.items():
        clips[name] = folder / "in" / name / f"{name}.mp4"
        clips[name].parent.mkdir(parents=True)
        media.write(clips[name], media.scene(frames, width, height, seed=seed), fps=24, audio=audio)
    out = {name: {} for name in CASES}

    def path(name, entry):
        out[name][entry] = folder / name / f"{entry.replace(' ', '-').replace(',', '')}.mp4"
        out[name][entry].parent.mkdir(exist_ok=True)
        return out[name][entry]

    for name, clip in clips.items():
        for entry, prefix in (("cli", []), ("cli again", []), ("cli on one cpu", ["taskset", "-c", "0"])):
            if not prefix or shutil.which("taskset"):
                run([*prefix, sys.executable, "-m", "runtime.outpaint", str(clip), "-o", str(path(name, entry)),
                     "--engines", str(engines), *job_args(name), "--quiet"])

    api = folder / "api"
    api.mkdir()
    run([sys.executable, "-c", API_TWICE, str(engines), str(api),
         *[str(v) for name, clip in clips.items() for v in (clip, *CASES[name][1])]])
    for name, clip in clips.items():
        out[name]["api"], out[name]["api, second call"] = api / f"1-{clip.name}", api / f"2-{clip.name}"

    for entry, extra in (("service", ()), ("service on a ray worker", ("--ray", ray_cluster, "--workers", "1"))):
        with server(engines, folder / entry.replace(" ", "-"), *extra) as client:
            ids = {}
            for name, clip in clips.items():
                ratio, steps, seed = CASES[name][1]
                res = submit(client, clip, ratio=ratio, steps=steps, seed=seed)
                assert res.status_code == 202, res.text
                ids[name] = res.json()["id"]
            for name, job_id in ids.items():
                done = finished(client, job_id)
                assert done["status"] == "succeeded", done
                path(name, entry).write_bytes(client.get(done["outputs"][CASES[name][1][0].replace(":", "x")]).content)

    for name, clip in clips.items():
        run([sys.executable, "-m", "runtime.batch", str(clip), "--out-dir", str(folder / "batch" / name), "--engines",
             str(engines), "--address", ray_cluster, *job_args(name), "--quiet"])
        out[name]["batch (a ray actor)"] = folder / "batch" / name / clip.name
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_entry_point_writes_the_same_bytes(written, case):
    groups: dict[str, list] = {}
    for entry, path in written[case].items():
        groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest()[:12], []).append(entry)
    assert len(groups) == 1, f"entry points by the file they wrote: {groups}"
