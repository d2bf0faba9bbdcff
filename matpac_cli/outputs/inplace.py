"""An `X.npy` + `X.csv` output grown in place: new rows appended, old rows never read or rewritten.

A re-run that adds 10 files to a 100,000-row output would otherwise rewrite 1.5 GB. The
manifest is the commit point: it records (`record`) how many rows the output holds and each
file's length, inode and mtime at that count, and it is replaced, atomically, only after the rows are in
place. The steps, in an order where a run killed at any point leaves an output that a re-run
puts right (`repair`) and never a silently wrong one (a file swapped or edited since is not
grown: it is written anew):

0. the manifest's record is marked `pending` (a matpac run is changing these files: a re-run
   finding them changed knows it was this, not someone else's edit, and reads the record's rows
   alone, `readers.read_embeddings(rows=...)`);
1. `repair`: the header says the manifest's count (written first), then both files are cut back
   to the manifest's lengths (what a killed append added is dropped);
2. the new rows are written after the matrix's last row, then their index lines after the
   index's last line: until step 3 the header still says the old count, so a reader sees the old
   matrix whole, beside an index longer than it (refused in one line, as any mismatch is);
3. the header is rewritten in place with the new count (it keeps its length: a header that
   would not fit is a full rewrite instead, `fits`);
4. the manifest, with the new record, replaces the old one.
Ctrl-C and SIGTERM wait through steps 2-4 (as `writers.Unit` does for its moves).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matpac_cli.errors import OutputError
from matpac_cli.interrupts import whole
from matpac_cli.outputs.safetext import CsvWriter
from matpac_cli.sidefiles import open_existing


def header(count: int, row_shape: tuple[int, ...]) -> bytes:
    """The .npy header `writers.Unit.matrix` writes for `count` float32 rows of `row_shape`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (count, *row_shape)})
    return buf.getvalue()


def shape_of(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(shape, data offset) of a float32 C-order .npy matpac wrote, or None for anything else."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version != (1, 0):
                return None
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError):
        return None
    if fortran or dtype != np.dtype("<f4"):
        return None
    return tuple(shape), offset


def sizes(matrix: Path, index: Path | None) -> dict[str, list[int]]:
    """Each file's [byte length, inode, mtime in ns], as the manifest's record keeps them: a file
    swapped for another (a new inode) or written by anything else (its mtime) is not the one
    the record describes."""
    out = {}
    for name, path in (("matrix", matrix), ("index", index)):
        if path is not None:
            st = os.stat(path)
            out[name] = [st.st_size, st.st_ino, st.st_mtime_ns]
    return out


def recorded(record: dict, name: str) -> list[int] | None:
    """The record's [length, inode, mtime] of file `name` (\"matrix\", \"index\"), where it has them."""
    got = (record.get("files") or {}).get(name)
    ok = isinstance(got, list) and len(got) == 3 and all(isinstance(v, int) for v in got)
    return got if ok else None


def untouched(matrix: Path, index: Path | None, record: dict) -> bool:
    """Whether the files are exactly as the manifest's `record` left them (their lengths, inodes
    and mtimes), and the matrix's header says its count (a run killed in `repair` leaves the
    length right and the header not)."""
    try:
        if sizes(matrix, index) != record.get("files"):
            return False
    except OSError:
        return False
    if index is None:
        return True
    got = shape_of(matrix)
    return got is not None and got[0][0] == record.get("count")


def fits(matrix: Path, index: Path, record: dict, total: int, row_shape: tuple[int, ...]) -> bool:
    """Whether `matrix` can grow in place from the record's count to `total` rows: both files are
    the ones the record wrote (same inodes: a killed append changed their mtimes, not those) and
    hold its rows whole (at least its lengths), of this row shape, and the header for `total` is
    as long as the one there (else the rows would have to move)."""
    if not (plain(matrix) and plain(index)):
        return False
    got = shape_of(matrix)
    if got is None or tuple(got[0][1:]) != tuple(row_shape):
        return False
    try:
        now = sizes(matrix, index)
    except OSError:
        return False
    for name in ("matrix", "index"):
        was = recorded(record, name)
        if was is None or now[name][1] != was[1] or now[name][0] < was[0]:
            return False
    row_bytes = 4 * int(np.prod(row_shape))
    length = recorded(record, "matrix")[0]
    return got[1] == len(header(total, row_shape)) and length == got[1] + record["count"] * row_bytes


def plain(path: Path) -> bool:
    """A file that may be changed in place: a regular file, not a symlink, with no other name (a
    hard link's other name, a backup made with `cp -al`, would change with it, where a file
    written anew and renamed into place leaves it alone), that this user may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and os.access(path, os.W_OK)


def opened(path: Path, flags: int, mode: str):
    """An output file of matpac's, opened in place, never through a symlink."""
    fd = open_existing(path, flags)
    if fd is None:
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding="utf-8", errors="surrogateescape", newline="")


def repair(matrix: Path, index: Path, record: dict, row_shape: tuple[int, ...]) -> None:
    """Step 1: the header says the record's count, then each file is cut to the record's length."""
    with opened(matrix, os.O_RDWR, "r+b") as fh:
        fh.write(header(record["count"], row_shape))
        fh.flush()
        os.fsync(fh.fileno())
        fh.truncate(recorded(record, "matrix")[0])
    with opened(index, os.O_RDWR, "r+b") as fh:
        fh.truncate(recorded(record, "index")[0])


def append(
    matrix: Path,
    index: Path,
    record: dict,
    row_shape: tuple[int, ...],
    chunks: Iterable[np.ndarray],
    lines: Iterable[Sequence],
    begin,
    commit,
) -> int:
    """Steps 0-4: `begin()` (which marks the manifest's record `pending`), the rows of `chunks`
    (arrays of rows) after the record's, their index `lines` after its lines, the header, then
    `commit()` (which writes the manifest). Returns the count."""
    # the new rows are read (from the library) before Ctrl-C is held off, not while it is
    chunks = [np.ascontiguousarray(chunk, dtype="<f4") for chunk in chunks]
    lines = list(lines)
    try:
        if not record.get("pending"):
            begin()
        repair(matrix, index, record, row_shape)
        with whole():
            count = record["count"]
            with opened(matrix, os.O_RDWR, "r+b") as fh:
                fh.seek(recorded(record, "matrix")[0])
                for chunk in chunks:
                    fh.write(chunk.tobytes())
                    count += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            with opened(index, os.O_WRONLY | os.O_APPEND, "a") as fh:
                CsvWriter(fh).writerows(lines)
                fh.flush()
                os.fsync(fh.fileno())
            with opened(matrix, os.O_RDWR, "r+b") as fh:
                fh.write(header(count, row_shape))
                fh.flush()
                os.fsync(fh.fileno())
            commit()
    except OSError as exc:
        raise OutputError(f"cannot write {matrix}: {exc.strerror or exc}") from None
    return count
