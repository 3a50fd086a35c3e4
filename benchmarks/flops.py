"""FLOPs of each engine call, counted once with torch's FLOP counter on the meta device (no weights, no time)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from m3ddm.facts import GLOBAL_FRAMES, WINDOW_FRAMES
from runtime.engines import contract

# Dense FP16 tensor-core peaks (TFLOP/s, FP32 accumulate where the vendor lists both), by GPU name, from
# NVIDIA's data sheets; the first key contained in the device name wins (more specific keys first).
FP16_TENSOR_PEAK_TFLOPS = {
    "V100-PCIE": 112, "V100S": 130, "V100": 125, "T4": 65, "A100": 312, "A10G": 70, "A10": 125, "L40S": 362,
    "L40": 181, "L4": 121, "H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "B200": 2250,
}


def fp16_peak_tflops(gpu_name: str) -> float | None:
    for key, peak in FP16_TENSOR_PEAK_TFLOPS.items():
        if key.lower() in gpu_name.lower():
            return float(peak)
    return None


def _count(fn) -> tuple[int, dict]:
    with torch.device("meta"), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops(), fc.get_flop_counts()


def unet_flops(config=None, size: int = 256, rows: int = 3) -> dict:
    """Our UNet call (``rows`` = 3 W batch rows) and the official call at the same size: four rows, the
    global encoder on 4 x 16 images inside the call, and the context K/V projected for every frame."""
    from export.model import UNetConfig, build_unet
    model = build_unet(config or UNetConfig(), device="meta")
    lat = contract.latent_size(size)
    tokens = GLOBAL_FRAMES * contract.global_tokens_per_frame(lat)

    def call(n):
        return lambda: model(torch.randn(n, 9, WINDOW_FRAMES, lat, lat), torch.full((n,), 961.0),
                             torch.full((n,), 30.0), torch.randn(n, tokens, 320))

    ours, _ = _count(call(rows))
    four, per_module = _count(call(4))
    kv_once = sum(sum(v.values()) for k, v in per_module.items() if ".transformer_blocks.0.attn2.to_" in k
                  and k.rsplit(".", 1)[-1] in ("to_k", "to_v"))
    encoder, _ = _count(lambda: model.encode_global(torch.randn(4 * GLOBAL_FRAMES, 4, lat, lat)))
    official = four + kv_once * (WINDOW_FRAMES - 1) + encoder
    global_once, _ = _count(lambda: model.encode_global(torch.randn(GLOBAL_FRAMES, 4, lat, lat)))
    return {"unet_call": ours, "rows": rows, "official_call": official, "global_encoder": global_once,
            "context_kv_per_frame_extra": kv_once * (WINDOW_FRAMES - 1)}


def vae_flops(vae_config: dict | None = None, size: int = 256) -> dict:
    """Per image: the VAE encoder (posterior mean) and decoder; SD1.5's VAE config by default."""
    from diffusers import AutoencoderKL
    cfg = vae_config or dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    lat = contract.latent_size(size)
    enc, _ = _count(lambda: vae.encode(torch.randn(1, 3, size, size)))
    dec, _ = _count(lambda: vae.decode(torch.randn(1, 4, lat, lat)))
    return {"vae_encode_per_image": enc, "vae_decode_per_image": dec}


if __name__ == "__main__":
    import json
    print(json.dumps({**unet_flops(), **vae_flops()}, indent=1))
