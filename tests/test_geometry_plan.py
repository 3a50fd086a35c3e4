"""Canvas geometry and the window plan against the worked examples of docs/algorithm.md §2.1 and §3.4, and the
golden run."""
import json
import subprocess
import sys

import numpy as np
import pytest

from runtime.geometry import global_frame_indices, letterbox_geometry, parse_ratio, target_canvas
from runtime.plan import official_plan


@pytest.mark.parametrize("w,h,ratios,box", [
    (1920, 1080, ["9:16"], (87, 56, 81, 144)),  # docs/algorithm.md §2.1: 144x81 at rows 87-167, columns 56-199
    (1280, 720, ["9:16", "16:9"], (88, 56, 80, 144)),  # §2.1: 144x80 at rows 88-167
    (640, 360, ["9:16", "16:9"], (88, 56, 80, 144)),
])
def test_letterbox_worked_examples(w, h, ratios, box):
    b = letterbox_geometry(h, w, ratios, 256)
    assert (b.top, b.left, b.height, b.width) == box


def test_letterbox_640x480_has_107_rows():
    assert letterbox_geometry(480, 640, ["9:16", "16:9"], 256).height == 107


def test_mask_matches_the_golden_run(shared):
    d = np.load(shared("golden/run_dense_realshort_9x16.npz"))
    t, h, w, _ = d["source_frames"].shape
    np.testing.assert_array_equal(letterbox_geometry(h, w, ["9:16"], 64).mask, d["mask"])
    np.testing.assert_array_equal(global_frame_indices(t, 16), d["global_index"])


def test_target_canvas_and_ratio_parsing():
    assert target_canvas(1080, 1920, ["9:16"]) == pytest.approx((1920 * 16 / 9, 1920))
    assert target_canvas(1080, 1920, ["16:9"]) == (1080, 1920)
    assert parse_ratio("9:16") == 9 / 16
    for bad in ("9", "a:b", "0:1", "-1:2", "1:0"):
        with pytest.raises(ValueError):
            parse_ratio(bad)


def windows(plan):
    return [(w.stride, list(w.frames), list(w.guides)) for level in plan for w in level]


def test_plan_t100_spec_worked_example():
    plan = official_plan(100)
    assert [len(level) for level in plan] == [1, 2, 7]
    assert plan[0][0].frames == (0, 15, 30, 45, 60, 75, 90) + (99,) * 9 and plan[0][0].guides == ()
    w0, w1 = plan[1]
    assert w0.frames == tuple(range(0, 80, 5)) and w0.guides == (0, 3, 6, 9, 12, 15)
    assert w1.frames == (75, 80, 85, 90, 95) + (99,) * 11
    assert [w1.frames[p] for p in w1.new_positions] == [80, 85, 95]
    last = plan[2][6]
    assert last.frames == tuple(range(90, 100)) + (99,) * 6
    assert [last.frames[p] for p in last.new_positions] == [91, 92, 93, 94, 96, 97, 98]
    for k in range(6):
        w = plan[2][k]
        assert w.frames == tuple(range(15 * k, 15 * k + 16)) and w.guides == (0, 5, 10, 15)


def test_plan_t600_and_t40():
    plan = official_plan(600)
    assert [len(level) for level in plan] == [3, 8, 40]
    assert plan[1][3].guides == (0, 3, 6, 9, 12, 15)
    assert plan[2][39].frames == (585, 586, 587, 588, 589, 590, 591, 592, 593, 594, 595, 596, 597, 598, 599, 599)
    dense = official_plan(40)
    assert [w.frames[0] for w in dense[0]] == [0, 15, 30] and dense[0][2].frames[-7:] == (39,) * 7


@pytest.mark.parametrize("strides", [None, (30, 15, 1), (4, 1), (1,)])
@pytest.mark.parametrize("t", [1, 15, 16, 17, 49, 50, 51, 600, 1001])
def test_plan_covers_every_frame_once_generated(t, strides):
    plan = official_plan(t, strides)
    generated = [w.frames[p] for level in plan for w in level for p in w.new_positions]
    assert sorted(generated) == list(range(t))
    for level in plan:
        for w in level:
            assert len(w.frames) == 16 and max(w.frames) <= t - 1  # never a frame past the video's end
            assert all(w.frames[p] in {f for lv in plan[:w.level + 1] for x in lv for f in x.frames}
                       for p in w.guides)


def test_plan_matches_the_golden_run(shared):
    meta = json.loads(shared("golden/run_dense_realshort_9x16.json").read_text())
    got = windows(official_plan(meta["T"]))
    assert got == [(w["stride"], w["frames"], w["guide_positions"]) for w in meta["windows"]]


def test_runtime_modules_import_without_torch():
    code = ("import sys, runtime.geometry, runtime.plan, runtime.guidance, m3ddm.facts\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("conftest").ROOT))
    assert out.stdout.strip() == "False", out.stderr


def test_batches_follow_the_backend_profiles():
    from runtime.pipeline import batches
    level = list(range(11))
    assert [len(b) for b in batches(level, 4)] == [4, 4, 3]
    assert [len(b) for b in batches(level, 4, [1, 2, 4])] == [4, 4, 2, 1]
    assert [len(b) for b in batches(level, 4, [1, 2])] == [2] * 5 + [1]
    assert [len(b) for b in batches(level, 1, [1, 2, 4])] == [1] * 11
    assert [len(b) for b in batches(level, 3, [1, 2, 4])] == [2] * 5 + [1]
    assert sum(batches(level, 4, [1, 2, 4]), []) == level


@pytest.mark.parametrize("strides", [None, (30, 15, 1), (10, 1), (4, 1), (7, 3, 1)])
@pytest.mark.parametrize("t", [16, 49, 60, 100, 255, 600])
def test_independent_runs_never_batch_a_window_with_the_one_it_reads(t, strides):
    from runtime.plan import independent_runs
    plan = official_plan(t, strides)
    for level in plan:
        runs = independent_runs(level)
        assert sum(runs, []) == level
        for run in runs:
            generated = {f for w in run for p, f in enumerate(w.frames) if p not in w.guides}
            assert not any(w.frames[p] in generated for w in run for p in w.guides), (t, strides, level[0].level)
    if strides is None:  # the official plan: level 0 in turn, every later level one batchable run
        runs = [independent_runs(level) for level in plan]
        assert all(len(r) == 1 for r in runs[0]) and all(len(r) == 1 for r in runs[1:])
