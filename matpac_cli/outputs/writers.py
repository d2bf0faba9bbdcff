"""Output files: embedding matrix + row index, per-file frames, tag rows, manifest, failures
(Parquet tables through `parquet`, into the same atomic units).

Every file is written to a temporary name and moved into place, so a reader never sees half a
file and a killed run never destroys the previous output. CSV is plain RFC 4180 with a header and
'.' decimals whatever the locale, so pandas and the csv module read it without options; a text
cell a spreadsheet would run as a formula gets a `'` in front (`safetext`, which `readers` undoes).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from matpac_cli.errors import InputError, OutputError, UsageError
from matpac_cli.interrupts import whole
from matpac_cli.outputs import naming
from matpac_cli.outputs.inplace import header as npy_header
from matpac_cli.outputs.safetext import CsvWriter, for_terminal
from matpac_cli.sidefiles import create, ensure_writable, locked  # noqa: F401 - writers' public names


def _fail(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


class Unit:
    """Files that make one output (matrix, index, manifest): each is written whole to a temporary
    name first, and only when all of them are written do they replace the old ones, so a failure
    on any of them leaves the previous output as it was, every file of it."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def __enter__(self) -> Unit:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            # Ctrl-C or SIGTERM waits until every file is in place: never a new matrix beside
            # the old index (the signal is delivered, and the run stops, right after)
            with whole():
                for tmp, path in self.staged:
                    try:
                        os.replace(tmp, path)
                    except OSError as err:
                        self._discard()
                        raise _fail(path, err) from None
        self._discard()

    def _discard(self) -> None:
        for tmp, _ in self.staged:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextmanager
    def open(self, path: Path, mode: str = "w") -> Iterator[IO]:
        tmp = naming.temp_path(path)
        self.staged.append((tmp, path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with create(tmp, mode) as fh:  # never through a symlink planted at the temporary name
                yield fh
        except OSError as exc:
            raise _fail(path, exc) from None

    def matrix(self, path: Path, rows: Sequence[np.ndarray]) -> None:
        """Stack per-file arrays into one .npy, row by row: no second copy in memory, and no
        memory map (a full disk under a map kills the process with SIGBUS; a write says ENOSPC)."""
        shape = tuple(rows[0].shape) if rows else (0,)
        self.matrix_chunks(path, len(rows), shape, ([row] for row in rows))

    def matrix_chunks(self, path: Path, count: int, row_shape: tuple, chunks: Iterable[np.ndarray]) -> None:
        """A .npy of `count` float32 rows of `row_shape`, from `chunks` (arrays of rows, or lists
        of rows) as they come: memory holds one chunk. Fewer rows than `count` is an error (the
        header would lie)."""
        written = 0
        with self.open(path, "wb") as fh:
            fh.write(npy_header(count, tuple(row_shape)))  # one home: an output grown in place keeps it
            for chunk in chunks:
                block = np.ascontiguousarray(np.asarray(chunk, dtype="<f4"))
                fh.write(memoryview(block).cast("B"))
                written += len(block)
        if written != count:
            raise OutputError(f"cannot write {path}: {written} rows where {count} were expected")

    def temporary(self, path: Path) -> Path:
        """Where `path` is being written (its size, before the unit is in place)."""
        return next(tmp for tmp, final in self.staged if final == path)

    def csv(self, path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
        with self.open(path) as fh:
            w = CsvWriter(fh)
            w.writerow(header)
            w.writerows(rows)

    def json(self, path: Path, data: dict) -> None:
        with self.open(path) as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")


@contextmanager
def atomic(path: Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary name, then replace `path`; the old file survives any failure."""
    with Unit() as unit, unit.open(path, mode) as fh:
        yield fh


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove temporary files that a killed matpac left beside `path` (`.emb.npy.tmp1234`,
    `.emb.csv.tmp1234`, ...: the stem's files, whose PID is no longer running)."""
    removed = []
    folder, stem = path.parent, path.name.split(".")[0]
    try:
        candidates = list(folder.glob(f".{glob.escape(stem)}.*"))
    except OSError:
        return removed
    for tmp in candidates:
        m = re.search(r"\.(?:tmp|probe)(\d+)$", tmp.name)
        if m and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive, not ours to judge
        return True
    return True


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with Unit() as unit:
        unit.csv(path, header, rows)


def write_json(path: Path, data: dict) -> None:
    with Unit() as unit:
        unit.json(path, data)


def write_array(path: Path, array: np.ndarray) -> None:
    with atomic(path, "wb") as fh:
        np.save(fh, np.asarray(array, dtype=np.float32))


FAILURES_COLUMNS = ("path", "reason")  # the header of a --failures list: how matpac knows one it wrote


def not_ours(path: Path, option: str = "") -> str:
    """Why an existing file is not replaced without --force (one wording for every output). A
    `.csv` beside a `.npy` is named as that matrix's row index: replacing it would orphan it."""
    said = f"{option} {path}".strip()
    matrix = naming.indexed_matrix(path)
    if matrix is not None and matrix.exists():
        return (
            f"{said} is the row index of {matrix}; give another name (`force` would replace it and "
            f"leave {matrix.name} without its index)"
        )
    return f"{said} exists and was not written by matpac; use `force` to replace it"


class FailureLog:
    """`--failures FILE`, written as failures happen (a run over 50,000 bad files holds none of
    them in memory for it), to matpac's temporary name, moved into place on `close` (at the end,
    and when the run is interrupted: the list so far), so FILE is never half-written."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, naming.temp_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(path)  # a killed run's list (the caller holds FILE's lock)
            self.fh = create(self.tmp, "w")
            self.csv = CsvWriter(self.fh)
            self.csv.writerow(FAILURES_COLUMNS)
            self.fh.flush()
        except OSError as exc:
            raise _fail(path, exc) from None

    def add(self, err: InputError) -> None:
        try:
            self.csv.writerow([err.path, err.reason])
            self.fh.flush()
        except OSError as exc:
            raise _fail(self.path, exc) from None

    def close(self) -> None:
        if self.fh.closed:
            return
        try:
            self.fh.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            raise _fail(self.path, exc) from None


FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
BINARY = {"parquet"}  # formats that are files only, never stdout


def output_format(out: str | None, fmt: str | None) -> str:
    """The row format for `--out`/`--format`: refused, in one line, unless both agree on a
    supported one. `out` None or '-' is stdout (csv unless --format says jsonl; never Parquet,
    which is binary)."""
    supported = ", ".join(sorted(set(FORMATS.values())))
    if fmt is not None and fmt.lower() not in FORMATS.values():
        raise UsageError(f"fmt={fmt}: supported formats are {supported}", settings=("fmt",))
    if out in (None, "-"):
        if fmt is not None and fmt.lower() in BINARY:
            raise UsageError(
                f"fmt={fmt.lower()} is binary and is not written to stdout; give out=FILE.{fmt.lower()}",
                settings=("fmt", "out"),
            )
        return (fmt or "csv").lower()
    ext = Path(out).suffix.lower()
    if ext not in FORMATS:
        raise UsageError(
            f"out={out}: {'extension ' + ext if ext else 'no extension'} is not supported; "
            f"give a file ending in {', '.join(FORMATS)}, or out=- for stdout",
            settings=("out",),
        )
    if fmt is not None and fmt.lower() != FORMATS[ext]:
        raise UsageError(f"fmt={fmt} contradicts out={out}, which is {FORMATS[ext]}", settings=("fmt", "out"))
    return FORMATS[ext]


@contextmanager
def row_file(unit: Unit, path: Path, fmt: str, columns: Sequence[str]) -> Iterator[RowWriter]:
    """A row writer into `path`, one of `unit`'s files: CSV or JSON Lines as text, or a Parquet
    table (`parquet_rows.RowTable`, the same `write(row)`), whose footer is written on success."""
    if fmt not in BINARY:
        with unit.open(path) as fh:
            yield RowWriter(fh, fmt, columns)
        return
    from matpac_cli.outputs.parquet_rows import RowTable

    with unit.open(path, "wb") as fh:
        table = RowTable(fh, columns)
        try:
            yield table
        except BaseException:
            table.abort()
            raise
        table.close()


class RowWriter:
    """Streams tag rows as CSV or JSON Lines to an open text stream (a file or stdout): CSV writes
    flags as 1/0 and seconds with 3 decimals, JSON Lines true/false and the values as they are. On a
    terminal (stdout not redirected) control characters in the text are shown as escapes, so a
    file name or label cannot drive the terminal; a file or a pipe gets the exact text."""

    def __init__(self, stream: IO[str], fmt: str, columns: Sequence[str]) -> None:
        if fmt not in ("csv", "jsonl"):
            raise OutputError(f"fmt={fmt}: expected csv or jsonl", settings=("fmt",))
        self.stream, self.fmt, self.columns = stream, fmt, list(columns)
        self.terminal = _isatty(stream)
        self._csv = CsvWriter(stream) if fmt == "csv" else None
        self._seconds = [i for i, c in enumerate(self.columns) if c.endswith("_s")]
        if self._csv:
            self._csv.writerow(self.columns)

    def write(self, row: dict) -> None:
        if self._csv:
            # CSV spells a flag 1/0 (as emb.csv does) and a time in seconds (a column named *_s) to
            # the millisecond: 6 significant digits would cut a 3-hour file's times to 0.1 s
            cells = [int(v) if v.__class__ is bool else v for v in (row.get(c) for c in self.columns)]
            for i in self._seconds:
                if cells[i] is not None:
                    cells[i] = f"{cells[i]:.3f}"
            if self.terminal:
                cells = [for_terminal(v) if isinstance(v, str) else v for v in cells]
            self._csv.writerow(cells)
            return
        line = json.dumps({c: row[c] for c in self.columns if c in row})  # every other control is \u-escaped
        self.stream.write((line.replace("\x7f", "\\u007f") if self.terminal else line) + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
