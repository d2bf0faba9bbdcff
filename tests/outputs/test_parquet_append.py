"""Parquet files grown in place (outputs/parquet_append.py): the footer read and written in
Thrift's compact protocol gives back pyarrow's own bytes, and a file grown by another file's row
groups is read by pyarrow and DuckDB (a reader of its own) as the two written whole, whatever the
writer put in it (dictionaries, statistics, page indexes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matpac_cli.outputs import parquet_append


def _table(start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "path": [f"music/{i:04d}.flac" for i in range(start, start + n)],
            "genre": [["rock", "jazz", "folk"][i % 3] for i in range(start, start + n)],
            "score": np.arange(start, start + n, dtype=np.float64) / 7,
            "embedding": pa.array(
                [np.full(6, i, np.float32) for i in range(start, start + n)], pa.list_(pa.float32(), 6)
            ),
        }
    )


WRITERS = {
    "plain": {"compression": "snappy", "use_dictionary": False},
    "dictionaries, statistics, page indexes": {"use_dictionary": True, "write_page_index": True, "compression": "zstd"},
    "small row groups": {"row_group_size": 3},
}


@pytest.mark.parametrize("how", list(WRITERS))
def test_a_footer_read_and_written_again_is_pyarrow_s_own_bytes(tmp_path, how):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 10), path, **WRITERS[how])
    with open(path, "rb") as fh:
        raw, _ = parquet_append.footer(fh, os.path.getsize(path))
    assert parquet_append._write(parquet_append.STRUCT, parquet_append._Reader(raw).struct()) == raw


def _append(path: Path, table: pa.Table, **options) -> None:
    parquet_append.append(
        path, os.path.getsize(path), lambda fh: pq.write_table(table, fh, **options), lambda: None, lambda: None
    )


@pytest.mark.parametrize("how", list(WRITERS))
def test_a_grown_file_reads_as_the_two_written_whole(tmp_path, how):
    import duckdb

    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 10), path, **WRITERS[how])
    first = path.read_bytes()
    _append(path, _table(10, 5), **WRITERS[how])
    _append(path, _table(15, 7), **WRITERS[how])
    assert path.read_bytes()[: len(first)] == first  # the rows it had: not a byte moved
    whole = pa.concat_tables([_table(0, 10), _table(10, 5), _table(15, 7)])
    assert pq.read_table(path).equals(whole)
    assert pq.read_metadata(path).num_rows == 22
    rows = duckdb.sql(f"select path, genre, score, embedding from read_parquet('{path}') order by path").fetchall()
    assert [r[0] for r in rows] == whole.column("path").to_pylist()
    assert [r[1] for r in rows] == whole.column("genre").to_pylist()
    np.testing.assert_array_equal([r[2] for r in rows], whole.column("score").to_numpy())
    np.testing.assert_array_equal(
        np.array([r[3] for r in rows]), np.stack(whole.column("embedding").to_numpy(zero_copy_only=False))
    )
    # statistics moved with their row groups: a filter that skips groups by them still finds the rows
    assert duckdb.sql(f"select count(*) from read_parquet('{path}') where score > 20 / 7").fetchall() == [(1,)]


def test_bytes_a_killed_append_left_are_cut_off_and_another_file_s_are_not(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 4), path)
    st = os.stat(path)
    recorded = [st.st_size, st.st_ino, st.st_mtime_ns]
    with open(path, "ab") as fh:
        fh.write(b"half a row group")
    parquet_append.repair(path, recorded)
    assert os.path.getsize(path) == recorded[0] and pq.read_table(path).num_rows == 4
    other = tmp_path / "other.parquet"  # the record is of another file (another inode): left alone
    pq.write_table(_table(0, 9), other)
    os.replace(other, path)
    parquet_append.repair(path, recorded)
    assert pq.read_table(path).num_rows == 9 and not parquet_append.fits(path, recorded)
