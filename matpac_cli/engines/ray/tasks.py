"""Work of the jobs' own run as Ray tasks on the cluster this process is connected to: each a
picklable callable with no arguments (what it does is the caller's: the library's end-of-run
merges, `jobs.tidy`), spread over the nodes, its result or its error handed back. The engine knows
nothing of what the callables are.

The driver waits in Python, a short sleep at a time, never inside a blocking `ray.get`: Ray's own
wait runs the signal handler itself and swallows any exception but `KeyboardInterrupt`, so the
CLI's Ctrl-C and SIGTERM (`cli.main`'s `Stopped`) would be lost while the tasks ran. A task that
answers nothing for `engines.ray.driver.stall_s()` (a hung mount on one node, a node that starts
no worker) is given up, as a round that stalls is; what is left is cancelled either way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

POLL_S = 0.05  # how often the driver looks for answers (and acts on a signal)


def connected() -> bool:
    """Whether this process is connected to a Ray cluster now (a run's `Cluster` that matpac
    started for itself is gone once the run ends)."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def on_cluster(calls: Sequence[Callable[[], object]], stall: float | None = None) -> list | None:
    """`call()` of each of `calls` as a Ray task, spread over the cluster's nodes; per call its
    result, or the exception that ended it (one that fails fails alone; one that answers nothing
    while no other does for `stall` seconds, `stall_s()` by default, is a `TimeoutError`). None
    where this process is not connected to a cluster. The tasks claim no CPU, as the write tasks
    do: a cluster whose CPUs another job holds still runs them, and Ray reruns one whose worker
    or node died. An interrupt cancels the tasks still running."""
    if not connected():
        return None
    if not calls:
        return []
    import ray

    from matpac_cli.engines.ray.driver import stall_s

    stall = stall if stall is not None else stall_s()
    task = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_call)
    refs = [task.remote(call) for call in calls]
    out: dict = {}
    left, last = list(refs), time.monotonic()
    try:
        while left:
            ready, left = ray.wait(left, num_returns=len(left), timeout=0)  # never blocks: signals act
            for ref in ready:
                try:
                    out[ref] = ray.get(ref, timeout=0)
                except Exception as exc:  # noqa: BLE001 - the caller's to weigh (a RayTaskError wraps the call's)
                    out[ref] = exc
            last = time.monotonic() if ready else last
            if left and time.monotonic() - last > stall:
                out.update((ref, TimeoutError(f"no answer from the Ray cluster in {stall:.0f} s")) for ref in left)
                break
            if left:
                time.sleep(POLL_S)
    finally:
        for ref in left:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return [out[ref] for ref in refs]


def _call(call: Callable[[], object]) -> object:
    return call()
