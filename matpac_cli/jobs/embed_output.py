"""The embed output's files, written as one unit from the run's rows.

A finished run's rows, (name, facts, vector) each, are written as `X.npy` with its row index
`X.csv`, or one Parquet table, beside the manifest's description of what was written (with
`--frames`, each row names its frames file and the seconds between two frames).
The `embed` job (`jobs.embed`) decides what to compute; this module holds what it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matpac_cli.config import FRONT_END, PATCH
from matpac_cli.errors import OutputError
from matpac_cli.outputs import earlier, inplace, naming, parquet_append, writers
from matpac_cli.outputs.manifest import manifest
from matpac_cli.outputs.naming import FRAMES_COLUMNS, INDEX_COLUMNS
from matpac_cli.outputs.readers import read_manifest
from matpac_cli.sidefiles import create, open_existing


def write_matrix(
    unit: writers.Unit,
    paths: dict[str, Path],
    done: list,
    shape: tuple[int, ...],
    frames: bool = False,
    resolve=None,
    head: Path | None = None,
) -> None:
    """The matrix and its row index; with `--frames`, each row also names its frames file
    (relative to the --frames folder) and the seconds between two of its frames. A row's vector
    may be a placeholder (`Stored`, `earlier.Earlier`) that `resolve` turns into its array a
    chunk at a time, so the rows are never all in memory at once; `head` (Parquet): an earlier
    file whose rows are the first rows of `done`, copied as they are."""
    resolve = resolve or (lambda part: part)
    if "index" in paths:
        chunks = (np.stack([row for _, _, row in resolve(part)]) for part in _parts(done, CHUNK_ROWS))
        unit.matrix_chunks(paths["matrix"], len(done), shape, chunks)
        unit.csv(paths["index"], INDEX_COLUMNS + (FRAMES_COLUMNS if frames else []), _index_rows(done, frames))
        return
    from matpac_cli.outputs import parquet

    per_group = parquet.rows_per_group(shape)
    skip = parquet.row_count(head) if head is not None else 0
    with unit.open(paths["matrix"], "wb") as fh:
        parquet.write_embeddings(
            fh, (resolve(p) for p in _parts(done[skip:], per_group)), shape, frames=frames, head=head
        )


CHUNK_ROWS = 4096  # rows of a .npy resolved and written at a time (60 MB at 3840 values)


class Stored:
    """A row whose vector the library holds under `key`: taken as the output is written (a
    plain slotted class: a frozen dataclass costs 2 us to make, a noticeable part of a re-run
    over 100,000 rows)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stored) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Stored({self.key!r})"


def _parts(done: list, size: int):
    for start in range(0, len(done), size):
        yield done[start : start + size]


def resolver(held, single: bool, earlier_path: Path | None):
    """`resolve(part)`: the rows of `part` with their vectors, the placeholders among them taken
    in one batch each: `Stored` from the library (`held`, a `held.Held`; `single`: one layer, its
    vector alone), `earlier.Earlier` from the Parquet output being replaced."""

    taker = []  # the earlier Parquet output's rows, opened on first use (`parquet.EarlierRows`)

    def resolve(part: list) -> list:
        vectors = [v for _, _, v in part]
        stored = [j for j, v in enumerate(vectors) if isinstance(v, Stored)]
        if stored:
            got = held.vectors([vectors[j].key for j in stored])
            for j, v in zip(stored, got):
                vectors[j] = v[0] if single else v
        old = [j for j, v in enumerate(vectors) if isinstance(v, earlier.Earlier)]
        if old:
            if not taker:
                from matpac_cli.outputs import parquet

                taker.append(parquet.EarlierRows(earlier_path))
            for j, v in zip(old, taker[0].take([vectors[j].row for j in old])):
                vectors[j] = v
        return [(name, facts, v) for (name, facts, _), v in zip(part, vectors)]

    return resolve


DIGEST_ROWS = 65_536  # rows hashed as one text (about 6 MB)


def digests(seed: str, done: list, keys: list, at: tuple[int, ...]) -> dict[int, str | None]:
    """The digest of the first n rows, for each n of `at`: what the rows are (name, library key,
    facts) under `seed` (the settings, format and folder they were written for). None where a
    row among them has no key (a run without a library); a row kept from the output itself
    (`update`) has the key "": it is that output's row, whatever its audio, so the output still
    grows in place after it."""
    h = hashlib.blake2b(seed.encode(), digest_size=16)
    n = keys.index(None) if None in keys else len(keys)  # the rows before the first without a key
    out, start = {}, 0
    for end in sorted({a for a in at if a <= n}):
        for s in range(start, end, DIGEST_ROWS):  # many rows' text at a time: a call per row cost 0.1 s
            e = min(s + DIGEST_ROWS, end)
            h.update("".join(map(_token, done[s:e], keys[s:e])).encode("utf-8", "surrogateescape"))
        out[end], start = h.hexdigest(), end
    return {a: out.get(a) for a in at}


