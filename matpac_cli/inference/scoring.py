"""The one scoring rule of every classifier head: features -> probabilities.

Every kind of head is a linear layer over (optionally standardised) clip features followed by a
softmax (single-label) or a sigmoid per class (multi-label): the authors' probes, the AudioSet
head (its eval-mode BatchNorm is a standardisation), the heads `matpac train` writes, and the
validation scores `matpac train` reports. They all go through `probabilities`, so the figures a
training run prints and the scores `matpac tag` later writes for the same embeddings are the same
numbers, computed the same way, and cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from matpac_cli.errors import ModelError

ACTIVATIONS = ("sigmoid", "softmax")


def probabilities(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    activation: str,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """(N, D) features -> (N, C) probabilities, in float64 whatever the inputs' precision.

    `weight` is (C, D) and `bias` (C,); `mean` and `scale` (D,), when given, standardise the
    features first ((x - mean) / scale), applied here once and nowhere else. `activation` is
    `softmax` (the classes of a row sum to 1) or `sigmoid` (each class on its own)."""
    if activation not in ACTIVATIONS:
        raise ModelError(f"unknown head activation {activation!r}: give sigmoid or softmax")
    z = np.asarray(x, dtype=np.float64)
    if mean is not None:
        z = (z - mean) / scale
    logits = z @ np.asarray(weight, dtype=np.float64).T + bias
    if activation == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    with np.errstate(over="ignore"):  # a logit below about -709: exp overflows to inf, the probability is 0
        return 1.0 / (1.0 + np.exp(-logits))
