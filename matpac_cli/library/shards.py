"""The library written by a Ray cluster's workers (`--engine ray`): each finished file's clip rows
(and its segments row, where the plan keeps segments) go from the worker that summed it straight
into the clips (and segments) table as Lance data files, and the driver commits their metadata
(a few hundred bytes for a few hundred files) with its own commits (`Library.adopt`), so the
vectors never cross to the driver.

The library must be on storage every node sees (a shared folder mounted at the same path). The
driver makes a token file in it as the run starts (`Sink.shard`); a worker that does not see the
token is not on the driver's storage (a library on the driver's own disk), and hands its files
to the driver instead, which stores them as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from matpac_cli.library import tables
from matpac_cli.library.key import Setting

TOKEN = ".matpac-ray-"  # the token file's name starts so (the driver removes it as the run ends)
WRITTEN = ("clips", "segments")  # the tables a worker writes (and the driver commits, in this order)


def clip_rows(columns: dict[str, list], key: str, setting: tuple[str, str], layers, embedding, facts: tuple) -> None:
    """One file's clip rows for one model and front end (a row per layer) added to `columns`: the
    one home of what a clip row holds. `facts`: (duration_s, sample_rate, channels, truncated:
    (frames promised, frames read) or None, the time it was added)."""
    duration, rate, channels, cut, now = facts
    promised, read = cut if cut else (None, None)
    for layer, vector in zip(layers, embedding):
        # arrays, not Python lists: Arrow takes them whole (57x cheaper: benchmarks/ray_driver.py)
        row = (key, *setting, int(layer), np.asarray(vector, np.float32), duration, rate, channels, promised, read, now)
        for name, value in zip(tables.CLIPS.names, row):
            columns[name].append(value)


def segments_row(columns: dict[str, list], key: str, setting: tuple[str, str], segments: list, now: float) -> None:
    """One file's segments row for one model and front end added to `columns`: the one home of
    what a segments row holds (each chunk's span, time columns and last-layer mean, in order)."""
    values = (
        key,
        *setting,
        [s.start_s for s in segments],
        [s.end_s for s in segments],
        [int(s.columns) for s in segments],
        [np.asarray(s.embedding, np.float32) for s in segments],
        now,
    )
    for name, value in zip(tables.SEGMENTS.names, values):
        columns[name].append(value)


def row_facts(t: dict, j: int) -> dict:
    """A clip row's facts (row `j` of the columns `t`), as the jobs take them."""
    promised, read = t["promised"][j], t["read"][j]
    return {
        "duration_s": t["duration_s"][j],
        "sample_rate": t["sample_rate"][j],
        "channels": t["channels"][j],
        "truncated": None if promised is None else (promised, read),
    }


@dataclass(frozen=True)
class Shard:
    """What a worker needs to write a file's rows into the library (it travels to the cluster)."""

    root: str
    settings: tuple[tuple[str, str], ...]  # per plan: (model sha256, front-end settings)
    token: str  # a file the driver made in the library

    def visible(self) -> bool:
        """Whether this process sees the driver's library (the token file is there)."""
        return os.path.isfile(os.path.join(self.root, self.token))

    def write(self, files: list[tuple]) -> dict[str, list[str]]:
        """`files`' rows as new data files of the clips and segments tables, not committed: per
        table, their metadata (JSON), for the driver to commit. A file is (key, (duration_s,
        sample_rate, channels, truncated), per plan its (layers, (L, E) float32 embedding,
        segments: a list of `Segment`s, or None where the plan keeps none))."""
        rows: dict[str, dict[str, list]] = {name: {n: [] for n in tables.SCHEMAS[name].names} for name in WRITTEN}
        now = time.time()
        for key, facts, outputs in files:
            for setting, (layers, embedding, segments) in zip(self.settings, outputs):
                clip_rows(rows["clips"], key, setting, layers, embedding, (*facts, now))
                if segments is not None:
                    segments_row(rows["segments"], key, setting, segments, now)
        return {name: tables.write_fragments(Path(self.root), name, columns) for name, columns in rows.items()}


class Sink:
    """The driver's side: which files its workers may write (`key_of`), and the fragments they
    wrote, handed to the library to commit (`adopt`). A file whose audio another input of the run
    shares, or of which the library holds a part already (a layer), is stored by the driver as
    before, which writes each part once."""

    def __init__(
        self, library, settings: list[Setting], layers: list[tuple], keys: dict[str, str], segments: list | None = None
    ) -> None:
        self.library, self.settings, self.layers, self.keys = library, settings, layers, keys
        self.segments = segments if segments is not None else [False] * len(settings)  # per plan: kept?
        self.token: Path | None = None

    def key_of(self, name: str) -> str:
        """The key a worker stores input `name` under ("": the driver stores it)."""
        return self.keys.get(name, "")

    def shard(self) -> Shard:
        """The workers' side, the token made (once per run)."""
        if self.token is None:
            token = self.library.root / f"{TOKEN}{uuid.uuid4().hex}"
            try:
                self.library.root.mkdir(parents=True, exist_ok=True)
                os.close(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            except OSError as exc:
                raise tables.Unwritable(
                    f"library {self.library.root}: cannot write ({exc.strerror})", settings=("library",)
                ) from None
            self.token = token
        pairs = tuple((s.model, s.frontend) for s in self.settings)
        # absolute: a Ray worker's working folder is its raylet's, not the driver's
        return Shard(str(self.library.root.absolute()), pairs, self.token.name)

    def adopt(self, fragments: dict[str, list[str]], keys: list[str]) -> int:
        """Fragments a worker wrote holding `keys`' rows (per table), committed with the
        library's next commit: the number `committed` reaches once they are."""
        plans = list(zip(self.settings, self.layers, self.segments))
        return self.library.adopt(fragments, [(key, *plan) for key in keys for plan in plans])

    def committed(self) -> int:
        """How many `adopt`s the library has committed (in order; none more once it cannot write)."""
        return self.library.adopted

    @property
    def library_failed(self) -> Exception | None:
        return self.library.unwritable

    def commit(self) -> Exception | None:
        """What is held, committed now; the write that failed, where the library cannot be written."""
        self.library.commit()
        return self.library.unwritable

    def close(self) -> None:
        """The run's token removed, and any that a killed run left a day ago or more."""
        for token in [self.token] if self.token is not None else []:
            with contextlib.suppress(OSError):
                token.unlink()
        with contextlib.suppress(OSError):
            for stale in self.library.root.glob(f"{TOKEN}*"):
                if stale.lstat().st_mtime < time.time() - 86_400:
                    stale.unlink()


class Homes:
    """Where the rows the workers wrote are, once committed: per table, key -> the ids of the
    fragments of its write (`Library.adopt`), so that reading them back (`tag`'s scores) scans
    those fragments, not the table's thousands. Each key is let go once read (`forget`)."""

    def __init__(self) -> None:
        self.ids: dict[str, dict[str, tuple[int, ...]]] = {name: {} for name in WRITTEN}

    def place(self, name: str, landed: dict[str, int], adopted: list[tuple[dict, list]]) -> None:
        """The keys of `adopted` ((fragments, parts) per write) in fragments `landed` (data file -> id)."""
        table = self.ids[name]
        for written, parts in adopted:
            files = [f["path"] for fragment in written.get(name, ()) for f in json.loads(fragment)["files"]]
            ids = tuple(sorted({landed[f] for f in files if f in landed}))
            for key in {part[0] for part in parts}:
                table[key] = ids

    def where_keys(self, ds, name: str, keys: list[str], extra: str, columns: list[str]):
        """`tables.where_keys`, each write's keys within its fragments (where they are still
        there: a merge rewrites them)."""
        by_ids: dict[tuple[int, ...], list[str]] = {}
        for key in keys:
            by_ids.setdefault(self.ids[name].get(key, ()), []).append(key)
        parts, rest = [], by_ids.pop((), [])
        for ids, some in by_ids.items():
            fragments = [ds.get_fragment(i) for i in ids]
            if all(f is not None for f in fragments):
                parts.append(tables.where_keys(ds, some, extra, columns, fragments))
            else:
                rest += some
        if rest or not parts:  # one scan of the table for every key not where it landed
            parts.append(tables.where_keys(ds, rest, extra, columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def forget(self, keys: list[str]) -> None:
        for table in self.ids.values():
            for key in keys:
                table.pop(key, None)


def sink(library, items: list, by_item: dict, plans: list) -> Sink:
    """The run's `Sink`: workers may store the files of `items` keyed in `by_item` whose key no
    other input has and of which the library holds nothing for any of `plans` (one scan of the
    key and layer columns per plan: `Library.holding` with no layer asked is every key with any;
    and of the segments table's keys, per plan that keeps segments)."""
    settings = [Setting.of(p) for p in plans]
    counts: dict[str, int] = {}
    for item in items:
        key = by_item.get(item)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    alone = [k for k, n in counts.items() if n == 1]
    partial = set().union(*(library.holding(alone, s, ()) for s in settings)) if alone else set()
    for plan, s in zip(plans, settings):
        partial |= tables.keys_with(library.root, "segments", alone, s) if alone and plan.segments else set()
    keys = {item.name: by_item[item] for item in items if by_item.get(item) in counts}  # not by_item's
    keys = {name: key for name, key in keys.items() if counts[key] == 1 and key not in partial}  # skipped
    return Sink(library, settings, [p.resolved_layers() for p in plans], keys, [bool(p.segments) for p in plans])
