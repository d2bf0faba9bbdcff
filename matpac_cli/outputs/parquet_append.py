"""A Parquet embedding output grown in place: new row groups after the file's last byte and a new
footer after them; the rows already there are never read nor rewritten.

Parquet keeps its index at the end of the file: the footer, a Thrift-encoded `FileMetaData`
listing every row group's column chunks by byte offset. So rows can be added after the last
byte: the new row groups, then a footer that lists the old row groups and the new ones (the old
footer stays where it was, unread: a few KB per append). pyarrow writes row groups only into a
file of its own, whose offsets count from its own start: the new rows are written into a
temporary Parquet file exactly as `parquet.write_embeddings` writes a whole output, its row
groups' bytes are copied after the output's end, and their offsets moved by where they landed
(`_shift`, on the footers read and written in Thrift's compact protocol, `_Reader`/`_write`).

The manifest is the commit point, as for `.npy` (`inplace`). A reader that opens the file while
the rows are copied finds no footer at its end (an error, never wrong rows); a run killed
meanwhile leaves bytes after the old footer, which the next run cuts off (`repair`), at the
length the manifest recorded, and a write that fails cuts them off at once. A file with a second
name (`inplace.plain`), of `MAX_GROUPS` row groups or more (a library's daily runs would leave
thousands of small ones), or whose new rows cannot follow its own (`_compatible`) is written
anew instead.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from matpac_cli.errors import OutputError
from matpac_cli.interrupts import whole
from matpac_cli.outputs import inplace

MAX_GROUPS = 256  # row groups in a file that is grown in place; more: written anew, in full groups
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
# field numbers (parquet.thrift) of what holds a byte offset into the file
SCHEMA, NUM_ROWS, ROW_GROUPS, ENCRYPTION = 2, 3, 4, 8  # FileMetaData
COLUMNS, GROUP_OFFSET, ORDINAL = 1, 5, 7  # RowGroup
CHUNK_OFFSETS, META = (2, 4, 6), 3  # ColumnChunk: file_offset, offset index, column index; its ColumnMetaData
OUTSIDE = (1, 4, 6, 8, 9)  # ColumnChunk: file_path, page indexes (offsets inside), encryption
META_OFFSETS = (9, 10, 11, 14)  # ColumnMetaData: data page, index page, dictionary page, bloom filter


class _Reader:
    """Thrift's compact protocol, read into plain values: a struct is a list of [field, type,
    value]; a list (or set) is (element type, values); a map (key type, value type, pairs)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def raw(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n : self.at]

    def value(self, kind: int):
        if kind in (TRUE, FALSE):
            return None  # a struct's bool is its field's type
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            return self.raw(8)
        if kind == BINARY:
            return self.raw(self.varint())
        if kind in (LIST, SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            return elem, [self.element(elem) for _ in range(self.varint() if size == 15 else size)]
        if kind == MAP:
            size = self.varint()
            types = self.byte() if size else 0
            return (
                types >> 4,
                types & 0x0F,
                [(self.element(types >> 4), self.element(types & 0x0F)) for _ in range(size)],
            )
        if kind == STRUCT:
            return self.struct()
        raise ValueError(f"unknown Thrift type {kind}")

    def element(self, kind: int):
        return self.byte() if kind in (TRUE, FALSE) else self.value(kind)  # a bool in a list: a byte

    def struct(self) -> list:
        fields, last = [], 0
        while (head := self.byte()) != STOP:
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.zigzag()
            fields.append([last, kind, self.value(kind)])
        return fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _write(kind: int, value) -> bytes:
    """A value as `_Reader.value` read it, in the compact protocol."""
    if kind in (TRUE, FALSE):
        return b""
    if kind == BYTE:
        return bytes([value])
    if kind in (I16, I32, I64):
        return _zigzag(value)
    if kind == DOUBLE:
        return bytes(value)
    if kind == BINARY:
        return _varint(len(value)) + bytes(value)
    if kind in (LIST, SET):
        elem, values = value
        head = bytes([len(values) << 4 | elem]) if len(values) < 15 else bytes([0xF0 | elem]) + _varint(len(values))
        return head + b"".join(_element(elem, v) for v in values)
    if kind == MAP:
        k, v, pairs = value
        return (
            _varint(len(pairs))
            + (bytes([k << 4 | v]) if pairs else b"")
            + b"".join(_element(k, a) + _element(v, b) for a, b in pairs)
        )
    out, last = bytearray(), 0
    for field, sub, item in value:  # a struct
        delta = field - last
        out += bytes([delta << 4 | sub]) if 0 < delta <= 15 else bytes([sub]) + _zigzag(field)
        out += _write(sub, item)
        last = field
    return bytes(out + bytes([STOP]))


def _element(kind: int, value) -> bytes:
    return bytes([value]) if kind in (TRUE, FALSE) else _write(kind, value)


def _field(fields: list, number: int):
    return next((f for f in fields if f[0] == number), None)


def _shift(group: list, by: int) -> None:
    """A row group's byte offsets (its own, its column chunks' and their metadata's) moved by
    `by` (an offset of 0 is none: a file's first byte is its magic)."""
    for f in group:
        if f[0] == GROUP_OFFSET and f[1] == I64 and f[2] > 0:
            f[2] += by
    for chunk in _field(group, COLUMNS)[2][1]:
        for f in chunk:
            if f[0] in CHUNK_OFFSETS and f[1] == I64 and f[2] > 0:
                f[2] += by
        meta = _field(chunk, META)
        for f in meta[2] if meta is not None else []:
            if f[0] in META_OFFSETS and f[1] == I64 and f[2] > 0:
                f[2] += by


def footer(fh, end: int) -> tuple[bytes, int]:
    """The footer (its Thrift bytes) of the Parquet file open as `fh` that ends at byte `end`,
    and where it begins."""
    fh.seek(end - 8)
    tail = fh.read(8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ValueError("no Parquet footer there")
    length = struct.unpack("<I", tail[:4])[0]
    fh.seek(end - 8 - length)
    return fh.read(length), end - 8 - length


def merged(head: list, tail: list, by: int) -> bytes:
    """The footer of the grown file, from the old one and the new rows' (read: `_Reader.struct`):
    `head`'s row groups, then `tail`'s moved by `by` bytes (their ordinals renumbered), and the
    rows of both."""
    listed = _field(head, ROW_GROUPS)[2][1]
    for group in _field(tail, ROW_GROUPS)[2][1]:
        _shift(group, by)
        ordinal = _field(group, ORDINAL)
        if ordinal is not None:
            ordinal[2] = len(listed)
        listed.append(group)
    _field(head, NUM_ROWS)[2] += _field(tail, NUM_ROWS)[2]
    return _write(STRUCT, head)


def _groups(path: Path, recorded: list[int] | None) -> int | None:
    """The row groups of `path` as its recorded [length, inode, mtime] left it: None unless it
    is the same plain file (`inplace.plain`: no symlink, no second name that would change with
    it), at least that long, with a Parquet footer ending there."""
    if recorded is None or not inplace.plain(path):
        return None
    try:
        with inplace.opened(path, os.O_RDONLY, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_ino != recorded[1] or st.st_size < recorded[0]:
                return None
            return len(_field(_Reader(footer(fh, recorded[0])[0]).struct(), ROW_GROUPS)[2][1])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def fits(path: Path, recorded: list[int] | None) -> bool:
    """Whether `path` can grow in place from its recorded [length, inode, mtime]: the file the
    record describes (`_groups`), of under `MAX_GROUPS` row groups."""
    groups = _groups(path, recorded)
    return groups is not None and groups < MAX_GROUPS


def repair(path: Path, recorded: list[int] | None) -> None:
    """What a killed append left after the recorded end cut off (the file stays the one the
    record describes: its inode, its footer ending at the recorded length); anything else is
    left alone (and not grown: `fits`). Only under the output's lock: an append may be running."""
    if _groups(path, recorded) is not None and os.path.getsize(path) > recorded[0]:
        with inplace.opened(path, os.O_WRONLY, "wb") as fh:
            fh.truncate(recorded[0])


def _compatible(old: list, new: list) -> bool:
    """Whether `new`'s row groups can follow `old`'s: the same schema (a pyarrow upgraded between
    two runs may name list items otherwise), and nothing that holds offsets inside it or points
    outside the file (a page index, a column chunk in another file, encryption)."""
    if _field(old, SCHEMA) != _field(new, SCHEMA) or any(_field(f, ENCRYPTION) for f in (old, new)):
        return False
    chunks = [c for g in _field(new, ROW_GROUPS)[2][1] for c in _field(g, COLUMNS)[2][1]]
    return not any(_field(c, number) for c in chunks for number in OUTSIDE)


def append(path: Path, length: int, write_rows, begin, commit) -> bool:
    """Rows written by `write_rows(fh)` (into a binary file, as a whole output is) added to the
    Parquet file `path` whose recorded length is `length` (bytes after it, a killed append's,
    are cut off first). `begin()` before the file changes (the manifest marked pending),
    `commit()` once its new footer is in place (the new manifest); Ctrl-C waits through all.
    False, the file untouched, where the new rows cannot follow the old (`_compatible`): the
    caller writes it anew. A write that fails (a full disk) cuts the file back to `length`."""
    with tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.") as tmp:
        write_rows(tmp)
        tmp.flush()
        new, start = footer(tmp, tmp.seek(0, os.SEEK_END))
        with inplace.opened(path, os.O_RDWR, "r+b") as fh:
            head, tail = _Reader(footer(fh, length)[0]).struct(), _Reader(new).struct()
            if not _compatible(head, tail):
                return False
            grown = merged(head, tail, length - 4)
            with whole():
                begin()
                _grow(fh.fileno(), length, tmp, start - 4, grown + struct.pack("<I", len(grown)) + b"PAR1", path)
                commit()
    return True


def _grow(fd: int, length: int, tmp, rows: int, tail: bytes, path: Path) -> None:
    """`rows` bytes of `tmp` (from byte 4) and then `tail` written at `length` of the file open as
    `fd`, unbuffered; on a failure (a full disk) it is cut back to `length`, readable as it was."""
    try:
        os.ftruncate(fd, length)
        os.lseek(fd, length, os.SEEK_SET)
        tmp.seek(4)
        while rows > 0:  # the new row groups, after the old file's last byte
            data = tmp.read(min(2**20, rows))
            if not data:
                raise OSError("the new rows' temporary file ended early")
            _write_all(fd, data)
            rows -= len(data)
        _write_all(fd, tail)
        os.fsync(fd)
    except OSError as exc:
        os.ftruncate(fd, length)  # the pending record still holds: the next run cuts back too
        raise OutputError(f"cannot grow {path}: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
