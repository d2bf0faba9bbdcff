"""Which of a run's files the library knows by path with an unchanged stat, matched as columns.

A re-run over 100,000 files the library has seen asks, of each, whether its real path has a
row in the `paths` table whose stat is the file's stat now (`key.Stat.vouches`). Read as
Python objects (a tuple and a `Stat` per row, a dict of every path), that took seconds; here the
table stays Arrow, the run's paths are looked up in it with one `index_in`, and the stats are
compared as numpy arrays: Python is left only for the files that are new or changed (keyed by
their audio, `Library.identify`).
"""

from __future__ import annotations

import os
import stat as stat_mode
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matpac_cli.library import tables
from matpac_cli.library.key import RACY_S, Stat

FIELDS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")


@dataclass
class Known:
    """A file as the library knows it: its key, and how it was recognised."""

    key: str
    how: str  # "same path", "retagged" or "moved" (meaningful where its results are found)
    path: str  # the real path


class Identified(Mapping):
    """The run's files the library knows (`Library.identify`), as columns: per file, its index
    in the run's items, its key, how it was known and its real path. As a mapping, index ->
    `Known`, made when asked: a re-run over 100,000 files takes the columns (`jobs.stored`), not
    an object per file (a `Known` and a dict entry each cost 0.3 s at 100,000)."""

    def __init__(self) -> None:
        self.index: list[int] = []
        self.audio_keys: list[str] = []  # not `keys`: a Mapping's keys() stays the indexes
        self.hows: list[str] = []
        self.reals: list[str] = []
        self._at: dict[int, int] | None = None

    def add(self, i: int, key: str, how: str, real: str) -> None:
        self.index.append(i)
        self.audio_keys.append(key)
        self.hows.append(how)
        self.reals.append(real)
        self._at = None

    def __getitem__(self, i: int) -> Known:
        if self._at is None:
            self._at = dict(zip(self.index, range(len(self.index))))
        j = self._at[i]
        return Known(self.audio_keys[j], self.hows[j], self.reals[j])

    def __iter__(self):
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class Matched:
    """The run's files against the `paths` table: per file, its row there (-1: none), whether
    its stat now vouches for that row's key, and the row's key, stat and time seen."""

    row: np.ndarray
    vouched: np.ndarray
    keys: pa.ChunkedArray | None  # the table's, as Arrow: a Python string made only for the rows asked of
    seen: np.ndarray
    table: pa.Table | None

    def keys_at(self, rows: np.ndarray) -> list[str]:
        """The keys of the table's `rows`, one Arrow `take`."""
        return self.keys.take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []

    def older(self, than: float) -> set[int]:
        """The files vouched for by a row seen before `than` (unix seconds)."""
        seen = self.seen[np.maximum(self.row, 0)] if len(self.seen) else np.zeros(len(self.row))
        return set(np.flatnonzero(self.vouched & (seen < than)).tolist())

    def recorded(self, i: int) -> tuple[str, Stat, float] | None:
        """File `i`'s row as (key, Stat, seen), where there is one."""
        j = int(self.row[i])
        if j < 0:
            return None
        stat = Stat(*(self.table.column(f)[j].as_py() for f in FIELDS))  # Python ints, as `Stat` compares
        return self.keys[j].as_py(), stat, float(self.seen[j])


def known(root) -> dict[str, tuple]:
    """path -> (key, Stat, seen) for every path the library has seen (`library info`, `prune`:
    a run matches its own files with `match`)."""
    table = latest(root)
    if table is None:
        return {}
    t = table.to_pydict()
    out: dict[str, tuple] = {}
    for j, p in enumerate(t["path"]):
        out.setdefault(os.fsdecode(p), (t["key"][j], Stat(*(t[f][j] for f in FIELDS)), t["seen"][j]))
    return out


def latest(root) -> pa.Table | None:
    """The `paths` table, one row per path first: the one seen last (of two runs' rows of one
    path, either: they were equal), so that a lookup's first match is the one that counts."""
    ds = tables.open_table(root, "paths")
    if ds is None:
        return None
    table = ds.to_table()
    seen = table.column("seen").to_numpy()
    order = np.lexsort((-np.arange(len(seen)), -seen))  # seen last first; of equals, the later row
    return table.take(pa.array(order, pa.int64()))


LIMIT = 2**63


