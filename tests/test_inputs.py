"""Inputs that would make FFmpeg read files nobody gave it (issue 24): names that are protocols (concat:,
subfile:, file:, ...), playlists and concat scripts (whatever their suffix), QuickTime external references,
image-sequence names, devices and fifos. Every read of a user's file goes through runtime.video.open_media;
media.reading_traps' secret is pure red, so a frame of it anywhere is seen at once."""
import os
import subprocess
import sys
import threading

import av
import numpy as np
import pytest

import media
from conftest import ROOT, one_error_line
from runtime.video import EncodeOptions, VideoError, read_video, write_video

CLI = [sys.executable, "-m", "runtime.outpaint"]
FAST = ("--steps", "2", "--threads", "1")


@pytest.fixture(scope="module")
def traps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traps")
    return folder, media.reading_traps(folder)


def test_the_traps_are_real_where_ffmpeg_follows_them(traps):
    """What each trap does to a plain av.open: without this, the refusals below could pass for nothing."""
    folder, names = traps
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for name in ["concat:secret.mp4", "subfile,,start,0,end,0,,:secret.mp4", "sub/play.m3u8", "list.ffconcat",
                     "list.mp4"]:
            with av.open(name) as c:
                assert media.shows_secret(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])), name
        with av.open(names["external"], options={"enable_drefs": "1"}) as c:
            assert media.shows_secret(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    finally:
        os.chdir(cwd)


def test_names_that_are_protocols_are_read_as_the_files_they_are(traps, monkeypatch):
    folder, names = traps
    monkeypatch.chdir(folder)
    clip = read_video("clip.mp4")[0]
    for name in [*names["named"], "pipe:0"]:
        if name == "pipe:0":  # FFmpeg would read this process's stdin
            (folder / name).write_bytes((folder / "clip.mp4").read_bytes())
        frames, info = read_video(name)
        assert np.array_equal(frames, clip), name


@pytest.mark.parametrize("name", ["sub/play.m3u8", "list.ffconcat", "list.mp4"])
def test_playlists_and_concat_scripts_are_refused_whatever_their_name(traps, monkeypatch, name):
    monkeypatch.chdir(traps[0])
    with pytest.raises(VideoError, match="not a media file this runtime reads") as err:
        read_video(name)
    assert "\n" not in str(err.value)


def test_a_file_whose_video_lies_in_another_file_shows_none_of_it(traps):
    folder, names = traps
    with pytest.raises(VideoError, match="no decodable video frames"):
        read_video(folder / names["external"])


def test_an_image_sequence_name_reads_the_one_file_it_names(tmp_path):
    still = media.scene(1, 64, 48, seed=3)[0]
    import cv2
    for i in (1, 2):  # the sequence img%03d.png would read: the secret
        cv2.imwrite(str(tmp_path / f"img{i:03d}.png"), np.full((48, 64, 3), media.SECRET_RGB[::-1], np.uint8))
    for name in ("img%03d.png", "img*.png", "still.jpg"):
        cv2.imwrite(str(tmp_path / name), still[..., ::-1])
        frames, _ = read_video(tmp_path / name)
        assert len(frames) == 1 and not media.shows_secret(frames), name
        error = np.abs(frames[0].astype(int) - still).mean()
        assert error == 0 if name.endswith(".png") else error < 20, name  # the still itself (a JPEG: near it)


def test_odd_names_are_files_and_their_errors_one_line(traps, tmp_path):
    folder = traps[0]
    clip = read_video(folder / "clip.mp4")[0]
    for name in ("a\nb.mp4", "-clip.mp4", "vidéo 😀.mp4", " lead.mp4", "x?y#z.mp4"):
        (tmp_path / name).write_bytes((folder / "clip.mp4").read_bytes())
        assert np.array_equal(read_video(tmp_path / name)[0], clip), name
    with pytest.raises(VideoError) as err:
        read_video(tmp_path / "missing\nsecond line.mp4")
    assert "\n" not in str(err.value) and "missing\\nsecond line.mp4" in str(err.value)


def test_devices_fifos_and_folders_are_refused_at_once(tmp_path):
    (tmp_path / "zero.mp4").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.mp4")
    (tmp_path / "dir.mp4").symlink_to(tmp_path)
    outcome = {}

    def read(name):
        try:
            read_video(tmp_path / name)
        except VideoError as exc:
            outcome[name] = str(exc)
    for name in ("zero.mp4", "fifo.mp4", "dir.mp4"):
        reader = threading.Thread(target=read, args=(name,), daemon=True)
        reader.start()
        reader.join(10)
        if reader.is_alive():  # blocked on the fifo: unblock it (a writer opening it) so the test ends
            with open(tmp_path / "fifo.mp4", "wb"):
                pass
            pytest.fail(f"reading {name} blocked")
    assert "not a regular file" in outcome["zero.mp4"] and "not a regular file" in outcome["fifo.mp4"]
    assert "folder" in outcome["dir.mp4"]


def _outpaint(cwd, name, out, engines, *args):
    return subprocess.run([*CLI, "-o", out, "--engines", engines, *FAST, *args, "--", name],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("name", ["sub/play.m3u8", "list.ffconcat", "list.mp4", "dref.mov", "/dev/zero"])
def test_the_command_refuses_each_trap_in_one_line_before_the_engines_load(traps, tmp_path, name):
    """Exit 2, one line, no output, no partial, within seconds (the engines are never loaded: none exist)."""
    res = _outpaint(traps[0], name, tmp_path / "out.mp4", tmp_path / "no-engines")
    line = one_error_line(res)
    assert res.returncode == 2 and ("not a media file" in line or "no decodable" in line
                                    or "not a regular file" in line), line
    assert not list(tmp_path.iterdir())


def test_the_command_outpaints_a_protocol_named_file_as_itself(traps, engines, tmp_path):
    res = _outpaint(traps[0], "concat:secret.mp4", tmp_path / "out.mp4", engines, "--quiet")
    assert res.returncode == 0, res.stderr
    frames = media.decode(tmp_path / "out.mp4")[0]
    assert len(frames) == 8 and not media.shows_secret(frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.parametrize("name", ["concat:out.mp4", "file:out.mp4", "pipe:1.mp4"])
def test_outputs_named_like_protocols_are_written_as_the_files_they_are(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # a relative name, as a user types it
    frames = media.scene(4, 64, 48, seed=5)
    write_video(name, frames, np.arange(4) / 24.0, 24.0, EncodeOptions(audio=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert read_video(tmp_path / name)[0].shape == frames.shape
