"""python -m export --unet SRC --vae SRC --out DIR [--precision fp32|fp16|both] [--size S] [--plans auto|yes|no]
[--torch | --torch-only]"""
from __future__ import annotations

import logging
import sys

from m3ddm.errors import EnginesError, InputError
from m3ddm.facts import RELEASED_MODEL_SIZE, RELEASED_UNET_REPO, RELEASED_VAE_REPO
from runtime import cli, tensorrt_plans
from runtime.engines import trt_build

log = logging.getLogger("export")  # not __name__: run as __main__


def main(argv=None) -> int:
    ap = cli.Parser(prog="python -m export",
                    description="Export the M3DDM UNet, global encoder and SD1.5 VAE to an engines folder.")
    ap.add_argument("--unet", default=RELEASED_UNET_REPO, help="UNet checkpoint folder or hub repo id")
    ap.add_argument("--vae", default=RELEASED_VAE_REPO, help="VAE folder, or hub repo id (subfolder vae)")
    ap.add_argument("--out", required=True, help="engines folder to make or update")
    ap.add_argument("--precision", choices=["fp32", "fp16", "both"], default="both")
    ap.add_argument("--size", type=int, default=RELEASED_MODEL_SIZE,
                    help="model size S in pixels (multiple of 64; 256 for the released weights)")
    ap.add_argument("--force", action="store_true", help="re-export even what is up to date")
    ap.add_argument("--attention-softmax", choices=["fp32", "fp16"], default="fp32",
                    help="precision of the UNet's attention softmax in the FP16 graph: fp32 (between Casts, the "
                         "safe default) or fp16 (as the official model; lets TensorRT fuse the attention: measure "
                         "memory, speed and output on your GPU)")
    ap.add_argument("--plans", choices=["auto", "yes", "no"], default="auto",
                    help="TensorRT plans from the FP16 graphs: auto builds them when TensorRT and a GPU are here")
    torch_group = ap.add_mutually_exclusive_group()
    torch_group.add_argument("--torch", action="store_true",
                             help="also torch.export programs of the components, for --backend torch (GPUs without "
                                  "TensorRT); one UNet program per window count of --windows (default 1,2,4)")
    torch_group.add_argument("--torch-only", action="store_true",
                             help="the torch.export programs and no ONNX graphs (minutes and gigabytes fewer at full "
                                  "size): a folder only --backend torch runs; implies --plans no")
    tensorrt_plans.add_arguments(ap)
    args = ap.parse_args(argv)
    precisions = ("fp32", "fp16") if args.precision == "both" else (args.precision,)
    if args.torch_only and args.plans == "yes":
        ap.error("--torch-only exports no ONNX graphs, and TensorRT plans are built from them: leave out --plans yes")
    cli.setup_logging(sys.stdout)

    def export():
        from export.engine_folder import export_engines
        try:
            export_engines(args.unet, args.vae, args.out, precisions, args.size, force=args.force,
                           attention_softmax=args.attention_softmax, graphs=not args.torch_only)
            if args.torch or args.torch_only:
                from export.torch_export import DEFAULT_WINDOWS, export_programs
                from runtime.engines.trt_policy import parse_windows
                export_programs(args.unet, args.vae, args.out, precisions,
                                parse_windows(args.windows) if args.windows else DEFAULT_WINDOWS, force=args.force,
                                attention_softmax=args.attention_softmax)
        except OSError as exc:  # an unwritable or full output folder is the user's to fix
            raise InputError(f"cannot write the engines folder {args.out}: {exc}") from None
        if not args.torch_only:
            build_plans_if_wanted(args, precisions)

    return cli.run(export, interrupted="finished graphs and plans are kept and recorded")


def build_plans_if_wanted(args, precisions) -> None:
    """--plans yes: build or fail; auto: build when TensorRT and a GPU are here, else say so and go on."""
    from runtime.engines import cuda
    from runtime.engines import trt_policy as policy
    if args.plans == "no":
        return
    if "fp16" not in precisions:
        if args.plans == "yes":
            raise EnginesError("TensorRT plans are built from the fp16 graphs: export with --precision fp16 or both")
        return
    try:
        policy.import_tensorrt()
        cuda.set_device(args.device)
    except EnginesError as exc:
        if args.plans == "yes":
            raise
        log.warning(f"no TensorRT plans: {exc}. The ONNX graphs are ready (ONNX Runtime runs them); to add plans "
                    f"later, on the GPU: make plans ENGINES={args.out}")
        return
    trt_build.build_plans(args.out, "fp16", args.windows, args.vae_batch, args.opt_level, args.workspace_gb,
                          args.device, args.force, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
