"""LPIPS and FVD on weights the tests make (random, in the official files' key names and shapes; no downloads).

Random weights cannot show that the scores mean anything perceptually; what is checked is that the files the
users bring load by their real key names, and that the computation is the published one: LPIPS against an
independent functional re-computation here and against the ``lpips`` package's own code (with the v0.1 linear
heads that the package ships), I3D's state-dict layout against pytorch-i3d's, the Fréchet distance against
closed forms, and the CLI end to end.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import fvd, lpips, metrics
from conftest import ROOT
from media import scene, write

# --- weight files in the official layouts --------------------------------------------------------------------

# torchvision's alexnet().state_dict(): features.{0,3,6,8,10} convolutions (+ classifier.{1,4,6}, ignored by LPIPS).
ALEXNET_FEATURES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
                    10: (256, 256, 3, 3)}
LIN_CHANNELS = (64, 192, 384, 256, 256)  # lpips' alex.pth: lin{k}.model.1.weight, [1, C, 1, 1]

# pytorch-i3d's InceptionI3d(400): every Unit3D is conv3d (no bias) + bn; the Inception modules' branches are
# b0 (1x1x1), b1a (1x1x1) -> b1b (3x3x3), b2a (1x1x1) -> b2b (3x3x3), b3a (max pool) -> b3b (1x1x1).
I3D_STEM = {"Conv3d_1a_7x7": (3, 64, 7), "Conv3d_2b_1x1": (64, 64, 1), "Conv3d_2c_3x3": (64, 192, 3)}
I3D_MIXED = {  # name: in channels, [b0, b1a, b1b, b2a, b2b, b3b]
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]), "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (128 + 192 + 96 + 64, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (192 + 208 + 48 + 64, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (160 + 224 + 64 + 64, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (128 + 256 + 64 + 64, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (112 + 288 + 64 + 64, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (256 + 320 + 128 + 128, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (256 + 320 + 128 + 128, [384, 192, 384, 48, 128, 128]),
}


def i3d_expected_shapes(with_counters=True) -> dict:
    """pytorch-i3d's state-dict keys and shapes, written out from its module layout."""
    units = {name: (cin, cout, k) for name, (cin, cout, k) in I3D_STEM.items()}
    for name, (cin, (c0, c1a, c1b, c2a, c2b, c3)) in I3D_MIXED.items():
        units.update({f"{name}.b0": (cin, c0, 1), f"{name}.b1a": (cin, c1a, 1), f"{name}.b1b": (c1a, c1b, 3),
                      f"{name}.b2a": (cin, c2a, 1), f"{name}.b2b": (c2a, c2b, 3), f"{name}.b3b": (cin, c3, 1)})
    shapes = {}
    for unit, (cin, cout, k) in units.items():
        shapes[f"{unit}.conv3d.weight"] = (cout, cin, k, k, k)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{unit}.bn.{stat}"] = (cout,)
        if with_counters:
            shapes[f"{unit}.bn.num_batches_tracked"] = ()
    shapes["logits.conv3d.weight"] = (400, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (400,)
    return shapes


def random_alexnet(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, shape in ALEXNET_FEATURES.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.05
    # The real file also holds classifier.1.weight [4096, 9216] and classifier.4.weight [4096, 4096]; they are
    # ignored like these, and left out to keep the test's file small.
    state.update({"classifier.1.bias": torch.zeros(4096), "classifier.4.bias": torch.zeros(4096),
                  "classifier.6.weight": torch.zeros(1000, 4096), "classifier.6.bias": torch.zeros(1000)})
    return state


def random_lins(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)  # non-negative, as the trained heads are
    return {f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=g) for k, c in enumerate(LIN_CHANNELS)}


def random_i3d(seed=2) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in i3d_expected_shapes(with_counters=False).items():
        if key.endswith("conv3d.weight"):
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A --weights folder with the three files, saved as torch.save writes state dicts."""
    folder = tmp_path_factory.mktemp("weights")
    torch.save(random_alexnet(), folder / "alexnet-owt-7be5be79.pth")
    torch.save(random_lins(), folder / "alex.pth")
    torch.save(random_i3d(), folder / "i3d_pretrained_400.pt")  # as old torch saved it: no num_batches_tracked
    return folder


@pytest.fixture(scope="module")
def lpips_model(weights):
    return lpips.load(weights, device="cpu")


@pytest.fixture(scope="module")
def i3d(weights):
    return fvd.load(weights, device="cpu")


def noisy(v, amount, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(v.astype(int) + rng.integers(-amount, amount + 1, v.shape), 0, 255).astype(np.uint8)


# --- LPIPS ---------------------------------------------------------------------------------------------------

def test_lpips_zero_for_identical_grows_with_noise_and_is_symmetric(lpips_model):
    v = scene(3, 64, 48, seed=1)
    assert lpips.lpips_video(lpips_model, v, v) == pytest.approx(0, abs=1e-7)
    d = [lpips.lpips_video(lpips_model, v, noisy(v, a)) for a in (8, 32, 96)]
    assert 0 < d[0] < d[1] < d[2]
    w = noisy(v, 32)
    assert lpips.lpips_video(lpips_model, w, v) == pytest.approx(d[1], rel=1e-5)
    per_frame = lpips.frame_distances(lpips_model, v, w, batch=2)  # batching does not change the numbers
    np.testing.assert_allclose(per_frame, lpips.frame_distances(lpips_model, v, w, batch=3), rtol=1e-5)
    assert per_frame.shape == (3,) and per_frame.mean() == pytest.approx(d[1], rel=1e-5)


def _reference_lpips(alex, lins, img0, img1):
    """LPIPS v0.1 / AlexNet written out with functional ops in float64 from the two state dicts."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    w = {k: v.double() for k, v in alex.items()}

    def taps(x):
        x = (x - shift) / scale
        r1 = F.relu(F.conv2d(x, w["features.0.weight"], w["features.0.bias"], stride=4, padding=2))
        r2 = F.relu(F.conv2d(F.max_pool2d(r1, 3, 2), w["features.3.weight"], w["features.3.bias"], padding=2))
        r3 = F.relu(F.conv2d(F.max_pool2d(r2, 3, 2), w["features.6.weight"], w["features.6.bias"], padding=1))
        r4 = F.relu(F.conv2d(r3, w["features.8.weight"], w["features.8.bias"], padding=1))
        r5 = F.relu(F.conv2d(r4, w["features.10.weight"], w["features.10.bias"], padding=1))
        return r1, r2, r3, r4, r5

    total = 0
    for k, (a, b) in enumerate(zip(taps(img0), taps(img1))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        weight = lins[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total = total + ((a - b) ** 2 * weight).sum(dim=1).mean(dim=(1, 2))
    return total


def test_lpips_matches_an_independent_computation(lpips_model, weights):
    alex = torch.load(weights / "alexnet-owt-7be5be79.pth", weights_only=True)
    lins = torch.load(weights / "alex.pth", weights_only=True)
    v = scene(2, 72, 40, seed=2)
    w = noisy(v, 40, seed=3)
    to = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).double() / 127.5 - 1
    expected = _reference_lpips(alex, lins, to(v), to(w)).numpy()
    np.testing.assert_allclose(lpips.frame_distances(lpips_model, v, w), expected, rtol=2e-4)


def _stand_in_torchvision(monkeypatch):
    """The lpips package builds its trunk from torchvision.models.alexnet(...).features. torchvision's PyPI build
    for torch 2.13 needs CUDA torch (it fails to import on the CPU wheel), so where it cannot be imported this puts
    a module with torchvision's AlexNet feature layout in its place; the weights are loaded into it afterwards."""
    import types
    nn = torch.nn

    def alexnet(pretrained=False, **kwargs):
        net = types.SimpleNamespace()
        net.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        return net

    models = types.ModuleType("torchvision.models")
    models.alexnet = alexnet
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)


def test_lpips_matches_the_lpips_package(weights, tmp_path, monkeypatch):
    """Same trunk weights, the package's own shipped v0.1 heads (weights/v0.1/alex.pth) loaded by our loader."""
    import importlib.util
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips==0.1.4 scipy; its torchvision "
                    "dependency would replace torch 2.13.0)")
    pytest.importorskip("scipy", reason="the lpips package imports scipy")
    before = set(sys.modules)
    try:
        try:
            importlib.import_module("torchvision.models")
        except Exception:
            _stand_in_torchvision(monkeypatch)
        try:
            import lpips as lpips_package
        except Exception as exc:
            pytest.skip(f"the lpips package does not import here ({type(exc).__name__}: {exc})")
        reference = lpips_package.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        alex = torch.load(weights / "alexnet-owt-7be5be79.pth", weights_only=True)
        slices = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}
        trunk = {f"slice{s}.{i}.{p}": alex[f"features.{i}.{p}"]
                 for s, idx in slices.items() for i in idx if i in ALEXNET_FEATURES for p in ("weight", "bias")}
        reference.net.load_state_dict(trunk, strict=True)
        shipped = Path(lpips_package.__file__).parent / "weights" / "v0.1" / "alex.pth"
        ours = lpips.load(alexnet=weights / "alexnet-owt-7be5be79.pth", lin=shipped, device="cpu")
        v = scene(3, 64, 64, seed=4)
        w = noisy(v, 24, seed=5)
        to = lambda f: torch.from_numpy(f).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            expected = reference(to(v), to(w)).flatten().numpy()
        got = lpips.frame_distances(ours, v, w)
        assert expected.min() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    finally:
        for name in set(sys.modules) - before:
            if name == "lpips" or name.startswith("lpips."):
                del sys.modules[name]


