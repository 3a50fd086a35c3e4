"""What every command line of the project shares: one-line argument errors, one error line and exit code per
failure (from m3ddm.errors), and the logging that library code writes to.

Library modules log with ``logging.getLogger(__name__)`` and never print; a command calls ``setup_logging``
(INFO lines as they are, warnings as ``note: ...``) and runs its body through ``run``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from m3ddm.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, M3DDMError, exit_code, first_line
from runtime import env

PACKAGES = ("m3ddm", "kernels", "runtime", "export", "benchmarks")  # the loggers this project writes to


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``, exit 2) instead of its usage block."""

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


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run(body, *, interrupted: str = "no output was written", out_of_memory: str = "") -> int:
    """``body()`` as a command: its int result (None: 0) is the exit code; a failure becomes one ``error:`` line
    on stderr and its exit code (m3ddm.errors: 2 bad input, 3 engines/environment, 130 interrupted, 1 else),
    never a traceback (``M3DDM_DEBUG=1`` shows it for unexpected errors)."""
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, f"interrupted; {interrupted}")
    except MemoryError:
        return fail(EXIT_INTERNAL, "out of memory" + (f"; {out_of_memory}" if out_of_memory else ""))
    except (M3DDMError, ValueError) as exc:  # ours, or a bad value: the message is for the user
        return fail(exit_code(exc), first_line(exc))
    except Exception as exc:
        if env.debug():
            raise
        return fail(EXIT_INTERNAL, f"unexpected {type(exc).__name__}: {first_line(exc)} "
                                   f"({env.DEBUG}=1 shows the traceback)")
