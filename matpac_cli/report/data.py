"""What a report shows of a tag output: per head the label counts, per file its top labels and
its timeline (the "taggram": label x segment scores), gathered in one streaming pass.

A tag output with `--segments` holds about 400 rows per track, so rows are never all in memory:
matpac writes each file's rows together, and each file is reduced to what the page draws as soon
as its last row is read. A timeline keeps, per head, the labels with the highest mean segment
score (a label missing from a segment's kept rows counts 0 there), and its scores quantised to
one character each (62 levels), so 5,000 tracks fit in a page of a few MB.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.readers import TagStream

TIMELINE_LABELS = 8  # labels per head in a file's timeline
TIMELINE_COLUMNS = 240  # segments per timeline; longer files are pooled (max) into this many columns
TABLE_LABELS = 3  # top labels per head in the files table
LEVELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # score = index / 61
MISSING = "."  # the label was not among the segment's kept rows
_CHARS = np.frombuffer((LEVELS + MISSING).encode("ascii"), dtype=np.uint8)


@dataclass
class HeadStats:
    """One head: its labels in the order first seen, and per label how many files have it as
    their top-1 clip label and among their kept clip labels."""

    name: str
    labels: list[str] = field(default_factory=list)
    top1: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    pooled: int = 0  # timelines of this head pooled to TIMELINE_COLUMNS
    unlabelled: int = 0  # files tagged whose clip scores kept no label of this head (a rank-0 row)

    def label_index(self, label: str, index: dict[str, int]) -> int:
        if label not in index:
            index[label] = len(self.labels)
            self.labels.append(label)
        return index[label]


@dataclass
class Library:
    heads: list[HeadStats]
    paths: list[str]
    top: list[list[list[float]]]  # per file, per head: [label, score, label, score, ...]
    timelines: list[list[dict] | None]  # per file, per head: the timeline record (None: no segments)
    seg_end: list[float | None]  # per file: the last segment's end, when the tags have segments
    segments: bool
    durations: list[float | None] = field(default_factory=list)  # per file: its rows' duration_s


def collect(stream: TagStream) -> Library:
    """One pass over the rows of `stream`; refuses an output whose rows of one file are not
    together (matpac never writes them apart)."""
    heads: dict[str, HeadStats] = {}
    indexes: dict[str, dict[str, int]] = {}
    lib = Library([], [], [], [], [], stream.segments)
    seen: set[str] = set()
    current: str | None = None
    rows: list[dict] = []
    for row in stream.rows():
        if row["path"] != current:
            if current is not None:
                _add_file(lib, current, rows, heads, indexes)
            current, rows = row["path"], []
            if current in seen:
                raise UsageError(f"{stream.path}: the rows of {current} are not together; "
                                 "not a matpac tags file (matpac writes each file's rows in one run)")
            seen.add(current)
        rows.append(row)
    if current is None:
        raise UsageError(f"{stream.path}: no tag rows; nothing to report")
    _add_file(lib, current, rows, heads, indexes)
    return lib


def _add_file(lib: Library, path: str, rows: list[dict], heads: dict[str, HeadStats],
              indexes: dict[str, dict[str, int]]) -> None:
    clip: dict[str, list[dict]] = {}
    segs: dict[str, list[dict]] = {}
    for row in rows:
        name = row["head"]
        if name not in heads:
            heads[name] = HeadStats(name)
            indexes[name] = {}
            lib.heads.append(heads[name])
            for earlier in lib.top:  # a head first seen now: earlier files have none of it
                earlier.append([])
            for earlier in lib.timelines:
                if earlier is not None:
                    earlier.append(None)
        (segs if row.get("start_s") is not None else clip).setdefault(name, []).append(row)
    top, timelines, end = [], [], None
    for stats in lib.heads:
        index = indexes[stats.name]
        clip_rows = clip.get(stats.name, [])
        kept = sorted((r for r in clip_rows if r["rank"] > 0), key=lambda r: r["rank"])
        stats.unlabelled += bool(clip_rows) and not kept
        for r in kept:
            stats.kept[stats.label_index(r["label"], index)] += 1
        if kept:
            stats.top1[stats.label_index(kept[0]["label"], index)] += 1
        top.append([v for r in kept[:TABLE_LABELS] for v in (stats.label_index(r["label"], index), round(r["score"], 3))])
        seg_rows = segs.get(stats.name)
        record = timeline(seg_rows, stats, index) if seg_rows else None
        timelines.append(record)
        if record is not None:
            end = record["end"] if end is None else max(end, record["end"])
    lib.paths.append(path)
    lib.top.append(top)
    lib.timelines.append(timelines if lib.segments else None)
    lib.seg_end.append(end)
    lib.durations.append(next((r["duration_s"] for r in rows if r.get("duration_s") is not None), None))


def timeline(rows: list[dict], stats: HeadStats, index: dict[str, int]) -> dict:
    """One head's timeline of one file: the TIMELINE_LABELS labels with the highest mean score
    over the segments, scores quantised (`LEVELS`, `MISSING`), label-major, one column per segment
    (or per group of segments, their maximum, past TIMELINE_COLUMNS)."""
    starts = sorted({r["start_s"] for r in rows})
    col = {s: i for i, s in enumerate(starts)}
    row_of: dict[str, int] = {}
    at = [(row_of.setdefault(r["label"], len(row_of)), col[r["start_s"]]) for r in rows]
    labels = list(row_of)
    scores = np.full((len(labels), len(starts)), np.nan)
    scores[tuple(np.array(at).T)] = [r["score"] for r in rows]
    end = max((r["end_s"] for r in rows if r["end_s"] is not None), default=starts[-1])
    keep = np.argsort(-np.where(np.isnan(scores), 0.0, scores).mean(axis=1), kind="stable")[:TIMELINE_LABELS]
    scores = scores[keep]
    group = max(1, math.ceil(len(starts) / TIMELINE_COLUMNS))
    if group > 1:
        stats.pooled += 1
        edges = np.arange(0, len(starts), group)
        scores = np.fmax.reduceat(scores, edges, axis=1)  # NaN only where the whole group is missing
        starts = [starts[e] for e in edges]
    record = {"l": [stats.label_index(labels[i], index) for i in keep], "q": quantise(scores),
              "n": len(starts), "end": round(float(end), 3)}
    record.update(_grid(starts))
    return record


def quantise(scores: np.ndarray) -> str:
    """Scores in [0, 1] as one character each (LEVELS), NaN as MISSING; row-major."""
    flat = np.asarray(scores, dtype=float).ravel()
    codes = np.rint(np.clip(np.nan_to_num(flat), 0.0, 1.0) * (len(LEVELS) - 1)).astype(np.intp)
    codes[np.isnan(flat)] = len(LEVELS)
    return _CHARS[codes].tobytes().decode("ascii")


def _grid(starts: list[float]) -> dict:
    """Column start times: a regular grid as its first start and step (matpac's segments are
    evenly spaced, so this is the usual case), or the list itself."""
    if len(starts) < 2:
        return {"t0": starts[0], "dt": 0}
    step = starts[1] - starts[0]
    if np.abs(np.asarray(starts) - (starts[0] + step * np.arange(len(starts)))).max() <= 2e-3:
        return {"t0": starts[0], "dt": round(step, 4)}
    return {"ts": [round(s, 3) for s in starts]}
