"""python -m runtime.outpaint INPUT -o OUTPUT --ratio 9:16 [options]: outpaint a video file.

The command line over ``runtime.Outpainter`` (runtime/api.py): options become a ``Settings``, failures one
``error:`` line and an exit code (runtime/cli.py: 2 bad input, 3 engines, 130 interrupted, 1 else).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

from m3ddm.errors import EXIT_BAD_INPUT, InputError, check_cancel, first_line
from runtime import cli, env, options, storage
from runtime.callbacks import event_record

log = logging.getLogger("runtime.outpaint")  # not __name__: run as __main__


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m runtime.outpaint",
                    description="Outpaint a video to another aspect ratio with M3DDM engines.")
    ap.add_argument("input", help="input video file, or an object's URL (s3://bucket/key, gs://, az://)")
    ap.add_argument("-o", "--output", required=True,
                    help="output video (.mp4, .mov, .mkv, .webm), or an object's URL (uploaded whole at the end)")
    options.add_run_options(ap)
    options.add_cluster_options(ap.add_argument_group("Ray (the cluster extra)"),
                                workers="spread each level's independent windows over this many Ray workers, "
                                        "each with its own engines (this process runs the first level)")
    ap.add_argument("--no-overwrite", action="store_true", help="refuse to replace an existing output")
    ap.add_argument("--work-dir", help="keep the job's checkpoints here; running the same command again resumes "
                                       "where it stopped, with the same result (removed on success)")
    ap.add_argument("--restart", action="store_true", help="clear a work dir made for another job and start afresh")
    ap.add_argument("--keep-work-dir", action="store_true", help="keep the work dir after success")
    ap.add_argument("--progress", choices=["line", "jsonl", "none"], default="line",
                    help="progress on stderr: a status line (default), JSON lines (one event each, for programs "
                         "following the run), or none")
    ap.add_argument("--preview", metavar="FILE.jpg",
                    help="keep this JPEG updated with a preview of the border as it forms (replaced atomically: any "
                         "image viewer can watch it); JSON-lines progress then numbers the previews")
    ap.add_argument("--preview-decoder", choices=("linear", "vae"), default="linear",
                    help="how a preview is decoded: a linear map of the latents (default, nearly free) or the VAE "
                         "decoder every 10 steps")
    ap.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr (--progress none)")
    return ap


class Progress:
    """One status line on stderr: redrawn in place on a terminal; otherwise a line per window batch, and
    during the prepare stage a line every few seconds."""

    EVERY_S = 5.0

    def __init__(self, enabled: bool):
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last_batch: tuple | None = None
        self.last_line = 0.0

    def _show(self, line: str, final: bool):
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif final:
            print(line, file=sys.stderr, flush=True)
            self.last_line = time.perf_counter()

    def __call__(self, event: dict):
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        if event.get("stage") in ("prepare", "decode"):
            n, total = event["frames_done"], event["frames"]
            self._show(f"{event['stage']:<8} frames {n:>5}/{total}  {elapsed:6.1f} s",
                       n == total or time.perf_counter() - self.last_line > self.EVERY_S)
            return
        if event.get("stage") != "sample":
            return
        eta = event.get("eta_s")
        line = (f"level {event['level'] + 1} (stride {event['stride']})"
                f"  windows {event['windows_done'] + event['batch']:>3}"
                f"/{event['windows']}  step {event['step']:>3}/{event['steps']}"
                f"  {event['step'] / max(event['seconds'], 1e-9):5.2f} steps/s"
                f"  {event['frames_done'] / max(elapsed, 1e-9):5.2f} frames/s  {elapsed:6.1f} s"
                + (f"  eta {eta:6.0f} s" if eta is not None else ""))
        key = (event["windows_done"], event["batch"])
        final = event["step"] == event["steps"] and key != self.last_batch
        if final:
            self.last_batch = key
        self._show(line, final)

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


class JsonProgress:
    """Every progress event as one JSON line on stderr (stage: prepare, prepared, sample, decode, finish)."""

    def __call__(self, event: dict):
        print(json.dumps(event_record(event)), file=sys.stderr, flush=True)

    def close(self):
        pass


def checked(args, staging: storage.Staging) -> tuple:
    """(Settings, EncodeOptions): every option, the encoder, the output's bucket and the input (an object's
    downloaded into scratch), before the engines load or a frame is decoded; ``args`` then name local files."""
    from runtime.streaming import output_paths
    from runtime.video import check_input
    args.output = staging.output(args.output)
    run_settings, encode = options.checked(args, [args.output])
    if args.no_overwrite:
        staging.refuse_existing(output_paths(args.output, run_settings.labels).values())
    args.input = staging.input(args.input)
    check_input(args.input, args.stream, run_settings.max_pixels)
    if args.work_dir is not None:
        from runtime.workdir_files import check_apart
        check_apart(args.work_dir, args.input, output_paths(args.output, run_settings.labels).values())
    return run_settings, encode


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cli.setup_logging(quiet=args.quiet)
    staging = storage.Staging(env.cache_dir() / "scratch")  # where URLs' objects are downloaded and uploaded from
    try:
        return _main(args, staging)
    finally:
        staging.close()


def _main(args, staging: storage.Staging) -> int:
    try:
        run_settings, encode = checked(args, staging)
    except (InputError, ValueError) as exc:
        return cli.fail(EXIT_BAD_INPUT, first_line(exc))
    except storage.TransferError as exc:
        return cli.fail(exc.exit_code, first_line(exc))
    preview = None
    if args.preview is not None:
        from runtime.preview import PreviewOptions
        preview = PreviewOptions(form="number", path=args.preview, decoder=args.preview_decoder)
    progress = JsonProgress() if args.progress == "jsonl" and not args.quiet else \
        Progress(not args.quiet and args.progress == "line")
    t0 = time.perf_counter()
    cancel = threading.Event()
    outpainter = None

    def run():
        nonlocal outpainter
        from runtime.api import Outpainter
        if args.workers is not None:  # before the engines load: the address checked, Ray quiet under --quiet
            from runtime import cluster
            cluster.connect(args.address, quiet=args.quiet,
                            when_lost="run the same command on a running cluster" + (
                                " (it resumes from --work-dir)" if args.work_dir else ""))
        try:
            outpainter = Outpainter(args.engines, backend=args.backend, threads=args.threads,
                                    gpu_memory_gb=args.gpu_memory)
            if args.workers is not None:  # once this process's engines are known to load
                outpainter.pipeline.spread = cluster.window_pool(
                    args.engines, args.workers, address=args.address, backend=args.backend, threads=args.threads,
                    gpu_memory_gb=args.gpu_memory, gpus_per_worker=args.gpus_per_worker,
                    cpus_per_worker=args.cpus_per_worker)
            check_cancel(cancel)
            for note in outpainter.backend.notes:
                log.warning(note)
            summary = outpainter.outpaint_file(args.input, args.output, settings=run_settings, stream=args.stream,
                                               overwrite=not args.no_overwrite, encode=encode, progress=progress,
                                               cancel=cancel, work_dir=args.work_dir, restart=args.restart,
                                               keep_work_dir=args.keep_work_dir, preview=preview)
        finally:
            progress.close()
        summary["outputs"] = staging.publish(summary["outputs"])  # uploaded whole, now the run has succeeded
        summary["backend"] = outpainter.backend.name
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["output_fps"] = round(summary["frames"] / max(summary["seconds"], 1e-9), 3)
        if args.json:
            print(json.dumps(summary))
        else:
            log.info(f"wrote {', '.join(summary['outputs'].values())}: {summary['frames']} frames, "
                     f"{summary['output_size'][0]}x{summary['output_size'][1]}, {summary['seconds']:.1f} s")

    def on_signal():
        if outpainter is not None:
            outpainter.interrupt()

    def interrupted():
        from runtime.workdir import finished_windows
        if not args.work_dir:
            return "no output was written"
        done = finished_windows(args.work_dir)
        if done is None:
            return f"no output was written; run the same command again to resume from {args.work_dir}"
        return (f"no output was written; {args.work_dir} keeps {done} finished windows: run the same command again "
                "to resume")

    return cli.run(run, interrupted=interrupted, out_of_memory="try a smaller --batch-windows", cancel=cancel,
                   on_signal=on_signal)


if __name__ == "__main__":
    sys.exit(main())
