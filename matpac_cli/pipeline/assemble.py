"""What every engine computes and how a file's result is assembled from its chunks.

discover -> decode/resample -> chunk -> batch across files -> encoder -> results. A `Plan` says what
to compute with one encoder; each chunk's output (`chunk_output`) is summed into its file's `Slot`
in any order; a finished slot is handed to the job's writer (`hand_on`), a file that failed to
its events' `failure`, and the run goes on. The engines (`engines.local`: threads in this process,
`engines.ray`: a Ray cluster) decide where the chunks are cut and encoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from matpac_cli.encoder.signal import Window
from matpac_cli.errors import InputError
from matpac_cli.inference.predictor import Predictor
from matpac_cli.interrupts import whole
from matpac_cli.pipeline.audio import AudioSource
from matpac_cli.pipeline.discovery import Item


@dataclass(frozen=True)
class Plan:
    """What to compute with one encoder: layers to pool, and whether to keep frames/segments."""

    predictor: Predictor
    layers: tuple[int, ...] = (-1,)  # 1-based; -1 is the last layer
    frames: bool = False
    segments: bool = False

    def resolved_layers(self) -> tuple[int, ...]:
        depth = self.predictor.dims.depth
        out = tuple(depth if layer == -1 else layer for layer in self.layers)
        bad = [layer for layer in out if not 1 <= layer <= depth]
        if bad:
            from matpac_cli.errors import UsageError

            raise UsageError(f"layer={bad[0]}: this model has layers 1..{depth}", settings=("layer",))
        return out


@dataclass
class Segment:
    start_s: float
    end_s: float
    embedding: np.ndarray  # (E,) mean of the chunk's last-layer columns
    columns: int = 1  # time columns that mean is over (a merged tail pools both chunks' columns)


def merge_short_tail(segments: list[Segment], min_s: float) -> list[Segment]:
    """A last segment shorter than `min_s` seconds joins the one before it: the merged segment
    spans both, and its embedding is the mean over both chunks' columns (each column counts the
    same, as in the clip embedding), so heads score it as one window. A file's only segment is
    kept whatever its length. Only the last chunk of a file can be short."""
    if len(segments) < 2 or segments[-1].end_s - segments[-1].start_s >= min_s:
        return segments
    prev, tail = segments[-2], segments[-1]
    cols = prev.columns + tail.columns
    pooled = (
        prev.embedding.astype(np.float64) * prev.columns + tail.embedding.astype(np.float64) * tail.columns
    ) / cols
    return segments[:-2] + [Segment(prev.start_s, tail.end_s, pooled.astype(np.float32), cols)]


@dataclass
class EncoderOutput:
    embedding: np.ndarray  # (L, E): mean over all columns of all chunks, per requested layer
    frames: np.ndarray | None = None  # (C, L, E) one vector per 160 ms
    segments: list[Segment] = field(default_factory=list)


@dataclass
class ChunkOutput:
    """One chunk's contribution to its file for one plan."""

    sums: np.ndarray  # (L, E) float64 sums over the chunk's valid columns
    frames: np.ndarray | None = None  # (C, L, E) with --frames
    segment: np.ndarray | None = None  # (E,) mean of the last layer's columns, with segments


@dataclass
class FileResult:
    item: Item
    duration_s: float
    sample_rate: int
    channels: int
    outputs: list[EncoderOutput]  # one per plan, in plan order
    truncated: tuple[int, int] | None = None  # (frames the header promised, frames read)
    found: str | None = None  # taken from the library, not encoded: how it was known ("same path", "moved" ...)
    key: str | None = None  # its audio key in the library (where there is one and the file could be keyed)
    stored: bool = False  # its rows are in the library already (written by a Ray worker): no vectors here


