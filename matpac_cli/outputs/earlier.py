"""An existing output, read back: whether matpac wrote it, with what settings, and its rows.

A file output (`emb.npy`, `emb.parquet`, `tags.csv` ...) is rewritten whole at the end of a run,
from the files of that run (an embed output only where its rows changed: left as it was, or grown
in place, `jobs.embed_output.write_outputs`). It is matpac's to replace only where its manifest says so (the
manifest beside it names it as the output it describes), and only when the settings match.
Onto an output made from more files (`matpac tag ./Music` then `matpac tag "./Music/New
Arrivals"` into the same `tags.csv`), or after files were deleted from disk, a rewrite would drop
rows no one asked to drop, so the run is refused, before any model loads, unless one of two
settings says what is meant:

- `update`: keep those rows (in the order the output had them), then this run's rows (in input
  order; a file of this run replaces its earlier row); with `prune` as well, the kept rows of
  files gone from disk are dropped, and counted (`pruned`);
- `force`: replace the output with this run's rows alone.

Which file a row is of: its `path` (the name it was written under) resolved against the folder
the run that wrote it ran in (the manifest's `cwd`; the current folder for outputs written before
it was recorded), to a real path, as this run's inputs are. The rows are read from the output
itself: matpac keeps no other record of an output (the library holds the embeddings, by audio).
Re-running the same command, or a run whose inputs include every file of the output, is never
refused: no row is of a file outside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matpac_cli.errors import MatpacError, OutputError, UsageError
from matpac_cli.outputs import inplace, naming, parquet_append, writers
from matpac_cli.outputs.readers import read_manifest
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


def real_path(item: Item) -> str:
    """The file's real path: `./clips/a.wav`, `clips/a.wav` and `$PWD/clips/a.wav` are one file."""
    if item.real is not None:  # learnt by the folder walk
        return item.real
    try:
        return os.fsdecode(os.path.realpath(item.path))
    except (OSError, ValueError):
        return item.name


def vouched(out: Path, manifest_path: Path) -> dict | None:
    """The manifest at `manifest_path` where it is matpac's and describes `out` (its `output.path`
    names `out`), else None: an `out` it does not vouch for is someone else's file."""
    try:
        man = read_manifest(manifest_path)
    except (MatpacError, OSError):
        return None
    described = ((man or {}).get("output") or {}).get("path")
    if not isinstance(described, str) or Path(described).name != Path(out).name:
        return None
    return man


def owned(out: Path, manifest_path: Path, force: bool) -> dict | None:
    """`out`'s manifest, where `out` exists; an existing `out` no manifest vouches for is refused
    without `force` (never replaced silently)."""
    if force or not os.path.lexists(out):
        return None
    man = vouched(out, manifest_path)
    if man is None:
        raise OutputError(writers.not_ours(out), settings=("force",))
    return man


def refuse_a_sharer(paths: dict[str, Path]) -> None:
    """`emb.npy` and `emb.parquet` would share `emb.manifest.json`: where it is the manifest of the
    other one, which exists, it stays (with `force` too: that output could no longer resume,
    and would be called someone else's)."""
    if paths["manifest"].exists() and vouched(paths["matrix"], paths["manifest"]) is None:
        for owner in naming.manifest_sharers(paths["matrix"]):
            if owner.exists() and vouched(owner, paths["manifest"]) is not None:
                raise OutputError(
                    f"{paths['manifest']} is the manifest of {owner}; give `out` another name than {paths['matrix'].name}",
                    settings=("out",),
                )


def settings_differ(man: dict | None, settings: dict) -> list[str]:
    """The settings an output was written with (its manifest's) that differ from these ones, so the
    refusal can name what changed; empty where there is no manifest."""
    old = (man or {}).get("settings")
    if not isinstance(old, dict) or old == settings:
        return []
    # a setting the manifest does not record (an export's, an older matpac's) is not a difference
    return [k for k in sorted(set(old) & set(settings)) if old[k] != settings[k]]


