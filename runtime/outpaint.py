"""python -m runtime.outpaint INPUT -o OUTPUT --ratio 9:16 [options]: outpaint a video file."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_BAD_INPUT, EXIT_ENGINES, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 1, 130


def _csv(kind, n=None):
    def parse(text):
        try:
            vals = [kind(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        if not vals or (n is not None and len(vals) != n):
            raise argparse.ArgumentTypeError(f"{text!r} needs {n or 'some'} comma-separated values")
        return vals
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    from runtime.outpainter import DEFAULT_ENGINES
    from runtime.samplers import SAMPLERS
    ap = _Parser(prog="python -m runtime.outpaint",
                                 description="Outpaint a video to another aspect ratio with M3DDM engines.")
    ap.add_argument("input", help="input video file")
    ap.add_argument("-o", "--output", required=True, help="output video (.mp4, .mov, .mkv, .webm)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--ratio", default="9:16", help="target ratio W:H, or several: 9:16,1:1 (one output each, "
                                                   "named OUTPUT_9x16.mp4, ...); default 9:16")
    g.add_argument("--pad", type=_csv(int, 4), metavar="T,R,B,L", help="explicit padding in source pixels instead of a ratio")
    ap.add_argument("--engines", default=DEFAULT_ENGINES, help="engines folder (default: $M3DDM_ENGINES or ./engines)")
    ap.add_argument("--backend", default="auto", choices=["auto", "ort", "ort-cpu", "ort-cuda", "tensorrt"])
    ap.add_argument("--sampler", default="pndm", choices=sorted(SAMPLERS), help="pndm (default) reproduces the official run")
    ap.add_argument("--steps", type=int, help="sampling steps (default: 50; 20 for dpmpp)")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--strides", type=_csv(int), help="coarse-to-fine strides, e.g. 15,5,1 (official) or 30,15,1 "
                                                      "(paper); default: 15,5,1, or 1 under 50 frames")
    ap.add_argument("--guidance", type=_csv(float, 2), metavar="S1,S2", help="local and global guidance (default 2,4)")
    ap.add_argument("--batch-windows", type=int, default=4, help="independent windows per engine call (default 4)")
    ap.add_argument("--window-noise", choices=["shared", "independent"], default="shared",
                    help="one start noise for every window (official) or one per window")
    ap.add_argument("--feather", type=float, help="seam blend width in source pixels (default 1%% of the shorter side)")
    ap.add_argument("--height", type=int, help="scale the output to this height (default: the source's own scale)")
    ap.add_argument("--stream", type=int, help="video stream index (default: the first)")
    ap.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime")
    ap.add_argument("--gpu-memory", type=float, metavar="GB",
                    help="TensorRT: the most GPU memory this run may take (weights included); the window batch "
                         "is chosen to fit")
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--pix-fmt", default="yuv420p")
    ap.add_argument("--no-audio", action="store_true", help="drop the audio track")
    ap.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return ap


class Progress:
    """One status line on stderr: redrawn in place on a terminal, a line per window batch otherwise."""

    def __init__(self, enabled: bool, frames: int = 0):
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last_batch = None

    def __call__(self, event: dict):
        if not self.enabled or event.get("stage") != "sample":
            return
        elapsed = time.perf_counter() - self.t0
        line = (f"level {event['level'] + 1} (stride {event['stride']})  windows {event['windows_done'] + event['batch']:>3}"
                f"/{event['windows']}  step {event['step']:>3}/{event['steps']}"
                f"  {event['step'] / max(event['seconds'], 1e-9):5.2f} steps/s"
                f"  {event['frames_done'] / max(elapsed, 1e-9):5.2f} frames/s  {elapsed:6.1f} s")
        key = (event["windows_done"], event["batch"])
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif event["step"] == event["steps"] and key != self.last_batch:
            print(line, file=sys.stderr, flush=True)
            self.last_batch = key

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from runtime.engines import EnginesError
    from runtime.outpainter import Outpainter
    from runtime.video import EncodeOptions, VideoError

    if not os.path.exists(args.input):
        return fail(EXIT_BAD_INPUT, f"input {args.input} does not exist")
    for name in ("steps", "batch_windows", "threads", "height", "gpu_memory"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return fail(EXIT_BAD_INPUT, f"--{name.replace('_', '-')} must be at least 1")
    ratios = args.ratio.split(",") if args.pad is None else ["pad"]
    progress = Progress(not args.quiet)
    t0 = time.perf_counter()
    try:
        outpainter = Outpainter(args.engines, backend=args.backend, threads=args.threads,
                                gpu_memory_gb=args.gpu_memory)
        if not args.quiet:
            for note in outpainter.backend.notes:
                print(f"note: {note}", file=sys.stderr)
        summary = outpainter.outpaint_file(
            args.input, args.output, ratio=ratios if args.pad is None else "9:16", pad=args.pad,
            stream=args.stream, overwrite=not args.no_overwrite,
            encode=EncodeOptions(codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt, audio=not args.no_audio),
            steps=args.steps, sampler=args.sampler, seed=args.seed, guidance=args.guidance, strides=args.strides,
            batch_windows=args.batch_windows, window_noise=args.window_noise, feather=args.feather,
            output_height=args.height, progress=progress)
    except (VideoError, ValueError) as exc:
        progress.close()
        return fail(EXIT_BAD_INPUT, str(exc))
    except EnginesError as exc:
        progress.close()
        return fail(EXIT_ENGINES, str(exc))
    except KeyboardInterrupt:
        progress.close()
        return fail(EXIT_INTERRUPTED, "interrupted; no output was written")
    except MemoryError:
        progress.close()
        return fail(EXIT_INTERNAL, "out of memory; try a smaller --batch-windows")
    except Exception as exc:  # never a traceback for users; M3DDM_DEBUG=1 shows it
        progress.close()
        if os.environ.get("M3DDM_DEBUG"):
            raise
        return fail(EXIT_INTERNAL, f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                                   f"(M3DDM_DEBUG=1 shows the traceback)")
    progress.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["output_fps"] = round(summary["frames"] / max(summary["seconds"], 1e-9), 3)
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        outs = ", ".join(summary["outputs"].values())
        print(f"wrote {outs}: {summary['frames']} frames, {summary['output_size'][0]}x{summary['output_size'][1]}, "
              f"{summary['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
