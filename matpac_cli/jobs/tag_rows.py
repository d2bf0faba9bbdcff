"""Tag rows: which labels of a score vector are kept, and the long-format rows they become.

A row is `path,head,label,score,rank,tag_id,duration_s,truncated` (+ `start_s,end_s` with
segments): `label` is the plain class name (`trance`), `tag_id` the dataset's own tag
(`genre---trance`), `duration_s` the file's length, `truncated` true when the file ended before
its header said (tagged as read, as `embed` marks it; CSV spells it 1/0, `writers.RowWriter`). Scores are computed from the
embedding, which the library keeps, so rows can be cut again with another --top-k or --threshold
without running the encoder.

With `wide`, a file is one row (`wide_row`): path, duration_s, truncated, then each head's top
label and score as `<head>_label,<head>_score`; the manifest's `output.columns` says which layout
an output holds.

A file whose clip scores keep no label of a head (all below --threshold) still gets one row for
that head, with rank 0 and no label, score or tag_id (empty in CSV, null in JSON Lines and
Parquet): "tagged, nothing above the threshold" stays apart from "never tagged".
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.inference.heads import Head
from matpac_cli.outputs.tag_readers import WIDE_COLUMNS
from matpac_cli.pipeline.assemble import FileResult, merge_short_tail

DEFAULT_TOP_K = 5
MIN_SEGMENT_S = 1.0  # --min-segment: a shorter last segment joins the one before it


# --out extensions and the format each implies; nothing else is written
def check_selection(top_k: int | None, threshold: float | None) -> None:
    if top_k is not None and top_k < 0:
        raise UsageError(f"top_k={top_k}: give 0 (every label) or a positive count", settings=("top_k",))
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # NaN fails both
        raise UsageError(f"threshold={threshold}: give a probability between 0 and 1", settings=("threshold",))


def check_min_segment(seconds: float) -> None:
    if not 0.0 <= seconds < float("inf"):  # NaN fails too
        raise UsageError(
            f"min_segment={seconds}: give a length in seconds, 0 or more (0 keeps every segment)",
            settings=("min_segment",),
        )


def effective_top_k(top_k: int | None, threshold: float | None) -> int:
    """--top-k as applied: 5 by default, or every label above --threshold when one is given."""
    if top_k is not None:
        return top_k
    return 0 if threshold is not None else DEFAULT_TOP_K


def select(scores: np.ndarray, top_k: int | None, threshold: float | None) -> list[tuple[int, int]]:
    """(rank, label index) pairs kept for one score vector, best first.

    The threshold applies to every head: a sigmoid head keeps each label scoring at least it, a
    softmax head each label whose probability is at least it."""
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        order = order[scores[order] >= threshold]
    k = effective_top_k(top_k, threshold)
    if k > 0:
        order = order[:k]
    return [(rank, int(i)) for rank, i in enumerate(order, start=1)]


def columns(segments: bool) -> list[str]:
    base = ["path", "head", "label", "score", "rank", "tag_id", "duration_s", "truncated"]
    return base + (["start_s", "end_s"] if segments else [])


def check_wide(wide: bool, segments: bool, top_k: int | None) -> None:
    """`wide` is one row per file with each head's top label: rows per segment, or more labels
    per head, are the long format's."""
    if wide and segments:
        raise UsageError(
            "`wide` writes one row per file and `segments` rows per chunk: give one of them",
            settings=("wide", "segments"),
        )
    if wide and top_k not in (None, 1):
        raise UsageError(
            f"top_k={top_k}: `wide` keeps each head's top label; the long format (without `wide`) keeps more",
            settings=("top_k", "wide"),
        )


def wide_columns(heads: list[str]) -> list[str]:
    """`path,duration_s,truncated` then `<head>_label,<head>_score` for each head, in order."""
    return WIDE_COLUMNS + [f"{h}_{part}" for h in heads for part in ("label", "score")]


