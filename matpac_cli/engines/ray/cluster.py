"""The Ray cluster an `--engine ray` run uses: reached (or started) once, checked first (a
port that is not a Ray head's GCS is one line within seconds, not Ray's 14 minutes of retries),
and kept quiet: Ray's notes for developers off stderr, and nothing of Ray's on stdout, which is
matpac's data channel."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator

from matpac_cli.config import Device, pick_precision
from matpac_cli.errors import RAY_LIMIT, MatpacError, UsageError, one_line

EXTRA = "pip install '.[ray]' in matpac's source folder"


def require() -> None:
    """Ray Data is an optional extra: without it, one line naming it (exit 2)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401 - the extra, not just ray's core
    except ImportError:
        raise UsageError(f"engine=ray needs Ray Data, an optional extra: {EXTRA}", settings=("engine",)) from None


class Cluster:
    """The Ray cluster a run uses: `RAY_ADDRESS` or `--ray-address`, else a local instance that
    matpac starts for the run and stops after it."""

    def __init__(self, address: str | None = None) -> None:
        require()
        import ray

        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.started = False
        if ray.is_initialized():
            return
        debug = bool(os.environ.get("MATPAC_DEBUG"))
        if not debug:  # Ray's C++ side logs notes for developers on stderr (actor restarts and such)
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        quiet = dict(log_to_driver=debug, logging_level=logging.INFO if debug else logging.ERROR)
        _stdout_kept_for_data(debug)
        try:
            if self.address and self.address not in ("auto", "local"):
                _reachable(self.address)
            with _silenced(not debug):
                if self.address and self.address not in ("auto", "local"):
                    ray.init(address=self.address, **quiet)
                else:
                    ray.init(address=self.address, include_dashboard=False, **quiet)
                    self.started = self.address is None
        except MatpacError:
            raise
        except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, ...: one line
            where = self.address or "a local Ray instance"
            raise MatpacError(f"cannot connect to {where}: {one_line(exc, RAY_LIMIT)}") from None
        _quiet_data()

    def resources(self) -> tuple[float, int]:
        import ray

        res = ray.cluster_resources()
        return float(res.get("CPU", 1)), int(res.get("GPU", 0))

    def placement(self, device: str, precision: str) -> tuple[str, str]:
        """Where the actors run the encoder, and at what precision: a GPU each where the cluster
        has GPUs (`--device auto` or cuda), else the CPUs. The driver loads its own copy on its
        CPU only to describe the run (heads, settings, manifest); it computes nothing."""
        _, gpus = self.resources()
        asked = Device.parse(device)
        if asked.is_auto:
            device = "cuda" if gpus else "cpu"
        elif asked.is_cuda:
            if not gpus:
                raise UsageError(f"device={asked}: the Ray cluster has no GPUs", settings=("device",))
            device = "cuda"  # each actor sees its own GPU as device 0
        elif not asked.is_cpu:
            raise UsageError(f"device={asked}: with engine=ray use auto, cpu or cuda", settings=("device", "engine"))
        else:
            device = "cpu"
        return device, pick_precision(precision, device)

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _silenced(on: bool) -> Iterator[None]:
    """stderr (the file descriptor: Ray's C++ core writes there) off while Ray starts: it says
    which log level it read and how it connected, nothing a user of matpac acts on. Errors still
    come back as exceptions."""
    if not on:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5)  # preface, empty SETTINGS


def _stdout_kept_for_data(debug: bool) -> None:
    """stdout is matpac's data channel (`tag --out -`), but the driver's Ray prints the cluster's
    notices there ("(raylet) A worker died ..."), whatever `log_to_driver` says, and with it the
    workers' output: all of it goes to stderr with MATPAC_DEBUG, else nowhere (matpac says itself
    what a user acts on: a file given up, the retries). Set before `ray.init`, which binds it."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "matpac", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        if debug:
            original({**data, "is_err": True}, ignore_prefix)

    to_stderr.matpac = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an absent cluster, or a port that is not Ray's, for minutes (20 tries of 40 s):
    a TCP connect to the head's port first, then the first words of HTTP/2, which a GCS (gRPC)
    answers with its settings, give one line within seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        conn = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
    except ValueError:
        raise UsageError(f"Ray address {address}: expected HOST:PORT (the head's GCS port)") from None
    except OSError as exc:
        raise MatpacError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("0", "false", ""):  # a TLS GCS answers only TLS
            said = _first_words(conn, timeout)
            if (
                said is None or len(said) < 9 or said[3] != 0x04 or said[5:9] != bytes(4)
            ):  # not an HTTP/2 SETTINGS frame
                heard = (
                    f"it said {_printable(said)}"
                    if said
                    else f"it said nothing in {timeout:g} s"
                    if said is None
                    else "it closed the connection"
                )
                raise MatpacError(
                    f"{address} answered but is not a Ray cluster (GCS): {heard}; give the head's "
                    "GCS port (6379 unless `ray start --head --port` chose another)"
                )


def _first_words(conn: socket.socket, timeout: float) -> bytes | None:
    """What a server says to HTTP/2's opening, up to one frame header: None if it said nothing."""
    said = b""
    try:
        conn.settimeout(timeout)
        conn.sendall(H2_HELLO)
        while len(said) < 9:
            more = conn.recv(9 - len(said) if said else 64)
            if not more:
                break
            said += more
    except TimeoutError:
        return said or None
    except OSError:
        pass
    return said


def _printable(data: bytes) -> str:
    """The first line a server sent, quoted, control characters and non-ASCII as escapes."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")[:60]
    return "'" + "".join(chr(b) if 32 <= b < 127 and b != 39 else f"\\x{b:02x}" for b in line) + "'"


def _quiet_data() -> None:
    """Ray Data's own bars and execution logs off: the driver prints matpac's progress."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.INFO if os.environ.get("MATPAC_DEBUG") else logging.ERROR)
