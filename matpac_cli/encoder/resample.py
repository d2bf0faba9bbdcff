"""Chunks cut at the file's own rate, resampled per batch where the encoder runs (spec 1.2, 2).

torchaudio's resampler is a strided convolution: with g = gcd(rate, 16000), o = rate / g and
n = 16000 / g, output group q (16 kHz samples q*n .. q*n + n - 1) reads input samples
q*o - width .. q*o + width + o - 1 (zeros outside the file). A chunk whose first 16 kHz sample is
a multiple of n therefore resamples from its own input-rate segment, context included, to exactly
the whole-file resampler's samples. Chunk k starts at k * hop (hop = n_t * 160: 97,280 for 608
frames), a multiple of n for 8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 88.2, 96 kHz and most other
rates; `eligible` says which. The others keep the whole-stream resampler in the decoding workers.

So a decoding worker only reads, downmixes and cuts (`SegmentStream`), and `resample_batch` runs
on the encoder's device as part of each batch, one convolution per input rate in the batch. On a
CPU the same function runs in the decoding workers, so both devices go through one code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from matpac_cli.config import FRONT_END, PATCH, FrontEnd
from matpac_cli.encoder.logmel import sinc_options
from matpac_cli.pipeline.chunking import Window


@dataclass(frozen=True)
class Grid:
    """The resampler's geometry for one input rate: o inputs -> n outputs, `width` inputs of
    context either side of each group."""

    rate: int
    o: int
    n: int
    width: int

    def out_length(self, n_in: int) -> int:
        """16 kHz samples the whole-file resampler makes of `n_in` input samples: torchaudio
        takes the ceiling of n * n_in / o held in float32 (one sample fewer than the exact
        ceiling for some lengths), and so must we, to cut the same last chunk."""
        if self.n == self.o:
            return n_in
        return int(np.ceil(np.float32(self.n * n_in / self.o)))

    def span(self, start: int, length: int) -> tuple[int, int]:
        """Input samples [a, b) that make 16 kHz samples [start, start + length); `start` is a
        multiple of n. a may be negative and b past the file: those samples are zeros."""
        q0, groups = start // self.n, -(-length // self.n)
        a = q0 * self.o - self.width
        return a, a + groups * self.o + 2 * self.width


@cache
def _kernel(rate: int, fe: FrontEnd) -> tuple[torch.Tensor, int]:
    """torchaudio's own sinc kernel (n, 1, 2 * width + o) for this rate pair, built once."""
    import torchaudio.transforms as AT

    rs = AT.Resample(rate, fe.sample_rate, dtype=torch.float32, **sinc_options(fe))
    return rs.kernel.detach(), int(rs.width)


def grid(rate: int, fe: FrontEnd = FRONT_END) -> Grid:
    g = math.gcd(rate, fe.sample_rate)
    width = _kernel(rate, fe)[1] if rate != fe.sample_rate else 0
    return Grid(rate, rate // g, fe.sample_rate // g, width)


def eligible(rate: int, n_ts: tuple[int, ...], fe: FrontEnd = FRONT_END) -> bool:
    """Whether every chunk start of every encoder geometry falls on a whole resampler group."""
    if rate == fe.sample_rate or rate <= 0:
        return False
    n = fe.sample_rate // math.gcd(rate, fe.sample_rate)
    return all(fe.chunk_hop(n_t) % n == 0 for n_t in n_ts)


@dataclass(frozen=True)
class RateSegment:
    """One chunk's input-rate samples, context included; `len()` is its 16 kHz length."""

    samples: np.ndarray  # float32, (span b - a,)
    rate: int
    length: int  # 16 kHz samples it resamples to (the chunk's Window.length)

    def __len__(self) -> int:
        return self.length


class SegmentStream:
    """The windows of `chunking.windows()` for the file's 16 kHz length, cut from its input-rate
    stream as blocks arrive, each as a `RateSegment`. Holds at most one chunk's span plus a block."""

    def __init__(self, rate: int, n_t: int, fe: FrontEnd = FRONT_END) -> None:
        self.fe, self.grid = fe, grid(rate, fe)
        self.size, self.hop = fe.chunk_samples(n_t), fe.chunk_hop(n_t)
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # absolute input index of buf[0]
        self.seen = 0  # input samples pushed so far
        self.count = 0

    def push(self, block: np.ndarray) -> list[tuple[Window, RateSegment]]:
        """Full windows this block completes: ones with a 16 kHz sample past them (so the file
        does not end on their edge) and every input sample of their span read."""
        self.buf = np.concatenate([self.buf, np.asarray(block, dtype=np.float32)])
        self.seen += len(block)
        out = []
        while True:
            start = self.count * self.hop
            a, b = self.grid.span(start, self.size)
            if self.grid.out_length(self.seen) <= start + self.size or b > self.seen:
                return out
            out.append(self._emit(start, self.size))

    def finish(self) -> list[tuple[Window, RateSegment]]:
        """The windows left once the file has ended: the last full ones and the short tail."""
        total, out = self.grid.out_length(self.seen), []
        while True:
            start = self.count * self.hop
            length = min(self.size, total - start)
            if self.fe.n_frames(length) <= 0:
                return out
            out.append(self._emit(start, length))
            if start + self.size >= total:
                return out

    def _emit(self, start: int, length: int) -> tuple[Window, RateSegment]:
        a, b = self.grid.span(start, length)
        seg = np.zeros(b - a, dtype=np.float32)
        lo, hi = max(a, self.buf_start), min(b, self.buf_start + len(self.buf))
        if hi > lo:
            seg[lo - a : hi - a] = self.buf[lo - self.buf_start : hi - self.buf_start]
        frames = self.fe.n_frames(length)
        window = Window(self.count, start, length, frames, -(-frames // PATCH))
        self.count += 1
        keep = max(self.buf_start, self.grid.span(self.count * self.hop, self.size)[0])
        self.buf = self.buf[keep - self.buf_start :]
        self.buf_start = keep
        return window, RateSegment(seg, self.grid.rate, length)


def resample_batch(
    segments: list[RateSegment], device: str | torch.device = "cpu", fe: FrontEnd = FRONT_END
) -> list[torch.Tensor]:
    """Each segment's 16 kHz samples (a tensor of its `length` on `device`), one convolution per
    input rate; segments of one rate are zero-padded to the longest, which only adds groups
    past each one's own, and those are cut off."""
    out: list[torch.Tensor | None] = [None] * len(segments)
    by_rate: dict[int, list[int]] = {}
    for i, seg in enumerate(segments):
        by_rate.setdefault(seg.rate, []).append(i)
    cuda = torch.device(device).type == "cuda"
    for rate, idx in by_rate.items():
        g = grid(rate, fe)
        longest = max(len(segments[i].samples) for i in idx)
        host = torch.zeros((len(idx), longest), dtype=torch.float32, pin_memory=cuda)
        for row, i in enumerate(idx):
            host[row, : len(segments[i].samples)] = torch.from_numpy(segments[i].samples)
        kernel = device_kernel(rate, str(device), fe)
        x = host.to(device, non_blocking=cuda)
        y = torch.nn.functional.conv1d(x[:, None], kernel, stride=g.o).transpose(1, 2).reshape(len(idx), -1)
        for row, i in enumerate(idx):
            out[i] = y[row, : segments[i].length]
    return out  # type: ignore[return-value]


@cache
def device_kernel(rate: int, device: str, fe: FrontEnd = FRONT_END) -> torch.Tensor:
    """The rate's sinc kernel, copied to `device` once."""
    return _kernel(rate, fe)[0].to(device)
