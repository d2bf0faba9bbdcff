"""`--engine ray`: the same jobs on a Ray cluster, through Ray Data.

The pipeline has the shape of Ray's own batch-inference examples:
- the driver discovers the files (the local engine's rules) and makes a dataset of them;
- CPU tasks decode, resample and cut each file into encoder chunks with the local engine's own
  `pipeline.feed.Feed`, so every chunk holds the same samples as a local run, and send them in
  packs of whole files (`engines.packs`: a part of up to 6.5 minutes of one file, at least one
  encoder batch a pack);
- an actor pool of callable classes, each loading the run's encoders once (`Predictor`), encodes
  a pack's chunks in batches of any of its files and sums each part's chunks where it computed
  them (one GPU per actor where the cluster has GPUs);
- the driver streams back one answer per part (a file's sums: about 30 KB a file for `embed`,
  where a row per chunk sent 31 KB a chunk), merges each file's parts with the local engine's
  `pipeline.Slot`, and hands every finished file to the job's writer and events, so the job code
  (library, resume, writers, `--failures`, the summary) is the local one.

A file that fails never fails the job: decoding and encoding catch each file's error and send it
on as that file's row (one exception in a Ray Data batch fails the whole job, and
`max_errored_blocks` would drop the batch's good rows with it). Decoding tasks whose worker or
node died are Ray's to rerun; the driver ignores a chunk it already has. Ray reruns them for
ever, so each try is counted in an `Attempts` actor beside the driver: a file whose decoding
killed its process `GIVE_UP` times is given up as that file's error (`errors.GaveUp`: the library
records it, and a re-run skips it until `retry_failed`), and the run says how many tries were reruns. Encoder actors are not restarted: one that dies (or its node) ends the round,
and the files left run again on a pool sized for the cluster then (`_run`); decoding claims no
CPU, so actors can never starve it; a no-progress timeout is the backstop.
Results arrive as files finish, not in input order (the file outputs are written in input order).
"""

from __future__ import annotations

import itertools
import os
import pickle
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from matpac_cli.config import Device, RunOptions
from matpac_cli.engines.blocks import audio_seconds, plan
from matpac_cli.engines.packs import PART, Encoder, decode_files
from matpac_cli.engines.ray.cluster import Cluster
from matpac_cli.engines.ray.ledger import Ledger
from matpac_cli.engines.work import GIVE_UP, Collector, Recipe, died
from matpac_cli.engines.writes import write_files, write_size
from matpac_cli.errors import RAY_LIMIT, MatpacError, one_line
from matpac_cli.events import NoEvents, Ran, RunEvents
from matpac_cli.interrupts import whole
from matpac_cli.pipeline.assemble import Plan
from matpac_cli.pipeline.discovery import Item
from matpac_cli.pipeline.hooks import crash_on, hold_encoding, hold_on

DECODE_CPUS = 0.5  # a decoding task's share of a CPU (two per CPU: decoding waits on the disk too)
SPREAD = 4  # a small job is cut into at least this many decoding tasks per decoder (`blocks.plan`)
# Chunks cross the object store from the decoding tasks to the encoder actors as 16 kHz float32
# (64 KB per audio-second: benchmarks/ray_overhead.py --wire), resampled in the decoding task for a
# GPU as for a CPU. Input-rate chunks (resampled on the GPU, as the local engine does) were 177 KB
# at 44.1 kHz and 193 KB at 48 kHz, and no exact narrower type brings those under 64 KB (int16 at
# 44.1 kHz is 88 KB); the cost is the resampling on the decoding CPUs, which a cluster can add.
STALL_S = 300.0  # no progress this long (MATPAC_RAY_STALL_S): the round stops, the files left run again
STALLS = 3  # rounds in a row that finish no file before the job fails


def run(
    options: RunOptions,
    items: Iterable[Item],
    plans: list[Plan],
    events: RunEvents | None = None,
    on_result: Callable = lambda r: None,
    sink=None,
) -> Ran:
    """`engines.local.run`'s contract on a Ray cluster (`options.workers` is unused: Ray places
    the tasks). The actors run the encoder where `Cluster.placement` puts `options.device`; the
    answer says which device that was, how many tries were reruns of work whose process (or
    node) died, and the bytes of answers the driver received. With a `sink` (`library.shards`),
    the workers store the files it gives a key in the library themselves (`engines.writes`)."""
    events = events if events is not None else NoEvents()
    items = list(items)
    if not items or not plans:
        return Ran(0, None if options.device.is_auto else options.device.name)
    cluster = Cluster(options.address)
    ledger = None
    try:
        device, _ = cluster.placement(options.device, options.precision)
        ledger = Ledger.start()
        collector = Collector(items, plans, events, on_result, _shared(sink, events))
        try:
            _run(cluster, items, plans, (device, options.batch_size), collector, ledger, events)
        finally:
            with whole():  # interrupted too: the files the library holds are counted
                collector.release(now=True)
        return Ran(ledger.retries(), device, collector.received)
    finally:
        if ledger is not None:
            ledger.stop()
        cluster.close()


