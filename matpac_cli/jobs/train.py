"""The `train` job: clip embeddings of labelled files -> a head file and its report.

Writes `HEAD.safetensors` (see `trained_head`) and `HEAD.report.json` beside it, together (both
are written whole first, then moved into place). The report holds the classes and their counts,
the validation figure (accuracy, or mAP for multi-label), a confusion matrix (single-label) or
per-class AP (multi-label), the learning-rate search and the chosen rate and epoch, and the
protocol's constants; the head's metadata carries the headline figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from matpac_cli import __version__
from matpac_cli.checkpoints.trained_head import TrainedHead, to_bytes
from matpac_cli.errors import OutputError, UsageError
from matpac_cli.events import NoEvents, RunEvents
from matpac_cli.jobs.probe import MAX_BATCH, WEIGHT_DECAY, Probe, TrainConfig, train_probe
from matpac_cli.jobs.probe_eval import confusion, per_class_ap
from matpac_cli.jobs.train_data import Features, check_counts
from matpac_cli.outputs import naming


@dataclass
class Result:
    head: TrainedHead
    probe: Probe
    report: dict
    val_names: list[str]  # the files `probe.val_scores` belong to
    outputs: list[Path] = field(default_factory=list)


def check_outputs(out: Path, force: bool) -> None:
    """Refused before any model loads: a head that is not .safetensors, an unwritable path, or an
    existing head without --force."""
    from matpac_cli.outputs.writers import ensure_writable

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(
            f"out={out}: a trained head is written as .safetensors (e.g. mine.safetensors)", settings=("out",)
        )
    for path in (out, naming.head_report(out)):
        ensure_writable(path)
        if path.exists() and not force:
            raise OutputError(
                f"{path} exists; use `force` to replace it (with embeddings="
                f"{naming.head_embeddings(out)} to retrain on the embeddings it computed)",
                settings=("force", "embeddings"),
            )


def check_trainable(features: Features, config: TrainConfig) -> None:
    """The options, and enough files per class (after any that failed to embed), or one line."""
    config.check()
    check_counts(features.labelled)
    if config.folds is not None and config.folds > len(features.x):
        raise UsageError(f"folds={config.folds}: only {len(features.x)} labelled files", settings=("folds",))


def train(
    features: Features,
    config: TrainConfig,
    out: Path | None = None,
    argv: list[str] | None = None,
    events: RunEvents | None = None,
) -> Result:
    """Train a head on `features` and, with `out`, write it and its report; `events.warning`
    hears of a validation split too small to trust."""
    check_trainable(features, config)
    labelled = features.labelled
    y = labelled.targets()
    task, classes = labelled.task, labelled.classes
    probe = train_probe(features.x, y, task, len(classes), config)
    warnings = _missing_warnings(y, task, classes, probe) + _small_validation(y, task, probe, config)
    for text in warnings:
        (events or NoEvents()).warning(text)
    report = _report(features, config, probe, y, warnings, out, argv)
    head = TrainedHead(
        probe.weight,
        probe.bias,
        probe.mean,
        probe.scale,
        classes,
        task,
        features.encoder,
        features.layer,
        _headline(report),
    )
    result = Result(head, probe, report, [labelled.items[i].name for i in probe.val_index])
    if out is not None:
        from matpac_cli.outputs.writers import Unit

        with Unit() as unit:  # the head and its report replace the old ones together
            with unit.open(Path(out), "wb") as fh:
                fh.write(to_bytes(head))
            unit.json(naming.head_report(out), report)
        result.outputs = [Path(out), naming.head_report(out)]
    return result


def _missing_warnings(y: np.ndarray, task: str, classes: list[str], probe: Probe) -> list[str]:
    """Classes with no example in a validation split: their figure cannot be checked there."""
    out = []
    for k, split in enumerate(probe.splits):
        present = set(y[split.val].tolist()) if task == "single" else set(np.flatnonzero(y[split.val].sum(0)).tolist())
        missing = [c for i, c in enumerate(classes) if i not in present]
        if missing:
            where = "the validation split" if len(probe.splits) == 1 else f"validation fold {k + 1}"
            out.append(
                f"{len(missing)} class(es) missing from {where}: {', '.join(missing)} "
                "(too few files to hold some out; its figure does not cover them)"
            )
    return out


MIN_VAL_FILES = 10  # a validation split below this (or a class below MIN_VAL_PER_CLASS in it) is warned of
MIN_VAL_PER_CLASS = 2


def _small_validation(y: np.ndarray, task: str, probe: Probe, config: TrainConfig) -> list[str]:
    """A held-out split too small to trust: one file more or less right moves its figure by
    10% or more, and the learning rate and epoch are chosen on it. Cross-validation scores every
    file, so `--folds` is suggested (not with folds: it is already in use)."""
    if config.folds is not None:
        return []
    val = y[probe.splits[0].val]
    per_class = np.bincount(val, minlength=len(probe.bias)) if task == "single" else val.sum(0)
    few = int((per_class < MIN_VAL_PER_CLASS).sum())
    if len(val) >= MIN_VAL_FILES and not few:
        return []
    why = f" ({few} class(es) with fewer than {MIN_VAL_PER_CLASS})" if few else ""
    k = max(2, min(5, len(y) // 2))
    return [
        f"only {len(val)} validation file(s){why}: the validation figure and the learning rate and epoch "
        f"chosen on it rest on very few files; --folds {k} validates on every file"
    ]


def _report(
    features: Features,
    config: TrainConfig,
    probe: Probe,
    y: np.ndarray,
    warnings: list[str],
    out: Path | None,
    argv: list[str] | None,
) -> dict:
    labelled = features.labelled
    task, classes = labelled.task, labelled.classes
    counts = labelled.counts()
    val_y, scores = y[probe.val_index], probe.val_scores
    val_counts = np.bincount(val_y, minlength=len(classes)) if task == "single" else val_y.sum(0)
    report = {
        "matpac_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": argv,
        "head": str(out) if out is not None else None,
        "task": task,
        "activation": "softmax" if task == "single" else "sigmoid",
        "encoder": features.encoder,
        "layer": features.layer,
        "embed_dim": int(features.x.shape[1]),
        "embeddings": features.source,
        "files": len(y),
        "classes": [
            {"name": c, "files": counts[c], "validation_files": int(val_counts[i])} for i, c in enumerate(classes)
        ],
        "protocol": _protocol(config, task),
        "validation": _validation(config, probe),
        "search": probe.search,
        "chosen": {"lr": probe.lr, "epoch": probe.epoch},
        "metric": _metric(val_y, scores, task, config),
        "warnings": warnings,
    }
    if task == "single":
        report["confusion_matrix"] = {
            "rows": "true class",
            "columns": "predicted class",
            "classes": classes,
            "counts": confusion(val_y, scores.argmax(1), len(classes)).tolist(),
        }
    else:
        aps = per_class_ap(val_y, scores)
        report["per_class_ap"] = [{"name": c, "ap": a} for c, a in zip(classes, aps)]
    return _finite(report)


def _protocol(config: TrainConfig, task: str) -> dict:
    """How the head was trained, in words and numbers, so a report says what its figure means."""
    name = "accuracy" if task == "single" else "macro mAP"
    folds = config.folds is not None
    return {
        "features": "clip embedding, standardised with the training split's mean and std",
        "model": "one linear layer",
        "optimizer": "Adam",
        "weight_decay": WEIGHT_DECAY,
        "batch_size": f"min({MAX_BATCH}, training files)",
        "max_epochs": config.max_epochs,
        "patience": config.patience,
        "loss": "cross-entropy" if task == "single" else "binary cross-entropy",
        "selection": f"validation {name}{' of the pooled out-of-fold scores' if folds else ''} "
        "(ties: lower validation loss)",
        "lr_grid": list(config.lrs),
        "seed": config.seed,
    }


def _validation(config: TrainConfig, probe: Probe) -> dict:
    """Which files validated the head: the folds (with each fold's figure) or the one split."""
    if config.folds is not None:
        return {"method": "folds", "folds": config.folds, "per_fold": probe.folds}
    return {
        "method": "split",
        "fraction": config.val,
        "train_files": len(probe.splits[0].train),
        "validation_files": len(probe.splits[0].val),
    }


def _metric(val_y: np.ndarray, scores: np.ndarray, task: str, config: TrainConfig) -> dict:
    """The validation figure, from the very scores the per-class APs (or the confusion matrix)
    are read from: with folds, every file's out-of-fold score pooled, never a mean of the folds'
    own figures (which differs from the per-class APs printed beside it)."""
    over = (
        f"out-of-fold scores of all {len(val_y)} files, pooled over the {config.folds} folds"
        if config.folds is not None
        else f"the validation split ({len(val_y)} files)"
    )
    if task == "single":
        return {
            "name": "accuracy",
            "value": float((scores.argmax(1) == val_y).mean()) if len(val_y) else math.nan,
            "definition": "files whose highest-scoring class is their label, out of all",
            "over": over,
        }
    aps = [a for a in per_class_ap(val_y, scores) if not math.isnan(a)]
    return {
        "name": "mAP",
        "value": float(np.mean(aps)) if aps else math.nan,
        "definition": f"macro: the mean of the {len(aps)} per-class APs (classes with a positive file)",
        "classes_averaged": len(aps),
        "over": over,
    }


def _headline(report: dict) -> dict:
    v = report["validation"]
    return {
        "metric": report["metric"]["name"],
        "value": report["metric"]["value"],
        "validation": f"{v['folds']} folds" if v["method"] == "folds" else f"{v['fraction']:g} split",
        "lr": report["chosen"]["lr"],
        "epoch": report["chosen"]["epoch"],
        "files": report["files"],
        "seed": report["protocol"]["seed"],
    }


def _finite(obj):
    """NaN (a figure with nothing to measure) becomes null, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
