"""Execution engines: the same jobs, run here (`local`, threads in this process) or on a Ray
cluster (`ray`, an optional extra). Both have one shape, `run(options, items, plans, events,
on_result) -> Ran`: the run's options whole, its news to one events object, each finished file
to the job's writer. Which device a Ray cluster's actors use is the engine's to say (`Engine`,
`Ran.device`), never a relabelled predictor's."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from matpac_cli.config import RunOptions
from matpac_cli.events import NoEvents, Ran, RunEvents
from matpac_cli.interrupts import whole

if TYPE_CHECKING:  # the CLI checks `--engine` through here before torch is imported
    from matpac_cli.pipeline.assemble import FileResult, Plan
    from matpac_cli.pipeline.discovery import Item


def check(options: RunOptions) -> None:
    """`ray` only where Ray Data is installed: one line before any model loads (the engine's
    name itself was checked when the options were built)."""
    if options.engine == "ray":
        from matpac_cli.engines.ray.cluster import require

        require()


class Engine:
    """The engine of a run, opened before any model loads. With `ray`, the cluster is reached now
    (an unreachable one is one line, at once) and decides where the encoder runs (`remote`): the
    job's `options` then say that device and precision, and the driver loads its own copy on its
    CPU at that precision (`load_options`), only to describe the run. Locally both are `options`."""

    def __init__(self, options: RunOptions) -> None:
        check(options)
        self.cluster, self.remote = None, None
        self.options = self.load_options = options
        if options.engine == "ray":
            from matpac_cli.engines.ray.cluster import Cluster

            self.cluster = Cluster(options.address)
            self.remote, precision = self.cluster.placement(options.device, options.precision)
            self.options = replace(options, device=self.remote, precision=precision)
            self.load_options = replace(self.options, device="cpu")

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()


def run(
    options: RunOptions,
    items: Iterable[Item],
    plans: list[Plan],
    events: RunEvents | None = None,
    on_result: Callable[[FileResult], None] = lambda r: None,
    sink=None,
) -> Ran:
    """Every item through every plan on `options.engine`: each finished file to `on_result` (the
    job's writer), the run's news to `events` (default: none). A `sink` (`library.shards.Sink`)
    lets a Ray cluster's workers store files in the library themselves; locally the job does."""
    events = events if events is not None else NoEvents()
    with settled():
        if options.engine == "ray":
            from matpac_cli.engines.ray.driver import run as run_ray

            return run_ray(options, items, plans, events, on_result, sink)
        from matpac_cli.engines.local import run as run_local

        return run_local(options, items, plans, events, on_result)


YOUNG = 50_000  # objects allocated between two collections of the youngest generation, during a run
_settled: dict = {"runs": 0, "lock": threading.Lock()}  # runs open (in any thread), and how the first found gc


@contextmanager
def settled() -> Iterator[None]:
    """A run's per-file work without garbage collections of the whole heap: what is alive as the
    run starts (torch's modules, the inputs, the library's read: some 10^5-10^6 objects) is frozen
    out of the collector's scans, and the youngest generation is collected every `YOUNG`
    allocations instead of 700. A Ray driver's files are a few microseconds of Python each, and
    full collections over that heap took more than half of it (benchmarks/ray_driver.py). Cycles
    made during the run are still collected. As the last run open (in any thread) ends, the
    collector is as the first found it: its thresholds, and the heap unfrozen only where nothing
    was frozen before (the CLI freezes its start-up's objects itself: they stay so)."""
    with _settled["lock"]:
        _settled["runs"] += 1
        if _settled["runs"] == 1:
            _settled["was"] = (gc.get_threshold(), gc.get_freeze_count())
            gc.freeze()  # no collection first: it would cost a whole scan, the one this saves
            gc.set_threshold(max(YOUNG, _settled["was"][0][0]), *_settled["was"][0][1:])
    try:
        yield
    finally:
        with whole(), _settled["lock"]:  # a second Ctrl-C here would leave the collector settled
            _settled["runs"] -= 1
            if _settled["runs"] == 0:
                threshold, frozen = _settled.pop("was")
                gc.set_threshold(*threshold)
                if not frozen:
                    gc.unfreeze()
