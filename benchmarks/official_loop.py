"""The official M3DDM inference, timed: its pipeline and UNet classes imported unchanged from a checkout of the
official repository, driven over a clip the way its ``inference.py`` drives them (coarse-to-fine strides, one
pipeline call per window, the global frames and the window's canvases prepared per window), on the CPU in FP32
or, as the official ``inference.py`` runs it, on a CUDA GPU in FP16.

Runs with the libraries the official code was written for (diffusers 0.18.2, transformers 4.30.2), not the
runtime's: under ``make official-env``'s interpreter, or (on a GPU machine, ``benchmarks.gpu_check --official``)
under the machine's own with those libraries first on PYTHONPATH:

    build/official-venv/bin/python benchmarks/official_loop.py --repo CHECKOUT --unet DIR --vae DIR --clip X.npy

Prints ``RESULT {json}``: seconds, windows, UNet calls. ``benchmarks.official`` runs it beside our runtime.
Substitutions, as for ../shared/golden: model size S instead of 256 where the official code says 256, a CPU
generator on the CPU, frames from an array instead of decord. Only this driver is ours; no official line is copied
here.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import sys
import time
import types
from typing import Any

import numpy as np

STRIDES, DENSE_BELOW, WINDOW, GLOBAL_FRAMES = (15, 5, 1), 50, 16, 16


def windows(count: int) -> list[tuple[int, list[int]]]:
    """(stride, the window's 16 frame indices) in the official visiting order (padded with the last frame)."""
    out = []
    for stride in ((1,) if count < DENSE_BELOW else STRIDES):
        grid = list(range(count))[::stride]
        for start in range(0, count // stride - 1, WINDOW - 1):
            frames = grid[start:start + WINDOW]
            out.append((stride, frames + [count - 1] * (WINDOW - len(frames))))
    return out


def _stand_ins() -> None:
    """decord (video reading) and torchvision (transforms) are imported by the official pipeline module but
    never called on this path: empty modules keep the import from needing them. tokenizers is hidden: nothing here
    tokenizes, and transformers 4.30.2 refuses at import a tokenizers newer than 0.13 (a GPU image's 0.23),
    whose own wheels stop before Python 3.12."""
    sys.modules["tokenizers"] = None  # type: ignore[assignment]  # find_spec() then says it is not installed
    decord: Any = types.ModuleType("decord")  # given attributes below
    decord.bridge = types.SimpleNamespace(set_bridge=lambda *a: None)
    decord.VideoReader = object
    vision: Any = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    vision.transforms = transforms
    for name, module in (("decord", decord), ("torchvision", vision), ("torchvision.transforms", transforms)):
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules.setdefault(name, module)


def _canvases(frames: np.ndarray, size: int, ratio: float):
    """The window's frames -> (TELEA inits, mask [1, 16, S, S], masked canvases), as the official preprocessing
    makes them for one target ratio (width / height), at model size S."""
    import cv2
    import torch
    h, w = frames.shape[1:3]
    th, tw = (h, ratio * h) if w / h < ratio else (w / ratio, w)
    longest = max(th, tw)
    rw, rh = min(int(size / longest * w), size), min(int(size / longest * h), size)
    top, left = (size - rh) // 2, (size - rw) // 2
    inits, masks, canvases = [], [], []
    for frame in frames:
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[top:top + rh, left:left + rw] = cv2.resize(frame.astype(np.float32), (rw, rh))
        mask = np.ones((size, size), np.uint8)
        mask[top:top + rh, left:left + rw] = 0
        inits.append(cv2.inpaint(canvas, mask, 5, cv2.INPAINT_TELEA))
        masks.append(mask)
        canvases.append(canvas)

    def unit(images):  # uint8 [16, S, S, 3] -> [3, 16, S, S] in [-1, 1]
        return (torch.from_numpy(np.stack(images)).float().permute(3, 0, 1, 2) / 255.0 - 0.5) / 0.5
    return unit(inits), torch.from_numpy(np.stack(masks)).float()[None], unit(canvases)


def run(repo: str, unet_dir: str, vae_dir: str, video: np.ndarray, fps: float, size: int, steps: int,
        ratio: float, device: str = "cpu", dtype_name: str = "fp32") -> dict:
    _stand_ins()
    sys.path.insert(0, str(repo) + "/src")  # the official checkout's model and pipelines packages (untyped)
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler
    from model.unet_3d_condition_video import UNet3DConditionModel  # type: ignore[import-not-found]
    from pipelines.stable_diffusion.pipeline_stable_diffusion_video2video_mask_for_video_outpainting import (  # type: ignore[import-not-found]
        StableDiffusionPipelineVideo2VideoMaskC as OfficialPipeline,
    )

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    scheduler = PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)  # SD1.5's
    unet = UNet3DConditionModel.from_pretrained(unet_dir).to(device, dtype).eval()
    vae = AutoencoderKL.from_pretrained(vae_dir).to(device, dtype).eval()
    pipe = OfficialPipeline(vae=vae, unet=unet, scheduler=scheduler, scheduler_pre=DDPMScheduler(**betas))
    calls = [0]
    forward = unet.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)
    unet.forward = counted

    count = len(video)
    stored = [None] * count
    global_index = np.linspace(0, count - 1, GLOBAL_FRAMES, dtype=int)
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    plan = windows(count)
    for stride, frames in plan:
        globals_ = torch.from_numpy(video[global_index]).permute(0, 3, 1, 2).float() / 255.0
        globals_ = (F.interpolate(globals_, size=(size, size), mode="bilinear", antialias=True) - 0.5) / 0.5
        inits, mask, masked = (x.to(device, dtype) for x in _canvases(video[frames], size, ratio))
        with torch.no_grad():
            _, latents = pipe.outpainting_with_random_masked_latent_inference_bidirection(
                ori_image=inits, mask_image=masked, mask=mask[:, :1], noise_level=100 if stride > 1 else 0,
                generator=torch.Generator(device).manual_seed(6), fps=fps // stride, use_add_noise=True, strength=1.0,
                batch_size=1, num_frames=WINDOW, height=size, width=size, guidance_scale=2,
                previous_guidance_scale=4.0, num_inference_steps=steps, latents_dtype=dtype,
                already_outpainted_latents=[stored[i] for i in frames], copy_already_frame=False,
                global_frames=globals_.to(device, dtype), num_global_frames=GLOBAL_FRAMES)
        for position, i in enumerate(frames):
            if stored[i] is None:
                stored[i] = latents[:, :, position]
    sync()
    return {"seconds": time.perf_counter() - t0, "windows": len(plan), "unet_calls": calls[0],
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device, "dtype": dtype_name,
            "libraries": {name: _version(name) for name in ("diffusers", "transformers", "huggingface_hub")}}


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", required=True, help="a checkout of alimama-creative/M3DDM-Video-Outpainting")
    ap.add_argument("--unet", required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--clip", required=True, help=".npy of uint8 frames [T, H, W, 3]")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ratio", default="9:16")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (the official inference's own)")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="fp16 is the official inference's")
    args = ap.parse_args(argv)
    w, h = (float(v) for v in args.ratio.split(":"))
    # the caller reads the RESULT line: the official pipeline prints a line of its own per window
    result = run(args.repo, args.unet, args.vae, np.load(args.clip), args.fps, args.size, args.steps, w / h,
                 args.device, args.dtype)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