def check_layout(out: Path, man: dict | None, wide: bool) -> None:
    """A tag output in the wide layout is not rewritten in the long one, nor a long one in the
    wide, by `update` or a re-run: said in one line before a model loads (the manifest's
    `output.columns` says which layout was written)."""
    from matpac_cli.outputs.tag_readers import is_wide

    held = is_wide(((man or {}).get("output") or {}).get("columns"))
    if held != wide:
        said = "one row per file (`wide`)" if held else "long rows (a row per label, without `wide`)"
        raise OutputError(
            f"{out} holds {said}; give the same layout, use `force` to replace it, or choose another `out`",
            settings=("wide", "force", "out"),
        )


class Row:
    """One file's part of an output: the name it was written under, its real path, and what the
    output holds of it (`payload`; `embed`: its facts and vector, made when first asked of the
    output's index (`_Index`): only `update` keeps rows, and a re-run without it asks of none,
    where making them cost half a second at 100,000 rows; `tag`: its rows)."""

    __slots__ = ("name", "cwd", "here", "_payload", "_index", "_at", "_real")

    def __init__(self, name: str, cwd: str, payload: object = None, here: bool = False, index=None, at: int = -1):
        self.name, self.cwd = name, cwd  # cwd: the folder the run that wrote it ran in: its name is relative to it
        self.here = here  # written by a run in the current folder: its name is an input's name too
        self._payload, self._index, self._at, self._real = payload, index, at, None

    @property
    def payload(self) -> object:
        if self._index is not None:
            self._payload, self._index = self._index.payload(self._at), None
        return self._payload

    @property
    def real(self) -> str:
        """Its real path, resolved when asked (a re-run naming every row as before asks none)."""
        if self._real is None:
            self._real = resolved(self.name, self.cwd)
        return self._real


def cwd_of(man: dict | None) -> str:
    cwd = (man or {}).get("cwd")
    return cwd if isinstance(cwd, str) else os.getcwd()


def resolved(name: str, cwd: str) -> str:
    try:
        return os.fsdecode(os.path.realpath(os.path.join(cwd, os.path.expanduser(name))))
    except (OSError, ValueError):
        return name


@dataclass(frozen=True)
class Earlier:
    """A row's vector left where it is, row `row` of the Parquet output being replaced: read a
    row group at a time as the new output is written (`parquet.EarlierRows`), never all at once."""

    row: int


def embed_rows(out: Path, man: dict | None) -> list[Row]:
    """The rows of the embed output `out` (matrix and index), by file: a `.npy`'s vectors are
    views of its memory map, a Parquet output's are `Earlier` rows (its index alone is read). A
    .npy its manifest says a run was growing (`inplace`) is read to the manifest's count, and a
    Parquet one is cut back to the manifest's length first (`parquet_append.repair`). Made
    once for the CLI's check and the job's (`_readable`): 100,000 rows cost a second to make."""
    record = (man or {}).get("rows")
    pending = record.get("count") if isinstance(record, dict) and record.get("pending") else None
    if pending is not None and naming.is_parquet(out):  # under the output's lock (the CLI's, the job's)
        parquet_append.repair(out, inplace.recorded(record, "matrix"))
    cwd = cwd_of(man)
    return _readable(out, f"embed {pending} {cwd}", lambda path: _embed_rows(path, pending, cwd))


def _embed_rows(out: Path, pending: int | None, cwd: str) -> list[Row]:
    from matpac_cli.outputs.readers import read_embeddings

    emb = read_embeddings(out, vectors=False, rows=pending)
    here, index = _here(cwd), _Index(emb)
    return [Row(r["path"], cwd, None, here, index, i) for i, r in enumerate(emb.index)]


class _Index:
    """An embed output's rows as read (`readers.read_embeddings`): each row's payload, (facts,
    vector), made when asked. A .npy's vector is a view of its memory map, a Parquet output's an
    `Earlier` row."""

    def __init__(self, emb) -> None:
        import numpy as np

        self.index = emb.index
        # rows of the map as plain array views: a `np.memmap` row costs 20 us to make, 2 s at 100,000
        self.matrix = None if emb.matrix is None else emb.matrix.view(np.ndarray)

    def payload(self, i: int) -> tuple[dict, object]:
        r = self.index[i]
        facts = {"duration_s": r["duration_s"], "sample_rate": r["sample_rate"], "channels": r["channels"]}
        if r.get("truncated"):
            facts["truncated"] = True
        return facts, Earlier(i) if self.matrix is None else self.matrix[i]


def _here(cwd: str) -> bool:
    try:
        return os.path.realpath(cwd) == os.path.realpath(os.getcwd())
    except OSError:
        return False


