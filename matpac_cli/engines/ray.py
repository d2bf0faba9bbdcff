"""`--engine ray`: the same jobs on a Ray cluster, through Ray Data.

The pipeline has the shape of Ray's own batch-inference examples:
- the driver discovers the files (the local engine's rules) and makes a dataset of them;
- CPU tasks decode, resample and cut each file into encoder chunks with the local engine's own
  `decoding.Feed`, so every chunk holds the same samples as a local run;
- an actor pool of callable classes, each loading the run's encoders once (`Predictor`), encodes
  batches of chunks from any files (one GPU per actor where the cluster has GPUs);
- the driver streams the per-chunk results back, sums each file's chunks with the local
  engine's `pipeline.Slot`, and hands every finished file to the job's callbacks, so the job code
  (journal, resume, writers, `--failures`, the summary) is the local one.

A file that fails never fails the job: decoding and encoding catch each file's error and send it
on as that file's row (one exception in a Ray Data batch fails the whole job, and
`max_errored_blocks` would drop the batch's good rows with it). Dead workers and nodes are Ray's to
retry (actors restart and their tasks rerun by default); the driver ignores a chunk it already has.
Ray retries work whose process died for ever, so each try is counted in an `Attempts` actor beside
the driver: a file whose decoding (or a batch whose encoding) killed its process `GIVE_UP` times
is given up as that file's error, and the run says how many tries were reruns.
Results arrive as files finish, not in input order (the file outputs are written in input order).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from matpac_cli.discovery import Item
from matpac_cli.errors import InputError, MatpacError, UsageError
from matpac_cli.engines.work import CRASH_ON, GIVE_UP, Attempts, Collector, Encoder, Recipe, decode_files, first_line
from matpac_cli.pipeline import Plan

EXTRA = "pip install 'matpac-cli[ray]'"
DECODE_CPUS = 0.5  # two decoding tasks per CPU: decoding waits on the disk too
MAX_BLOCKS = 4096  # input blocks: enough to spread decoding over any cluster, few enough to schedule


def require() -> None:
    """Ray Data is an optional extra: without it, one line naming it (exit 2)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401 - the extra, not just ray's core
    except ImportError:
        raise UsageError(f"--engine ray needs Ray Data, an optional extra: {EXTRA}") from None


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
            raise MatpacError(f"cannot connect to {where}: {first_line(exc)}") from None
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
        device = (device or "auto").lower()
        if device == "auto":
            device = "cuda" if gpus else "cpu"
        elif device.startswith("cuda"):
            if not gpus:
                raise UsageError(f"--device {device}: the Ray cluster has no GPUs")
            device = "cuda"  # each actor sees its own GPU as device 0
        elif device != "cpu":
            raise UsageError(f"--device {device}: with --engine ray use auto, cpu or cuda")
        precision = (precision or "auto").lower()
        if precision == "auto":
            precision = "bf16" if device == "cuda" else "fp32"
        return device, precision

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
            if said is None or len(said) < 9 or said[3] != 0x04 or said[5:9] != bytes(4):  # not an HTTP/2 SETTINGS frame
                heard = (f"it said {_printable(said)}" if said else
                         f"it said nothing in {timeout:g} s" if said is None else "it closed the connection")
                raise MatpacError(f"{address} answered but is not a Ray cluster (GCS): {heard}; give the head's "
                                  "GCS port (6379 unless `ray start --head --port` chose another)")


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
    except socket.timeout:
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


def run(items: Iterable[Item], plans: list[Plan], batch_size: int | None = None, workers: int | None = None,
        on_result: Callable = lambda r: None, on_failure: Callable[[InputError], None] = lambda e: None,
        on_progress: Callable[[Item, float], None] = lambda i, s: None,
        on_audio: Callable[[float], None] = lambda s: None, address: str | None = None) -> int:
    """`pipeline.run`'s contract on a Ray cluster; `workers` is unused (Ray places the tasks).
    Returns how many tries were reruns of work whose process (or node) died."""
    items = list(items)
    if not items or not plans:
        return 0
    cluster = Cluster(address)
    ledger = _Ledger.start()
    try:
        _run(cluster, items, plans, batch_size, Collector(items, plans, on_result, on_failure, on_progress, on_audio),
             ledger)
        return ledger.retries()
    finally:
        ledger.stop()
        cluster.close()


