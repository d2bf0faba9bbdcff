"""Parquet: the embedding table (`embed --out emb.parquet`), tag and search rows, and reading them back.

An embedding output is one row per file, in input order: `path` (string), `duration_s`
(float64), `sample_rate` and `channels` (int32), and `embedding`, a fixed-size list of float32
(D values; `--layer all`: a fixed-size list of L fixed-size lists of D), so pandas, pyarrow,
DuckDB and Polars read it with no option and no Ray, and no row index file is needed beside it
(the path column is the index). Tag and search rows are `parquet_rows`' (the CSV's long format,
with types). Strings must be UTF-8: a file name that is not is written with `\\udcXX` escapes, as
JSON Lines writes it.

Rows are written in row groups of about 64 MiB through `pyarrow.parquet.ParquetWriter` into the
temporary file of a `writers.Unit`, so a Parquet output is atomic like every other; the rows come
a row group at a time (from the library, or copied from the file being replaced), so memory holds
about two row groups whatever the number of rows. Compression
is Snappy (Parquet's default; float32 embeddings barely compress, and every reader has it);
dictionaries only on the repetitive string columns. pyarrow is imported here only, on first use,
so commands that write no Parquet never load it. Reading accepts one file or a folder of shards
(`emb.parquet/*.parquet`, as Ray's `write_parquet` makes; hidden and `_` files ignored, shards
read in the order of their sorted paths).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from matpac_cli.errors import OutputError, UsageError, one_line

GROUP_BYTES = 64 * 2**20  # embedding bytes per row group
EMBED_COLUMNS = ["path", "duration_s", "sample_rate", "channels", "embedding"]


def arrow():
    """(pyarrow, pyarrow.parquet), imported on first use."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OutputError("Parquet needs pyarrow, which is not installed: pip install pyarrow") from None
    return pa, pq


def _strings(values: list, pa):
    """A string array; names that are not valid UTF-8 (surrogate escapes) as `\\udcXX` text."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array(
            [v if v is None else v.encode("utf-8", "backslashreplace").decode("utf-8") for v in values], pa.string()
        )


# ---------------------------------------------------------------- writing


def embedding_schema(shape: tuple[int, ...], frames: bool = False):
    pa, _ = arrow()
    kind = pa.float32()
    for n in reversed(shape):
        kind = pa.list_(kind, n)
    return pa.schema(
        [
            ("path", pa.string()),
            ("duration_s", pa.float64()),
            ("sample_rate", pa.int32()),
            ("channels", pa.int32()),
            ("embedding", kind),
        ]
        + ([("frames", pa.string())] if frames else [])
    )


def rows_per_group(shape: tuple[int, ...], group_bytes: int = GROUP_BYTES) -> int:
    """Rows of an embedding table in one row group (about `group_bytes` of embeddings)."""
    return max(1, group_bytes // (4 * int(np.prod(shape))))


def write_embeddings(
    fh: IO[bytes],
    parts: Iterable[Sequence[tuple[str, dict, np.ndarray]]],
    shape: tuple[int, ...],
    frames: bool = False,
    head: Path | None = None,
    group_bytes: int = GROUP_BYTES,
) -> None:
    """One row per (name, facts, vector) into the open binary file `fh`, in order, a row group
    per part of `parts` (`rows_per_group` rows each: memory holds one); `frames`: each row's
    frames file (`embed --frames`), a last column. `head`: an earlier table of this schema whose
    rows come first, copied a row group at a time. Memory holds about two row groups of
    `group_bytes` (the parts being cut into groups, and the group being written), whatever the
    file's size."""
    from matpac_cli.outputs.naming import frames_name

    pa, pq = arrow()
    schema = embedding_schema(shape, frames)
    naming = frames_name if frames else None
    tables = (_embedding_table(part, shape, schema, naming) for part in parts)
    if head is not None:
        tables = itertools.chain(_row_groups(head, schema), tables)
    per_group, held, rows, wrote = rows_per_group(shape, group_bytes), [], 0, False
    with pq.ParquetWriter(fh, schema, compression="snappy", use_dictionary=False) as writer:
        for table in tables:  # cut into groups of `per_group` rows, as a file written whole is
            if not held and len(table) == per_group:  # a whole group (a copied one): no copy made of it
                writer.write_table(table)
                wrote = True
                continue
            held.append(table)
            rows += len(table)
            while rows >= per_group:
                both = pa.concat_tables(held)
                writer.write_table(both.slice(0, per_group).combine_chunks())
                held, rows, wrote = [both.slice(per_group)], rows - per_group, True
        if rows or not wrote:  # the last rows; or, with none at all, a valid file of no rows
            last = pa.concat_tables(held) if held else _embedding_table([], shape, schema, naming)
            writer.write_table(last.combine_chunks())


