"""Work of the jobs' own run as Ray tasks on the cluster this process is connected to: each a
picklable callable with no arguments (what it does is the caller's: the library's end-of-run
merges, `jobs.tidy`), spread over the nodes, its result or its error handed back. The engine knows
nothing of what the callables are."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def connected() -> bool:
    """Whether this process is connected to a Ray cluster now (a run's `Cluster` that matpac
    started for itself is gone once the run ends)."""
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def on_cluster(calls: Sequence[Callable[[], object]]) -> list | None:
    """`call()` of each of `calls` as a Ray task, spread over the cluster's nodes; per call its
    result, or the exception that ended it (one that fails fails alone). None where this process
    is not connected to a cluster. The tasks claim no CPU, as the write tasks do: a cluster whose
    CPUs another job holds still runs them, and Ray reruns one whose worker or node died."""
    if not connected():
        return None
    if not calls:
        return []
    import ray

    task = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(_call)
    refs = [task.remote(call) for call in calls]
    out: list = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - the caller's to weigh (a RayTaskError wraps the call's)
            out.append(exc)
    return out


def _call(call: Callable[[], object]) -> object:
    return call()
