"""What a hostile or careless user can throw at the command line and the API, one family per section:
decompression bombs, engines folders pointing elsewhere, options that explode, signals, sparse timestamps,
thread-count dependent numerics, many tiny frames. Every bad case ends in one `error:` line and a non-zero
exit, quickly, in little memory, with no output left behind."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line
from m3ddm.errors import Cancelled, EnginesError
from runtime import Outpainter, Settings
from runtime.engines.manifest import open_engines
from test_settings import Arithmetic

CLI = [sys.executable, "-m", "runtime.outpaint"]
FAST = ["--steps", "2", "--quiet"]


def no_leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial" in p.name]


def measured(cmd, *, timeout=120, memory_cap_gb=4.0, env=None):
    """Run ``cmd`` in a child with its address space capped; (result, peak RSS in MB, seconds)."""
    probe = ("import resource, subprocess, sys, json, time\n"
             f"cap = int({memory_cap_gb} * 2**30)\n"
             "def limit():\n"
             "    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
             "t = time.perf_counter()\n"
             "r = subprocess.run(json.loads(sys.argv[1]), preexec_fn=limit, capture_output=True, text=True)\n"
             "sys.stdout.write(json.dumps([r.returncode, r.stdout, r.stderr, time.perf_counter() - t,\n"
             "    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    out = subprocess.run([sys.executable, "-c", probe, json.dumps([str(c) for c in cmd])], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env=env)
    code, stdout, stderr, seconds, peak_mb = json.loads(out.stdout)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr), peak_mb, seconds


@pytest.fixture(scope="module")
def clip(scene_clip):
    return scene_clip(20, seed=3)


# -- 1. decompression bombs ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(16000, 16000), (7681, 4321)])
def test_a_small_file_declaring_a_huge_picture_is_refused_quickly_in_little_memory(engines, tmp_path, size):
    bomb = media.png_bomb(tmp_path / "bomb.png", *size)
    assert bomb.stat().st_size < 100_000  # tens of KB on disk, gigabytes once decoded
    res, peak_mb, seconds = measured([*CLI, bomb, "-o", tmp_path / "out.mp4", "--engines", engines, *FAST])
    line = one_error_line(res)
    assert res.returncode == 2 and "pixel budget" in line and f"{size[0]}x{size[1]}" in line
    assert peak_mb < 1000 and seconds < 60, (peak_mb, seconds)
    assert not (tmp_path / "out.mp4").exists() and not no_leftovers(tmp_path)


def test_the_pixel_budget_is_an_option_and_8k_passes_by_default(engines, tmp_path, clip):
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", engines, *FAST,
                          "--max-pixels", "5000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "96x54" in one_error_line(res)
    assert Settings().max_pixels >= 7680 * 4320


@pytest.mark.parametrize("args,words", [
    (["--height", "1000"], "scaled to height 1000"),
    (["--ratio", "1:4"], "output frames (1x4) of 96x384"),
    (["--pad", "0,0,200,200"], "output frames (pad) of 296x254"),
])
def test_outputs_past_the_pixel_budget_are_refused_before_sampling(engines, tmp_path, clip, args, words):
    res, peak_mb, seconds = measured([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", engines, *FAST,
                                      "--max-pixels", "20000", *args])
    line = one_error_line(res)
    assert res.returncode == 2 and words in line and "pixel budget" in line, line
    assert peak_mb < 1000 and "level" not in res.stderr  # no window was sampled
    assert not no_leftovers(tmp_path)


def test_the_decoder_refuses_what_the_budget_refuses(tmp_path):
    from runtime.video import VideoError, iter_frames, read_video
    bomb = media.png_bomb(tmp_path / "bomb.png", 9000, 9000)
    for read in (lambda: list(iter_frames(bomb, max_pixels=10**6)), lambda: read_video(bomb, max_pixels=10**6)):
        with pytest.raises(VideoError, match="9000x9000 exceed the pixel budget"):
            read()


# -- 2. engines folders that point outside themselves ---------------------------------------------------

def tampered(engines, tmp_path, change):
    """A copy of ``engines`` with ``change(folder, manifest)`` applied, and an outside FIFO: anything that
    opens it for reading blocks, so a run that opened it would hang instead of exiting."""
    folder = tmp_path / "engines"
    shutil.copytree(engines, folder)
    fifo = tmp_path / "outside.onnx"
    os.mkfifo(fifo)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(folder, manifest, fifo)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _file(key, value):
    def change(folder, manifest, fifo):
        manifest["components"][key]["file"] = value(folder, fifo)
    return change


def _data(folder, manifest, fifo):
    entry = manifest["components"]["unet.fp32"]
    entry["external_data"] = {"file": "../outside.onnx", "bytes": 0}


def _plan(folder, manifest, fifo):
    manifest["plans"] = {"unet.fp16": {"file": "../../outside.onnx"}}


def _link(folder, manifest, fifo):
    target = folder / manifest["components"]["unet.fp32"]["file"]
    target.unlink()
    target.symlink_to(fifo)


def _linked_dir(folder, manifest, fifo):
    (folder / "extra").symlink_to(fifo.parent)


@pytest.mark.parametrize("change", [
    _file("unet.fp32", lambda folder, fifo: "../outside.onnx"),
    _file("unet.fp32", lambda folder, fifo: str(fifo)),  # absolute
    _file("vae_decoder.fp32", lambda folder, fifo: "../../../../etc/passwd"),
    _file("vae_encoder.fp32", lambda folder, fifo: "sub/../../outside.onnx"),
    _data, _plan, _link, _linked_dir,
], ids=["dotdot", "absolute", "etc-passwd", "nested-dotdot", "external-data", "plan", "symlink", "symlinked-dir"])
def test_a_tampered_engines_folder_never_makes_the_runtime_open_a_file_outside_it(engines, tmp_path, clip, change):
    folder = tampered(engines, tmp_path, change)
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", folder, *FAST], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # a hang here: the FIFO was opened
    line = one_error_line(res)
    assert res.returncode == 3 and "outside the folder" in line, line
    with pytest.raises(EnginesError, match="outside the folder"):
        open_engines(folder)


def test_onnx_runtime_refuses_a_graph_whose_weights_lie_outside_the_folder(engines, tmp_path, clip):
    """The graph itself names its external data: ONNX Runtime refuses ".." there (the FIFO stays unopened)."""
    onnx = pytest.importorskip("onnx")
    from onnx.external_data_helper import convert_model_to_external_data

    def change(folder, manifest, fifo):
        entry = manifest["components"]["global_encoder.fp32"]
        path = folder / entry["file"]
        model = onnx.load(path)
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location="../outside.onnx",
                                       size_threshold=1024)
        for tensor in model.graph.initializer:  # what a hostile file holds: "../" locations, no data here
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                tensor.ClearField("raw_data")
        path.write_bytes(model.SerializeToString())
        entry["bytes"] = path.stat().st_size
        entry.pop("external_data", None)

    folder = tampered(engines, tmp_path, change)
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", folder, "--steps", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    line = one_error_line(res)  # the only line: the graphs load before the video is decoded (no progress yet)
    assert res.returncode == 3 and "cannot load" in line and "escapes model directory" in line, line


def test_symlinks_inside_the_folder_stay_usable(engines, tmp_path, clip):
    folder = tmp_path / "engines"
    shutil.copytree(engines, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    name = manifest["components"]["unet.fp32"]["file"]
    (folder / "weights").mkdir()
    (folder / name).rename(folder / "weights" / name)
    (folder / name).symlink_to(folder / "weights" / name)
    assert open_engines(folder).onnx_path("unet", "fp32").resolve().parent == (folder / "weights").resolve()


# -- 3. options that are accepted but meaningless or explosive -------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--guidance", "nan,nan"], "finite"), (["--guidance", "inf,1"], "finite"), (["--feather", "-1"], "feather"),
    (["--feather", "nan"], "feather"), (["--gpu-memory", "nan"], "gpu memory"), (["--gpu-memory", "inf"], "gpu memory"),
    (["--crf", "99"], "crf"), (["--crf", "-1"], "crf"), (["--threads", "100000"], "threads"),
    (["--encoder-threads", "0"], "encoder threads"), (["--encoder-threads", "65"], "encoder threads"),
    (["--codec", "nope"], "unknown video encoder"), (["--pix-fmt", "nope"], "pixel format"),
    (["--codec", "aac"], "not a video encoder"),
    (["--seed", "-1"], "seed"), (["--steps", "100000"], "steps"), (["--batch-windows", "0"], "batch_windows"),
    (["--stream", "-1"], "stream"), (["--max-pixels", "0"], "max_pixels"), (["--height", "1"], "height"),
    (["--strides", "15,5"], "ending in 1"), (["--ratio", "0:1"], "positive"),
])
def test_every_option_is_checked_before_the_engines_load(tmp_path, clip, args, words):
    """The engines folder does not exist: an option error must come first (exit 2), in about a second."""
    t0 = time.perf_counter()
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.mp4", "--engines", tmp_path / "none", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    line = one_error_line(res)
    assert res.returncode == 2 and words in line, line
    assert time.perf_counter() - t0 < 30
    assert not list(tmp_path.glob("out*")) and not no_leftovers(tmp_path)


def test_a_codec_the_container_refuses_fails_before_sampling(engines, tmp_path, clip):
    res = subprocess.run([*CLI, clip, "-o", tmp_path / "out.webm", "--engines", engines, *FAST,
                          "--codec", "libx264"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = one_error_line(res)
    assert res.returncode == 2 and "libx264" in line and "level" not in res.stderr, line


def test_python_warnings_are_one_note_line_or_nothing_under_quiet():
    code = ("import warnings, numpy as np\n"
            "from runtime import cli\n"
            "import sys\n"
            "cli.setup_logging(quiet='-q' in sys.argv)\n"
            "np.float32(1) / np.float32(0)\n"
            "warnings.warn('two\\nlines', UserWarning)\n")
    loud = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", code, "-q"], cwd=ROOT, capture_output=True, text=True)
    lines = loud.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("note: RuntimeWarning: divide by zero"), loud.stderr
    assert lines[1] == "note: UserWarning: two"
    assert quiet.stderr == ""


# -- 4. signals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code,at", [(signal.SIGTERM, 143, "level"), (signal.SIGINT, 130, "level"),
                                          (signal.SIGTERM, 143, "prepare")])
def test_a_signal_stops_the_run_at_once_with_one_line_and_no_output(engines, tmp_path, sig, code, at):
    source = tmp_path / "long.mp4"
    media.write(source, media.scene(60, 96, 54, seed=4), fps=24)
    out = tmp_path / "out" / "long_out.mp4"
    out.parent.mkdir()
    proc = subprocess.Popen([*CLI, source, "-o", out, "--engines", engines, "--steps", "50", "--threads", "1"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # progress lines: one per window batch, and a first one in the prepare stage
        lines.append(line)
        if line.startswith(at):
            break
    t0 = time.perf_counter()
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    stopped_in = time.perf_counter() - t0
    assert proc.returncode == code, rest
    errors = [l for l in rest.splitlines() if l.strip() and not l.startswith(("level", "prepare", "decode"))]
    assert errors == [f"error: interrupted by {signal.Signals(sig).name}; no output was written"], rest
    assert stopped_in < 5, stopped_in  # one engine call at most, and that one aborted
    assert not out.exists() and not list(out.parent.iterdir())


def test_cancel_from_another_thread_stops_within_one_step(tmp_path):
    """The API's cancel token: checked at every step; the call raises Cancelled and leaves no output."""
    op = Outpainter(engine=Arithmetic())
    source = tmp_path / "clip.mp4"
    media.write(source, media.scene(40, 48, 32, seed=2), fps=24)
    cancel, steps = threading.Event(), []

    def progress(event):
        if event.get("stage") == "sample":
            steps.append(event["step"])
            if len(steps) == 3:
                threading.Thread(target=cancel.set).start()
                time.sleep(0.2)  # the setter has run by the end of this step

    with pytest.raises(Cancelled):
        op.outpaint_file(source, tmp_path / "out.mp4", "1:1", steps=20, progress=progress, cancel=cancel)
    assert len(steps) == 3  # not one step more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    cancel.clear()
    with pytest.raises(Cancelled):
        cancel.set()
        op.outpaint(media.scene(20, 48, 32), 24, "1:1", steps=5, cancel=cancel)