def _row_groups(path: Path, schema):
    """The row groups of an earlier embedding table, one at a time."""
    _, pq = arrow()
    with open(path, "rb") as fh:
        source = pq.ParquetFile(fh)
        for i in range(source.num_row_groups):
            yield source.read_row_group(i).cast(schema)


def _embedding_table(part: Sequence, shape: tuple[int, ...], schema, frames_name):
    pa, _ = arrow()
    values = (
        np.stack([np.asarray(v, dtype=np.float32) for _, _, v in part]) if part else np.zeros((0, *shape), np.float32)
    )
    column = pa.array(values.reshape(-1))
    for n in reversed(shape):
        column = pa.FixedSizeListArray.from_arrays(column, n)
    return pa.table(
        [
            _strings([name for name, _, _ in part], pa),
            pa.array([float(m["duration_s"]) for _, m, _ in part], pa.float64()),
            pa.array([int(m["sample_rate"]) for _, m, _ in part], pa.int32()),
            pa.array([int(m["channels"]) for _, m, _ in part], pa.int32()),
            column,
        ]
        + ([_strings([frames_name(name) for name, _, _ in part], pa)] if frames_name is not None else []),
        schema=schema,
    )


def row_count(path: Path) -> int:
    """The rows of one Parquet file, from its footer."""
    _, pq = arrow()
    return pq.ParquetFile(path).metadata.num_rows


class EarlierRows:
    """The embeddings of an earlier Parquet output, taken by row number: only the row groups
    holding the rows asked for are read, and the last one is kept, so rows asked for in order, a
    part at a time (as an output is rewritten), read each group once (`Dataset.take` read the
    file from its start for every part: quadratic in its size). `groups_read` counts them."""

    def __init__(self, path: Path) -> None:
        self.path, self.groups_read = path, 0
        self._groups: list | None = None  # (file, group number) per row group, in row order
        self._starts = None  # each row group's first row
        self._last: tuple[int, np.ndarray] | None = None

    def _open(self) -> None:
        _, pq = arrow()
        groups, starts, at = [], [], 0
        for shard in shards(self.path):
            source = pq.ParquetFile(shard)
            for g in range(source.num_row_groups):
                groups.append((source, g))
                starts.append(at)
                at += source.metadata.row_group(g).num_rows
        self._groups, self._starts, self._rows = groups, np.array(starts + [at], np.int64), at

    def _group(self, g: int) -> np.ndarray:
        if self._last is None or self._last[0] != g:
            source, number = self._groups[g]
            self._last = (g, matrix(source.read_row_group(number, columns=["embedding"]).column(0), self.path))
            self.groups_read += 1
        return self._last[1]

    def take(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), ...) float32: the embeddings of rows `rows`, in that order."""
        pa, _ = arrow()
        try:
            if self._groups is None:
                self._open()
            rows = np.asarray(rows, np.int64)
            if len(rows) and (rows.min() < 0 or rows.max() >= self._rows):
                raise UsageError(f"{self.path}: has {self._rows} rows, not {int(rows.max()) + 1}")
            group = np.searchsorted(self._starts, rows, side="right") - 1
            out = None
            for g in np.unique(group):
                values = self._group(int(g))
                out = np.empty((len(rows), *values.shape[1:]), np.float32) if out is None else out
                here = group == g
                out[here] = values[rows[here] - self._starts[g]]
            return np.zeros((0,), np.float32) if out is None else out
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(self.path, exc) from None


# ---------------------------------------------------------------- reading


def shards(path: Path) -> list[Path]:
    """The files of a Parquet output: itself, or the `*.parquet` files under a folder (hidden and
    `_` files, such as `_SUCCESS` or `.x.tmp`, skipped), sorted by path."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"{path}: no such Parquet file or folder")
    found = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part[0] in "._" for part in p.relative_to(path).parts)
    )
    if not found:
        raise UsageError(f"{path}: a folder with no .parquet file in it")
    return found


def _unreadable(path: Path, exc: Exception) -> UsageError:
    """pyarrow's reason, its last clause only (`Parquet magic bytes not found in footer ...`)."""
    reason = one_line(exc, None).rsplit(": ", 1)[-1]
    return UsageError(f"{path}: not a readable Parquet file ({reason})")


