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
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from m3ddm.errors import EnginesError, InputError

# The user's own RAY_AUTH_MODE, if any: a choice to hold the cluster to, where ours below is only a guess.
_MODE_GIVEN = os.environ.get("RAY_AUTH_MODE", "").lower() or None


def token_source() -> str | None:
    """Where this machine's Ray token comes from, in the order Ray reads them; None when it has none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


if _MODE_GIVEN is None and token_source():
    # Ray 2.60 turns its token auth on by itself for "auto" when a token is there, not for an explicit address,
    # which then fails as unauthenticated against a cluster that requires it. Read once, when ray is imported;
    # check_auth sets what a given cluster wants before joining it.
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


def check_auth(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Join with the token auth the cluster at ``address`` uses, or raise EnginesError (one line) saying which
    side wants a token. A driver whose auth differs from its cluster's does join, and then every actor dies
    unexplained (``SystemException``): the cluster's workers cannot call back a driver that wants a token, nor
    it them. Asking the GCS for its cluster id without a token, then with ours, tells which (milliseconds).
    Returns without deciding for a cluster of its own, a ray:// address (the Ray client carries no token of
    ours) and a GCS that does not answer in time (ray.init then says what it finds)."""
    where = target(address)
    if not where or where.startswith("ray://"):
        return
    before = os.environ.get("RAY_AUTH_MODE")
    without = _answers(where, "disabled", timeout)
    if without is None:
        _set_mode(before)
        return
    if without:
        if _MODE_GIVEN == "token":
            raise EnginesError(f"the Ray cluster at {where} runs without token auth, but RAY_AUTH_MODE=token here: "
                               "unset it, or start the cluster with RAY_AUTH_MODE=token")
        return  # joined as probed: without a token
    source = token_source()
    if _MODE_GIVEN == "disabled":
        raise EnginesError(f"the Ray cluster at {where} wants a token (Ray's token auth), but RAY_AUTH_MODE=disabled "
                           "here: unset it and give the cluster's token (RAY_AUTH_TOKEN)")
    if not source:
        raise EnginesError(f"the Ray cluster at {where} wants a token (Ray's token auth) and this machine has none: "
                           "set RAY_AUTH_TOKEN to the cluster's token, or copy ~/.ray/auth_token from its head")
    if _answers(where, "token", timeout) is False:
        raise EnginesError(f"the Ray cluster at {where} refuses this machine's token (from {source}): give the "
                           "cluster's token (RAY_AUTH_TOKEN, or its head's ~/.ray/auth_token)")


def _set_mode(mode: str | None) -> None:
    """This process's Ray auth mode (None: Ray's default), for what it does next (the probe, ray.init): Ray
    caches both the mode and the token it read, so both are read again."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # stub lists less
    if mode is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = mode
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _answers(where: str, mode: str, timeout: float) -> bool | None:
    """Whether the GCS at ``where`` answers a driver in this auth mode: True, False (refused as
    unauthenticated), None (anything else, or no answer in ``timeout``: a GCS client waits 30 s itself)."""
    from ray.exceptions import AuthenticationError
    _set_mode(mode)
    result: list[bool | None] = [None]

    def ask():
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        try:
            GcsClient(address=where)
            result[0] = True
        except AuthenticationError:
            result[0] = False
        except Exception:
            result[0] = None

    with _stderr_dropped():  # the GCS client's own warning line for a refused call
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(timeout)
    return result[0]


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = False,
            when_lost: str | None = None) -> dict:
    """Join the cluster at ``address`` ("auto", "ray://HOST:PORT", "HOST:PORT"), or start a local one when
    None or "local"; once per process. Returns the cluster's resources. An address where no Ray answers is
    refused in seconds, in one line (check_reachable), not after Ray's minutes of retries; a driver whose
    token auth is not the cluster's, likewise (check_auth). ``quiet`` (the commands' --quiet): no line of
    Ray's own, Python or native, short of a fatal one. ``when_lost``: what the command's one line says to do
    should the cluster's head go (watch_head; a command, not a library, passes it)."""
    if quiet:
        _quiet_ray()
    import ray
    if not ray.is_initialized():
        check_reachable(address)
        check_auth(address)
        local = address in (None, "", "local")
        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        init_log = logging.getLogger("ray._private.worker")
        init_log.addFilter(_no_signal_note)
        _cluster_messages_to_log()
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
        if when_lost is not None and not local and not str(address).startswith("ray://"):
            watch_head(ray.get_runtime_context().gcs_address, when_lost)
    return ray.cluster_resources()


_lost_cleanups: list = []


def on_head_lost(cleanup) -> None:
    """Run ``cleanup()`` before the process exits for a lost head (watch_head): files of the command's that a
    worker of the gone cluster may have left half-written."""
    _lost_cleanups.append(cleanup)


def lost_after_s() -> float:
    """How long the head may be silent before the driver is told it is gone: a little less than Ray gives it
    (RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default) before it ends the process itself, without a
    word and with exit 1. A head that comes back sooner (GCS fault tolerance) loses nothing."""
    try:
        ray_gives = float(os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "60"))
    except ValueError:
        ray_gives = 60.0
    return max(2.0, ray_gives * 0.75)


def watch_head(gcs_address: str, when_lost: str, every_s: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this process (one line, exit 3) once the head at ``gcs_address`` has not
    taken a TCP connection for lost_after_s(): the command's partial files removed, and its line saying what
    to do (``when_lost``). Exiting from a thread, hard, is the point: the main thread may be waiting inside Ray
    for results that will never come, and Ray's own exit comes without a word."""
    host, port = split(gcs_address)
    patience = lost_after_s()

    def watch():
        silent_since = None
        while True:
            try:
                socket.create_connection((host, port), timeout=every_s).close()
                silent_since = None
            except OSError:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since >= patience:
                    _gone(gcs_address, patience, when_lost)
            time.sleep(every_s)

    thread = threading.Thread(target=watch, name="m3ddm-ray-head", daemon=True)
    thread.start()
    return thread


def _gone(gcs_address: str, patience: float, when_lost: str) -> None:
    from m3ddm.errors import EXIT_ENGINES
    from m3ddm.files import remove_partials
    from runtime.cli import fail
    for cleanup in _lost_cleanups:
        try:
            cleanup()
        except Exception:
            pass
    remove_partials()
    os._exit(fail(EXIT_ENGINES, f"the Ray cluster is gone (its head at {gcs_address} has not answered for "
                                f"{patience:.0f} s); {when_lost}"))


def _cluster_messages_to_log() -> None:
    """What the cluster pushes to its drivers (a task retried after its worker was lost, an actor that cannot be
    placed) Ray prints on stdout, where the commands write their JSON (--json): a warning of the "ray" logger
    instead, on stderr (none under --quiet). The listener thread looks the printer up at each message."""
    import ray._private.worker as ray_worker
    cluster_log = logging.getLogger("ray.cluster")

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", ()):
            cluster_log.warning(f"Ray ({data.get('pid', 'cluster')}): {str(line).strip()}")

    ray_worker.print_to_stdstream = to_log


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
