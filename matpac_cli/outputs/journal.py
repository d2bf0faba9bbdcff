"""An append-only journal of finished files, kept next to an output, so runs can resume.

Each record is one finished input: a JSON header (its key, facts, array shapes), raw little-endian
float32 payloads and a CRC-32 of both. A record is appended and flushed as soon as its file is
done, so `kill -9` loses at most the files in flight; a torn last record is ignored on reading,
and a record that fails its checksum or does not have the expected shape is dropped (and its file
recomputed), never trusted and never fatal. The first record holds the run's settings: a journal
written with other settings is never mixed in.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from matpac_cli.errors import OutputError
from matpac_cli.outputs.naming import temp_path
from matpac_cli.pipeline.discovery import Item
from matpac_cli.sidefiles import create, open_existing, refuse_symlink

MAGIC = b"MATPACJ2"
_LEN = struct.Struct("<I")


def real_path(item: Item) -> str:
    """The file's real path: `./clips/a.wav`, `clips/a.wav` and `$PWD/clips/a.wav` share results."""
    try:
        return os.fsdecode(os.path.realpath(item.path))
    except (OSError, ValueError):
        return item.name


def item_key(item: Item) -> list:
    """What makes a finished result reusable: the real path, size, mtime, inode and ctime (a copy
    made with `cp -p` or `touch -r` keeps size and mtime but not inode and ctime: recomputed)."""
    try:
        st = item.path.stat()
        return [real_path(item), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    except (OSError, ValueError):  # ValueError: a NUL in a listed name
        return [real_path(item), -1, -1, -1, -1]


@dataclass
class Record:
    key: list
    meta: dict
    arrays: dict[str, np.ndarray]


def _frame(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    header = dict(header, arrays=[[k, list(v.shape)] for k, v in arrays.items()])
    blob = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join(np.ascontiguousarray(v, dtype="<f4").tobytes() for v in arrays.values())
    crc = zlib.crc32(payload, zlib.crc32(blob))
    return _LEN.pack(len(blob)) + blob + _LEN.pack(len(payload)) + payload + _LEN.pack(crc)


def _write(fh: BinaryIO, header: dict, arrays: dict[str, np.ndarray]) -> None:
    fh.write(_frame(header, arrays))  # one write: a signal between bytecodes never splits a record
    fh.flush()


def read(path: Path) -> tuple[dict | None, dict[str, Record]]:
    """Settings and the sound records of a journal (empty if absent or foreign)."""
    settings, _, records, _ = read_full(path)
    return settings, records


def read_full(path: Path) -> tuple[dict | None, dict | None, dict[str, Record], int]:
    """Settings, the compact stamp (see `compact`), the sound records, and how many damaged
    records were dropped."""
    records: dict[str, Record] = {}
    try:
        fd = open_existing(path)  # never through a symlink (refused)
    except OSError:
        fd = None
    if fd is None:
        return None, None, records, 0
    with open(fd, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            return None, None, records, 0
        settings = stamp = None
        damaged = 0
        for header, payload in _frames(fh):
            if settings is None:
                if header is None or not isinstance(header.get("settings"), dict):
                    return None, None, {}, 0
                settings, stamp = header["settings"], header.get("compact")
                continue
            rec = _record(header, payload)
            if rec is None:
                damaged += 1
            else:
                records[rec.key[0]] = rec
        return settings, stamp, records, damaged


def _record(header: dict | None, payload: bytes) -> Record | None:
    """A record from a frame whose checksum held, if every field has the shape it must have."""
    try:
        key, shapes = header.pop("key"), header.pop("arrays")
        if not (
            isinstance(key, list)
            and len(key) == 5
            and isinstance(key[0], str)
            and all(isinstance(v, int) for v in key[1:])
        ):
            return None
        if not isinstance(header.get("duration_s"), (int, float)):
            return None
        arrays, offset = {}, 0
        for name, shape in shapes:
            if not (isinstance(name, str) and all(isinstance(d, int) and d >= 0 for d in shape)):
                return None
            n = int(np.prod(shape, dtype=np.int64)) * 4
            arrays[name] = np.frombuffer(payload[offset : offset + n], dtype="<f4").reshape(shape)
            offset += n
        if offset != len(payload) or not all(np.isfinite(a).all() for a in arrays.values()):
            return None
        return Record(key, header, arrays)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _frames(fh: BinaryIO) -> Iterator[tuple[dict | None, bytes]]:
    """(header, payload) per complete frame; header None when the checksum or JSON is bad. A
    length that runs past the end of the file is damage (or a torn tail): reading stops there,
    without allocating what a flipped bit asks for."""
    size = os.fstat(fh.fileno()).st_size
    while True:
        raw = fh.read(4)
        if len(raw) < 4:
            return
        (hl,) = _LEN.unpack(raw)
        if fh.tell() + hl > size:
            return
        blob = fh.read(hl)
        raw = fh.read(4)
        if len(raw) < 4:
            return
        (n,) = _LEN.unpack(raw)
        if fh.tell() + n + 4 > size:
            return
        payload = fh.read(n)
        crc = fh.read(4)
        if len(payload) < n or len(crc) < 4:
            return  # torn tail: the record being written when the run died
        if _LEN.unpack(crc)[0] != zlib.crc32(payload, zlib.crc32(blob)):
            yield None, payload
            continue
        try:
            header = json.loads(blob)
        except ValueError:
            header = None
        yield (header if isinstance(header, dict) else None), payload


class Journal:
    """Open for appending; rewrites a fresh file when the settings differ or on `--force`.

    `damaged` counts records dropped on reading (their files are simply computed again)."""

    def __init__(self, path: Path, settings: dict, fresh: bool = False) -> None:
        self.path = path
        refuse_symlink(path)
        self.created = not os.path.lexists(path)  # a run that finishes nothing removes it (`discard`)
        self._checked: dict[str, list] = {}  # keys read by `finished`, before the file was decoded
        old_settings, self.stamp, self.done, self.damaged = (None, None, {}, 0) if fresh else read_full(path)
        if old_settings != settings:
            self.done, self.stamp, self.damaged = {}, None, 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite(settings)
            fd = open_existing(path, os.O_WRONLY | os.O_APPEND)  # the file just put there, never a link
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "removed while it was opened")
            self.fh = open(fd, "ab")
        except OSError as exc:
            raise OutputError(f"cannot write the journal {path}: {exc.strerror or exc}") from None

    def _rewrite(self, settings: dict) -> None:
        """Start the file anew with the kept records, dropping any torn or damaged ones, so new
        records append cleanly."""
        tmp = temp_path(self.path)
        try:
            with create(tmp) as fh:
                fh.write(MAGIC)
                _write(fh, {"settings": settings, **({"compact": self.stamp} if self.stamp else {})}, {})
                for rec in self.done.values():
                    _write(fh, dict(rec.meta, key=rec.key), rec.arrays)
            os.replace(tmp, self.path)
        finally:
            if tmp.exists() and not tmp.is_symlink():
                tmp.unlink()

    def finished(self, item: Item) -> Record | None:
        """The reusable record of `item`, if any. The key read here is the one `add` stores, so
        a file that changes while it is being computed is recomputed next time, never reused."""
        key = item_key(item)
        self._checked[key[0]] = key
        rec = self.done.get(key[0])
        return rec if rec is not None and rec.key == key and -1 not in key else None

    def add(self, item: Item, meta: dict, arrays: dict[str, np.ndarray]) -> Record:
        key = self._checked.pop(real_path(item), None) or item_key(item)
        rec = Record(key, meta, arrays)
        if -1 in key:  # the file could not be stat'ed: nothing to recognise it by next time
            return rec
        try:
            _write(self.fh, dict(meta, key=rec.key), arrays)
        except OSError as exc:
            raise OutputError(f"cannot write the journal {self.path}: {exc.strerror or exc}") from None
        self.done[rec.key[0]] = rec
        return rec

    def forget(self, keys: set[str]) -> None:
        """Drop records that can no longer be used (their data went with a replaced output)."""
        for key in keys:
            self.done.pop(key, None)

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass  # a failed last flush already raised from add(); the records before it are whole

    def discard(self) -> None:
        """Remove the journal if this run created it and finished no file (nothing to resume)."""
        if self.created and not self.done:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def settings_differ(path: Path, settings: dict) -> list[str]:
    """The settings a journal was written with that differ from these ones (empty: none, or no
    journal), so the refusal can name what changed."""
    old, _ = read(path)
    if old is None or old == settings:
        return []
    return [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]


def compact(
    path: Path, settings: dict, stamp: dict, rows: list[tuple[Record, int, str]], payloads: bool = False
) -> None:
    """Rewrite a journal once its output is written: each record keeps its key, facts, its row
    in that output and the name the row was written with (what `update` keeps it under), in the
    output's order, and `stamp` identifies the output file. Without `payloads` (an embed matrix
    holds them) a finished `--layer all` output does not double the disk; a record whose output
    was replaced since (another stamp) is recomputed, never read from the wrong rows. A tag
    journal keeps its scores (`payloads`): its rows are cut from them again."""
    tmp = temp_path(path)
    try:
        with create(tmp) as fh:
            fh.write(MAGIC)
            _write(fh, {"settings": settings, "compact": stamp}, {})
            for rec, row, name in rows:
                _write(fh, dict(rec.meta, key=rec.key, row=row, name=name), rec.arrays if payloads else {})
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write the journal {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists() and not tmp.is_symlink():
            tmp.unlink()


def compact_stamp(path: Path) -> dict | None:
    """The stamp of a finished output, as `compact` records it (None if it does not exist)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
