"""What a report shows of a tag output: per head the label counts, per file its top labels and
its timeline (the "taggram": label x segment scores), gathered in one streaming pass.

A tag output with `--segments` holds about 400 rows per track, so rows are never all in memory:
matpac writes each file's rows together, and each file is reduced to what the page draws as soon
as its last row is read. A timeline keeps, per head, the labels with the highest mean segment
score (a label missing from a segment's kept rows counts 0 there), and its scores quantised to
one character each (62 levels), so 5,000 tracks fit in a page of a few MB.

What a report reads is bounded, so a crafted or runaway tag file cannot exhaust memory: rows
per file (MAX_FILE_ROWS, above the 316,000 of an hour with `--top-k 0` on AudioSet's 527
labels), heads (MAX_HEADS), labels per head (MAX_LABELS), segments per file and head
(MAX_SEGMENTS: 7 days at 6.08 s) and files (MAX_FILES); a timeline never builds a label x
segment matrix of all labels. What is left out is said (`Library.cuts`: stderr and the page).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.outputs.tag_readers import TagStream

TIMELINE_LABELS = 8  # labels per head in a file's timeline
TIMELINE_COLUMNS = 240  # segments per timeline; longer files are pooled (max) into this many columns
TABLE_LABELS = 3  # top labels per head in the files table
LEVELS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # score = index / 61
MISSING = "."  # the label was not among the segment's kept rows
MAX_FILE_ROWS = 500_000  # rows read per file (about 250 MB held); the rest of its rows are skipped
MAX_HEADS = 64  # heads shown; rows of more heads are skipped
MAX_LABELS = 10_000  # labels per head (AudioSet has 527); rows of more labels are skipped
MAX_SEGMENTS = 100_000  # segments per file and head in a timeline
MAX_FILES = 1_000_000  # files in a report
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
    cuts: list[str] = field(default_factory=list)  # what the bounds left out, one sentence each


def collect(stream: TagStream) -> Library:
    """One pass over the rows of `stream`; refuses an output whose rows of one file are not
    together (matpac never writes them apart)."""
    heads: dict[str, HeadStats] = {}
    indexes: dict[str, dict[str, int]] = {}
    lib = Library([], [], [], [], [], stream.segments)
    seen: set[str] = set()
    current: str | None = None
    rows: list[dict] = []
    cut = _Cuts(stream.path)
    for row in stream.rows():
        if row["path"] != current:
            if current in seen:
                _add_file(lib, current, rows, heads, indexes, cut)
            current, rows = row["path"], []
            if current in seen:
                raise UsageError(
                    f"{stream.path}: the rows of {current} are not together; "
                    "not a matpac tags file (matpac writes each file's rows in one run)"
                )
            if len(seen) >= MAX_FILES:
                cut.files += 1
                continue
            seen.add(current)
        if current in seen and cut.keep(row, rows):
            rows.append(row)
    if current is None:
        raise UsageError(f"{stream.path}: no tag rows; nothing to report")
    if current in seen:
        _add_file(lib, current, rows, heads, indexes, cut)
    lib.cuts = cut.sentences()
    return lib


class _Cuts:
    """The bounds of one report, and what they left out."""

    def __init__(self, path) -> None:
        self.path = path
        self.files = 0  # files past MAX_FILES
        self.rows: dict[str, int] = {}  # per file: rows past MAX_FILE_ROWS
        self.heads: set[str] = set()  # heads past MAX_HEADS
        self.labels = 0  # rows of labels past MAX_LABELS
        self.segments = 0  # segment rows past MAX_SEGMENTS
        self._labels: dict[str, set[str]] = {}  # per head kept: its labels kept

    def keep(self, row: dict, rows: list[dict]) -> bool:
        """Whether `row` fits the bounds (counting it where it does not)."""
        if len(rows) >= MAX_FILE_ROWS:
            self.rows[row["path"]] = self.rows.get(row["path"], 0) + 1
            return False
        labels = self._labels.get(row["head"])
        if labels is None:
            if len(self._labels) >= MAX_HEADS:
                self.heads.add(row["head"])
                return False
            labels = self._labels[row["head"]] = set()
        if row["label"] not in labels:
            if len(labels) >= MAX_LABELS:
                self.labels += 1
                return False
            labels.add(row["label"])
        return True

    def sentences(self) -> list[str]:
        out = []
        if self.files:
            out.append(
                f"{self.path}: more than {MAX_FILES:,} files; the report leaves out the last {self.files:,} file(s)"
            )
        for path, n in list(self.rows.items())[:3]:
            out.append(
                f"{self.path}: {path} has more than {MAX_FILE_ROWS:,} rows; the report leaves out its last {n:,}"
            )
        if len(self.rows) > 3:
            out.append(f"{self.path}: {len(self.rows) - 3:,} more file(s) with more than {MAX_FILE_ROWS:,} rows cut")
        if self.heads:
            out.append(f"{self.path}: more than {MAX_HEADS} heads; the report leaves out {len(self.heads):,} of them")
        if self.labels:
            out.append(
                f"{self.path}: a head with more than {MAX_LABELS:,} labels; the report leaves out "
                f"{self.labels:,} row(s) of the others"
            )
        if self.segments:
            out.append(
                f"{self.path}: a file with more than {MAX_SEGMENTS:,} segments; its timeline leaves out "
                f"{self.segments:,} segment row(s)"
            )
        return out


def _add_file(
    lib: Library,
    path: str,
    rows: list[dict],
    heads: dict[str, HeadStats],
    indexes: dict[str, dict[str, int]],
    cut: _Cuts,
) -> None:
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
        top.append(
            [v for r in kept[:TABLE_LABELS] for v in (stats.label_index(r["label"], index), round(r["score"], 3))]
        )
        seg_rows = segs.get(stats.name)
        record = timeline(_first_segments(seg_rows, cut), stats, index) if seg_rows else None
        timelines.append(record)
        if record is not None:
            end = record["end"] if end is None else max(end, record["end"])
    lib.paths.append(path)
    lib.top.append(top)
    lib.timelines.append(timelines if lib.segments else None)
    lib.seg_end.append(end)
    lib.durations.append(next((r["duration_s"] for r in rows if r.get("duration_s") is not None), None))


def _first_segments(rows: list[dict], cut: _Cuts) -> list[dict]:
    """The rows of a head's first MAX_SEGMENTS segments (by start time)."""
    starts = {r["start_s"] for r in rows}
    if len(starts) <= MAX_SEGMENTS:
        return rows
    last = sorted(starts)[MAX_SEGMENTS - 1]
    kept = [r for r in rows if r["start_s"] <= last]
    cut.segments += len(rows) - len(kept)
    return kept


