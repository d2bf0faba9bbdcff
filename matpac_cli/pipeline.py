"""discover -> decode/resample (worker threads) -> chunk -> batch across files -> encoder -> results.

Chunks of many files share batches; each file's result is assembled as its chunks come back and
handed to `on_result` in input order, so writers can stream. A file that cannot be decoded goes
to `on_failure` and the run goes on.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from matpac_cli.audio import AudioSource
from matpac_cli.chunking import Window
from matpac_cli.decoding import END, IDLE, START, TICK, Feed, decoded, default_workers
from matpac_cli.discovery import Item
from matpac_cli.errors import InputError
from matpac_cli.predictor import Pending, Predictor, default_batch


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

            raise UsageError(f"--layer {bad[0]}: this model has layers 1..{depth}")
        return out


@dataclass
class Segment:
    start_s: float
    end_s: float
    embedding: np.ndarray  # (E,) mean of the chunk's last-layer columns


@dataclass
class EncoderOutput:
    embedding: np.ndarray  # (L, E): mean over all columns of all chunks, per requested layer
    frames: np.ndarray | None = None  # (C, L, E) one vector per 160 ms
    segments: list[Segment] = field(default_factory=list)


@dataclass
class FileResult:
    item: Item
    duration_s: float
    sample_rate: int
    channels: int
    outputs: list[EncoderOutput]  # one per plan, in plan order
    truncated: tuple[int, int] | None = None  # (frames the header promised, frames read)


class _Slot:
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
            self.error = InputError(self.item.name, f"too short ({ms:.1f} ms; one 25 ms window, 400 samples at 16 kHz, is needed)")

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


class _Batcher:
    """Packs chunks of any files into batches of `size` for one plan.

    Full-width chunks batch together; short last chunks batch with each other (padded to the
    widest, masked), so a 2 s clip never pays for a 6 s chunk's compute. Up to `ahead` batches
    stay in flight on an asynchronous device, so the next batch is cut and staged while the GPU
    computes; their chunks count as pending in their files until the results are back.

    A partial batch does not wait for company for ever: a file's result (and its journal record)
    must follow its last chunk within about one batch's compute. So the short queue goes out with
    the next full batch once its oldest chunk has seen one full batch go by, and either queue goes
    out once its oldest chunk has waited longer than a batch takes (`tick`, at least `MIN_WAIT`).
    """

    MIN_WAIT = 0.25  # seconds; a GPU fills full batches far sooner, a CPU takes longer per batch

    def __init__(self, index: int, plan: Plan, size: int, on_audio: Callable[[float], None]) -> None:
        self.index, self.plan, self.size, self.on_audio = index, plan, size, on_audio
        self.layers = plan.resolved_layers()
        self.run_layers = tuple(sorted(set(self.layers) | ({plan.predictor.dims.depth} if plan.segments else set())))
        self.n_t = plan.predictor.dims.n_t
        self.full_length = plan.predictor.fe.chunk_samples(self.n_t)
        self.hop = plan.predictor.fe.chunk_hop(self.n_t)
        self.pooled = not plan.frames  # clip sums and segment means need no per-column results
        self.ahead = 2 if plan.predictor.device.startswith("cuda") else 0
        self.full: list[tuple[_Slot, Window, np.ndarray]] = []
        self.short: list[tuple[_Slot, Window, np.ndarray]] = []
        self.in_flight: collections.deque[tuple[Pending, list, float]] = collections.deque()
        self.since = {"full": 0.0, "short": 0.0}  # when each queue's oldest chunk arrived
        self.full_launches = 0
        self.short_mark = 0  # full launches already seen when the oldest short chunk arrived
        self.batch_s = 0.0  # recent compute time of one batch (launch to result)

    def add(self, slot: _Slot, window: Window, wave: np.ndarray) -> None:
        slot.pending += 1
        slot.added += 1
        full = window.length == self.full_length
        queue_ = self.full if full else self.short
        if not queue_:
            self.since["full" if full else "short"] = time.monotonic()
            if not full:
                self.short_mark = self.full_launches
        queue_.append((slot, window, wave))
        if len(queue_) >= self.size:
            self._launch(queue_)
        if full and self.short and self.full_launches > self.short_mark:
            self._launch(self.short)  # the tails have waited one full batch: emit their files
        self.tick()

    def tick(self) -> None:
        """Launch a partial batch whose oldest chunk has waited longer than a batch takes."""
        now = time.monotonic()
        wait = max(self.MIN_WAIT, self.batch_s)
        for key, queue_ in (("full", self.full), ("short", self.short)):
            if queue_ and now - self.since[key] >= wait:
                self._launch(queue_)

    def flush(self) -> None:
        """Run the partial batches and wait for everything in flight."""
        for queue_ in (self.full, self.short):
            if queue_:
                self._launch(queue_)
        while self.in_flight:
            self._collect(*self.in_flight.popleft())

    def _launch(self, queue_: list) -> None:
        chunks = list(queue_)
        queue_.clear()
        if queue_ is self.full:
            self.full_launches += 1
        started = time.monotonic()
        pending = self.plan.predictor.launch([c for _, _, c in chunks], self.run_layers, pooled=self.pooled)
        self.in_flight.append((pending, chunks, started))
        while len(self.in_flight) > self.ahead:
            self._collect(*self.in_flight.popleft())

    def _collect(self, pending: Pending, chunks: list[tuple[_Slot, Window, np.ndarray]], started: float) -> None:
        out = pending.result()
        took = time.monotonic() - started
        self.batch_s = took if not self.batch_s else 0.7 * self.batch_s + 0.3 * took
        depth = self.plan.predictor.dims.depth
        i = self.index
        for b, (slot, w, _) in enumerate(chunks):
            if self.pooled:  # (E,) float64 sums over the chunk's valid columns
                slot.sums[i] += np.stack([out[layer][b] for layer in self.layers])
                if self.plan.segments:
                    seg = (out[depth][b] / w.columns).astype(np.float32)
            else:
                cols = np.stack([out[layer][b, : w.columns] for layer in self.layers], axis=1)  # (C, L, E)
                slot.sums[i] += cols.sum(axis=0, dtype=np.float64)
                slot.frames[i][w.index] = cols
                if self.plan.segments:
                    seg = out[depth][b, : w.columns].mean(axis=0, dtype=np.float64).astype(np.float32)
            slot.counts[i] += w.columns
            if self.plan.segments:
                start, end = w.times()
                slot.segments[i][w.index] = Segment(start, end, seg)
            slot.pending -= 1
        sr = self.plan.predictor.fe.sample_rate
        self.on_audio(sum(min(w.length, self.hop) for _, w, _ in chunks) / sr)


@contextlib.contextmanager
def _torch_threads_for(plans: list[Plan]) -> Iterator[None]:
    """With every encoder off the CPU, the CPU only decodes, one thread per file: torch ops in each
    decoding thread must not each fan out over every core, or hundreds of threads fight for
    them. So one torch thread for the run, unless threads were asked for; restored afterwards."""
    import torch

    if not plans or any(p.predictor.device == "cpu" or p.predictor.threads for p in plans):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(items: Iterable[Item], plans: list[Plan], batch_size: int | None = None, workers: int | None = None,
        on_result: Callable[[FileResult], None] = lambda r: None,
        on_failure: Callable[[InputError], None] = lambda e: None,
        on_progress: Callable[[Item, float], None] = lambda i, s: None,
        on_audio: Callable[[float], None] = lambda s: None) -> None:
    """Process every item with every plan; results arrive in input order through `on_result`.

    `on_progress` fires once per finished file, `on_audio` per batch with the seconds of audio
    it covered (first plan only), so a progress display moves during long files too.
    """
    if batch_size is None:
        batch_size = default_batch(plans[0].predictor.device if plans else "cpu")
    if batch_size < 1:
        from matpac_cli.errors import UsageError

        raise UsageError("--batch-size must be at least 1")
    batchers = [_Batcher(i, plan, batch_size, on_audio if i == 0 else (lambda s: None))
                for i, plan in enumerate(plans)]
    order: collections.deque[_Slot] = collections.deque()
    slots: dict[Feed, _Slot] = {}
    workers = workers or default_workers(plans[0].predictor.device if plans else "cpu")
    backlog = max(4 * workers, 16)  # files started but not yet handed on, whatever holds them up
    n_ts = tuple(sorted({b.n_t for b in batchers}))

    emit_ready = lambda: _emit_ready(order, plans, on_result, on_failure, on_progress)  # noqa: E731

    def flush() -> None:
        for batcher in batchers:
            batcher.flush()
        emit_ready()

    # closing(): stop the decoding threads at once if a callback raises, not when the
    # traceback that keeps this generator alive is finally dropped
    defer = bool(plans) and all(p.predictor.resample_on_device for p in plans)
    stream = decoded(list(items), workers, n_ts, lambda: len(order) < backlog, defer)
    with _torch_threads_for(plans), contextlib.closing(stream):
        for feed, msg in stream:
            if msg is IDLE:
                flush()
                continue
            if msg is TICK:
                for batcher in batchers:
                    batcher.tick()
                emit_ready()
                continue
            if msg is START:
                slots[feed] = _Slot(feed.item, plans)
                order.append(slots[feed])
                continue
            _deliver(slots, feed, msg, batchers)
            emit_ready()
    flush()


def _deliver(slots: dict[Feed, _Slot], feed: Feed, msg: object, batchers: list[_Batcher]) -> None:
    """One message of a decoding file: its chunks go to every plan's batcher; an error or its end
    closes its slot."""
    slot = slots[feed]
    if isinstance(msg, InputError):
        slot.error = msg
        del slots[feed]
    elif msg is END:
        slot.facts(feed.source)
        del slots[feed]
    else:
        for batcher in batchers:
            for w, samples in msg[batcher.n_t]:
                batcher.add(slot, w, samples)


def _emit_ready(order: collections.deque[_Slot], plans: list[Plan], on_result, on_failure, on_progress) -> None:
    """Hand on, in input order, every file at the front of the queue that is finished. A result
    that is not finite everywhere is that file's error (input far out of range), never a row."""
    while order and order[0].finished():
        slot = order.popleft()
        result = slot.result(plans) if slot.error is None else None
        if result is not None and not all(np.isfinite(o.embedding).all() for o in result.outputs):
            slot.error = InputError(slot.item.name, "the encoder gave NaN or infinite values (samples far "
                                    "outside -1..1?); nothing written for it")
        if slot.error is not None:
            on_failure(slot.error)
            on_progress(slot.item, 0.0)
        else:
            on_result(result)
            on_progress(slot.item, slot.duration_s)
