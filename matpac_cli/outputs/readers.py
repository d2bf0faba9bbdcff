"""Reading matpac's own outputs back: the embedding matrix with its index and manifest.

The jobs that build on an earlier run (`train`, `search`, `report`) read through these functions
and nothing else, so the output formats are parsed in one place, next to the writers. Anything
that is not what matpac writes is refused with one line naming the file (UsageError, exit 2).
Embeddings are `X.npy` + `X.csv`, or Parquet (`X.parquet`, one file or a folder of shards, its
`path` column the index). The Parquet details are in `parquet`; tag outputs are read by
`tag_readers`, with the manifest and text-file rules kept here (`read_manifest`, `reading`).
A CSV cell matpac wrote `'`-prefixed for spreadsheets is read back without it (`safetext`).
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from matpac_cli.errors import UsageError, one_line
from matpac_cli.outputs import naming
from matpac_cli.outputs.manifest import check_manifest
from matpac_cli.outputs.naming import INDEX_COLUMNS
from matpac_cli.outputs.safetext import from_spreadsheet


def embeddings_inputs(path: Path) -> list[Path]:
    """Every file of the embed output `path` a run reads (each shard of a Parquet folder too)."""
    files = naming.embed_files(path)
    if naming.is_parquet(path) and path.is_dir():
        files += sorted(p for p in path.rglob("*") if p.is_file())
    return files


@dataclass
class Embeddings:
    """One embed output. `matrix` is (N, D) or (N, layers, D) float32, read-only (a .npy memory-
    mapped, a Parquet embedding column in memory); `index[i]` describes row i (path as the user
    named it, duration_s, sample_rate, channels, truncated)."""

    path: Path
    matrix: np.ndarray | None  # None: read without vectors (`read_embeddings(vectors=False)`)
    index: list[dict]
    manifest: dict | None
    library: object | None = None  # read from a library: its view (every key's vector, to find moved files)

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self.index]

    @property
    def model(self) -> str | None:
        """The model name the manifest records (what a query must be embedded with), if any."""
        models = (self.manifest or {}).get("models") or []
        return models[0].get("name") if models else None

    def clip(self, layer: int = -1) -> np.ndarray:
        """(N, D): the matrix itself, or one layer of an `--layer all` output."""
        return self.matrix if self.matrix.ndim == 2 else self.matrix[:, layer, :]


def read_manifest(path: Path) -> dict | None:
    """The manifest beside an output, checked as matpac writes it; None when there is none."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{path}: not a matpac manifest ({one_line(exc)})") from None
    why = check_manifest(data)
    if why:
        raise UsageError(f"{path}: not a matpac manifest ({why})")
    return data


def read_embeddings(npy: Path, vectors: bool = True, rows: int | None = None) -> Embeddings:
    """Read `X.npy` with `X.csv`, or `X.parquet` (a file or a folder of shards), and, where
    present, `X.manifest.json`. Without `vectors`, a Parquet output's index alone (its `matrix`
    None); a .npy is memory-mapped either way. `rows`: a .npy's first rows alone, where both files
    hold at least that many (what a run killed while growing it in place added is not read)."""
    npy = Path(npy)
    if naming.is_parquet(npy):
        return _parquet_embeddings(npy, vectors)
    if npy.suffix != ".npy":
        raise UsageError(f"{npy}: expected the .npy or .parquet that `matpac embed --out` writes")
    if not npy.is_file():
        raise UsageError(f"{npy}: no such embeddings file")
    try:  # never a pickle: an object array is refused, not loaded
        matrix = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{npy}: not a readable .npy matrix ({one_line(exc)})") from None
    if matrix.ndim not in (2, 3) or matrix.dtype != np.float32 or 0 in matrix.shape[1:]:
        raise UsageError(
            f"{npy}: expected an N x D (or N x layers x D) float32 matrix, found {matrix.dtype} {tuple(matrix.shape)}"
        )
    index_path = naming.row_index(npy)
    index = read_index(index_path, rows)
    if rows is not None and min(len(index), len(matrix)) >= rows:
        index, matrix = index[:rows], matrix[:rows]
    if len(index) != len(matrix):
        raise UsageError(
            f"{index_path}: {len(index)} rows but {npy} has {len(matrix)}; the two files are not from the same run"
        )
    return Embeddings(npy, matrix, index, read_manifest(naming.embed_manifest(npy)))


def _parquet_embeddings(path: Path, vectors: bool = True) -> Embeddings:
    from matpac_cli.outputs import parquet

    if not path.exists():
        raise UsageError(f"{path}: no such embeddings file")
    matrix, index = parquet.read_embeddings(path, vectors)
    manifest = read_manifest(naming.embed_manifest(path))
    truncated = set((manifest or {}).get("truncated") or [])  # a Parquet output lists them there
    for row in index:
        row["truncated"] = row["path"] in truncated
    return Embeddings(path, matrix, index, manifest)