def _token(row: tuple, key: str) -> str:
    """What a row is, to its output's digest: name, library key and facts."""
    name, facts, _ = row
    return (
        f"{name}\0{key}\0{float(facts['duration_s'])!r}\0{int(facts['sample_rate'])}"
        f"\0{int(facts['channels'])}\0{1 if facts.get('truncated') else 0}\n"
    )


@dataclass
class Rows:
    """A run's output rows: (name, facts, vector or placeholder) each, their library keys (None
    where not known), the shape of one vector, and what the library holds (`held.Held`, for the
    `Stored` placeholders)."""

    done: list
    keys: list
    shape: tuple[int, ...]
    held: object | None = None


def write_outputs(paths: dict[str, Path], rows: Rows, frames_dir: Path | None, record: dict | None, about) -> None:
    """The matrix, its index and manifest (`about`: predictor, settings, summary, argv), written
    as little as the output allows. The manifest's `rows` record (count, digest of the rows'
    names, keys and facts, the files' lengths) says what the output holds: where this run's rows
    are the same rows, the files are left as they are, byte for byte; where they begin with them,
    a .npy grows in place (`inplace`); else everything is written anew, together, a chunk of
    rows at a time (a Parquet output whose rows begin with the earlier ones copies those)."""
    summary = about[2]
    seed = _seed(paths, about[1], rows.shape)
    old = record.get("count") if isinstance(record, dict) and frames_dir is None else None
    old = old if isinstance(old, int) and 0 <= old <= len(rows.done) else None
    digest = digests(seed, rows.done, rows.keys, (old or 0, len(rows.done)))
    same = old is not None and record.get("digest") is not None and digest[old] == record["digest"]
    matrix, index = paths["matrix"], paths.get("index")
    if same and old == len(rows.done) and inplace.untouched(matrix, index, record):
        summary.left = [p for p in naming.written(paths) if p.exists()]
        return
    new = {"count": len(rows.done), "digest": None if frames_dir else digest[len(rows.done)]}
    ours = same and (record.get("pending") or inplace.untouched(matrix, index, record))  # else: someone's edit
    resolve = resolver(rows.held, len(rows.shape) == 1, matrix)
    steps = _steps(paths, record, new, (frames_dir, about))
    if ours and index is not None and inplace.fits(matrix, index, record, len(rows.done), rows.shape):
        tail = rows.done[old:]
        chunks = (np.stack([v for _, _, v in resolve(part)]) for part in _parts(tail, CHUNK_ROWS))
        inplace.append(matrix, index, record, rows.shape, chunks, _index_rows(tail, False, old), *steps)
        summary.outputs = naming.written(paths)
        return
    recorded = inplace.recorded(record, "matrix") if ours and index is None else None
    if parquet_append.fits(matrix, recorded) and _grow_parquet(matrix, rows.done[old:], rows, recorded[0], steps):
        summary.outputs = naming.written(paths)
        return
    head = matrix if ours and index is None and inplace.untouched(matrix, None, record) else None
    with writers.Unit() as unit:
        write_matrix(unit, paths, rows.done, rows.shape, frames_dir is not None, resolve, head)
        tmp_index = unit.temporary(index) if index is not None else None
        new["files"] = inplace.sizes(unit.temporary(matrix), tmp_index)  # a move keeps inode and mtime
        unit.json(paths["manifest"], _manifest(paths, frames_dir, about, new))
    summary.outputs = naming.written(paths) + ([frames_dir] if frames_dir is not None else [])


def _steps(paths: dict[str, Path], record: dict, new: dict, about: tuple) -> tuple:
    """An in-place append's manifest steps: `begin`, the record marked pending (a re-run finding
    the files changed knows a matpac run did it); `commit`, the new manifest once the rows are in."""
    frames_dir, job = about

    def begin() -> None:
        held = read_manifest(paths["manifest"])
        writers.write_json(paths["manifest"], dict(held, rows=dict(record, pending=True)))

    def commit() -> None:
        new["files"] = inplace.sizes(paths["matrix"], paths.get("index"))
        writers.write_json(paths["manifest"], _manifest(paths, frames_dir, job, new))

    return begin, commit


