"""The embed output's files, written as one unit from the run's rows.

A finished run's rows, (name, facts, vector) each, are written as `X.npy` with its row index
`X.csv`, or one Parquet table, beside the manifest's description of what was written (with
`--frames`, each row names its frames file and the seconds between two frames).
The `embed` job (`jobs.embed`) decides what to compute; this module holds what it writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from matpac_cli.config import FRONT_END, PATCH
from matpac_cli.errors import OutputError
from matpac_cli.outputs import naming, writers
from matpac_cli.outputs.naming import FRAMES_COLUMNS, INDEX_COLUMNS
from matpac_cli.sidefiles import create, open_existing


def write_matrix(
    unit: writers.Unit, paths: dict[str, Path], done: list, shape: tuple[int, ...], frames: bool = False
) -> None:
    """The matrix and its row index; with `--frames`, each row also names its frames file
    (relative to the --frames folder) and the seconds between two of its frames."""
    if "index" in paths:
        unit.matrix(paths["matrix"], [row for _, _, row in done])
        unit.csv(paths["index"], INDEX_COLUMNS + (FRAMES_COLUMNS if frames else []), _index_rows(done, frames))
        return
    from matpac_cli.outputs import parquet

    with unit.open(paths["matrix"], "wb") as fh:
        parquet.write_embeddings(
            fh,
            done,
            shape,
            frames=[naming.frames_name(name) for name, _, _ in done] if frames else None,
        )


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


def _index_rows(done: list[tuple[str, dict, np.ndarray]], frames: bool = False):
    """The row index's rows, in matrix order (with `--frames`, the frames file and its step)."""
    for i, (name, facts, _) in enumerate(done):
        row = (
            i,
            name,
            f"{facts['duration_s']:.3f}",
            facts["sample_rate"],
            facts["channels"],
            1 if facts.get("truncated") else 0,
        )
        yield row + ((naming.frames_name(name), f"{FRAME_S:g}") if frames else ())
