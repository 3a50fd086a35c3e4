"""python -m runtime.batch INPUT... --out-dir DIR --ratio 9:16 [--address ADDR] [--workers N] [run options]:
outpaint many videos over a Ray cluster (the ``cluster`` extra).

A Ray Data pipeline over the list of videos (whole files: a job needs the whole clip) with a fixed pool of
actors, each building its ``Outpainter`` once (one per GPU; CPU workers where there is none). Each video
becomes DIR/<stem>.mp4 (the outpaint command's _WxH suffixes for several ratios) and one JSON line in the
report: {"input", "status": "succeeded"|"failed"|"skipped", "outputs", "frames", "seconds", "error", "attempts"}
(attempts: how often a worker started the video; above 1 where Ray ran it again after losing a worker, or a
stopped batch was run again).

Idempotent: a video whose outputs all exist (outputs are renamed into place whole, so an existing one is
complete) is skipped; a video stopped mid-way resumes from its work dir under DIR/.work/, so running the
same command again after a crash does only what is missing. A bad video fails alone, with the outpaint
command's one-line error. Exit: 0 when none failed, 1 when some did, 2 for bad options, 3 for the cluster.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from m3ddm.errors import EXIT_BAD_INPUT, EnginesError, InputError, M3DDMError, first_line
from runtime import cli, env, options, storage

log = logging.getLogger("runtime.batch")  # not __name__: run as __main__

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".m4v", ".avi", ".gif")
WORK = ".work"  # DIR/.work/<stem>/: a video's checkpoints while it runs
# One batch at a time per DIR; beside .work, not in it, where a video named lock.mp4 has its work dir.
LOCK = ".work.lock"
# DIR/.work.attempts/<stem>: how often a video was started (beside .work: a work dir holds its job's files only).
ATTEMPTS = ".work.attempts"
INPUTS = ".inputs"  # DIR/.inputs/: objects downloaded for the videos running, each removed when its job ends


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m runtime.batch",
                    description="Outpaint many videos over a Ray cluster (or a local Ray), one report line each.")
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="video files, folders of videos, or globs; objects' URLs (s3://bucket/key), or prefixes "
                         "(s3://bucket/prefix/) for the videos directly under them")
    ap.add_argument("--out-dir", required=True, help="where the outputs, the report and the work dirs go; a URL "
                                                     "(s3://bucket/prefix/) for outputs uploaded there")
    ap.add_argument("--work-dir", help="with a URL as --out-dir: the local (or shared) folder of the work dirs, the "
                                       "outputs before their upload and the report (default: under the user cache "
                                       "folder, $XDG_CACHE_HOME/m3ddm/batch/)")
    ap.add_argument("--report", help="the JSON-lines report of this run (default: OUT_DIR/report.jsonl)")
    options.add_run_options(ap)
    options.add_cluster_options(ap.add_argument_group("Ray"),
                                workers="actors, each with its own engines (default: the cluster's GPUs over "
                                        "--gpus-per-worker, or its CPUs over --cpus-per-worker)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return ap


def find_videos(patterns) -> list:
    """Files as given, folders' videos (sorted, not recursive), globs; objects' URLs as given, prefixes' videos
    (the same rules as folders'); each file once, in the order found. Paths, and storage.ObjectUrl for objects."""
    found: list = []
    for pattern in map(storage.localize, patterns):
        if storage.is_url(pattern):  # an object is not looked at here: a missing one fails its video alone
            url = storage.ObjectUrl.parse(pattern)
            found += storage.list_objects(url, VIDEO_SUFFIXES) if url.is_prefix else [url]
            continue
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                            and not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(f"{pattern}: no such file, folder or match")
            found += matches
    unique = list(dict.fromkeys(p if isinstance(p, storage.ObjectUrl) else p.resolve() for p in found))
    stems: dict = {}
    for p in unique:
        if p.stem in stems:
            raise InputError(f"{stems[p.stem]} and {p} would both be written as {p.stem}.mp4: rename one")
        stems[p.stem] = p
    return unique


def check_layout(outputs: dict, report: Path) -> None:
    """Refuse, before anything is written or skipped, a run that would write over one of its inputs: an output
    named as an input (--out-dir the inputs' own folder: a.mp4 is then its own output, "skipped" as done, and
    a_9x16.mp4 may be another video's output), or a report naming an input or an output. ``outputs``:
    {input: {label: output path}}."""
    from runtime.video.source import shown
    inputs = {_file_key(p): p for p in outputs}
    for path, paths in outputs.items():
        for out in paths.values():
            if _file_key(out) in inputs:
                raise InputError(f"{shown(out)}, the output of {shown(path)}, is an input of this batch: "
                                 "choose an --out-dir that holds no input")
    written = {_file_key(out): out for paths in outputs.values() for out in paths.values()}
    key = _file_key(report)
    if key in inputs or key in written:
        what = "an input" if key in inputs else "an output"
        raise InputError(f"--report {shown(report)} is {what} of this batch: name another file")


def _file_key(path):
    """What tells two names of one file apart from two files: the inode where the file exists (a hard link or
    a symlink is the same file), else the resolved path; an object's URL for an object."""
    if isinstance(path, storage.ObjectUrl):
        return str(path)
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return str(path.resolve())


def complete(paths: dict) -> bool:
    """Every output exists and opens as a video (written by a run that finished: outputs are renamed whole)."""
    from runtime.video import VideoError, probe
    try:
        return all(p.is_file() and probe(p).width > 0 for p in paths.values())
    except (VideoError, OSError):
        return False


def remove_stale_partials(paths: dict) -> None:
    """A killed run's temporary files of these outputs (runtime/video/sink.py names them .STEM.partial-PID.SUFFIX;
    only this video's: the stem of another video may begin with this one's)."""
    for path in paths.values():
        for p in path.parent.glob(f".{glob.escape(path.stem)}.partial-*{glob.escape(path.suffix)}"):
            p.unlink(missing_ok=True)


def remove_all_partials(outputs: dict) -> None:
    """remove_stale_partials of every video's outputs ({input: {label: output path}})."""
    for paths in outputs.values():
        remove_stale_partials(paths)


def out_folders(args) -> tuple[Path, storage.ObjectUrl | None]:
    """(the local folder of the outputs, work dirs, lock and report; the prefix the outputs are uploaded to, for
    a URL as --out-dir, whose bucket is checked now). A URL's local folder is --work-dir, or one per URL in the
    user cache folder, so that a second run finds the first one's work dirs."""
    out = storage.localize(args.out_dir)
    if not storage.is_url(out):
        if args.work_dir is not None:
            raise InputError("--work-dir goes with a URL as --out-dir (a local one keeps its work dirs in it)")
        return Path(out), None
    url = storage.ObjectUrl.parse(out if out.endswith("/") else out + "/")  # a prefix, as a folder
    storage.check_bucket(url, "write to")
    if args.work_dir is not None:
        return Path(storage.localize(args.work_dir)), url
    return env.cache_dir() / "batch" / hashlib.sha256(str(url).encode()).hexdigest()[:16], url


def finished(paths: dict, uploads: dict) -> bool:
    """The video's outputs exist, complete: as objects where they are uploaded ({local path: URL}), else as files."""
    return all(storage.exists(u) for u in uploads.values()) if uploads else complete(paths)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cli.setup_logging(quiet=args.quiet)
    try:
        inputs = find_videos(args.inputs)
        out_dir, out_url = out_folders(args)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"--out-dir {out_dir} is a file, not a folder")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot make {out_dir}: {exc.strerror}") from None
        run_settings, encode = options.checked(args, [out_dir / f"{p.stem}.mp4" for p in inputs])
        from runtime.streaming import output_paths
        outputs = {p: output_paths(out_dir / f"{p.stem}.mp4", run_settings.labels) for p in inputs}
        uploads = {p: {str(f): out_url.child(f.name) for f in paths.values()} if out_url else {}
                   for p, paths in outputs.items()}
        report_path = Path(args.report) if args.report else out_dir / "report.jsonl"
        check_layout({p: {f: uploads[p].get(str(f), f) for f in paths.values()} for p, paths in outputs.items()},
                     report_path)
        if not Path(args.engines, "manifest.json").is_file():
            raise EnginesError(f"no engines at {args.engines} (make engines, or --engines DIR)")
    except (InputError, ValueError) as exc:
        return cli.fail(EXIT_BAD_INPUT, first_line(exc))
    except (EnginesError, storage.TransferError) as exc:
        return cli.fail(exc.exit_code, first_line(exc))
    t0 = time.perf_counter()
    counts = {"succeeded": 0, "failed": 0, "skipped": 0}
    retried: list[str] = []

    def body():
        from runtime.cluster_connect import on_head_lost  # imports no Ray
        (out_dir / WORK).mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / LOCK, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another batch is writing to {out_dir}") from None
        shutil.rmtree(out_dir / INPUTS, ignore_errors=True)  # a killed run's downloads
        report_path.parent.mkdir(parents=True, exist_ok=True)
        with open(report_path, "w") as report:
            def write(record):
                counts[record["status"]] += 1
                if record.get("attempts", 1) > 1:
                    retried.append(Path(record["input"]).name)
                report.write(json.dumps(record) + "\n")
                report.flush()
                os.fsync(report.fileno())
                done = sum(counts.values())
                log.info(f"[{done}/{len(inputs)}] {record['status']:<9} {record['input']}"
                         + (f": {record['error']}" if record.get("error") else "")
                         + (f" ({record['seconds']:.1f} s)" if record.get("seconds") else ""))

            rows = []
            for path, paths in outputs.items():
                if finished(paths, uploads[path]):
                    write({"input": str(path), "status": "skipped", "frames": None, "seconds": 0.0, "error": None,
                           "outputs": {k: str(uploads[path].get(str(v), v)) for k, v in paths.items()}})
                    continue
                remove_stale_partials(paths)
                rows.append({"input": str(path), "output": str(out_dir / f"{path.stem}.mp4"),
                             "work_dir": str(out_dir / WORK / path.stem), "scratch": str(out_dir / INPUTS),
                             "attempts": str(out_dir / ATTEMPTS / path.stem),
                             "uploads": {k: str(v) for k, v in uploads[path].items()}})
            if rows:
                on_head_lost(lambda: remove_all_partials(outputs))  # the cluster gone: what its workers half-wrote
                for line in run_on_ray(rows, args, run_settings, encode):
                    write(json.loads(line))
                remove_all_partials(outputs)  # every video's run has ended: what a lost worker half-wrote goes
        log.info(f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} skipped in "
                 f"{time.perf_counter() - t0:.1f} s; report: {report_path}"
                 + (f"; started again (a worker lost, or an earlier run stopped): {', '.join(retried)}"
                    if retried else ""))
        return 1 if counts["failed"] else 0

    return cli.run(body, interrupted=lambda: f"{counts['succeeded']} videos finished; run the same command again "
                                             "to do the rest (stopped videos resume from their work dirs)")


