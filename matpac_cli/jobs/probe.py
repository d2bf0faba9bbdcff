"""A linear probe on clip embeddings, trained as the MATPAC papers evaluate (EVAR's linear protocol).

Protocol, for each split of the labelled files into training and validation:
- standardise the features with the training split's mean and standard deviation (a constant
  feature gets scale 1); the statistics are kept, rounded to float32, in the head;
- one linear layer (weight and bias drawn as torch's nn.Linear does, U(-1/sqrt(D), 1/sqrt(D)));
- Adam, weight decay 1e-8, mini-batches of min(200, n) shuffled every epoch;
- single-label: softmax + cross-entropy, selection on validation accuracy; multi-label: a sigmoid
  per class + binary cross-entropy, selection on validation macro mAP (the mean of the per-class
  APs, over the classes that have a positive validation example);
- up to 200 epochs, stopping after 20 without improvement, and the best epoch's weights restored;
  an epoch improves when its metric is higher, or equal with a lower validation loss (small
  validation sets often sit at 100% accuracy for many epochs);
- the learning rate is chosen on validation from a small grid (1e-4, 3e-4, 1e-3, 3e-3).

With `folds`, each fold is the validation split once; one learning rate is chosen for all folds
on the out-of-fold scores pooled (every file scored by the fold that held it out: the figure the
report gives, beside per-class APs read from the same scores), and the head is then trained on
every file with that rate for the median of the folds' best epochs. Everything runs on the CPU in float32 and is deterministic for one seed.
The splits and the figures (accuracy, AP, confusion) live in `jobs.probe_eval`; this module trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from matpac_cli.checkpoints.trained_head import ACTIVATIONS
from matpac_cli.encoder.cpu import one_torch_thread
from matpac_cli.errors import UsageError
from matpac_cli.inference.scoring import probabilities
from matpac_cli.jobs.probe_eval import Split, metric, strata, stratified_folds, stratified_split

LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
MAX_EPOCHS = 200
PATIENCE = 20
WEIGHT_DECAY = 1e-8
MAX_BATCH = 200


@dataclass(frozen=True)
class TrainConfig:
    task: str = "auto"  # auto | single | multi (resolved when the labels are read)
    val: float = 0.1
    folds: int | None = None
    seed: int = 0
    lrs: tuple[float, ...] = LR_GRID
    max_epochs: int = MAX_EPOCHS
    patience: int = PATIENCE

    def check(self) -> None:
        if self.folds is not None and self.folds < 2:
            raise UsageError(f"folds={self.folds}: give 2 or more", settings=("folds",))
        if self.folds is None and not 0.0 < self.val < 1.0:
            raise UsageError(
                f"val={self.val}: give the validation fraction, between 0 and 1 (e.g. 0.1)", settings=("val",)
            )
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise UsageError("`lrs`: give positive learning rates, e.g. 1e-4,1e-3", settings=("lrs",))


@dataclass
class Fit:
    """One training run: the restored best epoch's weights and how it was reached."""

    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray
    lr: float
    epoch: int  # best epoch, from 1
    epochs_run: int
    metric: float  # validation accuracy or mAP at the best epoch
    loss: float


# ---------------------------------------------------------------- scaler


