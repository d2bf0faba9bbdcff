"""The file a `matpac train` run writes: one linear probe and its feature scaler, self-describing.

A `.safetensors` file (tensors only, never code) holding exactly four float32 tensors:
`probe.weight` (C, D), `probe.bias` (C,), and the training split's feature statistics `mean` (D,)
and `scale` (D,). Scores are activation(((x - mean) / scale) @ weight.T + bias): the scaler is
kept apart from the weight, as the evaluation protocol has it, and applied once when scoring.
This module keeps the file (write, read, check); scoring is `inference.scoring.probabilities`,
the rule every head shares (`inference.heads.Head.from_trained` hands it these weights).

Its metadata (safetensors keeps a str -> str map in the header) says everything `matpac tag`
needs without `--labels`: `format` (`matpac-trained-head`), `version`, `classes` (JSON list, index
order), `activation` (softmax for single-label, sigmoid for multi-label), `task`, `layer`,
`encoder` (JSON: name, source, sha256 and, for a local checkpoint, its absolute path) and
`metrics` (JSON: the validation figures of the run that made it).

Which encoder a head belongs to is part of the head: a head is refused on another encoder,
compared by registry name when both are registry models (a Hub copy and the release file of one
model may differ in bytes), else by the checkpoint's sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matpac_cli.errors import ModelError, UsageError

FORMAT = "matpac-trained-head"
VERSION = "1"
TENSORS = ("probe.weight", "probe.bias", "mean", "scale")
ACTIVATIONS = {"single": "softmax", "multi": "sigmoid"}


@dataclass
class TrainedHead:
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,) the training split's feature mean
    scale: np.ndarray  # (D,) and standard deviation (1 where a feature is constant)
    classes: list[str]
    task: str  # single | multi
    encoder: dict  # name, source, sha256 (+ path for a local checkpoint)
    layer: int = 12
    metrics: dict = field(default_factory=dict)

    @property
    def activation(self) -> str:
        return ACTIVATIONS[self.task]


def to_bytes(head: TrainedHead) -> bytes:
    """The `.safetensors` file of a head, as bytes (written atomically by the caller)."""
    from safetensors.numpy import save

    tensors = {"probe.weight": head.weight, "probe.bias": head.bias, "mean": head.mean, "scale": head.scale}
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "classes": json.dumps(head.classes),
        "activation": head.activation,
        "task": head.task,
        "layer": str(head.layer),
        "encoder": json.dumps(head.encoder),
        "metrics": json.dumps(head.metrics),
    }
    return save(tensors, metadata=metadata)


def read_metadata(path: Path) -> dict | None:
    """The header metadata of a `.safetensors` file if `matpac train` wrote it, else None
    (reads the header only)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
    except Exception:  # noqa: BLE001 - not a readable safetensors file: not a trained head either
        return None
    return meta if meta.get("format") == FORMAT else None


def is_trained_head(path: Path) -> bool:
    return read_metadata(path) is not None


