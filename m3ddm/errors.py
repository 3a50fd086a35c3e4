"""One error vocabulary for the whole project: every error meant for users derives from ``M3DDMError``
and carries the exit code a command line gives it; its message is one line that says what to do.

    M3DDMError (1)
    ├── InputError (2, also a ValueError): a bad video, option, checkpoint or output path
    │     VideoError (runtime.video), CheckpointError (export.model), MetricError (benchmarks)
    ├── EnginesError (3): an engines folder, backend or GPU environment that cannot be used
    │     CudaError (runtime.engines.cuda), BuildError (runtime.engines.trt_build)
    └── Cancelled (130): the caller's cancel token was set; the job stopped at a step boundary

A command stopped by SIGINT exits 130, by SIGTERM 143 (128 + the signal's number, as shells report it).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_ENGINES = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class M3DDMError(Exception):
    """An error meant for users: ``str(exc)`` is one line, ``exit_code`` what a command exits with."""
    exit_code = EXIT_INTERNAL


class InputError(M3DDMError, ValueError):
    """The input, an option, a checkpoint or an output path cannot be used."""
    exit_code = EXIT_BAD_INPUT


class EnginesError(M3DDMError, RuntimeError):
    """An engines folder, backend or the GPU environment cannot be used (missing library, GPU, stale plan)."""
    exit_code = EXIT_ENGINES


class Cancelled(M3DDMError):
    """The job was cancelled (a cancel token set, or a signal): it stopped between two steps, no output written."""
    exit_code = EXIT_INTERRUPTED


def check_cancel(cancel) -> None:
    """Raise Cancelled when the cancel token (anything with ``is_set()``, e.g. a threading.Event) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type's name when it has none (never raises)."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the original error
        text = ""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def exit_code(exc: BaseException) -> int:
    """The exit code a command gives for ``exc``: its own for ours, 2 for other ValueErrors, else 1."""
    if isinstance(exc, M3DDMError):
        return exc.exit_code
    if isinstance(exc, ValueError):
        return EXIT_BAD_INPUT
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL
