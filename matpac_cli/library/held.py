"""What the library holds of a run's files for one setting, read without their vectors; the
vectors taken afterwards by position, a batch at a time.

A re-run over 100,000 files the library holds needs, for each of them, only that it is held and
its facts (duration, rate, channels, truncation): the output it writes already has their rows, or
takes them a batch at a time as it writes. `Library.lookup` reads every vector of every key (1.5 GB
at 100,000 clips of 3840 values) through `IN` filters of 512 keys each; `held` reads the small
columns of the clips table once, picks the run's keys with Arrow's own kernels (no Python per
stored row), and keeps each key's row position in that version of the table, so that `vectors`
later takes just the rows it is asked for (`LanceDataset.take`), in memory bounded by the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matpac_cli.errors import OutputError
from matpac_cli.library import tables
from matpac_cli.library.key import Setting
from matpac_cli.library.shards import row_facts

FACTS = ["duration_s", "sample_rate", "channels", "promised", "read"]
SMALL = ["key", "model", "frontend", "layer", *FACTS]


class Facts(Mapping):
    """key -> its facts (as `Library.lookup` gives them), for the keys held with every layer:
    made when asked, from the columns read (a dict per key for 100,000 keys cost a second)."""

    def __init__(self, columns: dict[str, list], row: dict[str, int], full: set[str] | None) -> None:
        self._columns, self._row, self._full = columns, row, full  # full: None where every key is

    def __contains__(self, key: object) -> bool:
        return key in self._row and (self._full is None or key in self._full)

    def __getitem__(self, key: str) -> dict:
        if key not in self:
            raise KeyError(key)
        return row_facts(self._columns, self._row[key])

    def __iter__(self):
        return (k for k in self._row if self._full is None or k in self._full)

    def __len__(self) -> int:
        return len(self._row) if self._full is None else len(self._full)

    def rows(self, keys: list[str]) -> list[int]:
        """Each key's row in the columns read (-1: not held with every layer): for `columns`,
        a look-up per key and no call (a re-run asks of 100,000 keys)."""
        get, full = self._row.get, self._full
        if full is None:
            return [get(k, -1) for k in keys]
        return [get(k, -1) if k in full else -1 for k in keys]

    def columns(self, rows: list[int]) -> dict[str, list]:
        """The facts of `rows` (`rows`) as columns, as `__getitem__` gives them per key:
        duration_s, sample_rate, channels and truncated ((promised, read) or None)."""
        c = self._columns
        promised, read = c["promised"], c["read"]
        out = {name: [c[name][j] for j in rows] for name in ("duration_s", "sample_rate", "channels")}
        out["truncated"] = [None if promised[j] is None else (promised[j], read[j]) for j in rows]
        return out


class Held:
    """The keys held with every layer of `layers` for one setting: `facts[key]` (as
    `Library.lookup` gives them) and, through `vectors`, their embeddings, from the version of
    the clips table that was read (a commit after it does not move the positions)."""

    def __init__(self, ds, layers: tuple[int, ...], facts: Facts, where: dict[str, int], positions) -> None:
        self.ds, self.layers, self.facts = ds, tuple(layers), facts
        self._where, self._positions = where, positions  # key -> slot; (slots, layers) row positions
        self.root, self.again = None, None  # the library, and () -> Held: the same read of it now (`held`)

    def _current(self) -> Held:
        """This read, or a new one where the table has moved on since (this run's own commits,
        and the tidy at its end, which may compact the fragments and drop versions an hour old:
        a long run's first read may no longer be there to take from)."""
        latest = tables.open_table(self.root, "clips") if self.ds is not None and self.again else None
        if latest is None or latest.version == self.ds.version:
            return self
        fresh = self.again()
        self.ds, self._where, self._positions, self.again = fresh.ds, fresh._where, fresh._positions, None
        return self

    def __contains__(self, key: str) -> bool:
        return key in self.facts

    def vectors(self, keys: list[str]) -> np.ndarray:
        """(len(keys), layers, D) float32: each key's embedding of each layer, in `keys`' order
        (read as an output is written: a library that fails now is named, in one line)."""
        with tables.guarded(self.root):
            return self._vectors(keys)

    def _vectors(self, keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((0, len(self.layers), 0), np.float32)
        self._current()
        try:
            slots = np.array([self._where[k] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise OutputError(f"the library no longer holds {exc.args[0]}; run the command again") from None
        positions = self._positions[slots][:, self._columns()].reshape(-1)
        if (positions < 0).any():
            missing = keys[int(np.flatnonzero(positions < 0)[0]) // len(self.layers)]
            raise OutputError(f"the library no longer holds {missing}; run the command again")
        order = np.argsort(positions, kind="stable")
        table = self.ds.take(positions[order], columns=["embedding"])
        rows = tables.vectors(table.column("embedding"))
        width = {len(r) for r in rows}
        if len(width) != 1:
            raise OutputError("the library holds embeddings of different lengths for one setting")
        out = np.empty((len(positions), width.pop()), np.float32)
        out[order] = np.stack(rows)
        return out.reshape(len(keys), len(self.layers), -1)

    def _columns(self) -> np.ndarray:
        """Each of `layers`' column in the positions table (its layers sorted, once each)."""
        return np.searchsorted(np.unique(np.array(self.layers, np.int64)), np.array(self.layers, np.int64))


def held(root, keys: Iterable[str], setting: Setting, layers: tuple[int, ...], segments: bool = False) -> Held:
    """The keys of `keys` the library at `root` holds for `setting` with every layer of `layers`
    (and, with `segments`, a segments row: one scan of that table's keys first): one read of the
    clips table's small columns (positions are the scan's, which `take` uses), matched with
    Arrow's kernels and numpy, Python touching each key once."""
    keys = tables.keys_with(root, "segments", list(keys), setting) if segments else keys
    wanted = pa.array(sorted(set(keys)), pa.string())
    ds = tables.open_table(root, "clips")
    if ds is None or not len(wanted):
        return Held(ds, layers, Facts({n: [] for n in FACTS}, {}, None), {}, np.zeros((0, 0), np.int64))
    table = ds.to_table(columns=SMALL)
    distinct = np.unique(np.array(layers, np.int64))
    mask = pc.and_(
        pc.and_(pc.equal(table["model"], setting.model), pc.equal(table["frontend"], setting.frontend)),
        pc.and_(pc.is_in(table["key"], value_set=wanted), pc.is_in(table["layer"], value_set=pa.array(distinct))),
    )
    positions = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    found = table.filter(mask)
    names = found["key"].to_pylist()
    row = {key: j for j, key in enumerate(names)}  # a key's facts: its last row (a row met twice: either)
    where = {key: slot for slot, key in enumerate(row)}
    slot = np.array([where[key] for key in names], np.int64)
    column = np.searchsorted(distinct, found["layer"].to_numpy())
    last = np.full(len(where) * len(distinct), -1, np.int64)
    np.maximum.at(last, slot * len(distinct) + column, np.arange(len(names)))  # each (key, layer)'s last row
    at = np.where(last >= 0, positions[np.maximum(last, 0)], -1).reshape(len(where), len(distinct))
    complete = (at >= 0).all(axis=1)
    full = None if complete.all() else {key for key, ok in zip(where, complete) if ok}
    columns = found.select(FACTS).to_pydict()
    got = Held(ds, layers, Facts(columns, row, full), where, at)
    got.root, got.again = root, lambda: held(root, list(got.facts), setting, layers)
    return got