class Slot:
    """A file in flight: per-plan accumulators and how many chunks are still out."""

    def __init__(self, item: Item, plans: list[Plan]) -> None:
        self.item = item
        self.error: InputError | None = None
        self.ended = False
        self.duration_s, self.sample_rate, self.channels = 0.0, 0, 0
        self.truncated: tuple[int, int] | None = None
        self.pending = 0
        self.added = 0  # chunks handed to batchers, over all plans
        self.sums = [np.zeros((len(p.layers), p.predictor.dims.embed_dim)) for p in plans]
        self.counts = [0] * len(plans)
        self.frames: list[dict[int, np.ndarray]] = [{} for _ in plans]  # by chunk index
        self.segments: list[dict[int, Segment]] = [{} for _ in plans]

    def facts(self, source: AudioSource | None) -> None:
        """The stream ended cleanly: record what was decoded."""
        self.ended = True
        if source is not None:
            self.duration_s, self.sample_rate, self.channels = source.duration_s, source.sample_rate, source.channels
            self.truncated = source.truncated
        if self.added == 0 and self.error is None:
            ms = 1000 * self.duration_s
            self.error = InputError(
                self.item.name, f"too short ({ms:.1f} ms; one 25 ms window, 400 samples at 16 kHz, is needed)"
            )

    def take(self, i: int, w: Window, chunk: ChunkOutput) -> None:
        """Add one chunk's output for plan `i` (chunks may arrive in any order)."""
        self.sums[i] += chunk.sums
        self.counts[i] += w.columns
        if chunk.frames is not None:
            self.frames[i][w.index] = chunk.frames
        if chunk.segment is not None:
            start, end = w.times()
            self.segments[i][w.index] = Segment(start, end, chunk.segment, w.columns)

    def merge(self, part: tuple) -> None:
        """Add a part of this file summed elsewhere (an encoder actor, `engines.packs`): its
        (sums, columns, frames, segments) per plan, as `take` would have added its chunks."""
        sums, counts, frames, segments = part
        for i in range(len(self.sums)):
            self.sums[i] += sums[i]
            self.counts[i] += counts[i]
            self.frames[i].update(frames[i])
            self.segments[i].update(segments[i])

    def finished(self) -> bool:
        return (self.ended or self.error is not None) and self.pending == 0

    def result(self, plans: list[Plan]) -> FileResult:
        outs = []
        for i, plan in enumerate(plans):
            emb = (self.sums[i] / self.counts[i]).astype(np.float32)
            frames = None
            if plan.frames:
                frames = np.concatenate([self.frames[i][k] for k in sorted(self.frames[i])]).astype(np.float32)
            segments = [self.segments[i][k] for k in sorted(self.segments[i])]
            outs.append(EncoderOutput(emb, frames, segments))
        return FileResult(self.item, self.duration_s, self.sample_rate, self.channels, outs, self.truncated)


def run_layers(plan: Plan) -> tuple[int, ...]:
    """The layers one batch must return: those asked for, and the last for segments."""
    layers = plan.resolved_layers()
    return tuple(sorted(set(layers) | ({plan.predictor.dims.depth} if plan.segments else set())))


def chunk_output(plan: Plan, layers: tuple[int, ...], out: dict[int, np.ndarray], b: int, w: Window) -> ChunkOutput:
    """What one chunk (row `b` of a batch's output) adds to its file, for one plan: the float64
    sums of its valid columns per layer, its columns (`--frames`) and its segment vector."""
    depth = plan.predictor.dims.depth
    frames = seg = None
    if not plan.frames:  # a pooled batch: (E,) float64 sums over the chunk's valid columns
        sums = np.stack([out[layer][b] for layer in layers])
        if plan.segments:
            seg = (out[depth][b] / w.columns).astype(np.float32)
    else:
        frames = np.stack([out[layer][b, : w.columns] for layer in layers], axis=1)  # (C, L, E)
        sums = frames.sum(axis=0, dtype=np.float64)
        if plan.segments:
            seg = out[depth][b, : w.columns].mean(axis=0, dtype=np.float64).astype(np.float32)
    return ChunkOutput(sums, frames, seg)


def finite(result: FileResult) -> bool:
    """Whether a result is finite everywhere (else it is its file's error: input far out of range)."""
    return all(o.embedding is None or np.isfinite(o.embedding).all() for o in result.outputs)


def hand_on(slot: Slot, plans: list[Plan], on_result, events) -> None:
    """A finished file to the job's `on_result`, or as a failure to `events` (`RunEvents`), then
    its progress (`deliver`)."""
    deliver(slot.item, slot.result(plans) if slot.error is None else slot.error, on_result, events)


def deliver(item: Item, result: FileResult | InputError, on_result, events) -> None:
    """A file's result to the job's `on_result`, or its error to `events`, then its progress. A
    result that is not finite everywhere is that file's error, never a row. Ctrl-C and SIGTERM
    wait until the file is handed on and counted (`interrupts.whole`): an interrupted run's
    summary says what the library holds."""
    if isinstance(result, FileResult) and not finite(result):
        result = InputError(
            item.name, "the encoder gave NaN or infinite values (samples far outside -1..1?); nothing written for it"
        )
    with whole():  # stored (by the job's `on_result`) and counted, or neither: Ctrl-C waits
        if isinstance(result, InputError):
            events.failure(result)
            events.progress(item, 0.0)
        else:
            on_result(result)
            events.progress(item, result.duration_s)
