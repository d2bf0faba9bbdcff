"""The normalised log-mel (shared spec section 1); resampling lives in encoder/resample.py.

The log-mel runs per batch of waveform chunks on the encoder's device. Frames past a chunk's
valid samples are zeroed after normalisation, exactly the right-padding the spec applies to the
whole-file spectrogram, so a short last chunk batches with full ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from matpac_cli.config import FRONT_END, PATCH, FrontEnd


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
