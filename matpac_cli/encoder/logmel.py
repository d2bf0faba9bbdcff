"""Resampling and the normalised log-mel (shared spec section 1). The only torchaudio user.

The log-mel runs per batch of waveform chunks on the encoder's device. Frames past a chunk's
valid samples are zeroed after normalisation, exactly the right-padding the spec applies to the
whole-file spectrogram, so a short last chunk batches with full ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from matpac_cli.config import FRONT_END, PATCH, FrontEnd


def sinc_options(fe: FrontEnd) -> dict:
    return dict(
        lowpass_filter_width=fe.resample_lowpass_filter_width,
        rolloff=fe.resample_rolloff,
        resampling_method="sinc_interp_kaiser",
        beta=fe.resample_beta,
    )


def resample(wave: Tensor, orig_sr: int, fe: FrontEnd = FRONT_END) -> Tensor:
    """Mono float32 waveform at `orig_sr` -> 16 kHz with the authors' Kaiser-windowed sinc."""
    if orig_sr == fe.sample_rate:
        return wave
    import torchaudio.functional as AF

    return AF.resample(wave, orig_sr, fe.sample_rate, **sinc_options(fe))


class LogMel(nn.Module):
    """(B, samples) waveforms with valid lengths -> (B, n_mels, frames padded to 16) log-mel."""

    def __init__(self, fe: FrontEnd = FRONT_END) -> None:
        super().__init__()
        import torchaudio.transforms as AT

        self.fe = fe
        self.mel = AT.MelSpectrogram(
            sample_rate=fe.sample_rate,
            n_fft=fe.n_fft,
            win_length=fe.win_length,
            hop_length=fe.hop_length,
            f_min=fe.f_min,
            f_max=fe.f_max,
            n_mels=fe.n_mels,
            power=2.0,
            center=False,
            norm="slaney",
            mel_scale="slaney",
        )
        self.eps = torch.finfo(torch.float32).eps

    def forward(self, waves: Tensor, lengths: Tensor) -> Tensor:
        fe = self.fe
        mel = torch.log(self.mel(waves.float()) + self.eps)
        mel = (mel - fe.norm_mean) / fe.norm_std
        n_frames = torch.div(lengths - fe.win_length, fe.hop_length, rounding_mode="floor") + 1
        frames = torch.arange(mel.shape[-1], device=mel.device)
        valid = (frames[None, :] < n_frames.to(mel.device)[:, None])[:, None, :]
        mel = torch.where(valid, mel, torch.zeros((), dtype=mel.dtype, device=mel.device))
        padded = -(-mel.shape[-1] // PATCH) * PATCH
        if padded > mel.shape[-1]:
            mel = nn.functional.pad(mel, (0, padded - mel.shape[-1]))
        return mel


class StreamResampler:
    """Resample a stream block by block with results identical to resampling it whole.

    torchaudio's resampler is a strided convolution: with g = gcd(orig, 16000), o = orig / g and
    n = 16000 / g, every o input samples give n outputs, each reading a window of `width` samples
    either side. Resampling a segment that starts on a multiple of o and carries enough context on
    both sides therefore reproduces the whole-file outputs for its middle part exactly.

    The sinc kernel is built once per stream (in float32, as the functional form builds it, so the
    outputs are bit-identical); rebuilding it per block cost more than the convolution itself.
    """

    def __init__(self, orig_sr: int, fe: FrontEnd = FRONT_END) -> None:
        import math

        self.orig_sr, self.fe = orig_sr, fe
        g = math.gcd(orig_sr, fe.sample_rate)
        self.o, self.n = orig_sr // g, fe.sample_rate // g
        width = math.ceil(fe.resample_lowpass_filter_width * self.o / (min(self.o, self.n) * fe.resample_rolloff))
        self.ctx = self.o * (-(-(2 * width + 2 * self.o) // self.o))  # generous, a multiple of o
        self.kernel = None
        if orig_sr != fe.sample_rate:
            import torchaudio.transforms as AT

            self.kernel = AT.Resample(orig_sr, fe.sample_rate, dtype=torch.float32, **sinc_options(fe))
        self.buf = torch.zeros(0)
        self.buf_start = 0  # absolute input index of buf[0]
        self.next_pos = 0  # absolute input index (multiple of o) of the next output group

    def push(self, block, final: bool = False) -> Tensor:
        """Feed the next input block; return every 16 kHz sample that is now final."""
        if self.orig_sr == self.fe.sample_rate:
            return torch.as_tensor(block)
        self.buf = torch.cat([self.buf, torch.as_tensor(block)])
        avail = self.buf_start + len(self.buf)
        emit_end = avail if final else (avail - self.ctx) // self.o * self.o
        if emit_end <= self.next_pos and not (final and avail > self.next_pos):
            return torch.zeros(0)
        seg_start = max(0, self.next_pos - self.ctx)
        seg_end = avail if final else emit_end + self.ctx
        out = self.kernel(self.buf[seg_start - self.buf_start : seg_end - self.buf_start])
        q0 = (self.next_pos - seg_start) // self.o * self.n
        q1 = len(out) if final else (emit_end - seg_start) // self.o * self.n
        self.next_pos = emit_end
        keep_from = max(0, self.next_pos - self.ctx)
        self.buf = self.buf[keep_from - self.buf_start :].clone()
        self.buf_start = keep_from
        return out[q0:q1]