def test_lpips_files_are_checked_key_by_key(weights, tmp_path):
    bad = random_alexnet()
    del bad["features.6.weight"]
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(metrics.MetricError, match=r"missing\.pth: missing key 'features\.6\.weight'") as err:
        lpips.load(alexnet=tmp_path / "missing.pth", lin=weights / "alex.pth")
    assert "\n" not in str(err.value)
    lins = random_lins()
    lins["lin3.model.1.weight"] = torch.ones(1, 128, 1, 1)
    torch.save(lins, tmp_path / "alex.pth")
    with pytest.raises(metrics.MetricError, match=r"alex\.pth: key 'lin3\.model\.1\.weight' has shape \[1, 128, 1"):
        lpips.load(alexnet=weights / "alexnet-owt-7be5be79.pth", lin=tmp_path / "alex.pth")
    torch.save({**random_lins(), "lin5.model.1.weight": torch.ones(1, 8, 1, 1)}, tmp_path / "extra.pth")
    with pytest.raises(metrics.MetricError, match="unexpected key 'lin5.model.1.weight'"):
        lpips.load(alexnet=weights / "alexnet-owt-7be5be79.pth", lin=tmp_path / "extra.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(metrics.MetricError, match="junk.pth: cannot load") as err:
        lpips.load(alexnet=tmp_path / "junk.pth", lin=weights / "alex.pth")
    assert "\n" not in str(err.value)


# --- I3D and FVD ---------------------------------------------------------------------------------------------

def test_i3d_state_dict_has_pytorch_i3d_names_and_shapes(i3d):
    ours = {k: tuple(v.shape) for k, v in fvd.InceptionI3d().state_dict().items()}
    assert ours == i3d_expected_shapes()
    assert len(ours) == 344  # 57 conv+bn units x 6 entries + the logits' weight and bias
    assert ours["Conv3d_1a_7x7.conv3d.weight"] == (64, 3, 7, 7, 7)
    assert ours["Conv3d_1a_7x7.bn.running_mean"] == (64,)
    assert ours["Mixed_4f.b1b.conv3d.weight"] == (320, 160, 3, 3, 3)
    assert ours["Mixed_5c.b3b.conv3d.weight"] == (128, 832, 1, 1, 1)
    assert ours["logits.conv3d.weight"] == (400, 1024, 1, 1, 1)
    # pytorch-i3d's InceptionI3d(400).state_dict() holds 12,711,824 floating-point values (weights + BN stats)
    assert sum(int(np.prod(s)) for k, s in ours.items() if not k.endswith("num_batches_tracked")) == 12_711_824
    assert i3d.Mixed_5c.b2b.conv3d.weight.abs().sum() > 0  # the file's values, not the initial ones


def test_i3d_file_checks(weights, tmp_path):
    state = random_i3d()
    state["Conv3d_1a_7x7.bn.num_batches_tracked"] = torch.tensor(7)  # files from current torch carry counters
    torch.save(state, tmp_path / "with_counters.pt")
    assert int(fvd.load(tmp_path / "with_counters.pt", device="cpu").Conv3d_1a_7x7.bn.num_batches_tracked) == 7
    del state["Mixed_5c.b3b.conv3d.weight"]
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")
    with pytest.raises(metrics.MetricError, match="i3d_pretrained_400.pt: missing key 'Mixed_5c.b3b.conv3d.weight'"):
        fvd.load(tmp_path)
    state = random_i3d()
    state["logits.conv3d.weight"] = torch.zeros(600, 1024, 1, 1, 1)  # a Kinetics-600 head
    torch.save(state, tmp_path / "k600.pt")
    with pytest.raises(metrics.MetricError, match=r"key 'logits\.conv3d\.weight' has shape \[600, 1024, 1, 1, 1\]"):
        fvd.load(tmp_path / "k600.pt")


def test_preprocess_resizes_the_shorter_side_and_crops_the_centre():
    import cv2
    v = scene(3, 100, 40, seed=6)  # landscape: 40 -> 32, 100 -> ceil(80.0) = 80, crop columns 24..56
    x = fvd.preprocess(v, size=32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    expected = np.stack([cv2.resize(f.astype(np.float32) / 255, (80, 32), interpolation=cv2.INTER_LINEAR)
                         for f in v])[:, :, 24:56] * 2 - 1
    np.testing.assert_allclose(x.permute(1, 2, 3, 0).numpy(), expected, atol=1e-5)
    assert fvd.preprocess(scene(2, 40, 90, seed=7), size=32).shape == (3, 2, 32, 32)  # portrait
    flat = fvd.preprocess(np.full((1, 50, 60, 3), 255, np.uint8), size=32)
    assert torch.all(flat == 1.0) and float(fvd.preprocess(np.zeros((1, 40, 40, 3), np.uint8), 32).max()) == -1.0


def test_region_share_shows_what_the_crop_keeps():
    """A 64x48 frame outpainted at its sides (8 px each): VideoGPT's centre crop keeps only the untouched middle
    (so does a portrait frame outpainted at top and bottom); the whole-frame resize keeps the borders (a quarter
    of the frame). Borders across the shorter side stay in the crop."""
    sides = np.zeros((48, 64), bool)
    sides[:, :8] = sides[:, 56:] = True
    assert fvd.region_share(sides, 64, "crop") == 0.0 and fvd.region_share(sides.T, 64, "crop") == 0.0
    assert fvd.region_share(sides, 64, "full") == pytest.approx(0.25)
    top_bottom = np.zeros((48, 64), bool)
    top_bottom[:6] = top_bottom[42:] = True
    assert fvd.region_share(top_bottom, 64, "crop") == pytest.approx(0.25, abs=0.01)
    assert fvd.preprocess(scene(2, 64, 48, seed=5), 32, "full").shape == (3, 2, 32, 32)
    with pytest.raises(metrics.MetricError, match="crop, full"):
        fvd.preprocess(scene(1, 64, 48), 32, "pad")


def test_i3d_features_per_clip(i3d):
    v = scene(36, 64, 48, seed=8)  # 2 clips of 16 (4 frames left over)
    f = fvd.features(i3d, v, clip_frames=16, size=64, batch=1)
    assert f.shape == (2, 400) and f.dtype == np.float64 and np.isfinite(f).all()
    with torch.no_grad():
        direct = i3d(fvd.preprocess(v[16:32], 64)[None]).double().numpy()
    np.testing.assert_allclose(f[1], direct[0], rtol=1e-4, atol=1e-4)
    assert fvd.features(i3d, v, clip_frames=None, size=64).shape == (1, 400)
    assert fvd.features(i3d, v[:10], clip_frames=16, size=64).shape == (0, 400)
    assert [fvd.clip_count(n, 16) for n in (0, 15, 16, 47, 48)] == [0, 0, 1, 2, 3]
    assert fvd.clip_count(5, None) == 1


def test_i3d_at_the_standard_size_pools_2x7x7(i3d):
    """At 16 frames of 224x224 the trunk ends at [1024, 2, 7, 7] and the logits are the plain 2x7x7 average
    pool, as in pytorch-i3d (the pool's clipping to smaller maps does not enter)."""
    x = fvd.preprocess(scene(16, 256, 224, seed=9))[None]
    with torch.no_grad():
        trunk = i3d.trunk(x)
        assert trunk.shape == (1, 1024, 2, 7, 7)
        pooled = trunk.mean(dim=(2, 3, 4), keepdim=True)
        logits = F.conv3d(pooled, i3d.logits.conv3d.weight, i3d.logits.conv3d.bias).flatten()
        np.testing.assert_allclose(i3d(x)[0].numpy(), logits.numpy(), rtol=1e-4, atol=1e-4)


def _gaussian_sample(n, mean, variances, seed):
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and diag(variances)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # whiten: sample covariance = I
    return np.asarray(mean) + z * np.sqrt(variances)


def test_frechet_distance_closed_forms():
    d = 6
    a, b = np.linspace(0.5, 3, d), np.linspace(4, 0.2, d)
    mu1, mu2 = np.arange(d, dtype=float), np.arange(d, dtype=float)[::-1] * 0.5
    x1, x2 = _gaussian_sample(50, mu1, a, 1), _gaussian_sample(80, mu2, b, 2)
    np.testing.assert_allclose(np.cov(x1, rowvar=False), np.diag(a), atol=1e-10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fvd.frechet_distance(x1, x2) == pytest.approx(expected, rel=1e-9)
    assert fvd.frechet_distance(x2, x1) == pytest.approx(expected, rel=1e-9)
    assert fvd.frechet_distance(x1, x1) == pytest.approx(0, abs=1e-9)
    # rotating both sets alike changes nothing (the general, non-diagonal case)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((d, d)))
    assert fvd.frechet_distance(x1 @ q, x2 @ q) == pytest.approx(expected, rel=1e-8)
    # fewer points than dimensions (400-d logits of a few clips): rank-deficient covariances still work
    f = np.random.default_rng(4).standard_normal((5, 400))
    assert fvd.frechet_distance(f, f) == pytest.approx(0, abs=1e-8)
    assert fvd.frechet_distance(f, f + 1.0) == pytest.approx(400.0, rel=1e-8)  # a shift moves only the means
    with pytest.raises(metrics.MetricError, match="at least 2"):
        fvd.frechet_distance(f[:1], f)


def test_frechet_distance_agrees_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is not installed (an optional cross-check)")
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((40, 8)) @ rng.standard_normal((8, 8)), rng.standard_normal((30, 8)) + 0.3
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    expected = (((x1.mean(0) - x2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
                - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real)
    assert fvd.frechet_distance(x1, x2) == pytest.approx(expected, rel=1e-8)


def test_fvd_zero_for_the_same_videos_and_positive_for_others(i3d):
    videos = [scene(16, 64, 48, seed=s) for s in (10, 11, 12)]
    assert fvd.fvd(i3d, videos, videos, size=64) == pytest.approx(0, abs=1e-6)
    assert fvd.fvd(i3d, videos, [noisy(v, 80) for v in videos], size=64) > 1.0


# --- the CLI -------------------------------------------------------------------------------------------------

def _quality(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "benchmarks.quality", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for s in range(2):
        write(folder / f"clip{s}.mp4", scene(16, 64, 48, seed=20 + s))
    return folder


def test_quality_cli_reports_lpips_and_fvd(engines, weights, videos, tmp_path):
    out = tmp_path / "scores.json"
    res = _quality("--videos", videos, "--engines", engines, "--steps", 2, "--max-frames", 16,
                   "--metrics", "psnr,lpips,fvd", "--weights", weights, "--fvd-size", 64, "--fvd-frame", "full",
                   "--json", out)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    for s in report["videos"].values():
        assert 0 < s["lpips"] < 10 and s["frames"] == 16
    assert report["mean"]["lpips"] == pytest.approx(np.mean([s["lpips"] for s in report["videos"].values()]))
    assert report["fvd_clips"] == 2 and np.isfinite(report["fvd"]) and report["fvd"] > 0
    assert report["fvd_generated_share"] == pytest.approx(0.25) and "warning" not in res.stderr
    assert (report["fvd_clip_frames"], report["fvd_size"], report["fvd_frame"]) == (16, 64, "full")
    printed = json.loads(res.stdout.strip().splitlines()[-1])
    assert printed["fvd"] == pytest.approx(report["fvd"]) and "lpips" in printed["mean"]


class _NoiseBorders:
    """Stands in for the Outpainter (no engines): keeps the source band, fills the borders with noise."""

    def __init__(self, *args, **kwargs):
        pass

    def outpaint(self, kept, fps, pad, **kwargs):
        top, right, bottom, left = pad
        t, h, w = kept.shape[:3]
        rng = np.random.default_rng(h * w)
        out = rng.integers(0, 256, (t, h + top + bottom, w + left + right, 3)).astype(np.uint8)
        out[:, top:top + h, left:left + w] = kept

        class R:
            frames = out
        return R()


def test_quality_cli_warns_when_the_fvd_crop_misses_the_borders(weights, videos, monkeypatch, capsys):
    import runtime
    from benchmarks import quality
    monkeypatch.setattr(runtime, "Outpainter", _NoiseBorders)
    args = ["--videos", str(videos), "--max-frames", "16", "--metrics", "lpips,fvd", "--weights", str(weights),
            "--fvd-size", "64"]
    assert quality.main(args + ["--fvd-frame", "crop"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["fvd"] == pytest.approx(0, abs=1e-6) and printed["fvd_generated_share"] == 0
    assert "warning: only 0.0% of the I3D input is generated border" in captured.err
    assert quality.main(args) == 0  # full frames, the default
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["fvd"] > 1 and printed["fvd_generated_share"] == pytest.approx(0.25)
    assert printed["mean"]["lpips"] > 0.05 and "warning" not in captured.err


def test_quality_cli_stops_before_outpainting(weights, videos, tmp_path):
    """Bad weights and too few clips for a covariance: one error line, exit 2, and no engines needed to find out."""
    no_engines = tmp_path / "no_engines"
    res = _quality("--videos", videos, "--engines", no_engines, "--metrics", "fvd", "--weights", weights,
                   "--max-frames", 16, "--fvd-clip-frames", 32, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: FVD needs at least 2 clips"), res.stderr
    assert res.stderr.count("\n") == 1 and "give 0 32-frame clips" in res.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "alexnet-owt-7be5be79.pth").symlink_to(weights / "alexnet-owt-7be5be79.pth")
    torch.save({k: v for k, v in random_lins().items() if k != "lin2.model.1.weight"}, broken / "alex.pth")
    res = _quality("--videos", videos, "--engines", no_engines, "--metrics", "lpips", "--weights", broken, timeout=120)
    assert res.returncode == 2 and "alex.pth: missing key 'lin2.model.1.weight'" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    res = _quality("--videos", videos, "--engines", no_engines, "--metrics", "lpips,fvd", "--weights", tmp_path,
                   timeout=120)
    assert res.returncode == 2 and "alexnet-owt-7be5be79.pth" in res.stderr
    res = _quality("--videos", videos, "--metrics", "psnr,lpip", timeout=120)
    assert res.returncode == 2 and "unknown metric(s) lpip" in res.stderr
