"""The library's end-of-run merge of small fragments on the Ray cluster that wrote them: the
driver plans and commits (`library.compaction`), the cluster's workers rewrite the rows
(`engines.ray.on_cluster`), and the library's own tidy then merges only what is left.

The glue between the two: the library knows nothing of Ray, the engine nothing of Lance. A merge
that cannot run on the cluster is the driver's, as before a cluster did it, unsaid where that is
the setup's own way: nothing connected (a cluster matpac started for the run alone is gone
already), a node that does not see the library (one on the driver's own disk), a commit that
another run's write on the library preempted. Any other failure of a rewrite (a full disk on a
node, a cluster that answers nothing for the stall time) is one warning. The run's output and
exit status never depend on it; an interrupt stops it at once.
"""

from __future__ import annotations

from matpac_cli.events import RunEvents


def on_cluster(library, events: RunEvents, token: str = "") -> None:
    """The merges `library.close`'s tidy would run, rewritten on the Ray cluster (a run whose
    workers wrote the library: `jobs.stored.run`), before it closes: what it holds committed
    first, so that the run's last fragments are merged too. `library.merged` says which tables
    are done, and where their rewrites ran (host, process). `token`: the run's file in the
    library, which a node must see to rewrite it (`library.shards`)."""
    from matpac_cli.engines.ray.tasks import connected, on_cluster
    from matpac_cli.library import compaction

    if library.unwritable is not None or not connected():
        return  # nothing more is written; or the driver merges, as before
    try:
        library.commit()
        if library.unwritable is not None:
            return
        planned = compaction.plan(library.root, token=token)
        library.merged |= planned.settled
        results = on_cluster(planned.rewrites)
        if results is None:
            return
        library.merged |= compaction.commit(library.root, planned, results)
        failed = [r for r in results if isinstance(r, Exception) and not isinstance(_cause(r), compaction.Unseen)]
        left = set(planned.options) - set(library.merged)
    except Exception as exc:  # noqa: BLE001 - the tidy is the driver's then; the run is whole
        failed, left = [exc], {"every table"}
    if left and failed:
        _say(events, failed[0], left)


def _cause(exc: BaseException) -> BaseException:
    """A RayTaskError's cause (the call's own error), or `exc`."""
    return getattr(exc, "cause", None) or exc


def _say(events: RunEvents, failed: BaseException, left: set[str]) -> None:
    from matpac_cli.errors import RAY_LIMIT, one_line
    from matpac_cli.library.tables import reason

    why = f" ({one_line(reason(_cause(failed)), RAY_LIMIT)})"
    events.warning(
        f"the library's end-of-run merge ({', '.join(sorted(left))}) could not run on the Ray cluster{why}; "
        "the driver merges it instead"
    )
