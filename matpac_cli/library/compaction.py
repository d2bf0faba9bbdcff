"""The end of a run's tidy (`tables.tidy`'s merge of small fragments) in three parts, so that the
rows are rewritten by other processes than the one that plans and commits: `plan` (the driver:
which fragments each rewrite merges, from the tables' metadata alone), a `Rewrite` called
wherever the library's folder is seen (a Ray worker: it reads the rows and writes the merged data
files), and `commit` (the driver: the rewrites' metadata, one commit per table).

A `--engine ray` run whose workers wrote the library has the cluster rewrite it (`jobs.tidy`):
the driver merging a run's fragments itself spent 66-135 us of its CPU per file, once per run,
more than the rest of its share (benchmarks/ray_driver.py); planning and committing cost it a few.
The rule is `tidy`'s own (`tables.merging`), Lance's distributed compaction its means
(`lance.optimize.Compaction`: the tasks and their results pickle). A table whose rewrites did
not all commit is left to `tidy`, which merges it on the driver as before.

A rewrite runs only where the driver's library is (the run's token file is there: `Unseen`
otherwise, as a write task hands its files back), and `commit` takes only data files it finds in
the driver's folder: a node with a copy of the library at the same path never commits into the
driver's a fragment whose files are elsewhere. What is not committed is removed, so a failed
merge leaves no second copy of the rows.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from matpac_cli.library import tables


@dataclass(frozen=True)
class Rewritten:
    """What one rewrite hands back to the driver: its table, Lance's `RewriteResult` (the new
    fragments' metadata, a few KB), and where it ran (host, process)."""

    name: str
    result: object
    host: str
    pid: int


class Unseen(OSError):
    """A rewrite's process does not see the driver's library (the run's token is not there)."""


@dataclass(frozen=True)
class Rewrite:
    """One of a table's merges (Lance's `CompactionTask`): called with no arguments in any process
    that sees the library's folder at `root` (it travels to a Ray worker, pickled)."""

    root: str  # absolute: a Ray worker's working folder is its raylet's, not the driver's
    name: str
    task: object
    token: str = ""  # a file the driver made in the library (`shards.Sink`): "" where none is asked

    def __call__(self) -> Rewritten:
        """The task's rows read, at the version they were planned on, and written as merged data
        files, not committed (`commit` does, on the driver)."""
        import lance

        if self.token and not os.path.isfile(os.path.join(self.root, self.token)):
            raise Unseen(f"not seen on Ray node {socket.gethostname()}")
        ds = lance.dataset(tables.uri(Path(self.root), self.name), version=self.task.read_version)
        return Rewritten(self.name, self.task.execute(ds), socket.gethostname(), os.getpid())


@dataclass
class Plan:
    """The run's merges: the `rewrites` to call, and each table's compaction options (they are
    committed with the ones they were planned with). `settled`: the tables `tidy` need not
    merge (a plan with no task: their small fragments are too few to merge)."""

    rewrites: list[Rewrite]
    options: dict[str, dict]
    settled: dict[str, list]


def plan(root: Path, most_fragments: int = 16, token: str = "") -> Plan:
    """The merges `tables.tidy` would run now, planned from the tables' metadata (no row read);
    each rewrite runs only where `token` (a file in the library) is seen."""
    from lance.optimize import Compaction

    rewrites, options, settled = [], {}, {}
    for name in tables.SCHEMAS:
        ds = tables.open_table(root, name)
        wanted = tables.merging(ds, most_fragments) if ds is not None else None
        if wanted is None:
            continue
        tasks = Compaction.plan(ds, wanted).tasks
        if not tasks:
            settled[name] = []
            continue
        options[name] = wanted
        rewrites += [Rewrite(str(Path(root).absolute()), name, task, token) for task in tasks]
    return Plan(rewrites, options, settled)


def commit(root: Path, planned: Plan, results: list) -> dict[str, list[tuple[str, int]]]:
    """The rewrites that ran (`results`: a `Rewritten`, or the exception that ended one) committed,
    one commit per table; the tables so merged whole, which `tidy` then need not merge, each with
    where its rewrites ran (host, process). A table with a failed rewrite has those that ran
    committed, and is not merged whole: `tidy` merges what is left. A commit that fails (another
    run merged the table at once) leaves the table to `tidy`."""
    from lance.optimize import Compaction

    by_table: dict[str, list[Rewritten]] = {name: [] for name in planned.options}
    failed = set()
    for rewrite, result in zip(planned.rewrites, results):
        if isinstance(result, Rewritten) and result.name == rewrite.name and _here(root, result):
            by_table[rewrite.name].append(result)
        else:
            failed.add(rewrite.name)
            if isinstance(result, Rewritten):
                _remove(root, [result])
    merged = {}
    for name, rewritten in by_table.items():
        if not rewritten:
            continue
        try:
            Compaction.commit(tables.open_table(root, name), [r.result for r in rewritten], planned.options[name])
        except Exception:  # noqa: BLE001 - a conflict (another run merged it): `tidy` takes it
            _remove(root, rewritten)
            continue
        if name not in failed:
            merged[name] = [(r.host, r.pid) for r in rewritten]
    return merged


def _files(root: Path, rewritten: Rewritten) -> list[str]:
    """The data files a rewrite wrote, in the driver's folder for its table."""
    data = os.path.join(tables.uri(Path(root), rewritten.name), "data")
    return [os.path.join(data, f.path) for fragment in rewritten.result.new_fragments for f in fragment.files]


def _here(root: Path, rewritten: Rewritten) -> bool:
    """Whether every data file the rewrite wrote is in the driver's library (a node's own copy
    of it at the same path wrote them elsewhere)."""
    return all(os.path.isfile(path) for path in _files(root, rewritten))


def _remove(root: Path, rewritten: list[Rewritten]) -> None:
    """The data files of rewrites that were not committed: referenced by no version, they would
    stay a week (Lance's cleanup keeps files it cannot tell from a write in progress that long)."""
    for r in rewritten:
        for path in _files(root, r):
            with contextlib.suppress(OSError):
                os.unlink(path)
