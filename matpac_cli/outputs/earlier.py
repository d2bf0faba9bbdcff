"""The rows an existing output holds of files that are not inputs of this run: refused, or kept.

A file output (`emb.npy`, `emb.parquet`, `tags.csv` ...) is rewritten whole at the end of a run,
from the files of that run. Onto an output made from more files (`matpac tag ./Music` then
`matpac tag "./Music/New Arrivals"` into the same `tags.csv`), or after files were deleted from
disk, that would drop rows no one asked to drop, so the run is refused, before any model loads,
unless one of two settings says what is meant:

- `update`: keep those rows (in the order the output had them), then this run's rows (in input
  order; a file of this run replaces its earlier row); with `prune` as well, the kept rows of
  files gone from disk are dropped, and counted (`pruned`);
- `force`: replace the output with this run's rows alone.

The journal beside the output knows which files its rows are of: each record of a finished
output carries its row number (`journal.compact`). A record without one, in a journal whose output
was stamped, is a file computed after the output was written (an interrupted run): never a row,
so neither counted nor kept. A journal never stamped (written before rows were recorded) vouches
for every record it holds. Re-running the same command, or a run whose inputs include every file
of the output, is never refused: no row is of a file outside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matpac_cli.errors import OutputError, UsageError
from matpac_cli.outputs import journal as jr
from matpac_cli.pipeline.discovery import Item


def check_settings(update: bool, prune: bool, force: bool) -> None:
    """`prune` only trims what `update` keeps; `update` and `force` ask for opposite things."""
    if prune and not update:
        raise UsageError(
            "`prune` drops kept rows of files gone from disk, and only `update` keeps rows: give `update` as well",
            settings=("prune", "update"),
        )
    if update and force:
        raise UsageError(
            "`update` keeps the output's other rows and `force` replaces the output: give one of them",
            settings=("update", "force"),
        )


def held(records: dict[str, jr.Record], stamp: dict | None) -> dict[str, jr.Record]:
    """The records whose files have rows in the output (see the module docstring)."""
    return {k: r for k, r in records.items() if stamp is None or "row" in r.meta}


def not_inputs(records: dict[str, jr.Record], stamp: dict | None, items: Iterable[Item]) -> list[jr.Record]:
    """The held records of files that are not inputs of this run, in the output's order."""
    inputs = {jr.real_path(item) for item in items}
    return [rec for key, rec in held(records, stamp).items() if key not in inputs]


def on_disk(rec: jr.Record) -> bool:
    try:
        return os.path.exists(rec.key[0])
    except (OSError, ValueError):
        return False


def refuse_dropping(out: Path, journal_path: Path, items: Iterable[Item], update: bool, force: bool) -> None:
    """Refuse, in one line, a run that would drop the rows `out` holds of files that are not its
    inputs, unless `update` keeps them or `force` replaces the output. Reads only the journal: it
    runs before any model loads."""
    if update or force or not out.exists():
        return
    _, stamp, records, _ = jr.read_full(journal_path)
    others = not_inputs(records, stamp, items)
    if not others:
        return
    gone = sum(not on_disk(rec) for rec in others)
    said = f" ({gone} of them gone from disk: `update` with `prune` drops those)" if gone else ""
    raise OutputError(
        f"{out} holds rows of {len(others)} file(s) that are not inputs of this run{said}; "
        "use `update` to keep them (and add this run's) or `force` to replace the file",
        settings=("update", "prune", "force"),
    )


@dataclass
class Kept:
    """The earlier rows a run with `update` writes before its own: (name, record) in the output's
    order, and how many `prune` dropped."""

    rows: list[tuple[str, jr.Record]] = field(default_factory=list)
    pruned: int = 0


def kept_rows(journal: jr.Journal, items: Iterable[Item], update: bool, prune: bool) -> Kept:
    """What `update` keeps of the output `journal` describes: the rows of files that are not
    inputs of this run, under the names they were written with (a record from before names were
    recorded: its real path); with `prune`, those of files gone from disk are dropped."""
    kept = Kept()
    if not update:
        return kept
    for rec in not_inputs(journal.done, journal.stamp, items):
        if prune and not on_disk(rec):
            kept.pruned += 1
        else:
            kept.rows.append((str(rec.meta.get("name") or rec.key[0]), rec))
    return kept


def count(summary, kept: Kept) -> None:
    """The summary (and so the manifest and the closing line) says what was kept and pruned."""
    summary.kept, summary.pruned = len(kept.rows), kept.pruned