class _Ledger:
    """`Attempts` in an actor on the driver's node (it outlives any worker), by name, so that a
    task or actor anywhere on the cluster reaches it; a try that cannot reach it goes ahead."""

    def __init__(self, name: str) -> None:
        self.name, self._handle = name, None

    @classmethod
    def start(cls) -> "_Ledger":
        import uuid

        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ledger = cls(f"matpac-attempts-{uuid.uuid4().hex}")
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        ledger._handle = ray.remote(Attempts).options(name=ledger.name, namespace="matpac", num_cpus=0, max_restarts=-1,
                                                      scheduling_strategy=here).remote()
        return ledger

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.name, self._handle = state["name"], None

    def _call(self, method: str, *args, default=None):
        import ray

        try:
            if self._handle is None:
                self._handle = ray.get_actor(self.name, namespace="matpac")
            return ray.get(getattr(self._handle, method).remote(*args), timeout=60)
        except Exception:  # noqa: BLE001 - the count is a guard against endless retries, never a failure
            return default

    def begin(self, key) -> int:
        return self._call("begin", key, default=0)

    def end(self, key) -> None:
        self._call("end", key)

    def retries(self) -> int:
        return self._call("retries", default=0)

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self._handle)


def _actor_shape(device: str, threads: int | None, cpus: float, gpus: int) -> tuple[int, dict, int | None]:
    """How many encoder actors, what each holds, and its torch threads. A GPU each where the
    cluster has GPUs; else `--threads` CPUs each (default 1), a quarter of the CPUs left to
    decoding. Room for one decoding task is always kept, or nothing could feed the actors."""
    free = max(cpus - DECODE_CPUS, DECODE_CPUS)
    if device.startswith("cuda"):
        return max(1, gpus), {"num_gpus": 1, "num_cpus": min(1.0, free / max(gpus, 1))}, threads
    per = min(float(threads or 1), free)
    actors = max(1, min(int(free // per), int((cpus - max(1, cpus // 4)) // per)))
    return actors, {"num_cpus": per}, threads or 1


def _run(cluster: Cluster, items: list[Item], plans: list[Plan], batch_size: int | None, collector: "Collector",
         ledger: _Ledger) -> None:
    import ray
    from ray.data import ActorPoolStrategy

    from matpac_cli.predictor import default_batch

    device = plans[0].predictor.device
    actors, resources, threads = _actor_shape(device, plans[0].predictor.threads, *cluster.resources())
    recipes = [Recipe.of(p, device, threads) for p in plans]
    rows = [{"i": i, "item": pickle.dumps(Item(it.name, Path(it.path).absolute(), it.problem))}
            for i, it in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
    n_ts = tuple(sorted({p.predictor.dims.n_t for p in plans}))
    # decoding in tasks of their own (a CPU share unlike the actors', so Ray does not fuse the two
    # stages into the actors, where decoding would wait on the encoder)
    # (Ray's own bound on retries only backs up the ledger's: exhausted, it fails the whole job)
    ds = ds.map_batches(decode_files, batch_size=1, num_cpus=DECODE_CPUS, max_retries=2 * GIVE_UP,
                        fn_kwargs={"n_ts": n_ts, "defer": device != "cpu", "attempts": ledger,
                                   "crash_on": os.environ.get(CRASH_ON) or None})
    # the recipes travel inside the class, not as constructor arguments in the object store
    # (which Ray warns a restarted actor could lose)
    encoder = type("Encoder", (Encoder,), {"recipes": recipes, "attempts": ledger})
    ds = ds.map_batches(encoder, batch_size=batch_size or default_batch(device),
                        compute=ActorPoolStrategy(min_size=1, max_size=actors), **resources)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, grid, k, data in zip(batch["i"], batch["grid"], batch["k"], batch["data"]):
                collector.add(int(i), int(grid), int(k), data)
    except (MatpacError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the cluster failed the job (not a file): one line, exit 2
        raise MatpacError(f"the Ray job failed: {first_line(exc)}") from None
    collector.finish()


