"""Output files: embedding matrix + row index, per-file frames, tag rows, manifest, failures.

Every file is written to a temporary name and moved into place, so a reader never sees half a
file and a killed run never destroys the previous output. CSV is plain RFC 4180 with a header and
'.' decimals whatever the locale, so pandas and the csv module read it without options.
"""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from matpac_cli.errors import InputError, OutputError


@contextmanager
def atomic(path: Path, mode: str = "w") -> Iterator[IO]:
    """Write to `path.tmp`, then replace `path`; the old file survives any failure."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_writable(path: Path) -> None:
    """Fail now, in one line, if `path` cannot be written: checked before any model loads or any
    work is done, by creating (and removing) a probe file in the folder that would hold it."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    folder = path.parent
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.probe{os.getpid()}"
        with open(probe, "wb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_matrix(path: Path, rows: Sequence[np.ndarray]) -> None:
    """Stack per-file arrays into one .npy without holding a second copy in memory."""
    shape = (len(rows),) + (tuple(rows[0].shape) if rows else (0,))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for i, row in enumerate(rows):
            mm[i] = row
        mm.flush()
        del mm
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with atomic(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_json(path: Path, data: dict) -> None:
    with atomic(path) as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")


def write_array(path: Path, array: np.ndarray) -> None:
    with atomic(path, "wb") as fh:
        np.save(fh, np.asarray(array, dtype=np.float32))


def mirror_path(root: Path, name: str, suffix: str) -> Path:
    """Where a per-file output for input `name` goes under `root` (never outside it)."""
    parts = [p if p not in ("..", ".") else "__" for p in PurePath(name).parts if p not in ("/", "\\")]
    parts = [p for p in parts if not PurePath(p).anchor]
    return root.joinpath(*parts).with_name(PurePath(parts[-1]).name + suffix)


def write_failures(path: Path, failures: Sequence[InputError]) -> None:
    write_csv(path, ["path", "reason"], [(f.path, f.reason) for f in failures])


class RowWriter:
    """Streams tag rows as CSV or JSON Lines to an open text stream (a file or stdout)."""

    def __init__(self, stream: IO[str], fmt: str, columns: Sequence[str]) -> None:
        if fmt not in ("csv", "jsonl"):
            raise OutputError(f"--format {fmt}: expected csv or jsonl")
        self.stream, self.fmt, self.columns = stream, fmt, list(columns)
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._csv.writerow(self.columns)

    def write(self, row: dict) -> None:
        if self._csv:
            self._csv.writerow([_cell(row.get(c)) for c in self.columns])
        else:
            self.stream.write(json.dumps({c: row[c] for c in self.columns if c in row}) + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
