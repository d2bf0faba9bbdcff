"""From samples to the encoder's chunks: the mono downmix and the chunk grid (shared spec 1-2).

A chunk of `n_t` frames needs (n_t - 1) * 160 + 400 samples and the next one starts n_t * 160
samples later, so chunk k's frames are whole-file frames k*n_t .. k*n_t + n_t - 1. Only the last
chunk may be shorter; a tail with fewer than 400 samples adds no frame and so no chunk.

Plain arithmetic on the front end's geometry, below the pipeline (which streams files through it,
`pipeline.chunking.WindowStream`) and the predictor (which cuts arrays with `windows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from matpac_cli.config import FRONT_END, PATCH, FrontEnd


def downmix(raw: np.ndarray) -> np.ndarray:
    """Mean over channels. Column by column: numpy's mean over a short inner axis is several
    times slower, and for stereo both give the same float32 (a + b) / 2."""
    if raw.shape[1] == 1:
        return raw[:, 0]
    acc = raw[:, 0].astype(np.float32, copy=True)
    for c in range(1, raw.shape[1]):
        acc += raw[:, c]
    acc /= np.float32(raw.shape[1])
    return acc


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
    return list(grid(n_samples, n_t, fe, first=0, final=True))


def grid(total: int, n_t: int, fe: FrontEnd, first: int, final: bool) -> Iterator[Window]:
    """Windows `first`, `first` + 1, ... of a waveform `total` 16 kHz samples long so far, and the
    only place a Window is made. Not `final` (more samples may come): only full windows with a
    sample past them, since a file ending exactly on a window's edge must not produce an extra,
    empty tail. `final`: every window up to the last, which may be short."""
    size, hop = fe.chunk_samples(n_t), fe.chunk_hop(n_t)
    index = first
    while True:
        start = index * hop
        if not final and total <= start + size:
            return
        length = min(size, total - start)
        frames = fe.n_frames(length)
        if frames <= 0:
            return
        yield Window(index, start, length, frames, -(-frames // PATCH))
        if start + size >= total:
            return
        index += 1
