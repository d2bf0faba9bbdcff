"""Decoding side of the pipeline: worker threads that open, stream and cut files.

Several files decode at once and their chunks arrive through one bounded queue, interleaved, so
one long file never leaves the other threads idle and memory stays bounded by the queue. The
thread feeding the encoder only batches what arrives.

Chunks are cut at the file's own rate (`chunking.WindowStream` with the input rate, for every
rate whose chunk starts fall on whole resampler groups). With `defer_resample` (an encoder on a
GPU) they travel as input-rate chunks (`RateChunk`) and are resampled on the device with their
batch, so the CPU only decodes; otherwise the worker resamples each chunk itself with the same
function. Other rates go through the streaming resampler here, then the same cutter at 16 kHz.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
from collections.abc import Callable, Iterator

import torch

from matpac_cli.config import Device
from matpac_cli.encoder.resample import StreamResampler, eligible, resample_batch
from matpac_cli.errors import InputError, one_line
from matpac_cli.pipeline.audio import AudioSource
from matpac_cli.pipeline.chunking import WindowStream
from matpac_cli.pipeline.discovery import Item
from matpac_cli.pipeline.hooks import hold, hold_on


def default_workers(device: str | Device = "cpu") -> int:
    """Decoding threads. On a CPU the encoder needs the cores, so a few; a GPU needs feeding."""
    cores = os.cpu_count() or 2
    if Device.parse(device).is_cuda:
        return max(2, min(16, cores - 2))
    return max(1, min(4, cores - 1))


START, END, IDLE, TICK = object(), object(), object(), object()
TICK_S = 0.05  # how often the caller hears from an idle queue, to launch batches that waited


class Feed:
    """One file being decoded in a worker thread, which also cuts its chunks (one window grid per
    encoder geometry) so the thread feeding the device only batches. Messages go to the shared
    queue in order: {n_t: [(Window, samples), ...]} as chunks complete, then `END` or an error."""

    def __init__(self, item: Item, out: queue.Queue, n_ts: tuple[int, ...], defer_resample: bool = False) -> None:
        self.item = item
        self.out = out
        self.n_ts = n_ts
        self.defer_resample = defer_resample
        self.source: AudioSource | None = None
        self.cancelled = False

    def produce(self) -> None:
        """Worker side: open, stream, resample, cut; errors travel through the queue."""
        try:
            if self.item.problem:
                raise InputError(self.item.name, self.item.problem)
            held = hold_on()  # None unless a test asked for it (MATPAC_TEST_HOOKS)
            if held and self.item.name.endswith(held[0]):
                hold(held[1], lambda: self.cancelled)
            self.source = AudioSource(self.item.path, self.item.name)
            if eligible(self.source.sample_rate, self.n_ts):
                self._rate_chunks(self.source.sample_rate)
            else:
                self._resampled(self.source.sample_rate)
            if not self.cancelled:
                self._put(END)
        except InputError as exc:
            exc.__context__ = exc.__cause__ = None  # kept for the summary: no frames, no samples
            self._put(exc.with_traceback(None))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's, never the run's
            self._put(InputError(self.item.name, f"cannot decode: {one_line(exc)}"))

    def _rate_chunks(self, rate: int) -> None:
        """Cut at the input rate; resample here, or leave it to the device (`defer_resample`)."""
        cutters = {n_t: WindowStream(n_t, rate=rate) for n_t in self.n_ts}
        for block in self.source.blocks():
            self._chunks({n_t: self._ready(c.push(block)) for n_t, c in cutters.items()})
            if self.cancelled:
                return
        self._chunks({n_t: self._ready(c.finish()) for n_t, c in cutters.items()})

    def _ready(self, pairs: list) -> list:
        if self.defer_resample or not pairs:
            return pairs
        waves = resample_batch([chunk for _, chunk in pairs])
        return [(w, y.numpy()) for (w, _), y in zip(pairs, waves)]

    def _resampled(self, rate: int) -> None:
        """16 kHz files, and rates whose chunks do not start on whole resampler groups: the
        whole-stream resampler, block by block, then the 16 kHz window grid."""
        resampler = StreamResampler(rate)
        cutters = {n_t: WindowStream(n_t) for n_t in self.n_ts}
        for block in self.source.blocks():
            wave = resampler.push(torch.from_numpy(block)).numpy()
            self._chunks({n_t: c.push(wave) for n_t, c in cutters.items()})
            if self.cancelled:
                return
        wave = resampler.push(torch.zeros(0), final=True).numpy()
        self._chunks({n_t: c.push(wave) + c.finish() for n_t, c in cutters.items()})

    def _chunks(self, by_grid: dict[int, list]) -> None:
        if any(by_grid.values()):
            self._put(by_grid)

    def _put(self, msg: object) -> None:
        while not self.cancelled:
            try:
                self.out.put((self, msg), timeout=0.5)
                return
            except queue.Full:
                continue


def decoded(
    items: list[Item], workers: int, n_ts: tuple[int, ...], can_start: Callable[[], bool], defer_resample: bool = False
) -> Iterator[tuple[Feed | None, object]]:
    """Decode up to `workers` files at once and yield (feed, message) as blocks arrive.

    Each feed first yields `START` (in input order), then its chunks in order, then `END` or an
    `InputError`. Files interleave, so one long file never leaves the other workers idle; memory
    stays bounded by the shared queue. `(None, IDLE)` means nothing can start until the caller
    lets finished files go (`can_start` is false and no file is decoding); `(None, TICK)` that
    nothing arrived for a moment (the caller may launch batches that have waited long enough).
    """
    out: queue.Queue = queue.Queue(maxsize=4 * workers)
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="matpac-decode")
    active: set[Feed] = set()
    it = iter(items)
    upcoming = next(it, None)
    try:
        while True:
            while upcoming is not None and len(active) < workers and can_start():
                feed = Feed(upcoming, out, n_ts, defer_resample)
                active.add(feed)
                yield feed, START
                pool.submit(feed.produce)
                upcoming = next(it, None)
            if not active:
                if upcoming is None:
                    return
                yield None, IDLE
                continue
            try:
                feed, msg = out.get(timeout=TICK_S)
            except queue.Empty:
                yield None, TICK
                continue
            if msg is END or isinstance(msg, InputError):
                active.discard(feed)
            yield feed, msg
    finally:
        for feed in active:
            feed.cancelled = True
        pool.shutdown(wait=True, cancel_futures=True)
