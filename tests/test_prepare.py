"""The prepare stage pipelined with sampling: the first level's frames (and the global frames) first, the rest
on a thread while the first level samples, every group in chunks of its own, so the latents never depend on
the timing; a failure on that thread is the run's failure."""
import numpy as np
import pytest

import media
from m3ddm.errors import InputError
from runtime import Outpainter
from runtime.geometry import letterbox_geometry
from runtime.pipeline import prepare_groups
from runtime.plan import official_plan
from runtime.settings import Settings


def test_groups_follow_the_plan_levels():
    plan = official_plan(100)
    groups = prepare_groups(100, plan)
    assert groups[0] == list(range(0, 100, 15)) + [99]  # the first level's grid, padded with the last frame
    assert groups[1] == [f for f in range(0, 100, 5) if f % 15]
    assert sorted(sum(groups, [])) == list(range(100))  # every frame once
    assert prepare_groups(30, official_plan(30)) == [list(range(30))]  # one level: one group, in order
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