def fits(st: os.stat_result) -> bool:
    """Whether a stat fits the `paths` table's columns (int64 ns: a time past the year 2262, which
    `touch -d` can set, does not). Asked of every file of a run: comparisons, no generator."""
    return st.st_size < LIMIT and -LIMIT <= st.st_mtime_ns < LIMIT and -LIMIT <= st.st_ctime_ns < LIMIT


def columns(found: list[os.stat_result]) -> dict[str, np.ndarray]:
    """The files' stats now as columns, typed as the `paths` table's."""
    ids, times = np.uint64, np.int64
    return {
        "dev": np.array([st.st_dev for st in found], ids),
        "ino": np.array([st.st_ino for st in found], ids),
        "size": np.array([st.st_size for st in found], times),
        "mtime_ns": np.array([st.st_mtime_ns for st in found], times),
        "ctime_ns": np.array([st.st_ctime_ns for st in found], times),
    }


def match(root, reals: list[str], now: dict[str, np.ndarray]) -> Matched:
    """The files at real paths `reals`, with their stats `now` (`columns`), looked up in
    the library's `paths` table: `Stat.vouches` for each, as columns."""
    table = latest(root)
    n = len(reals)
    if table is None or not len(table):
        return Matched(np.full(n, -1), np.zeros(n, bool), None, np.zeros(0), table)
    probe = encoded(reals)
    row = pc.index_in(probe, value_set=table.column("path")).fill_null(-1).to_numpy().astype(np.int64)
    hit = row >= 0
    at = pa.array(row[hit], pa.int64())
    same = np.ones(int(hit.sum()), bool)
    for f in FIELDS:
        same &= table.column(f).take(at).to_numpy() == now[f][hit]
    seen = table.column("seen").to_numpy()
    # not written within RACY_S before it was keyed: mtime_ns < (seen - RACY_S) * 1e9, exactly as
    # Python compares an int with a float (the float's ceiling as an int, so no rounding)
    bound = np.ceil((seen[row[hit]] - RACY_S) * 1e9)
    same &= now["mtime_ns"][hit] < np.clip(bound, -(2.0**62), 2.0**62).astype(np.int64)
    vouched = np.zeros(n, bool)
    vouched[hit] = same
    return Matched(row, vouched, table.column("key"), seen, table)


def encoded(reals: list[str]) -> pa.Array:
    """The paths as the `paths` table holds them (`os.fsencode`'s bytes): Arrow's UTF-8, cast to
    bytes without a copy, where that is what the file system's encoding gives (a Python call per
    path cost 0.1 s at 100,000); else, and for a name that is not UTF-8 (a surrogate escape),
    `os.fsencode` each."""
    if sys.getfilesystemencoding().lower() in ("utf-8", "utf8"):
        try:
            return pa.array(reals, pa.string()).cast(pa.binary())
        except (UnicodeEncodeError, pa.ArrowException):
            pass
    return pa.array([os.fsencode(r) for r in reals], pa.binary())


def stat_of(item) -> tuple[str, os.stat_result | None]:
    """An item's real path and its stat now (None: not a regular file, which the engine names).
    The real path the folder walk learnt (`discovery.Item`) stands while the path is still no
    symlink (one `lstat`, taken here and not by the walk: the walk ran before the model loaded,
    minutes ago maybe, and a file moved over a path since is another file, with a stat of its
    own); else both are asked of the disk (OSError where they cannot be). A folder link repointed
    since leaves the walk's real path to another file, whose row this stat does not match: the
    file is keyed by its audio, read at its real path now (`now_real`)."""
    if item.real is not None:
        try:
            now = os.lstat(item.path)
        except OSError:
            now = None
        if now is not None and stat_mode.S_ISREG(now.st_mode):
            return item.real, now
        if now is not None and not stat_mode.S_ISLNK(now.st_mode):
            return item.real, None
    real = os.path.realpath(item.path)
    st = os.stat(real)
    return real, st if stat_mode.S_ISREG(st.st_mode) else None


def now_real(item, walked: str) -> str:
    """The real path of a file no row vouches for, to read its audio at and record: resolved
    again where the walk learnt it (a folder link on its way may point elsewhere since)."""
    return os.path.realpath(item.path) if item.real is not None else walked


def as_stat(st: os.stat_result) -> Stat:
    return Stat(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
