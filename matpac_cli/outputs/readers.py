"""Reading matpac's own outputs back: the embedding matrix with its index and manifest, and tag rows.

The jobs that build on an earlier run (`train`, `search`, `report`) read through these functions
and nothing else, so the output formats are parsed in one place, next to the writers. Anything
that is not what matpac writes is refused with one line naming the file (UsageError, exit 2).
Embeddings are `X.npy` + `X.csv`, or Parquet (`X.parquet`, one file or a folder of shards, its
`path` column the index); tags are CSV, JSON Lines or Parquet. The Parquet details are in `parquet`.
A CSV cell matpac wrote `'`-prefixed for spreadsheets is read back without it (`safetext`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from matpac_cli.errors import UsageError, one_line
from matpac_cli.outputs import naming
from matpac_cli.outputs.manifest import check_manifest
from matpac_cli.outputs.naming import INDEX_COLUMNS, PARQUET
from matpac_cli.outputs.safetext import from_spreadsheet

TAG_COLUMNS = ["path", "head", "label", "score", "rank", "tag_id"]
DURATION_COLUMN = "duration_s"  # each file's length (optional: tag outputs written before it have none)
SEGMENT_COLUMNS = ["start_s", "end_s"]
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # what `matpac tag --out` writes as JSON Lines
TAG_SUFFIXES = (".csv", *JSONL_SUFFIXES, PARQUET)


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
    matrix: np.ndarray
    index: list[dict]
    manifest: dict | None

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


def read_embeddings(npy: Path) -> Embeddings:
    """Read `X.npy` with `X.csv`, or `X.parquet` (a file or a folder of shards), and, where
    present, `X.manifest.json`."""
    npy = Path(npy)
    if naming.is_parquet(npy):
        return _parquet_embeddings(npy)
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
    index = read_index(index_path)
    if len(index) != len(matrix):
        raise UsageError(
            f"{index_path}: {len(index)} rows but {npy} has {len(matrix)}; the two files are not from the same run"
        )
    return Embeddings(npy, matrix, index, read_manifest(naming.embed_manifest(npy)))


def _parquet_embeddings(path: Path) -> Embeddings:
    from matpac_cli.outputs import parquet

    if not path.exists():
        raise UsageError(f"{path}: no such embeddings file")
    matrix, index = parquet.read_embeddings(path)
    manifest = read_manifest(naming.embed_manifest(path))
    truncated = set((manifest or {}).get("truncated") or [])  # a Parquet output lists them there
    for row in index:
        row["truncated"] = row["path"] in truncated
    return Embeddings(path, matrix, index, manifest)


def read_index(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"{path}: the row index of the embeddings is missing (matpac writes it beside the .npy)")
    with _reading(path) as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not set(INDEX_COLUMNS[:2]) <= set(reader.fieldnames):
            raise UsageError(f"{path}: not a matpac embedding index (expected columns {','.join(INDEX_COLUMNS)})")
        _unique_columns(path, reader.fieldnames)
        rows = []
        for n, raw in enumerate(reader):
            try:
                rows.append(
                    {
                        "row": int(raw["row"]),
                        "path": _path(from_spreadsheet(raw["path"])),
                        "duration_s": float(raw.get("duration_s") or "nan"),
                        "sample_rate": int(raw.get("sample_rate") or 0),
                        "channels": int(raw.get("channels") or 0),
                        "truncated": raw.get("truncated") == "1",
                    }
                )
            except (TypeError, ValueError):
                raise UsageError(f"{path}: line {n + 2} is not a matpac index row") from None
    if [r["row"] for r in rows] != list(range(len(rows))):
        raise UsageError(f"{path}: rows are not numbered 0..{len(rows) - 1}; not a matpac embedding index")
    return rows


@dataclass
class Tags:
    """One tag output, long format: one dict per row with typed values; `segments` when the run
    had `--segments` (rows with start_s/end_s; clip rows have them as None). `duration_s` is the
    file's length (None where the output predates the column); a rank-0 row (label, score and
    tag_id None) says the file was tagged and that head kept no label of it."""

    path: Path
    rows: list[dict]
    segments: bool
    manifest: dict | None
    heads: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """Every path, in the order the output first names it."""
        return list(dict.fromkeys(r["path"] for r in self.rows))


def read_tags(path: Path) -> Tags:
    """Read a `matpac tag --out` CSV, JSON Lines or Parquet output (and its `FILE.manifest.json`)."""
    path = Path(path)
    _check_tags_path(path)
    if path.suffix.lower() in JSONL_SUFFIXES:
        raw_rows, columns = _jsonl_rows(path)
    elif path.suffix.lower() == PARQUET:
        from matpac_cli.outputs import parquet

        columns = parquet.column_names(path)
        raw_rows = list(parquet.row_batches(path, TAG_COLUMNS + [DURATION_COLUMN] + SEGMENT_COLUMNS))
    else:
        raw_rows, columns = _csv_rows(path)
    if not set(TAG_COLUMNS) <= set(columns):
        raise UsageError(f"{path}: not a matpac tags file (expected columns {','.join(TAG_COLUMNS)})")
    segments = set(SEGMENT_COLUMNS) <= set(columns)
    rows = [_typed(r, path, n, segments) for n, r in enumerate(raw_rows)]
    heads = list(dict.fromkeys(r["head"] for r in rows))
    return Tags(path, rows, segments, read_manifest(naming.tags_manifest(path)), heads)


@dataclass
class TagStream:
    """A tag output read row by row, for outputs too large to hold as dicts (5,000 tracks with
    `--segments` are about 2 million rows): `rows()` yields what `read_tags` would put in
    `Tags.rows`, in the file's order, reading the file again on each call."""

    path: Path
    segments: bool
    manifest: dict | None

    def rows(self) -> Iterator[dict]:
        if self.path.suffix.lower() == PARQUET:
            from matpac_cli.outputs import parquet

            columns = TAG_COLUMNS + [DURATION_COLUMN] + (SEGMENT_COLUMNS if self.segments else [])
            for n, raw in enumerate(parquet.row_batches(self.path, columns)):
                yield _typed(raw, self.path, n, self.segments)
            return
        with _reading(self.path) as fh:
            if self.path.suffix.lower() == ".csv":
                reader = csv.reader(fh)
                header = next(reader, [])
                for n, values in enumerate(reader):
                    yield _typed(dict(zip(header, map(from_spreadsheet, values))), self.path, n, self.segments)
                return
            lines = (line for line in fh if line.strip())
            for n, line in enumerate(lines):
                yield _typed(_json_object(line, self.path, n), self.path, n, self.segments)


