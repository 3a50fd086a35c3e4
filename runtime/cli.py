"""What every command line of the project shares: one-line argument errors, one error line and exit code per
failure (from m3ddm.errors), and the logging that library code writes to.

Library modules log with ``logging.getLogger(__name__)`` and never print; a command calls ``setup_logging``
(INFO lines as they are, warnings as ``note: ...``) and runs its body through ``run``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from m3ddm.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Cancelled,
    M3DDMError,
    exit_code,
    first_line,
)
from m3ddm.files import remove_partials
from runtime import env

SIGNALS = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
FORCED_EXIT_WAIT_S = 30.0  # after a signal, how long a job may take to reach its next step boundary

PACKAGES = ("m3ddm", "kernels", "runtime", "export", "benchmarks")  # the loggers this project writes to


def command_name(module_form: str) -> str:
    """How the user called the command whose ``python -m`` form is ``module_form``: its installed script's name
    (``m3ddm-outpaint`` for ``python -m runtime.outpaint``, pyproject.toml's [project.scripts]) when it was run
    as that script, else the ``python -m`` form, so usage and error lines name what the user typed."""
    script = "m3ddm-" + module_form.split()[-1].rsplit(".", 1)[-1]
    return script if Path(sys.argv[0]).stem == script else module_form


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``, exit 2) instead of its usage block, and the
    command's installed name as ``prog`` when it was run as its script (``command_name``)."""

    def __init__(self, *, prog: str | None = None, **kwargs):
        super().__init__(prog=command_name(prog) if prog else None, **kwargs)

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def csv(kind, n: int | None = None):
    """An argparse type: comma-separated values of ``kind`` (exactly ``n`` of them when given)."""
    def parse(text):
        try:
            values = [kind(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None
        if not values or (n is not None and len(values) != n):
            raise argparse.ArgumentTypeError(f"{text!r} needs {n or 'some'} comma-separated values")
        return values
    return parse


class _Notes(logging.Formatter):
    def format(self, record):
        return f"note: {record.getMessage()}"


def setup_logging(info=None, quiet: bool = False) -> None:
    """The project's log lines: progress (INFO) on ``info`` (stderr by default; stdout for commands whose only
    output is progress), notes (WARNING and up) on stderr as ``note: ...``; ``quiet`` keeps only errors.
    Other libraries' loggers are left as they are."""
    progress = logging.StreamHandler(info or sys.stderr)
    progress.setFormatter(logging.Formatter("%(message)s"))
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    notes = logging.StreamHandler(sys.stderr)
    notes.setFormatter(_Notes())
    notes.setLevel(logging.WARNING)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [progress, notes]
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False
    # Python warnings (NumPy's RuntimeWarnings, a library's deprecation) become one note line, or nothing
    # under --quiet, instead of a file:line dump on stderr.
    warnings.showwarning = lambda message, category, *_: logging.getLogger("runtime").warning(
        f"{category.__name__}: {first_line(message)}")


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _stopped(signals: list, interrupted) -> int:
    """The one line and exit code of a run stopped by the first of ``signals`` (or by a KeyboardInterrupt)."""
    code = SIGNALS.get(signals[0], EXIT_INTERRUPTED) if signals else EXIT_INTERRUPTED
    by = f" by {signal.Signals(signals[0]).name}" if signals else ""
    return fail(code, f"interrupted{by}; {interrupted() if callable(interrupted) else interrupted}")


def _outcome(body, interrupted, out_of_memory: str, signals: list) -> int:
    """``body()``'s exit code, or its failure as one ``error:`` line and its exit code."""
    def stopped():
        return _stopped(signals, interrupted)
    try:
        return int(body() or 0)
    except (KeyboardInterrupt, Cancelled):
        return stopped()
    except MemoryError:
        return fail(EXIT_INTERNAL, "out of memory" + (f"; {out_of_memory}" if out_of_memory else ""))
    except (M3DDMError, ValueError) as exc:  # ours, or a bad value: the message is for the user
        if signals:  # whatever a signal's cancellation made the job raise on its way out
            return stopped()
        return fail(exit_code(exc), first_line(exc))
    except Exception as exc:
        if signals:
            return stopped()
        if env.debug():
            raise
        return fail(EXIT_INTERNAL, f"unexpected {type(exc).__name__}: {first_line(exc)} "
                                   f"({env.DEBUG}=1 shows the traceback)")


def run(body, *, interrupted="no output was written", out_of_memory: str = "", cancel=None,
        on_signal=None) -> int:
    """``body()`` as a command: its int result (None: 0) is the exit code; a failure becomes one ``error:`` line
    on stderr and its exit code (m3ddm.errors: 2 bad input, 3 engines/environment, 130 SIGINT, 143 SIGTERM,
    1 else), never a traceback (``M3DDM_DEBUG=1`` shows it for unexpected errors).

    SIGINT and SIGTERM are handled alike. With a ``cancel`` token (a threading.Event the body checks between
    steps) the body runs on a worker thread: a signal sets the token and calls ``on_signal`` (e.g. to abort
    an engine call in flight), and the body unwinds at its next step boundary, removing what it wrote. A
    second signal, or a body that does not stop within FORCED_EXIT_WAIT_S, exits at once, partial files
    removed. Without a token the body is interrupted where it stands (KeyboardInterrupt).
    """
    signals: list[int] = []
    stop_waiting = threading.Event()

    def handler(signum, frame):
        signals.append(signum)
        if cancel is None:
            raise KeyboardInterrupt
        if len(signals) > 1:
            stop_waiting.set()
            return
        cancel.set()
        if on_signal is not None:
            try:
                on_signal()
            except Exception:
                pass

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS} if main else {}
    try:
        if cancel is None:
            return _outcome(body, interrupted, out_of_memory, signals)
        result = []
        worker = threading.Thread(target=lambda: result.append(_outcome(body, interrupted, out_of_memory, signals)),
                                  name="m3ddm-job", daemon=True)
        worker.start()
        deadline = None
        while worker.is_alive() and not stop_waiting.is_set():
            worker.join(0.1)
            if signals and deadline is None:
                deadline = time.monotonic() + FORCED_EXIT_WAIT_S
            if deadline is not None and time.monotonic() > deadline:
                break
        if result:
            return result[0]
        remove_partials()  # the job is still running (a daemon thread): nothing it half-wrote may stay
        return _stopped(signals, interrupted)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