# -- 5. sparse timestamps -------------------------------------------------------------------------------

@pytest.mark.parametrize("times", [[0.0, 3600.0, 7200.0], [100.0, 100.04, 100.08, 100.12]],
                         ids=["3-frames-over-2h", "starts-at-100s"])
def test_output_timestamps_start_at_zero_and_every_frame_decodes(engines, tmp_path, times):
    import av
    source = tmp_path / "sparse.mp4"
    media.write(source, media.scene(len(times), 64, 36, seed=5), fps=25, times=times)
    out = tmp_path / "out.mp4"
    res = subprocess.run([*CLI, source, "-o", out, "--engines", engines, *FAST], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    frames, got, _, _ = media.decode(out)
    assert len(frames) == len(times)
    np.testing.assert_allclose(got, np.array(times) - times[0], atol=1e-3)
    with av.open(str(out)) as c:
        packets = [p for p in c.demux(video=0) if p.pts is not None]
    assert all(p.dts is not None and p.dts >= 0 for p in packets) or times[1] - times[0] < 1, \
        [(p.pts, p.dts) for p in packets]
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(out))
    decoded = 0
    while cap.read()[0]:
        decoded += 1
    assert decoded == len(times)


# -- 6. same seed, same video, whatever the thread count ------------------------------------------------

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_env(n):
    env = dict(os.environ)
    env.update({k: str(n) for k in THREAD_VARS})
    return env


def test_the_global_frame_resize_does_not_depend_on_the_thread_count():
    code = ("import hashlib, numpy as np\n"
            "from runtime.resize import resize_antialias\n"
            "x = np.random.default_rng(0).random((16, 3, 1080, 1920), dtype=np.float32)\n"
            "print(hashlib.sha256(resize_antialias(x, 256, 256).tobytes()).hexdigest())\n")
    digests = {n: subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                 env=_threads_env(n), timeout=300).stdout for n in (1, 2, 4)}
    assert len(set(digests.values())) == 1 and digests[1], digests


def test_the_same_run_gives_the_same_frames_under_any_thread_count(engines, tmp_path):
    source = tmp_path / "clip.mp4"
    media.write(source, media.scene(20, 480, 270, seed=6), fps=24)
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}.mp4"
        res = subprocess.run([*CLI, source, "-o", outs[n], "--engines", engines, "--steps", "3", "--threads", "1",
                              "--codec", "libx264rgb", "--pix-fmt", "rgb24", "--crf", "0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=_threads_env(n))
        assert res.returncode == 0, res.stderr
    a, b = media.decode(outs[1])[0], media.decode(outs[2])[0]
    assert a.shape == b.shape and np.array_equal(a, b)


# -- 7. many tiny frames -------------------------------------------------------------------------------

def test_preparing_many_frames_holds_latents_not_canvases():
    """Memory grows with the latents (T x 4 x S/8 x S/8 twice), not with the canvases and inits
    (2 x T x S x S x 3, 48 times more); the prepare stage reports progress as it goes."""
    op = Outpainter(engine=Arithmetic())
    box, _ = Settings(ratios=("1:1",)).layout(16, 16, op.size)
    peaks, latents, events = {}, {}, []
    for t_count in (1000, 3000):
        frames = (np.full((16, 16, 3), i % 251, np.uint8) for i in range(t_count))
        tracemalloc.start()
        try:
            video = op.pipeline.prepare(frames, t_count, box, 25.0, progress=events.append)
            peaks[t_count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(video) == t_count
        latents[t_count] = video.inits.nbytes + video.canvases.nbytes
    grown, needed = peaks[3000] - peaks[1000], latents[3000] - latents[1000]
    assert grown < 1.5 * needed, (grown, needed)  # holding the canvases would be 48 x needed
    done = [e["frames_done"] for e in events if e["stage"] == "prepare" and e["frames"] == 3000]
    assert done[0] == 16 and done[-1] == 3000 and done == sorted(done)  # the progress line keeps moving
