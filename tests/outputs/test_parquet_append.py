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
    "dictionaries, statistics, zstd": {"use_dictionary": True, "compression": "zstd"},
    "small row groups": {"row_group_size": 3},
}


@pytest.mark.parametrize("how", [*WRITERS, "page indexes"])
def test_a_footer_read_and_written_again_is_pyarrow_s_own_bytes(tmp_path, how):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 10), path, **WRITERS.get(how, {"write_page_index": True}))
    with open(path, "rb") as fh:
        raw, _ = parquet_append.footer(fh, os.path.getsize(path))
    assert parquet_append._write(parquet_append.STRUCT, parquet_append._Reader(raw).struct()) == raw


def _append(path: Path, table: pa.Table, **options) -> bool:
    return parquet_append.append(
        path, os.path.getsize(path), lambda fh: pq.write_table(table, fh, **options), lambda: None, lambda: None
    )


@pytest.mark.parametrize("how", list(WRITERS))
def test_a_grown_file_reads_as_the_two_written_whole(tmp_path, how):
    import duckdb

    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 10), path, **WRITERS[how])
    first = path.read_bytes()
    assert _append(path, _table(10, 5), **WRITERS[how]) and _append(path, _table(15, 7), **WRITERS[how])
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


@pytest.mark.parametrize(
    "new",
    [
        ("a page index (offsets inside it)", lambda t: t, {"write_page_index": True}),
        ("another schema (a column of another type)", lambda t: t.cast(_narrower(t.schema)), {}),
    ],
    ids=lambda new: new[0],
)
def test_rows_that_cannot_follow_leave_the_file_as_it_was(tmp_path, new):
    """The caller writes the output anew instead: nothing is appended that a reader would read
    wrong (page locations that point into the temporary file, a schema of two kinds)."""
    _, change, options = new
    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 4), path)
    before = path.read_bytes()
    assert not _append(path, change(_table(4, 3)), **options)
    assert path.read_bytes() == before


def _narrower(schema: pa.Schema) -> pa.Schema:
    return schema.set(schema.get_field_index("score"), pa.field("score", pa.float32()))


def test_an_output_with_a_second_name_is_not_grown_through_it(tmp_path):
    """A hard link (a backup made with `cp -al`) or a symlink would change with it: not plain."""
    path = tmp_path / "t.parquet"
    pq.write_table(_table(0, 4), path)
    st = os.stat(path)
    recorded = [st.st_size, st.st_ino, st.st_mtime_ns]
    assert parquet_append.fits(path, recorded)
    os.link(path, tmp_path / "backup.parquet")
    assert not parquet_append.fits(path, recorded)
    os.unlink(tmp_path / "backup.parquet")
    os.replace(path, tmp_path / "real.parquet")
    os.symlink(tmp_path / "real.parquet", path)
    assert not parquet_append.fits(path, recorded)


FULL_DISK = """
import os, resource, signal, sys
import pyarrow.parquet as pq
from pathlib import Path
from matpac_cli.errors import OutputError
from matpac_cli.outputs import parquet_append
sys.path.insert(0, sys.argv[2])
from test_parquet_append import _table
path = Path(sys.argv[1])
length, limit = os.path.getsize(path), os.path.getsize(sys.argv[3]) + 100  # the new rows' own file fits
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    parquet_append.append(path, length, lambda fh: fh.write(open(sys.argv[3], "rb").read()), lambda: None, lambda: None)
except OutputError as exc:
    print("refused:", exc)
"""


def test_a_write_that_fails_part_way_leaves_the_file_readable_as_it_was(tmp_path):
    """A full disk mid-append (a file size limit here, above the new rows' own file, below the
    grown output): one line, and the file cut back to its
    old end, readable by every reader meanwhile (not only after the next run repairs it)."""
    import subprocess
    import sys

    path, rows = tmp_path / "t.parquet", tmp_path / "rows.parquet"
    pq.write_table(_table(0, 4), path)
    pq.write_table(_table(4, 40), rows)  # the output grown by them is past the limit
    before = path.read_bytes()
    code = [sys.executable, "-c", FULL_DISK, str(path), str(Path(__file__).parent), str(rows)]
    proc = subprocess.run(code, capture_output=True, text=True, timeout=120)
    assert "refused: cannot grow" in proc.stdout, proc.stdout + proc.stderr
    assert path.read_bytes() == before and pq.read_table(path).num_rows == 4
