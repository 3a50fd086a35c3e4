"""The prepare stage pipelined with sampling: the first level's frames (and the global frames) first, the rest
on a thread while the first level samples, every group in chunks of its own, so the latents never depend on
the timing; a failure on that thread is the run's failure."""
import numpy as np
import pytest

import media
from m3ddm.errors import InputError
from runtime import Outpainter
from runtime.geometry import letterbox_geometry
from runtime.plan import official_plan
from runtime.prepare import level_groups, prepare_groups
from runtime.settings import Settings


def test_groups_follow_the_plan_levels():
    plan = official_plan(100)
    groups = prepare_groups(100, plan)
    # The first level's grid, padded with the last frame, in two: its first run (one window: what the first
    # step reads), then the rest of it.
    assert groups[0] == sorted(set(plan[0][0].frames)) and groups[1] == []  # 100 frames: one window
    assert sorted(groups[0] + groups[1]) == list(range(0, 100, 15)) + [99]
    assert groups[2] == [f for f in range(0, 100, 5) if f % 15]
    assert sorted(sum(groups, [])) == list(range(100))  # every frame once
    assert level_groups(groups, plan) == [1, 2, 3]
    long = prepare_groups(600, official_plan(600))  # 600 frames: the first level is 3 windows, 41 frames
    assert long[0] == list(range(0, 240, 15)) and long[1] == list(range(240, 600, 15)) + [599]
    assert prepare_groups(30, official_plan(30)) == [list(range(30))]  # one level: one group, in order
    assert level_groups([list(range(30))], official_plan(30)) == [0]
    assert prepare_groups(7) == [list(range(7))]


@pytest.fixture(scope="module")
def outpainter(engines):
    with Outpainter(engines, backend="ort", threads=1) as op:
        yield op


def test_sampling_starts_before_the_rest_is_prepared_with_the_same_latents(outpainter):
    frames = media.scene(100, 96, 54, seed=7)
    pipeline = outpainter.pipeline
    box = letterbox_geometry(54, 96, ["9:16"], outpainter.size)
    plan = official_plan(100)
    s = Settings(steps=2)

    def given(wanted):
        return ((i, frames[i] if wanted is None or i in wanted else None) for i in range(100))

    events = []
    video = pipeline.prepare(given, 100, box, 24.0, events.append, plan=plan, background=True)
    latents, _, _ = pipeline.sample(video, s, progress=events.append)
    video.waiter.close()
    stages = [(e["stage"], e.get("frames_done")) for e in events]
    first_sample = next(k for k, (stage, _) in enumerate(stages) if stage == "sample")
    assert max(n for stage, n in stages[:first_sample] if stage == "prepare") < 100  # began before all was in
    assert stages[-1][0] == "sample" and max(n for stage, n in stages if stage == "prepare") == 100

    serial = pipeline.prepare(iter(frames), 100, box, 24.0, plan=plan)
    assert serial.waiter is None
    for name in ("inits", "canvases", "context"):
        assert np.array_equal(getattr(video, name), getattr(serial, name)), name
    again, _, _ = pipeline.sample(serial, s)
    assert np.array_equal(latents, again)
    assert np.array_equal(outpainter.outpaint(frames, fps=24, steps=2).latents, latents)  # the API's path


def test_a_failure_while_preparing_the_rest_fails_the_run(outpainter):
    frames = media.scene(100, 96, 54, seed=8)
    box = letterbox_geometry(54, 96, ["9:16"], outpainter.size)

    def given(wanted):
        for i in range(100):
            if wanted is not None and i == 97 and 97 in wanted:  # the second pass breaks near the end
                raise InputError("frame 97 is damaged")
            yield i, frames[i] if wanted is None or i in wanted else None

    video = outpainter.pipeline.prepare(given, 100, box, 24.0, plan=official_plan(100), background=True)
    with pytest.raises(InputError, match="frame 97"):
        outpainter.pipeline.sample(video, Settings(steps=2))
    video.waiter.close()


# -- counting the frames from the container's packets ------------------------------------------------------
def _decoded_times(path):
    from runtime.video import iter_frames
    return np.array([t for _, t, _ in iter_frames(path, rgb=False)])


