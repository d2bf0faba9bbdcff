"""Parquet long rows: tag and search outputs (`--out x.parquet`), written a row group at a time.

The rows keep the CSV's long format with types (`score` float32, the value as computed; `rank`
int32; `start_s`/`end_s` float64, empty on clip rows); dictionaries only on the repetitive string
columns. `writers.row_file` hands a `RowTable` to the jobs in place of a CSV or JSON Lines writer.
The embedding table and the reading of every Parquet output are in `parquet`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import IO

from matpac_cli.errors import OutputError
from matpac_cli.outputs.parquet import _strings, arrow

ROW_BATCH = 65536  # tag rows per row group
DICTIONARY = ["head", "label", "tag_id", "query", "codec"]  # repetitive strings: dictionary-encoded


def _types() -> dict:
    pa, _ = arrow()
    text, f64 = pa.string(), pa.float64()
    return {
        "path": text,
        "head": text,
        "label": text,
        "tag_id": text,
        "query": text,
        "path_a": text,
        "path_b": text,
        "score": pa.float32(),
        "rank": pa.int32(),
        "duration_s": f64,
        "start_s": f64,
        "end_s": f64,
        "truncated": pa.bool_(),
        "group": pa.int32(),  # search --duplicates --groups
        "keep": pa.int32(),
        "match": text,
        "lossless": pa.bool_(),
        "codec": text,
        "sample_rate": pa.int32(),
        "bit_depth": pa.int32(),
    }


def column_type(name: str, types: dict):
    """A column's Parquet type: named in `types`, or a `tag --wide` head's `<head>_label` (text)
    or `<head>_score` (float32); None for any other."""
    if name in types:
        return types[name]
    pa, _ = arrow()
    if name.endswith("_label"):
        return pa.string()
    if name.endswith("_score"):
        return pa.float32()
    return None


class RowTable:
    """Long-format rows (tag or search) into an open binary file, a row group per ROW_BATCH rows,
    with the RowWriter interface (`write(row)`, `flush()`); `close()` writes the footer."""

    def __init__(self, fh: IO[bytes], columns: Sequence[str]) -> None:
        pa, pq = arrow()
        types = _types()
        unknown = [c for c in columns if column_type(c, types) is None]
        if unknown:
            raise OutputError(f"no Parquet type for column(s) {', '.join(unknown)}")
        self.columns = list(columns)
        self.schema = pa.schema([(c, column_type(c, types)) for c in columns])
        self._rows: list[dict] = []
        self._writer = pq.ParquetWriter(
            fh,
            self.schema,
            compression="snappy",
            use_dictionary=[c for c in columns if c in DICTIONARY or c.endswith("_label")],
        )

    def write(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROW_BATCH:
            self._write_batch()

    def flush(self) -> None:
        """Rows are written a row group at a time; nothing to do between them."""

    def _write_batch(self) -> None:
        pa, _ = arrow()
        arrays = []
        for field in self.schema:
            values = [r.get(field.name) for r in self._rows]
            arrays.append(_strings(values, pa) if field.type == pa.string() else pa.array(values, field.type))
        self._writer.write_table(pa.table(arrays, schema=self.schema))
        self._rows = []

    def close(self) -> None:
        if self._rows:
            self._write_batch()
        self._writer.close()  # with no row at all: a valid file of the schema and no rows

    def abort(self) -> None:
        """Stop without a footer (the temporary file is discarded by its Unit)."""
        with contextlib.suppress(Exception):
            self._writer.close()