def _shared(sink, events: RunEvents):
    """`sink` where its token can be made in the library (else the driver stores every file)."""
    if sink is None:
        return None
    try:
        sink.shard()
        return sink
    except MatpacError as exc:
        events.warning(f"{exc}; the driver stores the files instead of the Ray workers")
        return None


def _actor_shape(device: str, threads: int | None, cpus: float, gpus: int) -> tuple[int, dict, int | None]:
    """How many encoder actors, what each holds, and its torch threads. A GPU each where the
    cluster has GPUs; else `--threads` CPUs each (default 1), a quarter of the CPUs left to
    decoding. Room for one decoding task is always kept, or nothing could feed the actors."""
    free = max(cpus - DECODE_CPUS, DECODE_CPUS)
    if Device.parse(device).is_cuda:
        return max(1, gpus), {"num_gpus": 1, "num_cpus": min(1.0, free / max(gpus, 1))}, threads
    per = min(float(threads or 1), free)
    actors = max(1, min(int(free // per), int((cpus - max(1, cpus // 4)) // per)))
    return actors, {"num_cpus": per}, threads or 1


def _run(
    cluster: Cluster,
    items: list[Item],
    plans: list[Plan],
    shape: tuple[str, int | None],
    collector: Collector,
    ledger: Ledger,
    events: RunEvents,
) -> None:
    """The job in rounds, each on the files left with an actor pool sized for the cluster as it
    is then. Encoder actors are never restarted (`max_restarts=0`): Ray would restart a lost
    node's actors for ever where the nodes left have no room for them, holding their batches,
    while the ones that did restart take the CPUs decoding needed (ray-project/ray#44687; so
    decoding now claims none, `_round`). So a dead actor ends its round at once (`Lost`),
    and a round that makes no progress for
    `stall_s()` (Ray Data stops it) is a backstop for any other hang. `GIVE_UP` rounds in a row
    lost with no file finished give the files left up as their errors (an encoder that dies on
    their audio); `STALLS` rounds in a row with no file finished otherwise end the job."""
    from ray.data.exceptions import ExecutionTimeoutError

    from matpac_cli.engines.ray.watch import Lost

    idle = lost = 0
    for round_ in itertools.count(1):
        left = [i for i in range(len(items)) if i not in collector.done]
        if not left:
            break
        done, view = len(collector.done), ledger.for_round(round_)
        try:
            _round(cluster, items, left, plans, shape, collector, view)
            break
        except (ExecutionTimeoutError, Lost) as exc:
            view.dismiss()  # the actors the watch saw, too (engines.ray.ledger)
            progress = len(collector.done) > done
            idle = 0 if progress else idle + 1
            lost = 0 if progress or not isinstance(exc, Lost) else lost + 1
            if lost >= GIVE_UP:
                collector.finish(died(lost, "encoding it (or a file batched with it)"))
                return
            if idle >= STALLS:
                raise MatpacError(
                    f"the Ray job made no progress, {STALLS} rounds in a row (see `ray status`); "
                    "the finished files are kept"
                ) from None
            again = len(left) - (len(collector.done) - done)
            ledger.reruns += again
            why = (
                "lost an encoder actor (its worker or node died)"
                if isinstance(exc, Lost)
                else f"made no progress for {stall_s():g} s (a lost node's work that the cluster left has no room for?)"
            )
            events.warning(f"the Ray job {why}; running the {again} file(s) left again")
    collector.finish()


def _worker_lost(exc: BaseException | None) -> bool:
    """Whether Ray Data failed the round because an actor died or a lost node took work with it."""
    from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (RayActorError, ActorUnavailableError, ObjectLostError)):
            return True
        cause = getattr(exc, "cause", None)  # a RayTaskError's
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return False


def stall_s() -> float:
    """Seconds without progress before a round stops: MATPAC_RAY_STALL_S, else `STALL_S` (a
    cluster that waits long for new nodes, or downloads the model slowly on each, may want more)."""
    try:
        return max(float(os.environ.get("MATPAC_RAY_STALL_S", "") or STALL_S), 1.0)
    except ValueError:
        return STALL_S


def _round(
    cluster: Cluster,
    items: list[Item],
    left: list[int],
    plans: list[Plan],
    shape: tuple[str, int | None],
    collector: Collector,
    ledger: Ledger,
) -> None:
    """One round on the files `left`; `shape` is the actors' (device, batch size: None for the
    device's default)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from matpac_cli.engines.ray.watch import Watch
    from matpac_cli.inference.predictor import default_batch

    device, batch_size = shape
    actors, resources, threads = _actor_shape(device, plans[0].predictor.threads, *cluster.resources())
    recipes = [Recipe.of(p, device, threads) for p in plans]
    decoders = max(1, int(cluster.resources()[0] / DECODE_CPUS))
    sink = collector.sink
    blocks = _blocks(items, left, decoders, sink)
    context = DataContext.get_current()
    context.execution_no_progress_timeout_s = stall_s()
    Watch.ledger = ledger  # the round's actors, watched from Ray Data's executor (engines.ray.watch)
    if Watch not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(Watch)
    ds = ray.data.from_arrow(blocks)  # one block, and so one decoding task, per table
    n_ts = tuple(sorted({p.predictor.dims.n_t for p in plans}))
    # decoding in tasks of their own (a CPU share unlike the actors', so Ray does not fuse the two
    # stages into the actors, where decoding would wait on the encoder). They claim no CPU, so
    # that actors holding every CPU of the nodes left after a node is lost cannot starve them
    # (the job hung so); `concurrency` bounds them instead (two per CPU), spread over the nodes
    batch_size = batch_size or default_batch(device)
    ds = ds.map_batches(
        decode_files,
        batch_size=None,  # a task decodes its block whole: its files, one after the other
        num_cpus=0,
        concurrency=min(decoders, len(blocks)),  # more than its blocks: Ray Data warns on stderr
        fn_kwargs={
            **decode_kwargs(device, n_ts),
            "pack": max(PART, batch_size),  # a pack fills at least one encoder batch
            "attempts": ledger,
            "crash_on": crash_on(),
            "hold_on": hold_on(),
        },
    )
    # the recipes travel inside the class, not as constructor arguments in the object store
    # (which Ray warns a restarted actor could lose)
    how = {"recipes": recipes, "attempts": ledger, "batch_size": batch_size, "finish": bool(sink)}
    encoder = type("Encoder", (Encoder,), {**how, "hold_from": hold_encoding()})
    with warnings.catch_warnings():  # max_restarts has no named parameter: Ray warns on stderr
        warnings.simplefilter("ignore")
        ds = ds.map_batches(
            encoder,
            batch_size=1,  # a pack: its chunks are batched by the actor (`batch_size` at a time)
            # the whole pool from the start (fewer for fewer decoding tasks): Ray Data's autoscaler
            # adds actors only while packs queue up, so a cluster's GPUs idled behind one actor
            compute=ActorPoolStrategy(min_size=min(actors, len(blocks)), max_size=actors),
            max_restarts=0,
            **resources,
        )
    if sink is not None:
        # a round after a lost one writes each file as it is finished: a file counts as progress
        # once written, and rounds lost with no progress give their files up (`_run`)
        size = write_size(len(left)) if ledger.round <= 1 else 1
        ds = _writing(ds, sink, size, max(1, min(decoders, len(blocks)) // 4))
    _collect(ds, collector)


def _writing(ds, sink, size: int, tasks: int):
    """`ds` with write tasks after the encoders: they store the files the actors finished in the
    library (`engines.writes`), `size` files and `tasks` at a time; like decoding, they claim no CPU."""
    return ds.map_batches(
        write_files, batch_size=size, num_cpus=0, concurrency=tasks, fn_kwargs={"shard": sink.shard()}
    )


def decode_kwargs(device: str, n_ts: tuple[int, ...]) -> dict:
    """What each decoding task is told, for actors on `device`: the chunk grids, and 16 kHz
    chunks for a GPU as for a CPU (`defer` False: 64 KB per audio-second on the wire, see the
    note above `STALL_S`; benchmarks/ray_overhead.py --wire measures it)."""
    return {"n_ts": n_ts, "defer": False}


def _blocks(items: list[Item], left: list[int], decoders: int, sink=None) -> list:
    """The files `left` as decoding tasks sized by work (`engines.blocks`): one Arrow table each,
    a row per file (its place in the input, the pickled `Item` with its absolute path, and the
    key a worker stores it under: "" where the driver stores it)."""
    import pyarrow as pa

    seconds = [audio_seconds(items[i].path) for i in left]
    tables = []
    for block in plan(seconds, at_least=SPREAD * decoders):
        files = [left[j] for j in block]
        pickled = [pickle.dumps(Item(items[i].name, Path(items[i].path).absolute(), items[i].problem)) for i in files]
        keys = [sink.key_of(items[i].name) if sink is not None else "" for i in files]
        columns = {"i": pa.array(files, pa.int64()), "item": pa.array(pickled, pa.binary()), "key": pa.array(keys)}
        tables.append(pa.table(columns))
    return tables


def _collect(ds, collector: Collector) -> None:
    """Hand each part's sums and each file's facts to `collector` as the dataset yields the
    actors' answers (a pickled list per pack); a lost worker ends the round (`Lost`: the caller
    retries), any other cluster failure the job."""
    from matpac_cli.engines.ray.watch import Lost

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["data"]:
                collector.received += len(blob)
                with whole():  # an answer's files handed on together (Ctrl-C waits: a signal swap a file cost 70%)
                    for entry in pickle.loads(blob):
                        collector.add(*entry)
                    collector.release()
    except (MatpacError, KeyboardInterrupt, Lost):
        raise
    except Exception as exc:  # noqa: BLE001 - the cluster failed the job (not a file): one line, exit 2
        from ray.data.exceptions import ExecutionTimeoutError

        if isinstance(exc, ExecutionTimeoutError):
            raise
        if _worker_lost(exc):
            raise Lost() from None
        raise MatpacError(f"the Ray job failed: {one_line(exc, RAY_LIMIT)}") from None
