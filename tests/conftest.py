import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M3DDM_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT))


def _need(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"needs ../shared/{rel} (the project's shared data, present in CI); not found at {path}")
    return path


def one_error_line(res):
    """A failed command's stderr: exactly one line, an `error:` one, no traceback; returns it."""
    assert res.returncode != 0
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.fixture(scope="session")
def shared():
    """Path to a file or folder under ../shared; skips the test, saying why, when it is absent."""
    return _need


@pytest.fixture(scope="session")
def tiny_unet():
    from export.model import load_unet
    return load_unet(_need("fixtures/tiny_unet"))


@pytest.fixture(scope="session")
def tiny_vae():
    from export.model import load_vae
    return load_vae(_need("fixtures/tiny_vae"))


@pytest.fixture(scope="session")
def tiny_config():
    """The fixtures' architecture (widths 32, 64, 64, 64), for models the tests make themselves."""
    from export.model import UNetConfig
    return UNetConfig(block_out_channels=(32, 64, 64, 64))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def make_engines(out, *extra, unet=None, vae=None, size=64):
    """`make engines` on the fixtures (or the given checkpoints) into ``out``."""
    import subprocess
    cmd = ["make", "-s", "engines", f"UNET={unet or SHARED / 'fixtures/tiny_unet'}",
           f"VAE={vae or SHARED / 'fixtures/tiny_vae'}", f"ENGINES={out}", f"SIZE={size}", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """An engines folder (FP32 and FP16 ONNX) made by `make engines` from the tiny fixtures, S = 64."""
    _need("fixtures/tiny_unet")
    out = tmp_path_factory.mktemp("engines")
    res = make_engines(out)
    assert res.returncode == 0, res.stderr[-2000:]
    return out