def read_index(path: Path, rows: int | None = None) -> list[dict]:
    """The rows of a `.npy` output's index; `rows`: only the first so many (an output growing in
    place, `outputs.inplace`: lines past them may be a killed run's half-written tail)."""
    if not path.is_file():
        raise UsageError(f"{path}: the row index of the embeddings is missing (matpac writes it beside the .npy)")
    with reading(path) as fh:
        reader = csv.reader(fh)  # rows as lists, picked by column: a dict per row cost twice as much
        fieldnames = next(reader, None)
        if fieldnames is None or not set(INDEX_COLUMNS[:2]) <= set(fieldnames):
            raise UsageError(f"{path}: not a matpac embedding index (expected columns {','.join(INDEX_COLUMNS)})")
        unique_columns(path, fieldnames)
        fast = _arrow_index(path, fieldnames, rows)
        if fast is not None:
            return fast
        # a column's cell by position; -1: a column the header lacks, read as the None each row
        # gets appended (a short row padded with None), as `csv.DictReader` gives them
        i_row, i_path, i_d, i_sr, i_ch, i_t = (fieldnames.index(c) if c in fieldnames else -1 for c in INDEX_COLUMNS)
        width, limit, rows = len(fieldnames) + 1, rows, []
        for n, raw in enumerate(r for r in reader if r):  # blank lines skipped, as DictReader does
            if limit is not None and n >= limit:
                break
            raw.extend([None] * max(1, width - len(raw)))  # ends with a None, whatever its length
            try:
                rows.append(
                    {
                        "row": int(raw[i_row]),
                        "path": nul_free_path(from_spreadsheet(raw[i_path])),
                        "duration_s": float(raw[i_d] or "nan"),
                        "sample_rate": int(raw[i_sr] or 0),
                        "channels": int(raw[i_ch] or 0),
                        "truncated": raw[i_t] == "1",
                    }
                )
            except (TypeError, ValueError):
                raise UsageError(f"{path}: line {n + 2} is not a matpac index row") from None
    if [r["row"] for r in rows] != list(range(len(rows))):
        raise UsageError(f"{path}: rows are not numbered 0..{len(rows) - 1}; not a matpac embedding index")
    return rows


INDEX_TYPES = ("int64", "string", "string", "int64", "int64", "string")  # of INDEX_COLUMNS, to Arrow
DECIMAL = r"^(-?[0-9]+(\.[0-9]+)?|nan|)$"  # a duration as matpac writes it (`%.3f`, nan), or none


def _arrow_index(path: Path, fieldnames: list[str], rows: int | None) -> list[dict] | None:
    """The index's rows read by Arrow's CSV reader (0.28 s at 100,000 rows row by row in Python,
    0.1 s so), where every cell reads as matpac writes it (rows numbered 0.., every line whole,
    UTF-8, no NUL, numbers as digits, no field past the csv module's limit); None for anything
    else, which the row-by-row reader reads and names."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    types = {c: pa.type_for_alias(t) for c, t in zip(INDEX_COLUMNS, INDEX_TYPES) if c in fieldnames}
    options = pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False)
    try:  # every column (an extra one too: its fields are held to the limit as the csv module holds them)
        t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True), convert_options=options)
    except (pa.ArrowException, OSError):
        return None
    t = t.slice(0, rows) if rows is not None else t
    n, numbered = t.num_rows, t.column("row")
    if (
        numbered.null_count
        or not np.array_equal(numbered.to_numpy(), np.arange(n))
        or not _plain(t, csv.field_size_limit())
    ):
        return None
    names = t.column("path").to_pylist()
    for j in np.flatnonzero(pc.starts_with(t.column("path"), "'").to_numpy(zero_copy_only=False)).tolist():
        names[j] = from_spreadsheet(names[j])

    def column(name: str, missing):
        return t.column(name).fill_null(missing).to_pylist() if name in fieldnames else [missing] * n

    cut = pc.equal(t.column("truncated"), "1").to_pylist() if "truncated" in fieldnames else [False] * n
    facts = zip(_seconds(t, n), column("sample_rate", 0), column("channels", 0), cut)
    return [
        {"row": i, "path": p, "duration_s": d, "sample_rate": r, "channels": c, "truncated": x}
        for i, (p, (d, r, c, x)) in enumerate(zip(names, facts))
    ]


def _seconds(t, n: int) -> list[float]:
    """The `duration_s` column as floats, an empty cell (or no column) NaN, as the row-by-row
    reader reads them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "duration_s" not in t.column_names:
        return [float("nan")] * n
    text = t.column("duration_s")
    empty = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return pc.cast(empty, pa.float64()).fill_null(float("nan")).to_pylist()


def _plain(t, limit: int) -> bool:
    """Whether the index's text is as matpac writes it: no NUL in a path, each duration a
    decimal, no text field longer than `limit` (the csv module refuses the file then)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pc.any(pc.match_substring(t.column("path"), "\0")).as_py():
        return False
    if "duration_s" in t.column_names and not pc.all(pc.match_substring_regex(t.column("duration_s"), DECIMAL)).as_py():
        return False
    texts = [c for c in t.columns if pa.types.is_string(c.type) and len(c)]
    return all((pc.max(pc.utf8_length(c)).as_py() or 0) <= limit for c in texts)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[TextIO]:
    """A CSV or JSON Lines file of matpac's, open for reading (a UTF-8 byte-order mark skipped,
    names that are not UTF-8 kept as their bytes), with what the csv module raises on a damaged
    or hostile one (a field over its 131,072-character limit) turned into one line naming it."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            yield fh
    except csv.Error as exc:
        raise UsageError(f"{path}: not a readable matpac file ({one_line(exc)})") from None


def unique_columns(path: Path, columns: list[str]) -> None:
    """A header naming a column twice is not matpac's (csv.DictReader would keep only the last)."""
    twice = sorted(c for c, n in Counter(columns).items() if n > 1)
    if twice:
        raise UsageError(f"{path}: column {twice[0]} appears more than once; not a matpac file")


def nul_free_path(value: str) -> str:
    """A path as matpac wrote it: never holding a NUL byte (no file name can)."""
    if "\0" in value:
        raise ValueError("a path with a NUL byte")
    return value