def fit_scaler(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (population, as StandardScaler), in float32."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float64) - mean) / scale).astype(np.float32)


# ---------------------------------------------------------------- training


def fit_linear(
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    task: str,
    n_classes: int,
    lr: float,
    seed: int,
    max_epochs: int = MAX_EPOCHS,
    patience: int | None = PATIENCE,
) -> Fit:
    """Train one linear layer on standardised features; `patience` None trains `max_epochs`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(z_train, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64 if task == "single" else np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(z_val, dtype=np.float32))
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.int64 if task == "single" else np.float32))
    bound = 1.0 / np.sqrt(xt.shape[1])
    weight = ((torch.rand(n_classes, xt.shape[1], generator=gen) * 2 - 1) * bound).requires_grad_()
    bias = ((torch.rand(n_classes, generator=gen) * 2 - 1) * bound).requires_grad_()
    loss_fn = (
        torch.nn.functional.cross_entropy if task == "single" else torch.nn.functional.binary_cross_entropy_with_logits
    )
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=WEIGHT_DECAY)
    batch = min(MAX_BATCH, len(xt))
    best: Fit | None = None
    since = 0
    for epoch in range(1, max_epochs + 1):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(xt[idx] @ weight.T + bias, yt[idx]).backward()
            opt.step()
        with torch.no_grad():
            logits = xv @ weight.T + bias
            val_loss = float(loss_fn(logits, yv)) if len(xv) else 0.0
            probs = (torch.softmax(logits, 1) if task == "single" else torch.sigmoid(logits)).double().numpy()
        value = metric(np.asarray(y_val), probs, task) if len(xv) else float("nan")
        if best is None or _better(value, val_loss, best) or patience is None:
            best = Fit(weight.detach().numpy().copy(), bias.detach().numpy().copy(), lr, epoch, epoch, value, val_loss)
            since = 0
        else:
            since += 1
        best.epochs_run = epoch
        if patience is not None and since >= patience:
            break
    return best


def _better(value: float, loss: float, best: Fit) -> bool:
    v, b = (-1.0 if np.isnan(value) else value), (-1.0 if np.isnan(best.metric) else best.metric)
    return v > b or (v == b and loss < best.loss)


def grid(
    x: np.ndarray, y: np.ndarray, split: Split, task: str, n_classes: int, config: TrainConfig, seed: int
) -> tuple[list[Fit], tuple[np.ndarray, np.ndarray]]:
    """One fit per learning rate on one split, on features standardised with its training part."""
    mean, scale = fit_scaler(x[split.train])
    z_train, z_val = standardise(x[split.train], mean, scale), standardise(x[split.val], mean, scale)
    fits = [
        fit_linear(
            z_train, y[split.train], z_val, y[split.val], task, n_classes, lr, seed, config.max_epochs, config.patience
        )
        for lr in config.lrs
    ]
    return fits, (mean, scale)


def pick(fits: list[Fit]) -> Fit:
    """The best fit by validation metric (then loss); the first of the grid on a full tie."""
    best = fits[0]
    for f in fits[1:]:
        if _better(f.metric, f.loss, best):
            best = f
    return best


@dataclass
class Probe:
    """A trained probe with what the report needs."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    lr: float
    epoch: int
    search: list[dict] = field(default_factory=list)  # per learning rate (and fold)
    val_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    val_scores: np.ndarray | None = None  # the head's probabilities on val_index (out-of-fold with folds)
    folds: list[dict] = field(default_factory=list)
    splits: list[Split] = field(default_factory=list)  # the validation split, or one per fold


def scores_of(x: np.ndarray, weight, bias, mean, scale, task: str) -> np.ndarray:
    """The head's probabilities in float64: the very function `matpac tag` scores a head with."""
    return probabilities(x, weight, bias, ACTIVATIONS[task], mean, scale)


def train_probe(x: np.ndarray, y: np.ndarray, task: str, n_classes: int, config: TrainConfig) -> Probe:
    """Split (or fold), search the learning rate, and return the head with its validation scores."""
    with one_torch_thread():  # small matrices: threads cost more than they save (10x with 2 threads)
        return _train_probe(x, y, task, n_classes, config)


def _train_probe(x: np.ndarray, y: np.ndarray, task: str, n_classes: int, config: TrainConfig) -> Probe:
    groups = strata(y, task)
    if config.folds is None:
        split = stratified_split(groups, config.val, config.seed)
        fits, (mean, scale) = grid(x, y, split, task, n_classes, config, config.seed)
        best = pick(fits)
        search = [
            {"lr": f.lr, "metric": f.metric, "loss": f.loss, "best_epoch": f.epoch, "epochs_run": f.epochs_run}
            for f in fits
        ]
        probe = Probe(best.weight, best.bias, mean, scale, best.lr, best.epoch, search, split.val, splits=[split])
        probe.val_scores = scores_of(x[split.val], best.weight, best.bias, mean, scale, task)
        return probe
    return _cross_validate(x, y, groups, task, n_classes, config)


def _cross_validate(x, y, groups, task, n_classes, config: TrainConfig) -> Probe:
    splits = stratified_folds(groups, config.folds, config.seed)
    runs = [grid(x, y, s, task, n_classes, config, config.seed + i) for i, s in enumerate(splits)]
    pooled = [_out_of_fold(x, splits, runs, j, task, n_classes) for j in range(len(config.lrs))]
    by_lr = [
        Fit(None, None, lr, 0, 0, metric(y, pooled[j], task), _mean([f[j].loss for f, _ in runs]))
        for j, lr in enumerate(config.lrs)
    ]
    j = by_lr.index(pick(by_lr))
    epochs = int(np.median([fits[j].epoch for fits, _ in runs]))
    out_of_fold = pooled[j]
    mean, scale = fit_scaler(x)
    z = standardise(x, mean, scale)
    final = fit_linear(z, y, z[:0], y[:0], task, n_classes, config.lrs[j], config.seed, epochs, None)
    search = [
        {
            "lr": lr,
            "metric": by_lr[i].metric,
            "loss": by_lr[i].loss,
            "fold_metrics": [f[i].metric for f, _ in runs],
            "best_epochs": [f[i].epoch for f, _ in runs],
        }
        for i, lr in enumerate(config.lrs)
    ]
    folds = [
        {
            "fold": i + 1,
            "n_train": len(s.train),
            "n_val": len(s.val),
            "metric": runs[i][0][j].metric,
            "best_epoch": runs[i][0][j].epoch,
        }
        for i, s in enumerate(splits)
    ]
    return Probe(
        final.weight,
        final.bias,
        mean,
        scale,
        config.lrs[j],
        epochs,
        search,
        np.arange(len(x)),
        out_of_fold,
        folds,
        splits,
    )


def _out_of_fold(x, splits: list[Split], runs, j: int, task: str, n_classes: int) -> np.ndarray:
    """Every file scored by the fold that held it out, at the `j`th learning rate: the figure of
    a learning rate is computed on these pooled scores, the same scores the per-class APs and
    the confusion matrix are read from, so the report has one definition of each figure."""
    out = np.zeros((len(x), n_classes))
    for s, (fits, (m, sc)) in zip(splits, runs):
        out[s.val] = scores_of(x[s.val], fits[j].weight, fits[j].bias, m, sc, task)
    return out


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")