def load_head(path: Path) -> TrainedHead:
    """Read and check a trained head; anything inconsistent is one ModelError naming the file."""
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    if meta is None:
        raise ModelError(f"{path}: not a head written by `matpac train`")
    if meta.get("version") != VERSION:
        raise ModelError(f"{path}: trained-head format version {meta.get('version')!r}; this matpac reads {VERSION}")
    try:
        tensors = load_file(str(path))
        classes = _json(meta, "classes", list, path)
        encoder = _encoder(meta, path)
        metrics = _json(meta, "metrics", dict, path, "{}")
        task, layer = meta["task"], int(meta["layer"])
    except (KeyError, ValueError, OSError) as exc:
        raise ModelError(f"{path}: damaged trained head ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors' own errors (a header that lies about its tensors)
        raise ModelError(f"{path}: damaged trained head ({type(exc).__name__})") from None
    if not all(isinstance(c, str) for c in classes):
        raise ModelError(f"{path}: damaged trained head (classes is not a list of names)")
    if sorted(tensors) != sorted(TENSORS):
        raise ModelError(f"{path}: expected tensors {', '.join(TENSORS)}, found {', '.join(sorted(tensors))}")
    w, b, mean, scale = (tensors[k].astype(np.float64) for k in TENSORS)
    n_classes, dim = w.shape if w.ndim == 2 else (0, 0)
    if (
        task not in ACTIVATIONS
        or meta.get("activation") != ACTIVATIONS[task]
        or b.shape != (n_classes,)
        or mean.shape != (dim,)
        or scale.shape != (dim,)
        or len(classes) != n_classes
        or n_classes == 0
    ):
        raise ModelError(
            f"{path}: inconsistent trained head (weight {w.shape}, bias {b.shape}, "
            f"{len(classes)} class names, task {task!r})"
        )
    if not all(np.isfinite(t).all() for t in (w, b, mean, scale)) or (scale <= 0).any():
        raise ModelError(f"{path}: trained head holds NaN, infinite or non-positive scale values")
    return TrainedHead(w, b, mean, scale, [str(c) for c in classes], task, encoder, layer, metrics)


def _json(meta: dict, key: str, kind: type, path: Path, default: str | None = None):
    """One JSON value of the header metadata, of the type matpac writes there."""
    text = meta.get(key, default)
    if text is None:
        raise ModelError(f"{path}: damaged trained head (no {key} record)")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ModelError(f"{path}: damaged trained head ({key} is not JSON)") from None
    if not isinstance(value, kind):
        raise ModelError(f"{path}: damaged trained head ({key} is not a JSON {kind.__name__})")
    return value


def _encoder(meta: dict, path: Path) -> dict:
    """The `encoder` record: an object whose name, source, sha256 and path are strings."""
    encoder = _json(meta, "encoder", dict, path)
    if any(
        encoder.get(k) is not None and not isinstance(encoder[k], str) for k in ("name", "source", "sha256", "path")
    ):
        raise ModelError(f"{path}: damaged trained head (encoder record of the wrong types)")
    return encoder


def encoder_label(encoder: dict) -> str:
    return f"{encoder.get('name')} (sha256 {str(encoder.get('sha256'))[:12]})"


def default_encoder(path: Path) -> str | None:
    """The model a trained head runs on when the user names none: the one it was trained on
    (a local checkpoint by its absolute path, where it still exists)."""
    meta = read_metadata(path)
    if meta is None:
        return None
    encoder = _encoder(meta, path)
    local = encoder.get("path")
    if encoder.get("source") == "file" and local and Path(local).is_file():
        return str(local)
    return str(encoder.get("name"))


def check_encoder(path: Path, encoder: dict, name: str, sha256: str) -> None:
    """Refuse to run a trained head on another encoder than the one it was trained on."""
    from matpac_cli.checkpoints.registry import load_registry

    models = load_registry().models
    if encoder.get("name") in models and name in models:
        same = encoder.get("name") == name
    else:
        same = encoder.get("sha256") == sha256
    if not same:
        raise UsageError(
            f"head {path} was trained on encoder {encoder_label(encoder)}, but this run uses "
            f"{name} (sha256 {sha256[:12]}); use model={encoder.get('path') or encoder.get('name')} (or MODEL:HEAD), "
            "or train a head on this encoder",
            settings=("model",),
        )


def check_planned(path: Path, target: str) -> None:
    """Before anything loads: a registry model named for a head trained on another registry
    model is refused at once (files and hf: models are compared by sha256 once loaded)."""
    from matpac_cli.checkpoints.registry import load_registry

    meta = read_metadata(path)
    models = load_registry().models
    if meta is None or target not in models:
        return
    trained_on = _encoder(meta, path)
    if trained_on.get("name") in models and trained_on.get("name") != target:
        raise UsageError(
            f"head {path} was trained on encoder {encoder_label(trained_on)}, but this run "
            f"uses {target}; use model={trained_on.get('name')} (or MODEL:HEAD), or train a "
            "head on this encoder",
            settings=("model",),
        )
