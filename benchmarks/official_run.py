"""Running the official M3DDM code (benchmarks/official_loop.py) in a process of its own, with the libraries it was
written for: beside our runtime on the CPU (benchmarks/official.py) and on a GPU machine (benchmarks/gpu_check.py).

Standard library only: a GPU machine's sequence imports it before anything is known to be installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOP = ROOT / "benchmarks" / "official_loop.py"
OFFICIAL_MODEL = Path("src") / "model" / "unet_3d_condition_video.py"
# `make gpu-wheels` downloads the official code's libraries (the Makefile's OFFICIAL_LIBS) into WHEELS; on a machine
# whose own are newer, they are installed into LIBS and put first on the official process's PYTHONPATH only.
WHEELS = ROOT / "wheels" / "official"
LIBS = ROOT / "build" / "official-libs"


class OfficialError(RuntimeError):
    """The official run cannot be made, or failed: one line saying why."""


def check_checkout(repo: Path) -> None:
    if not (Path(repo) / OFFICIAL_MODEL).is_file():
        raise OfficialError(f"{repo} is not a checkout of the official repository (no {OFFICIAL_MODEL})")


def libraries(libs: Path = LIBS, wheels: Path = WHEELS) -> Path:
    """``libs``, holding the official code's libraries: installed from ``wheels`` the first time (seconds)."""
    if (libs / "diffusers").is_dir():
        return libs
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise OfficialError(f"no official libraries in {libs} and no wheels in {wheels}: run `make gpu-wheels` where "
                            f"PyPI is reachable and bring wheels/")
    part = libs.with_name(libs.name + ".partial")  # renamed when whole: a failed install is never taken for one
    shutil.rmtree(part, ignore_errors=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(part),
                          *map(str, found)], capture_output=True, text=True)
    if res.returncode:
        shutil.rmtree(part, ignore_errors=True)
        raise OfficialError(f"installing {wheels} into {libs} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    shutil.rmtree(libs, ignore_errors=True)
    part.rename(libs)
    return libs


def run_official(python, repo, unet, vae, clip, size: int, *extra: str, libs: Path | None = None,
                 timeout: float | None = None) -> dict:
    """One official run over the clip ``clip`` (.npy of uint8 frames): its RESULT (seconds, windows, UNet calls,
    ...). ``libs``: a folder put first on its PYTHONPATH."""
    cmd = [str(python), str(LOOP), "--repo", str(repo), "--unet", str(unet), "--vae", str(vae), "--clip", str(clip),
           "--size", str(size), *extra]
    env = dict(os.environ)
    if libs is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(libs), *filter(None, [env.get("PYTHONPATH")])])
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OfficialError(f"the official run did not end within {timeout:.0f} s") from None
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise OfficialError(f"the official run failed: {tail}")
    return json.loads(lines[-1][len("RESULT "):])
