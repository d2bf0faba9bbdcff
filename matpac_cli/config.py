"""Frozen settings: the front end every MATPAC checkpoint expects, and the encoder geometry.

The front-end numbers are the model contract (shared spec section 1); they are not options.
The encoder geometry is read off the weights (`EncoderDims.from_state_dict`), never off a name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

PATCH = 16  # patch side, in mel bins and in frames


@dataclass(frozen=True)
class FrontEnd:
    """Audio -> normalised log-mel, as the authors' training preprocessing did it."""

    sample_rate: int = 16_000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 50.0
    f_max: float = 8000.0
    n_mels: int = 80
    norm_mean: float = -7.056
    norm_std: float = 4.193
    resample_lowpass_filter_width: int = 64
    resample_rolloff: float = 0.9475937167399596
    resample_beta: float = 14.769656459379492

    def n_frames(self, n_samples: int) -> int:
        """Frames of a `center=False` STFT: none below one window."""
        if n_samples < self.win_length:
            return 0
        return 1 + (n_samples - self.win_length) // self.hop_length

    def chunk_samples(self, n_t: int) -> int:
        """Samples that give exactly `n_t` frames (608 -> 97,520)."""
        return (n_t - 1) * self.hop_length + self.win_length

    def chunk_hop(self, n_t: int) -> int:
        """Sample offset between chunks so they tile the whole-file frames (608 -> 97,280)."""
        return n_t * self.hop_length

    def as_dict(self) -> dict:
        return asdict(self)


FRONT_END = FrontEnd()


@dataclass(frozen=True)
class EncoderDims:
    """ViT geometry, derived from a state dict so tiny test checkpoints use the same code."""

    width: int
    depth: int
    heads: int
    mlp_width: int
    n_t: int  # frames per chunk: 16 * grid columns of pos_embed
    n_freq: int = 5  # patch rows: 80 mel bins / 16

    @property
    def grid_cols(self) -> int:
        return self.n_t // PATCH

    @property
    def embed_dim(self) -> int:
        """Size of one time column's vector: the frequency tokens concatenated (3840 for ViT-B)."""
        return self.n_freq * self.width

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, object]) -> EncoderDims:
        from matpac_cli.errors import ModelError

        try:
            width = int(sd["cls_token"].shape[-1])
            pos_rows = int(sd["pos_embed"].shape[1])
            mlp_width = int(sd["student_encoder.blocks.0.mlp.fc1.weight"].shape[0])
        except KeyError as exc:
            raise ModelError(f"checkpoint lacks key {exc.args[0]!r}: not a MATPAC encoder") from None
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"student_encoder\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise ModelError("checkpoint has no student_encoder.blocks.*: not a MATPAC encoder")
        depth = max(blocks) + 1
        n_freq = 5
        if width % 64 or (pos_rows - 1) % n_freq:
            raise ModelError(f"checkpoint geometry not understood: width {width}, pos_embed rows {pos_rows}")
        return cls(
            width=width,
            depth=depth,
            heads=width // 64,
            mlp_width=mlp_width,
            n_t=(pos_rows - 1) // n_freq * PATCH,
            n_freq=n_freq,
        )