def wide_row(
    name: str,
    heads: list[Head],
    rec_arrays: dict,
    threshold: float | None,
    duration_s: float | None = None,
    truncated: bool = False,
) -> dict:
    """One file's wide row: each head's top label and score (None where it scores below
    `threshold`, as the long format's rank-0 row)."""
    row = {"path": name, "duration_s": None if duration_s is None else round(float(duration_s), 3)}
    row["truncated"] = truncated
    for head in heads:
        scores = rec_arrays[f"clip:{head.name}"]
        kept = select(scores, 1, threshold)
        i = kept[0][1] if kept else None
        row[f"{head.name}_label"] = None if i is None else head.labels[i]
        row[f"{head.name}_score"] = None if i is None else float(scores[i])
    return row


def layout_columns(config, heads: list[Head]) -> list[str]:
    """The columns of a `TagConfig`'s output: wide (`config.wide`) or long."""
    return wide_columns([h.name for h in heads]) if config.wide else columns(config.segments)


def file_rows(name: str, heads: list[Head], scores: dict, config, duration_s, truncated: bool) -> Iterable[dict]:
    """One file's rows in a `TagConfig`'s layout: long (a row per kept label) or wide (one row)."""
    if config.wide:
        return [wide_row(name, heads, scores, config.threshold, duration_s, truncated)]
    return rows_for(name, heads, scores, config.top_k, config.threshold, config.segments, duration_s, truncated)


def _row(name: str, head: Head, scores: np.ndarray, rank: int, i: int, truncated: bool) -> dict:
    return {
        "path": name,
        "head": head.name,
        "label": head.labels[i],
        "score": float(scores[i]),
        "rank": rank,
        "tag_id": head.tag_ids[i],
        "truncated": truncated,
    }


def rows_for(
    name: str,
    heads: list[Head],
    rec_arrays: dict,
    top_k: int | None,
    threshold: float | None,
    segments: bool,
    duration_s: float | None = None,
    truncated: bool = False,
) -> Iterable[dict]:
    length = None if duration_s is None else round(float(duration_s), 3)
    for head in heads:
        scores = rec_arrays[f"clip:{head.name}"]
        kept = select(scores, top_k, threshold)
        clip_rows = [_row(name, head, scores, rank, i, truncated) for rank, i in kept] or [
            {
                "path": name,
                "head": head.name,
                "label": None,
                "score": None,
                "rank": 0,
                "tag_id": None,
                "truncated": truncated,
            }
        ]
        for row in clip_rows:
            row["duration_s"] = length
            if segments:
                row.update(start_s=None, end_s=None)
            yield row
        if segments:
            seg_scores, times = rec_arrays[f"seg:{head.name}"], rec_arrays[f"times:{head.name}"]
            for s in range(len(seg_scores)):
                for rank, i in select(seg_scores[s], top_k, threshold):
                    row = _row(name, head, seg_scores[s], rank, i, truncated)
                    row.update(
                        duration_s=length, start_s=round(float(times[s][0]), 3), end_s=round(float(times[s][1]), 3)
                    )
                    yield row


def score(
    result: FileResult, groups: list, segments: bool, min_segment: float = MIN_SEGMENT_S
) -> dict[str, np.ndarray]:
    """Every head's clip scores (and per-segment scores, a short tail merged: `merge_short_tail`)
    for one file."""
    arrays: dict[str, np.ndarray] = {}
    for group, out in zip(groups, result.outputs):
        clip = out.embedding[-1][None]
        segs = merge_short_tail(out.segments, min_segment)
        seg = np.stack([s.embedding for s in segs]) if segments else None
        times = np.array([[s.start_s, s.end_s] for s in segs], dtype=np.float32).reshape(-1, 2)
        for head in group.heads:  # each encoder cuts its own chunks (608 or 992 frames)
            arrays[f"clip:{head.name}"] = head.scores(clip)[0].astype(np.float32)
            if segments:
                arrays[f"seg:{head.name}"] = head.scores(seg).astype(np.float32)
                arrays[f"times:{head.name}"] = times
    return arrays