@pytest.mark.parametrize("kind", ["b_frames", "variable_rate", "vp9_webm", "shared_media"])
def test_packet_times_are_the_decoded_times(tmp_path, kind, shared):
    from runtime.video import packet_times
    frames = media.scene(40, 64, 36, seed=3)
    if kind == "b_frames":  # x264's default GOP has B-frames: packets come in decode order, not display order
        media.write(path := tmp_path / "b.mp4", frames)
    elif kind == "variable_rate":
        times = np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.01, 0.09, 39)])
        media.write(path := tmp_path / "vfr.mp4", frames, times=times)
    elif kind == "vp9_webm":
        media.write(path := tmp_path / "v.webm", frames, codec="libvpx-vp9")
    else:
        path = shared("media/cockatoo.mp4")
    announced = packet_times(path)
    assert announced is not None and np.array_equal(announced, _decoded_times(path))


def test_a_count_the_decoder_does_not_confirm_is_redone_by_decoding(outpainter, tmp_path, monkeypatch):
    """Where the container announces other frames than decode (a damaged packet the decoder drops, say), the
    run counts by decoding and its output is what it would have been; a work dir left by such a run is
    resumed by the next one."""
    from runtime import streaming
    media.write(src := tmp_path / "in.mp4", media.scene(40, 96, 54, seed=5))
    out_ok, out_wrong = tmp_path / "ok.mp4", tmp_path / "wrong.mp4"
    opts = dict(ratio="9:16", steps=2, encode=streaming.EncodeOptions(crf=0))
    ok = outpainter.outpaint_file(src, out_ok, **opts)

    honest = streaming.packet_times
    for lie in (lambda p, s=None: honest(p, s)[:-1],  # one frame fewer than decode gives
                lambda p, s=None: honest(p, s) + 0.5):  # the right count at other times
        monkeypatch.setattr(streaming, "packet_times", lie)
        out_wrong.unlink(missing_ok=True)
        got = outpainter.outpaint_file(src, out_wrong, **opts)
        assert got["frames"] == ok["frames"] == 40
        assert np.array_equal(media.decode(out_wrong)[0], media.decode(out_ok)[0])

    wd = tmp_path / "wd"
    first = outpainter.outpaint_file(src, out_wrong, work_dir=wd, keep_work_dir=True, **opts)
    again = outpainter.outpaint_file(src, out_wrong, work_dir=wd, **opts)
    assert first["windows_sampled"] > 0 and again["prepare_resumed"] and again["windows_sampled"] == 0
    assert np.array_equal(media.decode(out_wrong)[0], media.decode(out_ok)[0])


def test_the_first_step_waits_for_the_first_window_only(outpainter, monkeypatch):
    """The first level's other windows get their TELEA inits after sampling has started, from canvases kept by
    the first pass (no third decode); the latents are those of a serial prepare."""
    from runtime import prepare as prepare_module
    frames = media.scene(100, 96, 54, seed=9)
    s = Settings(steps=2, strides=(5, 1))
    plan = official_plan(100, s.strides)
    groups = prepare_groups(100, plan)
    assert len(plan[0]) == 2 and len(groups[1]) > 0  # a first level of two windows
    box = letterbox_geometry(54, 96, ["9:16"], outpainter.size)
    later, decoded = [], []
    add_canvas = prepare_module._Preparer.add_canvas
    monkeypatch.setattr(prepare_module._Preparer, "add_canvas",
                        lambda self, i, canvas: (later.append(i), add_canvas(self, i, canvas))[1])

    def given(wanted):
        decoded.append(wanted)
        return ((i, frames[i] if wanted is None or i in wanted else None) for i in range(100))

    video = outpainter.pipeline.prepare(given, 100, box, 24.0, plan=plan, background=True)
    latents, _, _ = outpainter.pipeline.sample(video, s)
    video.waiter.close()
    assert sorted(later) == groups[1] and len(decoded) == 2  # two passes, as before
    assert not set(groups[1]) & decoded[1]  # the second pass does not convert them again
    serial = outpainter.pipeline.prepare(iter(frames), 100, box, 24.0, plan=plan)
    for name in ("inits", "canvases", "context"):
        assert np.array_equal(getattr(video, name), getattr(serial, name)), name
    assert np.array_equal(outpainter.pipeline.sample(serial, s)[0], latents)