def _grow_parquet(matrix: Path, tail: list, rows: Rows, length: int, steps: tuple) -> bool:
    """A Parquet output whose rows are the first rows of this run's: the rows after them, `tail`,
    written after its end in place (`parquet_append`); the rows it has are neither read nor
    rewritten. False where they cannot follow (the output is then written anew)."""
    from matpac_cli.outputs import parquet

    if not tail:  # a pending record of these very rows (cut back to them, `earlier.embed_rows`)
        steps[1]()  # the manifest made right: no empty row group added
        return True
    resolve = resolver(rows.held, len(rows.shape) == 1, matrix)

    def write_rows(fh) -> None:
        parts = (resolve(part) for part in _parts(tail, parquet.rows_per_group(rows.shape)))
        parquet.write_embeddings(fh, parts, rows.shape)

    return parquet_append.append(matrix, length, write_rows, *steps)


def _seed(paths: dict[str, Path], settings: dict, shape: tuple[int, ...]) -> str:
    """What a row digest is of besides the rows: the settings, the format and shape, the folder
    the rows' names are relative to."""
    fmt = "npy" if "index" in paths else "parquet"
    return json.dumps({"settings": settings, "format": fmt, "shape": list(shape), "cwd": os.getcwd()}, sort_keys=True)


def _manifest(paths: dict[str, Path], frames_dir: Path | None, about, record: dict) -> dict:
    predictor, settings, summary, argv = about
    extra = {
        "truncated": summary.truncated,
        "output": described(paths, frames_dir),
        "library": summary.library,
        "rows": record,
    }
    return manifest([predictor], settings, summary, argv, heads=[], extra=extra)


def record_frames(frames_dir: Path, out: Path, name: str) -> None:
    """`name` (a frames file, relative to `frames_dir`) written for the output `out`: appended to
    the folder's record (`naming.frames_record`) as it is written, so that a re-run of an
    interrupted `embed --frames` knows it for its own (it is never someone else's file)."""
    record = naming.frames_record(frames_dir)
    try:
        fd = open_existing(record, os.O_WRONLY | os.O_APPEND)
        with create(record, "ab") if fd is None else os.fdopen(fd, "ab") as fh:
            fh.write(os.fsencode(os.path.realpath(out)) + b"\0" + os.fsencode(name) + b"\0")
    except OSError as exc:
        raise OutputError(f"cannot write {record}: {exc.strerror or exc}") from None


def recorded_frames(frames_dir: Path, out: Path) -> set[str]:
    """The frames files the folder's record says were written for the output `out`."""
    fd = open_existing(naming.frames_record(frames_dir))
    if fd is None:
        return set()
    with os.fdopen(fd, "rb") as fh:
        parts = fh.read().split(b"\0")
    mine = os.fsencode(os.path.realpath(out))
    return {os.fsdecode(name) for owner, name in zip(parts[::2], parts[1::2]) if owner == mine}


FRAME_S = FRONT_END.hop_length * PATCH / FRONT_END.sample_rate  # 0.16 s: one frames row per 16 spectrogram frames


def described(paths: dict[str, Path], frames_dir: Path | None = None) -> dict:
    """The manifest's `output`: what was written and how its rows are indexed."""
    out = paths["matrix"]
    if "index" in paths:
        described = {"path": str(out), "format": "npy", "index": str(paths["index"])}
    else:
        from matpac_cli.outputs.parquet import EMBED_COLUMNS

        described = {
            "path": str(out),
            "format": "parquet",
            "columns": EMBED_COLUMNS + (["frames"] if frames_dir else []),
        }
    if frames_dir is not None:
        described["frames"] = {
            "folder": str(frames_dir),
            "column": "frames",
            "frame_s": FRAME_S,
            "window_s": round(FRAME_S + (FRONT_END.win_length - FRONT_END.hop_length) / FRONT_END.sample_rate, 6),
        }
    return described


def _index_rows(done: list[tuple[str, dict, np.ndarray]], frames: bool = False, start: int = 0):
    """The row index's rows, in matrix order from row `start` (with `--frames`, the frames file
    and its step)."""
    for i, (name, facts, _) in enumerate(done, start=start):
        row = (
            i,
            name,
            f"{facts['duration_s']:.3f}",
            facts["sample_rate"],
            facts["channels"],
            1 if facts.get("truncated") else 0,
        )
        yield row + ((naming.frames_name(name), f"{FRAME_S:g}") if frames else ())
