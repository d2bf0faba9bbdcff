"""Reading matpac's tag outputs back: CSV, JSON Lines or Parquet, whole (`read_tags`) or as a stream.

A tag output is long format, one row per (file, head, label), or with `tag --wide` one row per
file (`read_wide`), typed on reading: a row that is
not what `matpac tag` writes (a missing column, a NaN score, a path with a NUL byte) is refused
with one line naming the file and the row. `scan_tags` checks the columns and reads the manifest
without the rows, for outputs too large to hold (the report streams them). The embedding
outputs, the manifest and the rules every matpac text file is read with are in `readers`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from matpac_cli.errors import UsageError
from matpac_cli.outputs import naming
from matpac_cli.outputs.naming import PARQUET
from matpac_cli.outputs.readers import nul_free_path, read_manifest, reading, unique_columns
from matpac_cli.outputs.safetext import from_spreadsheet

TAG_COLUMNS = ["path", "head", "label", "score", "rank", "tag_id"]
DURATION_COLUMN = "duration_s"  # each file's length (optional: tag outputs written before it have none)
SEGMENT_COLUMNS = ["start_s", "end_s"]
WIDE_COLUMNS = ["path", DURATION_COLUMN, "truncated"]  # `tag --wide`: then <head>_label, <head>_score per head
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # what `matpac tag --out` writes as JSON Lines
TAG_SUFFIXES = (".csv", *JSONL_SUFFIXES, PARQUET)


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
    _long_columns(path, columns)
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
        with reading(self.path) as fh:
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
        _long_columns(path, columns)
        return TagStream(path, set(SEGMENT_COLUMNS) <= set(columns), read_manifest(naming.tags_manifest(path)))
    with reading(path) as fh:
        if suffix == ".csv":
            columns = next(csv.reader(fh), [])
            unique_columns(path, columns)
        else:
            first = next((line for line in fh if line.strip()), None)
            columns = list(_json_object(first, path, 0)) if first is not None else []
    _long_columns(path, columns)
    return TagStream(path, set(SEGMENT_COLUMNS) <= set(columns), read_manifest(naming.tags_manifest(path)))


def _long_columns(path: Path, columns: list[str]) -> None:
    if set(TAG_COLUMNS) <= set(columns):
        return
    if is_wide(columns):
        raise UsageError(f"{path}: a wide tags file (`matpac tag --wide`, one row per file); this reads the long rows")
    raise UsageError(f"{path}: not a matpac tags file (expected columns {','.join(TAG_COLUMNS)})")


# ---------------------------------------------------------------- the wide layout (`tag --wide`)


def is_wide(columns: list[str] | None) -> bool:
    """Whether these columns (a file's, or a manifest's `output.columns`) are `tag --wide`'s:
    path, duration_s, truncated and a `<head>_label`, `<head>_score` pair per head; no head column."""
    if not columns or "head" in columns or columns[:3] != WIDE_COLUMNS:
        return False
    rest = columns[3:]
    return len(rest) % 2 == 0 and all(
        a.endswith("_label") and b == a[: -len("_label")] + "_score" for a, b in zip(rest[::2], rest[1::2])
    )


@dataclass
class WideTags:
    """A `tag --wide` output: one dict per file (path, duration_s, truncated, then each head's
    `<head>_label` and `<head>_score`, None where the head kept no label); `heads` in order."""

    path: Path
    rows: list[dict]
    manifest: dict | None
    heads: list[str] = field(default_factory=list)


def read_wide(path: Path, columns: list[str] | None = None) -> WideTags:
    """Read a `matpac tag --wide --out` CSV, JSON Lines or Parquet output, typed; `columns` (the
    manifest's `output.columns`), where given, must be the file's."""
    path = Path(path)
    _check_tags_path(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        raw_rows, held = _jsonl_rows(path)
    elif suffix == PARQUET:
        from matpac_cli.outputs import parquet

        held = parquet.column_names(path)
        raw_rows = list(parquet.row_batches(path, held))
    else:
        raw_rows, held = _csv_rows(path)
    if not is_wide(held) or (columns is not None and list(columns) != held):
        raise UsageError(
            f"{path}: not a matpac wide tags file (expected columns {','.join(columns or WIDE_COLUMNS)} ...)"
        )
    heads = [c[: -len("_label")] for c in held[3::2]]
    rows = [_wide_typed(r, path, n, heads) for n, r in enumerate(raw_rows)]
    return WideTags(path, rows, read_manifest(naming.tags_manifest(path)), heads)


def _wide_typed(raw: dict, path: Path, n: int, heads: list[str]) -> dict:
    try:
        row = {
            "path": nul_free_path(str(raw["path"])),
            "duration_s": _number(raw.get(DURATION_COLUMN), float),
            "truncated": raw.get("truncated") in (True, 1, "1", "true", "True"),
        }
        for head in heads:
            label, value = raw.get(f"{head}_label"), _number(raw.get(f"{head}_score"), float)
            if (label in (None, "")) != (value is None):
                raise ValueError("a label without its score")
            row[f"{head}_label"] = None if label in (None, "") else str(label)
            row[f"{head}_score"] = value
    except (KeyError, TypeError, ValueError, OverflowError):
        raise UsageError(f"{path}: row {n + 1} is not a matpac wide tag row") from None
    return row


def _check_tags_path(path: Path) -> None:
    if not (path.is_file() or (path.suffix.lower() == PARQUET and path.is_dir())):  # a folder of shards
        raise UsageError(f"{path}: no such tags file")
    if path.suffix.lower() not in TAG_SUFFIXES:
        raise UsageError(f"{path}: expected the .csv, .jsonl, .ndjson or .parquet that `matpac tag --out` writes")


def _json_object(line: str, path: Path, n: int) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        raise UsageError(f"{path}: row {n + 1} is not JSON; not a matpac tags file") from None
    if not isinstance(row, dict):
        raise UsageError(f"{path}: row {n + 1} is not a JSON object; not a matpac tags file")
    return row


def _csv_rows(path: Path):
    with reading(path) as fh:
        reader = csv.DictReader(fh)
        unique_columns(path, list(reader.fieldnames or []))
        rows = [{k: from_spreadsheet(v) for k, v in row.items()} for row in reader]
        return rows, list(reader.fieldnames or [])


def _jsonl_rows(path: Path):
    rows, columns = [], []
    with reading(path) as fh:
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
                "path": nul_free_path(str(raw["path"])),
                "head": str(raw["head"]),
                "label": None,
                "score": None,
                "rank": 0,
                "tag_id": None,
            }
        else:
            row = {
                "path": nul_free_path(str(raw["path"])),
                "head": str(raw["head"]),
                "label": str(raw["label"]),
                "score": _finite(float(raw["score"])),
                "rank": rank,
                "tag_id": str(raw["tag_id"]),
            }
        row["duration_s"] = _number(raw.get(DURATION_COLUMN), float)
        row["truncated"] = raw.get("truncated") in (True, 1, "1", "true", "True")  # CSV 1/0, JSON and Parquet bools
        if segments:
            row["start_s"] = _number(raw.get("start_s"), float)
            row["end_s"] = _number(raw.get("end_s"), float)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        why = f" ({exc})" if "finite" in str(exc) else ""
        raise UsageError(f"{path}: row {n + 1} is not a matpac tag row{why}") from None
    return row
