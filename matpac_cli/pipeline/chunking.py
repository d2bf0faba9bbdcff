"""Waveform windows that reproduce the whole-file spectrogram's chunks exactly (spec section 2).

The grid itself (`Window`, `windows`, `grid`) is the encoder's geometry (encoder/signal.py);
`WindowStream` is the one cutter that lays it over a stream, of 16 kHz samples or of input-rate
samples to be resampled per batch.
"""

from __future__ import annotations

import numpy as np

from matpac_cli.config import FRONT_END, FrontEnd
from matpac_cli.encoder.resample import RateChunk, geometry
from matpac_cli.encoder.signal import Window, grid


class WindowStream:
    """The same windows as `windows()`, cut from a stream as its blocks arrive: the one cutter.

    Without `rate` the stream is 16 kHz samples and each window comes with its samples. With an
    input `rate` the stream is at that rate, the windows are those of the 16 kHz signal it
    resamples to, and each comes as a `RateChunk`: its input span with the resampler's context
    (`Geometry.span`), which `resample_batch` turns into exactly the window's samples. 16 kHz is
    the identity geometry, so both cut through the same code. Holds at most one chunk's span
    plus one block, so memory stays flat whatever the file length.
    """

    def __init__(self, n_t: int, fe: FrontEnd = FRONT_END, *, rate: int | None = None) -> None:
        self.n_t, self.fe, self.rate = n_t, fe, rate
        self.geometry = geometry(rate or fe.sample_rate, fe)
        self.size, self.hop = fe.chunk_samples(n_t), fe.chunk_hop(n_t)
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # absolute input index of buf[0]
        self.seen = 0  # input samples pushed so far
        self.count = 0  # windows emitted so far

    def push(self, block: np.ndarray) -> list[tuple[Window, np.ndarray | RateChunk]]:
        """Full windows this block completes: ones with a 16 kHz sample past them and every input
        sample of their span read (the tail waits for `finish`)."""
        self.buf = np.concatenate([self.buf, np.asarray(block, dtype=np.float32)])
        self.seen += len(block)
        out = []
        for w in grid(self.geometry.out_length(self.seen), self.n_t, self.fe, self.count, final=False):
            if self.geometry.span(w.start, w.length)[1] > self.seen:
                break
            out.append(self._emit(w))
        return out

    def finish(self) -> list[tuple[Window, np.ndarray | RateChunk]]:
        """The windows left once the stream has ended: the last full ones and the short tail."""
        total = self.geometry.out_length(self.seen)
        return [self._emit(w) for w in grid(total, self.n_t, self.fe, self.count, final=True)]

    def _emit(self, w: Window) -> tuple[Window, np.ndarray | RateChunk]:
        a, b = self.geometry.span(w.start, w.length)
        samples = np.zeros(b - a, dtype=np.float32)  # zeros before the stream's start and past its end
        lo, hi = max(a, self.buf_start), min(b, self.buf_start + len(self.buf))
        if hi > lo:
            samples[lo - a : hi - a] = self.buf[lo - self.buf_start : hi - self.buf_start]
        self.count = w.index + 1
        keep = max(self.buf_start, self.geometry.span(self.count * self.hop, self.size)[0])
        self.buf = self.buf[keep - self.buf_start :]
        self.buf_start = keep
        return w, samples if self.rate is None else RateChunk(samples, self.rate, w.length)
