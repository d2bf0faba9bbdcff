"""An append-only journal of finished files, kept next to an output, so runs can resume.

Each record is one finished input: a JSON header (its key, facts, array shapes) and raw
little-endian float32 payloads. A record is appended and flushed as soon as its file is done, so
`kill -9` loses at most the batch in flight; a torn last record is ignored on reading. The first
record holds the run's settings: a journal written with other settings is never mixed in.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from matpac_cli.discovery import Item

MAGIC = b"MATPACJ1"
_LEN = struct.Struct("<I")


def item_key(item: Item) -> list:
    """What makes a finished result reusable: the path as named, its size and mtime."""
    try:
        st = item.path.stat()
        return [item.name, st.st_size, st.st_mtime_ns]
    except OSError:
        return [item.name, -1, -1]


@dataclass
class Record:
    key: list
    meta: dict
    arrays: dict[str, np.ndarray]


def _write(fh: BinaryIO, header: dict, arrays: dict[str, np.ndarray]) -> None:
    header = dict(header, arrays=[[k, list(v.shape)] for k, v in arrays.items()])
    blob = json.dumps(header, separators=(",", ":")).encode()
    payload = b"".join(np.ascontiguousarray(v, dtype="<f4").tobytes() for v in arrays.values())
    fh.write(_LEN.pack(len(blob)) + blob + _LEN.pack(len(payload)) + payload)
    fh.flush()


def read(path: Path) -> tuple[dict | None, dict[str, Record]]:
    """Settings and the complete records of a journal (empty if absent or foreign)."""
    records: dict[str, Record] = {}
    try:
        fh = open(path, "rb")
    except OSError:
        return None, records
    with fh:
        if fh.read(len(MAGIC)) != MAGIC:
            return None, records
        settings = None
        for header, payload in _frames(fh):
            if settings is None:
                settings = header.get("settings")
                continue
            arrays, offset = {}, 0
            for name, shape in header.pop("arrays"):
                n = int(np.prod(shape)) * 4
                arrays[name] = np.frombuffer(payload[offset : offset + n], dtype="<f4").reshape(shape)
                offset += n
            key = header.pop("key")
            records[key[0]] = Record(key, header, arrays)
        return settings, records


def _frames(fh: BinaryIO) -> Iterator[tuple[dict, bytes]]:
    while True:
        raw = fh.read(4)
        if len(raw) < 4:
            return
        blob = fh.read(_LEN.unpack(raw)[0])
        raw = fh.read(4)
        if len(raw) < 4:
            return
        (n,) = _LEN.unpack(raw)
        payload = fh.read(n)
        if len(payload) < n:
            return
        try:
            yield json.loads(blob), payload
        except ValueError:
            return


class Journal:
    """Open for appending; rewrites a fresh file when the settings differ or on `--force`."""

    def __init__(self, path: Path, settings: dict, fresh: bool = False) -> None:
        self.path = path
        old_settings, self.done = (None, {}) if fresh else read(path)
        if old_settings != settings:
            self.done = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.done:
            self._compact(settings)
        else:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(MAGIC)
                _write(fh, {"settings": settings}, {})
            os.replace(tmp, path)
        self.fh = open(path, "ab")

    def _compact(self, settings: dict) -> None:
        """Rewrite the kept records, dropping any torn tail so new records append cleanly."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            _write(fh, {"settings": settings}, {})
            for rec in self.done.values():
                _write(fh, dict(rec.meta, key=rec.key), rec.arrays)
        os.replace(tmp, self.path)

    def finished(self, item: Item) -> Record | None:
        rec = self.done.get(item.name)
        return rec if rec is not None and rec.key == item_key(item) else None

    def add(self, item: Item, meta: dict, arrays: dict[str, np.ndarray]) -> Record:
        rec = Record(item_key(item), meta, arrays)
        _write(self.fh, dict(meta, key=rec.key), arrays)
        self.done[item.name] = rec
        return rec

    def close(self) -> None:
        self.fh.close()


def settings_differ(path: Path, settings: dict) -> bool:
    """True when a journal exists and was written with other settings."""
    old, _ = read(path)
    return old is not None and old != settings
