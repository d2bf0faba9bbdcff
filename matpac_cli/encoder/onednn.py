"""The fast fp32 CPU path: the encoder's linear layers through oneDNN with pre-packed weights.

oneDNN's matmul, with the weights reordered once into its blocked layout, runs the encoder's
GEMMs on AVX-512 where MKL would take its AVX2 path (AMD EPYC: the encoder 2.0-2.2x faster, and
fc1's GELU fused in). Whether it is used on this CPU is measured once (`linear_choice`; the
vendor rule `cpu.choose()` where the two are close; `MATPAC_CPU_LINEAR=plain|onednn` overrides
it), and only where this torch has the ops and a small self-check agrees with `nn.Linear`. The numbers stay within float32
rounding of the plain layers (tests/encoder/test_onednn.py: 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matpac_cli.encoder.cpu import choose
from matpac_cli.encoder.vit import Attention, MatpacEncoder, Mlp

ROWS_HINT = 8  # chunks per batch the packed layout is tuned for (the CPU default batch)


class OneDnnLinear(nn.Module):
    """`nn.Linear` (optionally followed by exact GELU) with weights in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear, rows: int | None, gelu: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach().float().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.bias = linear.bias.detach().float().contiguous() if linear.bias is not None else None
        self.attr = "gelu" if gelu else "none"
        self.algorithm = "none" if gelu else ""  # "none": the erf GELU, as F.gelu's default
        self.out_features = linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.attr, [], self.algorithm)


def available() -> bool:
    """The oneDNN ops exist in this torch build and agree with `nn.Linear` on a small case."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        lin = nn.Linear(64, 96)
        x = torch.randn(3, 7, 64, generator=gen)
        with torch.inference_mode():
            fast = OneDnnLinear(lin, 21, gelu=True)(x)
            plain = F.gelu(lin(x))
        return bool(torch.allclose(fast, plain, atol=1e-5, rtol=1e-5))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def pack(encoder: MatpacEncoder, kind: str | None = None) -> bool:
    """Swap every block's linear layers for packed oneDNN ones (fp32 CPU encoders only) when
    `kind` (default: `choose()`) is "onednn" and the ops work here. Returns whether it did; the
    encoder is for inference from then on."""
    if next(encoder.parameters()).device.type != "cpu" or next(encoder.parameters()).dtype != torch.float32:
        return False
    if (kind or choose()) != "onednn" or not available():
        return False
    rows = rows_for(encoder.dims)
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.qkv = OneDnnLinear(module.qkv, rows)
            module.proj = OneDnnLinear(module.proj, rows)
        elif isinstance(module, Mlp):
            module.fc1 = OneDnnLinear(module.fc1, rows, gelu=True)
            module.act = nn.Identity()  # the GELU now runs inside fc1
            module.fc2 = OneDnnLinear(module.fc2, rows)
    encoder.linear_kind = "onednn"
    return True


def rows_for(dims) -> int:
    """Token rows of one CPU batch (`ROWS_HINT` chunks): what the packed layout is tuned for."""
    return ROWS_HINT * (1 + dims.n_freq * dims.grid_cols)
