"""The MATPAC ViT encoder in plain torch (shared spec section 3). No I/O, no downloads.

Module and parameter names mirror the released checkpoints, so a release state dict loads as is.
Chunks of different widths can share a batch: padding tokens are masked out of attention, which
keeps every chunk's result what it would be alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matpac_cli.config import PATCH, EncoderDims
from matpac_cli.errors import ModelError

LN_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact (erf) GELU; onednn.pack fuses it into fc1
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dims.width, eps=LN_EPS)
        self.attn = Attention(dims.width, dims.heads)
        self.norm2 = nn.LayerNorm(dims.width, eps=LN_EPS)
        self.mlp = Mlp(dims.width, dims.mlp_width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _Trunk(nn.Module):
    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dims) for _ in range(dims.depth))
        self.norm = nn.LayerNorm(dims.width, eps=LN_EPS)


class _PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=PATCH, stride=PATCH)


class MatpacEncoder(nn.Module):
    """Normalised log-mel chunks (B, 80, T) -> per-time-column embeddings for chosen layers."""

    def __init__(self, dims: EncoderDims) -> None:
        super().__init__()
        self.dims = dims
        self.linear_kind = "plain"  # "onednn" once onednn.pack swapped the linear layers
        n_tokens = dims.n_freq * dims.grid_cols
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_tokens, dims.width))
        self.patch_embed = _PatchEmbed(dims.width)
        self.student_encoder = _Trunk(dims)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> MatpacEncoder:
        """Build with the geometry the weights imply and load them strictly."""
        with torch.device("meta"):  # no second copy of the weights while loading
            model = cls(EncoderDims.from_state_dict(sd))
        check_state_dict(model, sd)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        return model.eval()

    def forward(self, mel: Tensor, widths: Tensor | None = None, layers: Iterable[int] = (-1,)) -> dict[int, Tensor]:
        """Return {layer: (B, columns, n_freq * width)} for 1-based layers (-1: the last).

        `widths[b]` is the number of valid time columns of chunk b; columns past it are padding
        and never attended to. Layer `depth` is the final-norm output, as the spec requires.
        """
        layers = tuple(layers)
        depth = self.dims.depth
        wanted = sorted({depth if layer == -1 else layer for layer in layers})
        if not wanted or wanted[0] < 1 or wanted[-1] > depth:
            raise ValueError(f"layers must be in 1..{depth}, got {list(layers)}")
        x = self.patch_embed.proj(mel.unsqueeze(1))  # (B, D, F, C)
        b, d, nf, nc = x.shape
        if nc > self.dims.grid_cols:
            raise ValueError(f"chunk of {nc} columns exceeds the model's {self.dims.grid_cols}")
        x = x.flatten(2).transpose(1, 2)  # token index f * C + t
        grid = self.pos_embed[:, 1:].reshape(1, nf, self.dims.grid_cols, d)[:, :, :nc]
        x = x + grid.reshape(1, nf * nc, d)
        cls_tok = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls_tok, x], dim=1)
        mask = _key_mask(widths, nf, nc, x.device)
        out: dict[int, Tensor] = {}
        for i, block in enumerate(self.student_encoder.blocks, start=1):
            x = block(x, mask)
            if i == depth:
                x = self.student_encoder.norm(x)
            if i in wanted:
                out[i] = _columns(x, nf, nc)
            if i >= wanted[-1]:
                break
        if -1 in layers:
            out[-1] = out[depth]
        return out


def _key_mask(widths: Tensor | None, nf: int, nc: int, device: torch.device) -> Tensor | None:
    """Boolean (B, 1, 1, 1 + nf*nc) mask, True where a key may be attended; None if no padding.

    Built where `widths` lives (the host, from the pipeline) and sent over without waiting, so a
    GPU is never stalled by the check.
    """
    if widths is None or bool((widths >= nc).all()):
        return None
    cols = torch.arange(nc, device=widths.device)
    valid = (cols[None, :] < widths[:, None]).repeat(1, nf)  # (B, nf*nc)
    valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)[:, None, None, :]
    return send(valid, device)


def send(t: Tensor, device: torch.device | str) -> Tensor:
    """A small host tensor to `device` without waiting for the GPU's queued work (a copy from
    pageable memory would first synchronise the stream)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _columns(x: Tensor, nf: int, nc: int) -> Tensor:
    """Drop the class token; per time column concatenate the frequency tokens in f order."""
    b, _, d = x.shape
    return x[:, 1:].reshape(b, nf, nc, d).permute(0, 2, 1, 3).reshape(b, nc, nf * d)


def check_state_dict(model: nn.Module, sd: Mapping[str, Tensor]) -> None:
    """Refuse a state dict that does not match exactly, naming the offending keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    misshapen = [
        f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", extra), ("misshapen", misshapen)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label} keys: {', '.join(keys[:5])}{more}")
    if problems:
        raise ModelError("checkpoint does not fit the MATPAC encoder: " + "; ".join(problems))