def tag_rows(out: Path, man: dict | None) -> list[Row]:
    """The rows of the tag output `out`, grouped by file, in the order the output first names it
    (a wide output, as its manifest's `output.columns` says: one row per file, as written)."""
    from matpac_cli.outputs.tag_readers import is_wide, read_tags, read_wide

    columns = ((man or {}).get("output") or {}).get("columns")
    wide = is_wide(columns)
    tags = _readable(
        out, f"wide {columns}" if wide else "tags", (lambda p: read_wide(p, columns)) if wide else read_tags
    )
    cwd, by_name = cwd_of(man), {}
    for row in tags.rows:
        by_name.setdefault(row["path"], []).append(row)
    return [Row(name, cwd, rows, _here(cwd)) for name, rows in by_name.items()]


_LAST: dict = {}  # the output read last, by its stat: read again once, for free (see `_readable`)


def _readable(out: Path, kind: str, read):
    """`read(out)`, once per version of the file: the CLI's check before a model loads and the
    job's own look at the same locked output take one read between them (a tag output with
    segments can be millions of rows)."""
    try:
        st = os.stat(out)
        key = (kind, os.path.realpath(out), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        key = None
    if key is not None and key in _LAST:
        return _LAST.pop(key)  # served once: nothing is held past the job
    try:
        got = read(out)
    except MatpacError as exc:
        raise OutputError(f"{exc}; use `force` to replace it", settings=("force",)) from None
    _LAST.clear()
    if key is not None:
        _LAST[key] = got
    return got


def not_inputs(rows: list[Row], items: Iterable[Item]) -> list[Row]:
    """The rows of files that are not inputs of this run, in the output's order: by real path,
    or, for rows written from this folder, by the name (as given, or as Parquet spells a name
    that is not UTF-8) where the path does not say (a name kept with its `~`)."""
    items = list(items)
    names = {item.name for item in items}
    rest = [row for row in rows if not (row.here and row.name in names)]  # no path resolved for these
    if rest and any(row.here for row in rest):  # a name Parquet spelt with escapes
        names = {_as_text(item.name) for item in items}
        rest = [row for row in rest if not (row.here and row.name in names)]
    if not rest:
        return []
    inputs = {real_path(item) for item in items}
    return [row for row in rest if row.real not in inputs]


def _as_text(name: str) -> str:
    """`name` as a text column holds it: bytes that are not UTF-8 as `\\udcXX` escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def on_disk(row: Row) -> bool:
    try:
        return os.path.exists(row.real)
    except (OSError, ValueError):
        return False


def refuse_dropping(out: Path, rows: list[Row], items: Iterable[Item], update: bool, force: bool) -> None:
    """Refuse, in one line, a run that would drop the rows `out` holds of files that are not its
    inputs, unless `update` keeps them or `force` replaces the output."""
    if update or force:
        return
    others = not_inputs(rows, items)
    if not others:
        return
    gone = sum(not on_disk(row) for row in others)
    said = f" ({gone} of them gone from disk: `update` with `prune` drops those)" if gone else ""
    raise OutputError(
        f"{out} holds rows of {len(others)} file(s) that are not inputs of this run{said}; "
        "use `update` to keep them (and add this run's) or `force` to replace the file",
        settings=("update", "prune", "force"),
    )


@dataclass
class Kept:
    """The earlier rows a run with `update` writes before its own: (name, payload) in the output's
    order, and how many `prune` dropped."""

    rows: list[tuple[str, object]] = field(default_factory=list)
    pruned: int = 0


def kept_rows(rows: list[Row], items: Iterable[Item], update: bool, prune: bool) -> Kept:
    """What `update` keeps of an output's `rows`: those of files that are not inputs of this run,
    under the names they were written with; with `prune`, those of files gone from disk are
    dropped."""
    kept = Kept()
    if not update:
        return kept
    for row in not_inputs(rows, items):
        if prune and not on_disk(row):
            kept.pruned += 1
        else:
            kept.rows.append((row.name, row.payload))
    return kept


def count(summary, kept: Kept) -> None:
    """The summary (and so the manifest and the closing line) says what was kept and pruned."""
    summary.kept, summary.pruned = len(kept.rows), kept.pruned
