"""How a linear probe is judged: which labelled files validate it and the figures read from its scores.

The splits are stratified (each class, or for multi-label each file's rarest label, in
proportion), so a small class is never left out of validation or out of training. The figures
are the ones the report prints and the learning-rate search selects on: accuracy for
single-label, macro mAP (non-interpolated AP per class, tied scores as one threshold) for
multi-label, per-class APs and the confusion matrix. Training itself lives in `jobs.probe`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matpac_cli.errors import UsageError


@dataclass
class Split:
    """The indices of one split's training and validation files."""

    train: np.ndarray
    val: np.ndarray


# ---------------------------------------------------------------- splits


def strata(y: np.ndarray, task: str) -> np.ndarray:
    """The stratum of each file: its class, or for multi-label its rarest label."""
    if task == "single":
        return np.asarray(y)
    counts = y.sum(axis=0)
    rarity = np.where(y > 0, counts[None, :], np.inf)
    return rarity.argmin(axis=1)


def stratified_split(groups: np.ndarray, fraction: float, seed: int) -> Split:
    """About `fraction` of the files to validation, each stratum in proportion (largest
    remainder), never a stratum's last training file; the rest to training."""
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(fraction * len(groups))))
    labels, counts = np.unique(groups, return_counts=True)
    want = fraction * counts
    take = np.minimum(np.floor(want).astype(int), counts - 1)
    for i in np.argsort(-(want - np.floor(want)), kind="stable"):
        if take.sum() >= n_val:
            break
        if take[i] < counts[i] - 1:
            take[i] += 1
    val = []
    for label, k in zip(labels, take):
        members = rng.permutation(np.flatnonzero(groups == label))
        val.extend(members[:k].tolist())
    val_idx = np.array(sorted(val), dtype=int)
    return Split(np.setdiff1d(np.arange(len(groups)), val_idx), val_idx)


def stratified_folds(groups: np.ndarray, k: int, seed: int) -> list[Split]:
    """K folds, each stratum dealt round the folds in turn (continuing where the last ended)."""
    if k > len(groups):
        raise UsageError(f"folds={k}: only {len(groups)} labelled files", settings=("folds",))
    rng = np.random.default_rng(seed)
    fold = np.empty(len(groups), dtype=int)
    start = 0
    for label in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == label))
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return [Split(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


# ---------------------------------------------------------------- metrics


def average_precision(truth: np.ndarray, score: np.ndarray) -> float:
    """Non-interpolated AP: sum over score thresholds of (recall step) x precision, with tied
    scores taken as one threshold. NaN when there is no positive."""
    truth = np.asarray(truth) > 0
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    s, t = np.asarray(score, dtype=np.float64)[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last index of each tie group
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0, tp]) / positives
    return float((recall_step * precision).sum())


def per_class_ap(y: np.ndarray, scores: np.ndarray) -> list[float]:
    return [average_precision(y[:, c], scores[:, c]) for c in range(y.shape[1])]


def mean_ap(y: np.ndarray, scores: np.ndarray) -> float:
    aps = [a for a in per_class_ap(y, scores) if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def confusion(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: the true class; columns: the predicted one."""
    out = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(out, (np.asarray(y), np.asarray(predicted)), 1)
    return out


def metric(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    if task == "single":
        return float((scores.argmax(axis=1) == y).mean())
    return mean_ap(y, scores)
