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

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matpac_cli.errors import OutputError
from matpac_cli.library import tables
from matpac_cli.library.key import Setting
from matpac_cli.library.store import _facts

SMALL = ["key", "model", "frontend", "layer", "duration_s", "sample_rate", "channels", "promised", "read"]


class Held:
    """The keys held with every layer of `layers` for one setting: `facts[key]` (as
    `Library.lookup` gives them) and, through `vectors`, their embeddings, from the version of
    the clips table that was read (a commit after it does not move the positions)."""

    def __init__(self, ds, layers: tuple[int, ...], facts: dict[str, dict], where: dict[str, dict[int, int]]) -> None:
        self.ds, self.layers, self.facts, self._where = ds, tuple(layers), facts, where
        self.root, self.again = None, None  # the library, and () -> Held: the same read of it now (`held`)

    def _current(self) -> Held:
        """This read, or a new one where the table has moved on since (this run's own commits,
        and the tidy at its end, which may compact the fragments and drop versions an hour old:
        a long run's first read may no longer be there to take from)."""
        latest = tables.open_table(self.root, "clips") if self.ds is not None and self.again else None
        if latest is None or latest.version == self.ds.version:
            return self
        fresh = self.again()
        self.ds, self._where, self.again = fresh.ds, fresh._where, None
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
            positions = np.array([self._where[k][layer] for k in keys for layer in self.layers], dtype=np.int64)
        except KeyError as exc:
            raise OutputError(f"the library no longer holds {exc.args[0]}; run the command again") from None
        order = np.argsort(positions, kind="stable")
        table = self.ds.take(positions[order], columns=["embedding"])
        rows = tables.vectors(table.column("embedding"))
        width = {len(r) for r in rows}
        if len(width) != 1:
            raise OutputError("the library holds embeddings of different lengths for one setting")
        out = np.empty((len(positions), width.pop()), np.float32)
        out[order] = np.stack(rows)
        return out.reshape(len(keys), len(self.layers), -1)


def held(root, keys: Iterable[str], setting: Setting, layers: tuple[int, ...]) -> Held:
    """The keys of `keys` the library at `root` holds for `setting` with every layer of `layers`:
    one read of the clips table's small columns (positions are the scan's, which `take` uses)."""
    wanted = pa.array(sorted(set(keys)), pa.string())
    ds = tables.open_table(root, "clips")
    if ds is None or not len(wanted):
        return Held(ds, layers, {}, {})
    table = ds.to_table(columns=SMALL)
    mask = pc.and_(
        pc.and_(pc.equal(table["model"], setting.model), pc.equal(table["frontend"], setting.frontend)),
        pc.and_(
            pc.is_in(table["key"], value_set=wanted), pc.is_in(table["layer"], value_set=pa.array(layers, pa.int32()))
        ),
    )
    positions = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    t = table.filter(mask).drop_columns(["model", "frontend"]).to_pydict()
    where: dict[str, dict[int, int]] = {}
    for j, (key, layer) in enumerate(zip(t["key"], t["layer"])):
        where.setdefault(key, {})[layer] = int(positions[j])  # a row met twice (two runs at once): either
    facts = {}
    last = {key: j for j, key in enumerate(t["key"])}
    for key, j in last.items():
        if len(where[key]) == len(set(layers)):
            facts[key] = _facts(t, j)
    got = Held(ds, layers, facts, {k: where[k] for k in facts})
    got.root, got.again = root, lambda: held(root, list(facts), setting, layers)
    return got