def read_table(path: Path, columns: Iterable[str] | None = None, required: Iterable[str] = ()):
    """The rows of a Parquet file or folder of shards as one pyarrow Table; one line when it is
    not Parquet or lacks one of the `required` columns."""
    pa, _ = arrow()
    import pyarrow.dataset as ds

    try:
        data = ds.dataset([str(p) for p in shards(path)], format="parquet")
        missing = [c for c in required if c not in data.schema.names]
        if missing:
            raise UsageError(f"{path}: no {', '.join(missing)} column; not a matpac Parquet output")
        keep = None if columns is None else [c for c in columns if c in data.schema.names]
        return data.to_table(columns=keep)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None


def matrix(column, path: Path) -> np.ndarray:
    """An `embedding` column as (N, D) or (N, L, D) float32, read-only: fixed-size lists, or
    lists of one length each (a Ray tensor column holds those)."""
    pa, _ = arrow()
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n, dims = len(arr), []
    while True:
        if isinstance(arr.type, pa.ExtensionType):
            arr = arr.storage
        if (
            not pa.types.is_list(arr.type)
            and not pa.types.is_large_list(arr.type)
            and not pa.types.is_fixed_size_list(arr.type)
        ):
            break
        if arr.null_count:
            raise UsageError(f"{path}: the embedding column has empty rows")
        if pa.types.is_fixed_size_list(arr.type):
            size = arr.type.list_size
        else:
            lengths = np.unique(arr.value_lengths().to_numpy())
            if len(lengths) > 1:
                raise UsageError(f"{path}: embeddings of {len(lengths)} different lengths; expected one length")
            size = int(lengths[0]) if len(lengths) else 0
        dims.append(size)
        arr = arr.flatten()
    if arr.type != pa.float32() or arr.null_count or len(dims) not in (1, 2) or 0 in dims:
        raise UsageError(
            f"{path}: expected an embedding column of D (or layers x D) float32 values, found {column.type}"
        )
    values = arr.to_numpy(zero_copy_only=False).reshape(n, *dims)
    values.flags.writeable = False
    return values


def read_embeddings(path: Path, vectors: bool = True) -> tuple[np.ndarray | None, list[dict]]:
    """(matrix, index rows: row, path, duration_s, sample_rate, channels) of an embedding output;
    without `vectors`, the index alone (the matrix None: a re-run takes the rows it keeps later,
    `EarlierRows`, instead of holding the whole column)."""
    pa, _ = arrow()
    columns = EMBED_COLUMNS if vectors else [c for c in EMBED_COLUMNS if c != "embedding"]
    table = read_table(path, columns, required=("path", "embedding"))
    names = table.column("path").to_pylist()
    if any(not isinstance(p, str) for p in names):
        raise UsageError(f"{path}: the path column has empty rows")
    facts = {}
    for c in ("duration_s", "sample_rate", "channels"):
        if (
            c in table.column_names
            and not pa.types.is_integer(table.column(c).type)
            and not (c == "duration_s" and pa.types.is_floating(table.column(c).type))
        ):
            raise UsageError(
                f"{path}: the {c} column holds {table.column(c).type}, not numbers; not a matpac Parquet output"
            )
        facts[c] = table.column(c).to_pylist() if c in table.column_names else [None] * len(names)
    index = [
        {
            "row": i,
            "path": p,
            "duration_s": float("nan") if d is None else float(d),
            "sample_rate": int(sr or 0),
            "channels": int(ch or 0),
        }
        for i, (p, d, sr, ch) in enumerate(zip(names, facts["duration_s"], facts["sample_rate"], facts["channels"]))
    ]
    return (matrix(table.column("embedding"), path) if vectors else None), index


def read_matrix(path: Path) -> np.ndarray:
    """The embedding column alone (what a resumed run takes its earlier rows from)."""
    return matrix(read_table(path, ["embedding"], required=("embedding",)).column("embedding"), path)


def row_batches(path: Path, columns: Sequence[str]) -> Iterable[dict]:
    """The rows of a Parquet output as dicts, one row group at a time (memory stays at one)."""
    pa, _ = arrow()
    import pyarrow.dataset as ds

    try:
        data = ds.dataset([str(p) for p in shards(path)], format="parquet")
        for batch in data.to_batches(columns=[c for c in columns if c in data.schema.names]):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None


def column_names(path: Path) -> list[str]:
    pa, _ = arrow()
    import pyarrow.dataset as ds

    try:
        return list(ds.dataset([str(p) for p in shards(path)], format="parquet").schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None
