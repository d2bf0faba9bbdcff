"""Waveform windows that reproduce the whole-file spectrogram's chunks exactly (spec section 2).

A chunk of `n_t` frames needs (n_t - 1) * 160 + 400 samples and the next one starts n_t * 160
samples later, so chunk k's frames are whole-file frames k*n_t .. k*n_t + n_t - 1. Only the last
chunk may be shorter; a tail with fewer than 400 samples adds no frame and so no chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matpac_cli.config import FRONT_END, PATCH, FrontEnd


@dataclass(frozen=True)
class Window:
    """One encoder chunk of a file, in 16 kHz samples and in seconds."""

    index: int
    start: int  # first sample
    length: int  # samples (<= chunk_samples)
    frames: int  # valid spectrogram frames
    columns: int  # time columns after padding frames to a multiple of 16

    def times(self, fe: FrontEnd = FRONT_END) -> tuple[float, float]:
        """Start and end in seconds of the frames this chunk covers."""
        start = self.start / fe.sample_rate
        end = (self.start + (self.frames - 1) * fe.hop_length + fe.win_length) / fe.sample_rate
        return start, end


def windows(n_samples: int, n_t: int, fe: FrontEnd = FRONT_END) -> list[Window]:
    """All chunks of an `n_samples`-long 16 kHz waveform for a model with `n_t` frames per chunk."""
    size, hop = fe.chunk_samples(n_t), fe.chunk_hop(n_t)
    out: list[Window] = []
    start = 0
    while True:
        length = min(size, n_samples - start)
        frames = fe.n_frames(length)
        if frames <= 0:
            break
        out.append(Window(len(out), start, length, frames, -(-frames // PATCH)))
        if start + size >= n_samples:
            break
        start += hop
    return out


class WindowStream:
    """The same windows as `windows()`, cut from a 16 kHz stream as its blocks arrive.

    Holds at most one chunk plus one block, so memory stays flat whatever the file length.
    """

    def __init__(self, n_t: int, fe: FrontEnd = FRONT_END) -> None:
        self.fe, self.size, self.hop = fe, fe.chunk_samples(n_t), fe.chunk_hop(n_t)
        self.buf = np.zeros(0, dtype=np.float32)
        self.start = 0  # absolute sample index of buf[0]
        self.count = 0

    def push(self, block: np.ndarray) -> list[tuple[Window, np.ndarray]]:
        """Windows completed by this block (full-size ones only; the tail waits for `finish`)."""
        self.buf = np.concatenate([self.buf, np.asarray(block, dtype=np.float32)])
        out = []
        # A full window is final only once a sample past it exists: a file ending exactly on a
        # window boundary must not produce an extra, empty tail.
        while len(self.buf) > self.size:
            out.append(self._emit(self.size))
            self.buf = self.buf[self.hop :]
            self.start += self.hop
        return out

    def finish(self) -> list[tuple[Window, np.ndarray]]:
        """The last window (full or short), if the remaining samples make at least one frame."""
        length = len(self.buf)
        if self.fe.n_frames(length) <= 0:
            return []
        return [self._emit(length)]

    def _emit(self, length: int) -> tuple[Window, np.ndarray]:
        frames = self.fe.n_frames(length)
        w = Window(self.count, self.start, length, frames, -(-frames // PATCH))
        self.count += 1
        return w, self.buf[:length].copy()