def scan_tags(path: Path) -> TagStream:
    """`read_tags` without reading the rows: checks the columns (the CSV header, the Parquet
    schema, or the first JSON Lines row: matpac writes every column in every row) and reads the
    manifest."""
    path = Path(path)
    _check_tags_path(path)
    suffix = path.suffix.lower()
    if suffix == PARQUET:
        from matpac_cli.outputs.parquet import column_names

        columns = column_names(path)
        if not set(TAG_COLUMNS) <= set(columns):
            raise UsageError(f"{path}: not a matpac tags file (expected columns {','.join(TAG_COLUMNS)})")
        return TagStream(path, set(SEGMENT_COLUMNS) <= set(columns), read_manifest(naming.tags_manifest(path)))
    with _reading(path) as fh:
        if suffix == ".csv":
            columns = next(csv.reader(fh), [])
            _unique_columns(path, columns)
        else:
            first = next((line for line in fh if line.strip()), None)
            columns = list(_json_object(first, path, 0)) if first is not None else []
    if not set(TAG_COLUMNS) <= set(columns):
        raise UsageError(f"{path}: not a matpac tags file (expected columns {','.join(TAG_COLUMNS)})")
    return TagStream(path, set(SEGMENT_COLUMNS) <= set(columns), read_manifest(naming.tags_manifest(path)))


def _check_tags_path(path: Path) -> None:
    if not (path.is_file() or (path.suffix.lower() == PARQUET and path.is_dir())):  # a folder of shards
        raise UsageError(f"{path}: no such tags file")
    if path.suffix.lower() not in TAG_SUFFIXES:
        raise UsageError(f"{path}: expected the .csv, .jsonl, .ndjson or .parquet that `matpac tag --out` writes")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[TextIO]:
    """A CSV or JSON Lines file of matpac's, open for reading (a UTF-8 byte-order mark skipped,
    names that are not UTF-8 kept as their bytes), with what the csv module raises on a damaged
    or hostile one (a field over its 131,072-character limit) turned into one line naming it."""
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            yield fh
    except csv.Error as exc:
        raise UsageError(f"{path}: not a readable matpac file ({one_line(exc)})") from None


def _unique_columns(path: Path, columns: list[str]) -> None:
    twice = sorted(c for c, n in Counter(columns).items() if n > 1)
    if twice:
        raise UsageError(f"{path}: column {twice[0]} appears more than once; not a matpac file")


def _json_object(line: str, path: Path, n: int) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        raise UsageError(f"{path}: row {n + 1} is not JSON; not a matpac tags file") from None
    if not isinstance(row, dict):
        raise UsageError(f"{path}: row {n + 1} is not a JSON object; not a matpac tags file")
    return row


def _csv_rows(path: Path):
    with _reading(path) as fh:
        reader = csv.DictReader(fh)
        _unique_columns(path, list(reader.fieldnames or []))
        rows = [{k: from_spreadsheet(v) for k, v in row.items()} for row in reader]
        return rows, list(reader.fieldnames or [])


def _jsonl_rows(path: Path):
    rows, columns = [], []
    with _reading(path) as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            row = _json_object(line, path, n)
            rows.append(row)
            columns.extend(k for k in row if k not in columns)
    if rows and "start_s" in columns and "end_s" not in columns:
        columns.remove("start_s")
    return rows, columns


def _number(value, kind):
    if value is None or value == "":
        return None
    return _finite(kind(value))


def _path(value: str) -> str:
    """A path as matpac wrote it: never holding a NUL byte (no file name can)."""
    if "\0" in value:
        raise ValueError("a path with a NUL byte")
    return value


def _finite(value: float) -> float:
    """matpac writes no NaN or infinite score or time; a file holding one was not written by it."""
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


def _typed(raw: dict, path: Path, n: int, segments: bool) -> dict:
    try:
        rank = int(raw["rank"])
        if rank == 0:  # the head kept no label of this file
            row = {
                "path": _path(str(raw["path"])),
                "head": str(raw["head"]),
                "label": None,
                "score": None,
                "rank": 0,
                "tag_id": None,
            }
        else:
            row = {
                "path": _path(str(raw["path"])),
                "head": str(raw["head"]),
                "label": str(raw["label"]),
                "score": _finite(float(raw["score"])),
                "rank": rank,
                "tag_id": str(raw["tag_id"]),
            }
        row["duration_s"] = _number(raw.get(DURATION_COLUMN), float)
        if segments:
            row["start_s"] = _number(raw.get("start_s"), float)
            row["end_s"] = _number(raw.get("end_s"), float)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        why = f" ({exc})" if "finite" in str(exc) else ""
        raise UsageError(f"{path}: row {n + 1} is not a matpac tag row{why}") from None
    return row