def timeline(rows: list[dict], stats: HeadStats, index: dict[str, int]) -> dict:
    """One head's timeline of one file: the TIMELINE_LABELS labels with the highest mean score
    over the segments, scores quantised (`LEVELS`, `MISSING`), label-major, one column per segment
    (or per group of segments, their maximum, past TIMELINE_COLUMNS). The means are summed per
    label, so only the kept labels' rows become a (labels x segments) matrix."""
    starts = sorted({r["start_s"] for r in rows})
    col = {s: i for i, s in enumerate(starts)}
    row_of: dict[str, int] = {}
    label_at = np.array([row_of.setdefault(r["label"], len(row_of)) for r in rows], dtype=np.intp)
    labels = list(row_of)
    values = np.array([r["score"] for r in rows], dtype=float)
    sums = np.bincount(label_at, weights=values, minlength=len(labels))  # a missing (label, segment): 0
    keep = np.argsort(-sums / len(starts), kind="stable")[:TIMELINE_LABELS]
    slot = np.full(len(labels), -1, dtype=np.intp)
    slot[keep] = np.arange(len(keep))
    scores = np.full((len(keep), len(starts)), np.nan)
    mine = slot[label_at] >= 0
    scores[slot[label_at][mine], [col[r["start_s"]] for r, m in zip(rows, mine) if m]] = values[mine]
    end = max((r["end_s"] for r in rows if r["end_s"] is not None), default=starts[-1])
    group = max(1, math.ceil(len(starts) / TIMELINE_COLUMNS))
    if group > 1:
        stats.pooled += 1
        edges = np.arange(0, len(starts), group)
        scores = np.fmax.reduceat(scores, edges, axis=1)  # NaN only where the whole group is missing
        starts = [starts[e] for e in edges]
    record = {
        "l": [stats.label_index(labels[i], index) for i in keep],
        "q": quantise(scores),
        "n": len(starts),
        "end": round(float(end), 3),
    }
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
