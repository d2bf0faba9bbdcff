"""The library's end-of-run merge of small fragments on the Ray cluster that wrote them: the
driver plans and commits (`library.compaction`), the cluster's workers rewrite the rows
(`engines.ray.on_cluster`), and the library's own tidy then merges only what is left.

The glue between the two: the library knows nothing of Ray, the engine nothing of Lance. A merge
that cannot run on the cluster is the driver's, as before a cluster did it: nothing connected
(a cluster matpac started for the run alone is gone already) goes unsaid; a rewrite or a commit
that failed (a worker that does not see the library, another run merging it at once) is one
warning. The run's output and exit status never depend on it.
"""

from __future__ import annotations

from matpac_cli.events import RunEvents


def on_cluster(library, events: RunEvents) -> None:
    """The merges `library.close`'s tidy would run, rewritten on the Ray cluster (a run whose
    workers wrote the library: `jobs.stored.run`), before it closes: what it holds committed
    first, so that the run's last fragments are merged too. `library.merged` says which tables
    are done, and where their rewrites ran (host, process)."""
    from matpac_cli.engines.ray.tasks import connected, on_cluster
    from matpac_cli.library import compaction

    if library.unwritable is not None or not connected():
        return  # nothing more is written; or the driver merges, as before
    try:
        library.commit()
        if library.unwritable is not None:
            return
        planned = compaction.plan(library.root)
        library.merged |= planned.settled
        results = on_cluster(planned.rewrites)
        if results is None:
            return
        library.merged |= compaction.commit(library.root, planned, results)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        left = set(planned.options) - set(library.merged)
    except Exception as exc:  # noqa: BLE001 - the tidy is the driver's then; the run is whole
        failed, left = exc, {"every table"}
    if left:
        _say(events, failed, left)


def _say(events: RunEvents, failed: BaseException | None, left: set[str]) -> None:
    from matpac_cli.errors import RAY_LIMIT, one_line

    failed = getattr(failed, "cause", None) or failed  # a RayTaskError's: the call's own error
    why = f" ({one_line(failed, RAY_LIMIT)})" if failed is not None else " (another run merged it at once?)"
    events.warning(
        f"the library's end-of-run merge ({', '.join(sorted(left))}) could not run on the Ray cluster{why}; "
        "the driver merges it instead"
    )
