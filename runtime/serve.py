"""python -m runtime.serve --engines DIR --data DIR [--host 127.0.0.1] [--port 8000] [--token T]: the HTTP service.

One process: FastAPI on uvicorn, job records in SQLite under --data, uploads and results in files there, one
worker over one engine set running the jobs in order (runtime/service). SIGTERM drains: no new jobs, the
running one checkpointed (it resumes on the next start), then exit. OpenAPI at /docs.

With --ray ADDRESS the engine sets are Ray actors anywhere in the cluster (runtime/cluster.py), one per GPU,
and everything else stays: the same API, records, queue order and resume after a crash (the actors belong
to this process and go with it; a restarted server requeues the job and a new actor resumes it from its
work dir). --data must then be on storage every node sees at the same path. Why not Ray Serve: a job runs
for minutes to hours, needs a durable queue, cancel and resume; Serve routes requests to replicas and would
need this queue in front of it anyway, so the jobs go to plain actors.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence

from m3ddm.errors import EXIT_BAD_INPUT, M3DDMError, first_line
from runtime import cli, options
from runtime.callbacks import FileOutpainter

log = logging.getLogger("runtime.serve")  # not __name__: run as __main__
EXPIRE_EVERY_S = 60.0


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m runtime.serve", description="The outpainting service: a job API and a web page.")
    options.add(ap, "engines")
    ap.add_argument("--data", required=True, help="folder for the job records, uploads and results")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--token", default=os.environ.get("M3DDM_TOKEN"),
                    help="require `Authorization: Bearer TOKEN` on /v1 (default: $M3DDM_TOKEN; none: open)")
    ap.add_argument("--max-upload-mb", type=float, default=2048)
    ap.add_argument("--upload-timeout", type=float, default=60,
                    help="seconds an upload may send nothing before it is dropped (408; default 60)")
    ap.add_argument("--max-queue", type=int, default=100, help="waiting jobs before new ones get 429")
    ap.add_argument("--keep-hours", type=float, default=24, help="finished jobs and their files are removed after this")
    options.add(ap, "workers",
                help="engine sets, each with its own worker (one per GPU; each loads the engines); default 1, "
                     "or with --ray as many as the cluster has room for")
    options.add(ap, "backend", choices=None)  # an unknown name is the engines' refusal here (exit 3), as before
    ap.add_argument("--ray", metavar="ADDRESS",
                    help="run the jobs on Ray workers (the cluster extra): auto, HOST:PORT, ray://HOST:PORT, or local "
                         "(a Ray started here); --workers of them (default: one per GPU in the cluster)")
    options.add(ap, "gpus_per_worker", help="with --ray: GPUs per worker (default 1 where there are GPUs)")
    options.add(ap, "cpus_per_worker", help="with --ray: CPUs per worker (default --threads, or 1)")
    options.add(ap, "threads")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cli.setup_logging()
    for name in ("port", "max_upload_mb", "upload_timeout", "max_queue", "keep_hours", "workers"):
        value = getattr(args, name)
        if value is not None and value <= 0 and not (name == "port" and args.port == 0):
            return cli.fail(EXIT_BAD_INPUT, f"--{name.replace('_', '-')} must be positive")

    def run():
        try:
            import uvicorn

            from runtime.service.app import create_app
        except ImportError as exc:
            return cli.fail(EXIT_BAD_INPUT,
                            f"the service needs its extra: pip install 'm3ddm-runtime[serve]' ({exc.name})")
        from runtime.service.jobs import JobQueue
        if args.ray:
            from runtime import cluster
            cluster.connect(args.ray, when_lost="start the service again with a running cluster: its jobs "
                                                "resume from their work dirs")
            remote = [cluster.RemoteOutpainter(actor) for actor in cluster.start_workers(
                args.engines, args.workers, backend=args.backend, threads=args.threads,
                gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)]
            backend = remote[0].info["backend"]
            outpainters: Sequence[FileOutpainter] = remote
        else:
            from runtime.api import Outpainter
            local = [Outpainter(args.engines, backend=args.backend, threads=args.threads)
                     for _ in range(args.workers or 1)]
            for outpainter in local:
                outpainter.backend.load()  # /readyz means the engines are loaded
            backend = local[0].backend.name
            outpainters = local
        queue = JobQueue(outpainters, args.data, max_queue=args.max_queue).start()
        stop = threading.Event()

        def drain():  # uvicorn stops accepting first (SIGTERM, SIGINT), then this: checkpoint and stop
            stop.set()
            queue.drain()

        app = create_app(queue, token=args.token, max_upload_mb=args.max_upload_mb, backend=backend, on_shutdown=drain,
                         upload_idle_s=args.upload_timeout)

        def expire():
            while not stop.wait(EXPIRE_EVERY_S):
                try:
                    queue.expire(args.keep_hours)
                except M3DDMError as exc:  # a full disk: the next round tries again
                    log.warning(f"expiring old jobs: {first_line(exc)}")

        threading.Thread(target=expire, name="m3ddm-expire", daemon=True).start()
        queue.expire(args.keep_hours)

        log.info(f"serving {args.engines} on http://{args.host}:{args.port} (data: {args.data}, "
                 f"backend: {backend}, workers: {len(outpainters)}{' on Ray' if args.ray else ''}"
                 f"{', token required' if args.token else ''})")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)

    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
