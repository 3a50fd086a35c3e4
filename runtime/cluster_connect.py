"""Joining a Ray cluster (``connect``, also ``runtime.cluster.connect``): the one way in of every command that
takes an address (runtime.batch --address, runtime.outpaint --workers --address, runtime.serve --ray).

The address is checked first, in seconds. Given one where no Ray answers, ``ray.init`` retries for many
minutes (20 rounds of 5 to 30 s waits: 822 s to give up on 127.0.0.1:1) and logs a warning line at each; a
TCP connection, then the HTTP/2 greeting that Ray's gRPC servers (the GCS, the ``ray://`` client server)
answer with, tell the same in a few seconds, in one line (exit 3 in a command).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from m3ddm.errors import EnginesError, InputError

if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                                          or (Path.home() / ".ray" / "auth_token").is_file()):
    # Ray 2.60 turns its token auth on by itself for "auto" when a token is there, not for an explicit address,
    # which then fails as unauthenticated against a cluster that requires it. Read once, when ray is imported.
    os.environ["RAY_AUTH_MODE"] = "token"

PROBE_TIMEOUT_S = 3.0
# An HTTP/2 client's first bytes (the connection preface, an empty SETTINGS frame); a gRPC server answers
# with a frame of its own, the first of which is SETTINGS (type 4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


def target(address: str | None) -> str | None:
    """The HOST:PORT (or ray://HOST:PORT) that ``ray.init(address)`` would join, where it can be told without
    joining; None when it starts a cluster of its own or finds the address itself (it fails fast then)."""
    env = os.environ.get("RAY_ADDRESS")  # what ray.init joins whatever it is given, short of an address
    if address in (None, "", "local", "auto"):
        if env:
            return env
        if address != "auto":
            return None
        try:  # the cluster `ray start` recorded on this machine, as ray.init reads it
            from ray._private.utils import read_ray_address
            return read_ray_address()
        except Exception:
            return None
    return address


def split(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT or ray://HOST:PORT; InputError for anything else."""
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def check_reachable(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise EnginesError (one line) when nothing, or nothing speaking Ray's gRPC, answers at the address
    ``ray.init(address)`` would join; return at once when it is a cluster of its own or cannot be told."""
    where = target(address)
    if not where:
        return
    host, port = split(where)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS cluster greets only after its handshake: the TCP connection is all we can tell
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            greeting = conn.recv(9)
    except socket.gaierror as exc:
        raise EnginesError(f"cannot reach the Ray cluster at {where}: unknown host {host} ({exc.strerror})") from None
    except TimeoutError:
        raise EnginesError(f"cannot reach the Ray cluster at {where}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise EnginesError(f"cannot reach the Ray cluster at {where}: {exc.strerror or exc} (is `ray start --head` "
                           "running there?)") from None
    if len(greeting) < 4 or greeting[3] != _SETTINGS:
        raise EnginesError(f"{where} answers, but not as a Ray cluster (its GCS port, 6379 by default, or its "
                           "ray:// client port, 10001; the dashboard's 8265 is not one)")


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = False) -> dict:
    """Join the cluster at ``address`` ("auto", "ray://HOST:PORT", "HOST:PORT"), or start a local one when
    None or "local"; once per process. Returns the cluster's resources. An address where no Ray answers is
    refused in seconds, in one line (check_reachable), not after Ray's minutes of retries. ``quiet``
    (the commands' --quiet): no line of Ray's own, Python or native, short of a fatal one."""
    if quiet:
        _quiet_ray()
    import ray
    if not ray.is_initialized():
        check_reachable(address)
        local = address in (None, "", "local")
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        init_log = logging.getLogger("ray._private.worker")
        init_log.addFilter(_no_signal_note)
        try:
            with _stderr_dropped() if quiet else nullcontext():
                ray.init(address=None if local else address, num_cpus=num_cpus if local else None,
                         include_dashboard=False, log_to_driver=False, configure_logging=False,
                         logging_level=logging.ERROR if quiet else logging.INFO, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EnginesError(f"cannot reach the Ray cluster at {address}: {last_line(exc)}") from None
        finally:  # a Ray driver exits on SIGTERM at once; the commands' own handling (drain, checkpoint) stays
            init_log.removeFilter(_no_signal_note)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    return ray.cluster_resources()


def _no_signal_note(record) -> bool:
    """Ray's note, joining from a thread other than the main one, that it set no SIGTERM handler: the commands
    keep their own handlers in any case (restored above), so the line would only mislead."""
    return not record.getMessage().startswith("SIGTERM handler is not set")


def _quiet_ray() -> None:
    # Ray's native core logs to stderr itself (RAY_BACKEND_LOG_LEVEL, read when ray.init starts it) and Ray
    # Data re-reads its level from the environment whenever it configures its logger; a level the user set wins.
    # (What the core prints while it starts, its note of that very level included, see _stderr_dropped.)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def _stderr_dropped():
    """File descriptor 2 to /dev/null meanwhile: Ray's native core prints a line or two as it starts (the log
    level it was given, token auth) whatever its level; its failure still comes back, as an exception."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def last_line(exc) -> str:
    """The last line of a Ray error (its reason; the lines above are Ray's traceback)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
