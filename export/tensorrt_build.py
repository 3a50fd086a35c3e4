"""python -m export.tensorrt_build --engines DIR [...] (make plans): the plan builder's command.

Building plans needs no torch and runs on the GPU that will run them, so the builder belongs to the runtime:
runtime/engines/trt_build.py, its command line runtime/tensorrt_plans.py. This entry point stays where
`make plans` and users' scripts call it.
"""
import sys

from runtime.tensorrt_plans import main

if __name__ == "__main__":
    sys.exit(main())
