"""The local engine: worker threads decode and cut files, this thread batches chunks of many files
for the encoder, and each file's result is handed on in input order as soon as it is complete,
so writers can stream.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from matpac_cli.config import Device, RunOptions
from matpac_cli.encoder.cpu import one_torch_thread
from matpac_cli.encoder.signal import Window
from matpac_cli.errors import InputError
from matpac_cli.events import NoEvents, Ran, RunEvents
from matpac_cli.inference.predictor import Pending, default_batch
from matpac_cli.pipeline.assemble import FileResult, Plan, Slot, chunk_output, hand_on, run_layers
from matpac_cli.pipeline.discovery import Item
from matpac_cli.pipeline.feed import END, IDLE, START, TICK, Feed, decoded, default_workers


class _Batcher:
    """Packs chunks of any files into batches of `size` for one plan.

    Full-width chunks batch together; short last chunks batch with each other (padded to the
    widest, masked), so a 2 s clip never pays for a 6 s chunk's compute. Up to `ahead` batches
    stay in flight on an asynchronous device, so the next batch is cut and staged while the GPU
    computes; their chunks count as pending in their files until the results are back.

    A partial batch does not wait for company for ever: a file's result (and its library row)
    must follow its last chunk within about one batch's compute. So the short queue goes out with
    the next full batch once its oldest chunk has seen one full batch go by, and either queue goes
    out once its oldest chunk has waited longer than a batch takes (`tick`, at least `MIN_WAIT`).

    `events.audio` hears each batch's seconds of audio: the run's events for the first plan, `NoEvents`
    for the others (every plan encodes the same audio).
    """

    MIN_WAIT = 0.25  # seconds; a GPU fills full batches far sooner, a CPU takes longer per batch

    def __init__(self, index: int, plan: Plan, size: int, events: RunEvents) -> None:
        self.index, self.plan, self.size, self.events = index, plan, size, events
        self.layers = plan.resolved_layers()
        self.run_layers = run_layers(plan)
        self.n_t = plan.predictor.dims.n_t
        self.full_length = plan.predictor.fe.chunk_samples(self.n_t)
        self.hop = plan.predictor.fe.chunk_hop(self.n_t)
        self.pooled = not plan.frames  # clip sums and segment means need no per-column results
        self.ahead = 2 if plan.predictor.on.is_cuda else 0
        self.full: list[tuple[Slot, Window, np.ndarray]] = []
        self.short: list[tuple[Slot, Window, np.ndarray]] = []
        self.in_flight: collections.deque[tuple[Pending, list, float]] = collections.deque()
        self.since = {"full": 0.0, "short": 0.0}  # when each queue's oldest chunk arrived
        self.full_launches = 0
        self.short_mark = 0  # full launches already seen when the oldest short chunk arrived
        self.batch_s = 0.0  # recent compute time of one batch (launch to result)

    def add(self, slot: Slot, window: Window, wave: np.ndarray) -> None:
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

    def _collect(self, pending: Pending, chunks: list[tuple[Slot, Window, np.ndarray]], started: float) -> None:
        out = pending.result()
        took = time.monotonic() - started
        self.batch_s = took if not self.batch_s else 0.7 * self.batch_s + 0.3 * took
        for b, (slot, w, _) in enumerate(chunks):
            slot.take(self.index, w, chunk_output(self.plan, self.layers, out, b, w))
            slot.pending -= 1
        sr = self.plan.predictor.fe.sample_rate
        self.events.audio(sum(min(w.length, self.hop) for _, w, _ in chunks) / sr)


@contextlib.contextmanager
def _torch_threads_for(plans: list[Plan]) -> Iterator[None]:
    """With every encoder off the CPU, the CPU only decodes, one thread per file: torch ops in each
    decoding thread must not each fan out over every core, or hundreds of threads fight for
    them. So one torch thread for the run, unless threads were asked for; restored afterwards."""
    if not plans or any(Device.parse(p.predictor.device).is_cpu or p.predictor.threads for p in plans):
        yield
        return
    with one_torch_thread():
        yield


def run(
    options: RunOptions,
    items: Iterable[Item],
    plans: list[Plan],
    events: RunEvents | None = None,
    on_result: Callable[[FileResult], None] = lambda r: None,
) -> Ran:
    """Process every item with every plan; results arrive in input order through `on_result`.

    `events.progress` fires once per finished file, `events.audio` per batch with the seconds of
    audio it covered (first plan only), so a progress display moves during long files too.
    """
    events = events if events is not None else NoEvents()
    device = plans[0].predictor.device if plans else "cpu"
    batch_size = options.batch_size or default_batch(device)
    batchers = [_Batcher(i, plan, batch_size, events if i == 0 else NoEvents()) for i, plan in enumerate(plans)]
    order: collections.deque[Slot] = collections.deque()
    slots: dict[Feed, Slot] = {}
    workers = options.workers or default_workers(device)
    backlog = max(4 * workers, 16)  # files started but not yet handed on, whatever holds them up
    n_ts = tuple(sorted({b.n_t for b in batchers}))

    emit_ready = lambda: _emit_ready(order, plans, on_result, events)  # noqa: E731

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
                slots[feed] = Slot(feed.item, plans)
                order.append(slots[feed])
                continue
            _deliver(slots, feed, msg, batchers)
            emit_ready()
    flush()
    return Ran()


def _deliver(slots: dict[Feed, Slot], feed: Feed, msg: object, batchers: list[_Batcher]) -> None:
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


def _emit_ready(order: collections.deque[Slot], plans: list[Plan], on_result, events: RunEvents) -> None:
    """Hand on, in input order, every file at the front of the queue that is finished."""
    while order and order[0].finished():
        hand_on(order.popleft(), plans, on_result, events)
