"""python -m export.tensorrt_build --engines DIR [...] (make plans): the plan builder's command line.

The builder itself is runtime/engines/trt_build.py (``build_plans``); this module holds only what makes it a
command (its flags, the logging, one error line and exit code per failure), so that the engines layer needs
nothing of the runtime's command-line side. ``python -m export`` adds the same builder flags
(``add_arguments``) when it builds plans after exporting.
"""
from __future__ import annotations

import argparse
import sys

from runtime import cli
from runtime.engines import contract
from runtime.engines.trt_build import DEFAULT_OPT_LEVEL, build_plans


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--windows", help="UNet window counts to build profiles for, e.g. 1,2,4 "
                                      "(default from GPU memory: 1 below 20 GB, 1,2 below 40 GB, else 1,2,4)")
    ap.add_argument("--vae-batch", type=int, default=contract.VAE_BATCH, help="largest VAE batch (images per call)")
    ap.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL, choices=range(0, 6),
                    help="TensorRT builder optimisation level")
    ap.add_argument("--workspace-gb", type=float, help="cap on the builder's tactic workspace")
    ap.add_argument("--device", type=int, default=0, help="GPU index")
    ap.add_argument("--verbose", action="store_true", help="TensorRT's own log at INFO level")


def main(argv=None) -> int:
    ap = cli.Parser(prog="python -m export.tensorrt_build",
                    description="Build TensorRT plans for an engines folder (on the GPU that will run them).")
    ap.add_argument("--engines", default="engines", help="engines folder made by python -m export")
    ap.add_argument("--precision", choices=contract.PRECISIONS, default="fp16")
    ap.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    add_arguments(ap)
    args = ap.parse_args(argv)
    cli.setup_logging(sys.stdout)
    return cli.run(lambda: build_plans(args.engines, args.precision, args.windows, args.vae_batch, args.opt_level,
                                       args.workspace_gb, args.device, args.force, args.verbose),
                   interrupted="finished plans are kept and recorded")
