"""The embed output's rows and files: gathered from the journal and written as one unit.

A finished run's rows come from the journal (files embedded now or by an interrupted run) or,
once a journal is compact, from the earlier matrix it points into. They are written as `X.npy`
with its row index `X.csv`, or one Parquet table, beside the manifest's description of what was
written (with `--frames`, each row names its frames file and the seconds between two frames).
The `embed` job (`jobs.embed`) decides what to compute; this module holds what it writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matpac_cli.config import FRONT_END, PATCH
from matpac_cli.errors import MatpacError
from matpac_cli.outputs import journal as jr
from matpac_cli.outputs import naming, writers
from matpac_cli.outputs.naming import FRAMES_COLUMNS, INDEX_COLUMNS
from matpac_cli.pipeline.discovery import Item


def previous_matrix(journal: jr.Journal, out: Path) -> np.ndarray | None:
    """The finished matrix a compact journal points into (a .npy memory-mapped, a Parquet
    table's embedding column read into memory); records whose rows it no longer holds (it was
    replaced or edited since) are dropped and recomputed."""
    compact = {k for k, rec in journal.done.items() if "embedding" not in rec.arrays}
    if not compact:
        return None
    if journal.stamp is not None and journal.stamp == jr.compact_stamp(out):
        try:
            if out.suffix == ".parquet":
                from matpac_cli.outputs.parquet import read_matrix

                matrix = read_matrix(out)
            else:
                matrix = np.load(out, mmap_mode="r")
            if all(0 <= journal.done[k].meta.get("row", -1) < len(matrix) for k in compact):
                return matrix
        except (OSError, ValueError, MatpacError):
            pass
    journal.forget(compact)
    return None


def finished_rows(
    items: list[Item], journal: jr.Journal, previous: np.ndarray | None, kept: list[tuple[str, jr.Record]] = ()
) -> list[tuple[str, jr.Record, np.ndarray]]:
    """The output's rows as (name, record, embedding): the earlier rows `update` keeps (in their
    order), then every finished file of this input list, in input order; each embedding from the
    journal, or from the earlier matrix a compact journal points into."""
    done = [(name, rec, _embedding(rec, previous)) for name, rec in kept]
    for item in items:
        rec = journal.finished(item)
        if rec is not None:
            done.append((item.name, rec, _embedding(rec, previous)))
    return done


def _embedding(rec: jr.Record, previous: np.ndarray | None) -> np.ndarray:
    return rec.arrays["embedding"] if "embedding" in rec.arrays else previous[rec.meta["row"]]


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
            [(name, rec.meta, row) for name, rec, row in done],
            shape,
            frames=[naming.frames_name(name) for name, _, _ in done] if frames else None,
        )


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


def _index_rows(done: list[tuple[str, jr.Record, np.ndarray]], frames: bool = False):
    """The row index's rows, in matrix order (with `--frames`, the frames file and its step)."""
    for i, (name, rec, _) in enumerate(done):
        row = (
            i,
            name,
            f"{rec.meta['duration_s']:.3f}",
            rec.meta["sample_rate"],
            rec.meta["channels"],
            1 if rec.meta.get("truncated") else 0,
        )
        yield row + ((naming.frames_name(name), f"{FRAME_S:g}") if frames else ())