def run_on_ray(rows: list[dict], args, run_settings, encode):
    """The report lines of ``rows``, as the videos finish."""
    # runtime.cluster before Ray itself: importing it readies Ray's token auth, which Ray reads when imported.
    from runtime import cluster
    from runtime.batch_job import VideoJob
    started_here = not cluster.ray.is_initialized() and args.address in (None, "", "local")
    cluster.connect(args.address, quiet=args.quiet,
                    when_lost="run the same command on a running cluster: finished videos are kept and stopped "
                              "ones resume from their work dirs")
    import ray.data
    try:
        resources = cluster.worker_resources(args.gpus_per_worker, args.cpus_per_worker, args.threads)
        workers = min(args.workers or cluster.default_workers(resources), len(rows))
        threads = args.threads or max(1, int(resources["num_cpus"]))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not args.quiet
        context.execution_options.preserve_order = False  # a line as each video finishes
        log.info(f"{len(rows)} videos on {workers} Ray workers ({resources['num_gpus']} GPU, "
                 f"{resources['num_cpus']} CPU each)")
        # Ray Data's annotation names functions only; a callable class with its constructor's kwargs is documented.
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            VideoJob,  # type: ignore[arg-type]
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(engines=str(Path(args.engines).resolve()), backend=args.backend,
                                       threads=threads, gpu_memory_gb=args.gpu_memory, settings=run_settings,
                                       encode=encode, stream=args.stream),
            **resources)
        try:
            for row in ds.iter_rows():
                yield row["line"]
        except Exception as exc:  # an actor that could not start (its engines): the whole batch's failure
            if isinstance(exc, (M3DDMError, KeyboardInterrupt)):
                raise
            raise EnginesError(f"the Ray workers failed: {_cause(exc)}") from None
    finally:
        if started_here:
            ray.shutdown()


def _cause(exc) -> str:
    while getattr(exc, "cause", None) is not None or exc.__cause__ is not None:
        exc = getattr(exc, "cause", None) or exc.__cause__
    return first_line(exc)


if __name__ == "__main__":
    sys.exit(main())

