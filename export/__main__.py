"""python -m export --unet SRC --vae SRC --out DIR [--precision fp32|fp16|both] [--size S]"""
from __future__ import annotations

import argparse
import sys

from runtime.constants import RELEASED_MODEL_SIZE, RELEASED_UNET_REPO, RELEASED_VAE_REPO


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export",
                                 description="Export the M3DDM UNet, global encoder and SD1.5 VAE to an engines folder.")
    ap.add_argument("--unet", default=RELEASED_UNET_REPO, help="UNet checkpoint folder or hub repo id")
    ap.add_argument("--vae", default=RELEASED_VAE_REPO, help="VAE folder, or hub repo id (subfolder vae)")
    ap.add_argument("--out", required=True, help="engines folder to make or update")
    ap.add_argument("--precision", choices=["fp32", "fp16", "both"], default="both")
    ap.add_argument("--size", type=int, default=RELEASED_MODEL_SIZE,
                    help="model size S in pixels (multiple of 64; 256 for the released weights)")
    ap.add_argument("--force", action="store_true", help="re-export even what is up to date")
    args = ap.parse_args(argv)
    precisions = ("fp32", "fp16") if args.precision == "both" else (args.precision,)

    from export.engine_folder import export_engines
    from export.model.errors import CheckpointError
    try:
        export_engines(args.unet, args.vae, args.out, precisions, args.size, force=args.force)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished graphs are kept and recorded", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
