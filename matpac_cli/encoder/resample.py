"""Resampling to 16 kHz (spec 1.2): the one home of the resampler, for a whole signal, a stream
and a batch of input-rate chunks, all through one kernel and one geometry.

torchaudio's resampler is a strided convolution: with g = gcd(rate, 16000), o = rate / g and
n = 16000 / g, output group q (16 kHz samples q*n .. q*n + n - 1) reads input samples
q*o - width .. q*o + width + o - 1 (zeros outside the signal). `geometry` gives o, n and width,
the width read off torchaudio's own kernel, so no second formula can disagree with the kernel
that runs. Three uses follow from it:

- `resample`: a whole signal, exactly `torchaudio.functional.resample` with the spec's settings.
- `StreamResampler`: a signal block by block; each block is resampled whole with enough context
  either side, so its middle is what resampling the file whole gives (to float32 rounding).
- `resample_batch`: input-rate chunks (`RateChunk`), one convolution per rate. A chunk whose first
  16 kHz sample is a multiple of n resamples from its own input span, context included, to exactly
  the whole-file samples. Chunk k starts at k * hop (hop = n_t * 160: 97,280 for 608 frames), a
  multiple of n for 8, 11.025, 16, 22.05, 24, 32, 44.1, 48, 88.2, 96 kHz and most other rates;
  `eligible` says which. So a decoding worker only reads, downmixes and cuts (the cutter is
  `pipeline.chunking.WindowStream`), and the batch is resampled where the encoder runs; on a CPU
  the same function runs in the decoding workers, so both devices go through one code.

torch is imported inside the functions: the window cutter imports this module, and commands
that never run the encoder must not pay for torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from matpac_cli.config import FRONT_END, FrontEnd

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def sinc_options(fe: FrontEnd) -> dict:
    """The spec's Kaiser-windowed sinc settings, as torchaudio's resampler takes them."""
    return dict(
        lowpass_filter_width=fe.resample_lowpass_filter_width,
        rolloff=fe.resample_rolloff,
        resampling_method="sinc_interp_kaiser",
        beta=fe.resample_beta,
    )


@dataclass(frozen=True)
class Geometry:
    """The resampler's geometry for one input rate: o inputs -> n outputs, `width` inputs of
    context either side of each group. 16 kHz itself is o = n = 1, width 0: the identity."""

    rate: int
    o: int
    n: int
    width: int

    def out_length(self, n_in: int) -> int:
        """16 kHz samples the whole-signal resampler makes of `n_in` input samples: torchaudio
        takes the ceiling of n * n_in / o held in float32 (one sample fewer than the exact
        ceiling for some lengths), and so must we, to cut the same last chunk."""
        if self.n == self.o:
            return n_in
        return int(np.ceil(np.float32(self.n * n_in / self.o)))

    def span(self, start: int, length: int) -> tuple[int, int]:
        """Input samples [a, b) that make 16 kHz samples [start, start + length); `start` is a
        multiple of n. a may be negative and b past the signal: those samples are zeros."""
        q0, groups = start // self.n, -(-length // self.n)
        a = q0 * self.o - self.width
        return a, a + groups * self.o + 2 * self.width


@cache
def _sinc(rate: int, fe: FrontEnd, dtype: torch.dtype) -> tuple[Tensor, int]:
    """torchaudio's own sinc kernel (n, 1, 2 * width + o) and width for this rate, built once
    on the CPU in `dtype` (as `torchaudio.functional.resample` builds it for a CPU signal)."""
    import torchaudio.transforms as AT

    rs = AT.Resample(rate, fe.sample_rate, dtype=dtype, **sinc_options(fe))
    return rs.kernel.detach(), int(rs.width)


@cache
def geometry(rate: int, fe: FrontEnd = FRONT_END) -> Geometry:
    """The one source of o, n and the kernel's width for `rate`, for every resampling path."""
    if rate <= 0:
        raise ValueError(f"sample rate {rate}: it must be positive")
    g = math.gcd(rate, fe.sample_rate)
    width = 0
    if rate != fe.sample_rate:
        import torch

        width = _sinc(rate, fe, torch.float32)[1]
    return Geometry(rate, rate // g, fe.sample_rate // g, width)


@cache
def _kernel(rate: int, device: str, dtype: torch.dtype, fe: FrontEnd = FRONT_END) -> Tensor:
    """The rate's sinc kernel in `dtype`, copied to `device` once."""
    return _sinc(rate, fe, dtype)[0].to(device)


def _groups(x: Tensor, g: Geometry, fe: FrontEnd) -> Tensor:
    """(B, span) input samples, context included -> (B, groups * n) 16 kHz samples: the one
    convolution every path runs."""
    import torch

    kernel = _kernel(g.rate, str(x.device), x.dtype, fe)
    y = torch.nn.functional.conv1d(x[:, None], kernel, stride=g.o)
    return y.transpose(1, 2).reshape(len(x), -1)


def resample(wave: Tensor, orig_sr: int, fe: FrontEnd = FRONT_END) -> Tensor:
    """(..., time) float waveform at `orig_sr` -> 16 kHz with the authors' Kaiser-windowed sinc:
    what `torchaudio.functional.resample` gives with the spec's settings, sample for sample."""
    if orig_sr == fe.sample_rate:
        return wave
    import torch

    if not wave.is_floating_point():
        raise TypeError(f"expected a floating point waveform, got {wave.dtype}")
    g = geometry(orig_sr, fe)
    flat = wave.reshape(-1, wave.shape[-1])
    padded = torch.nn.functional.pad(flat, (g.width, g.width + g.o))
    out = _groups(padded, g, fe)[:, : g.out_length(wave.shape[-1])]
    return out.reshape(wave.shape[:-1] + out.shape[-1:])


class StreamResampler:
    """Resample a stream block by block with the results of resampling it whole (to float32 rounding).

    A stretch that starts on a multiple of o and carries the kernel's context on both sides
    reproduces the whole-file outputs for its middle part, so each push resamples the samples
    it can finish plus `ctx` either side (a multiple of o, with room to spare). The kernel is
    built once per rate and kept: rebuilding it per block cost more than the convolution itself.
    """

    def __init__(self, orig_sr: int, fe: FrontEnd = FRONT_END) -> None:
        import torch

        self.orig_sr, self.fe = orig_sr, fe
        self.geometry = geometry(orig_sr, fe)
        self.o, self.n = self.geometry.o, self.geometry.n
        self.ctx = self.o * (-(-(2 * self.geometry.width + 2 * self.o) // self.o))  # generous, a multiple of o
        self.buf = torch.zeros(0)
        self.buf_start = 0  # absolute input index of buf[0]
        self.next_pos = 0  # absolute input index (multiple of o) of the next output group

    def push(self, block, final: bool = False) -> Tensor:
        """Feed the next input block; return every 16 kHz sample that is now final."""
        import torch

        if self.orig_sr == self.fe.sample_rate:
            return torch.as_tensor(block)
        self.buf = torch.cat([self.buf, torch.as_tensor(block)])
        avail = self.buf_start + len(self.buf)
        emit_end = avail if final else (avail - self.ctx) // self.o * self.o
        if emit_end <= self.next_pos and not (final and avail > self.next_pos):
            return torch.zeros(0)
        part_start = max(0, self.next_pos - self.ctx)
        part_end = avail if final else emit_end + self.ctx
        out = resample(self.buf[part_start - self.buf_start : part_end - self.buf_start], self.orig_sr, self.fe)
        q0 = (self.next_pos - part_start) // self.o * self.n
        q1 = len(out) if final else (emit_end - part_start) // self.o * self.n
        self.next_pos = emit_end
        keep_from = max(0, self.next_pos - self.ctx)
        self.buf = self.buf[keep_from - self.buf_start :].clone()
        self.buf_start = keep_from
        return out[q0:q1]


def eligible(rate: int, n_ts: tuple[int, ...], fe: FrontEnd = FRONT_END) -> bool:
    """Whether every chunk start of every encoder geometry falls on a whole resampler group."""
    if rate == fe.sample_rate or rate <= 0:
        return False
    n = fe.sample_rate // math.gcd(rate, fe.sample_rate)
    return all(fe.chunk_hop(n_t) % n == 0 for n_t in n_ts)


@dataclass(frozen=True)
class RateChunk:
    """One encoder chunk's input-rate samples, context included (`Geometry.span` of its 16 kHz
    window); `len()` is its 16 kHz length. Plain numbers, so it travels between threads and
    processes, and the cutter that makes it (pipeline/chunking.py) stays above this module."""

    samples: np.ndarray  # float32, (span b - a,)
    rate: int
    length: int  # 16 kHz samples it resamples to (the chunk's Window.length)

    def __len__(self) -> int:
        return self.length


def resample_batch(
    chunks: list[RateChunk], device: str | torch.device = "cpu", fe: FrontEnd = FRONT_END
) -> list[Tensor]:
    """Each chunk's 16 kHz samples (a tensor of its `length` on `device`), one convolution per
    input rate; chunks of one rate are zero-padded to the longest, which only adds groups past
    each one's own, and those are cut off."""
    import torch

    out: list[Tensor | None] = [None] * len(chunks)
    by_rate: dict[int, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_rate.setdefault(chunk.rate, []).append(i)
    cuda = torch.device(device).type == "cuda"
    for rate, idx in by_rate.items():
        longest = max(len(chunks[i].samples) for i in idx)
        host = torch.zeros((len(idx), longest), dtype=torch.float32, pin_memory=cuda)
        for row, i in enumerate(idx):
            host[row, : len(chunks[i].samples)] = torch.from_numpy(chunks[i].samples)
        y = _groups(host.to(device, non_blocking=cuda), geometry(rate, fe), fe)
        for row, i in enumerate(idx):
            out[i] = y[row, : chunks[i].length]
    return out  # type: ignore[return-value]
