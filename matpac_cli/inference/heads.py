"""Classifier heads on top of the clip embedding (shared spec section 5).

Two kinds: the authors' linear probes (one `<task>.pth` per task in the probe zip, or a local
file) and the AudioSet head carried by the fine-tuned checkpoint. Both are plain functions of
the layer-12 clip embedding, so every head of one encoder shares a single encoder pass.
This module builds and resolves heads; fetching and reading the probe zip is `inference.probe_zip`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matpac_cli.checkpoints.registry import HeadSpec, load_registry, read_labels
from matpac_cli.checkpoints.resolve import has_audioset_head, split_head_keys  # noqa: F401 - re-exported for callers
from matpac_cli.checkpoints.trained_head import TrainedHead, is_trained_head
from matpac_cli.errors import ModelError, UsageError
from matpac_cli.inference.probe_zip import HEAD_SUFFIXES, find_probe, probes_dir
from matpac_cli.inference.scoring import probabilities

BN_EPS = 1e-5


@dataclass
class Head:
    """A ready head: class names in index order and a numpy scoring function.

    `tag_ids` are the dataset's own tags as the label file has them (`genre---trance`,
    `mood/theme---happy`); `labels` are the plain names every output shows (`trance`, `happy`).
    `dataset`: the tags are a registry dataset's (the authors' heads), so `plain_labels` applies;
    a head's own class names (from `matpac train`, or --labels) are shown exactly as given.
    """

    name: str
    tag_ids: list[str]
    activation: str  # sigmoid | softmax
    weight: np.ndarray  # (C, in)
    bias: np.ndarray  # (C,)
    kind: str = "probe"  # probe | audioset
    mean: np.ndarray | None = None  # feature standardisation (probe files that carry it)
    scale: np.ndarray | None = None
    source: str = ""
    confirmed_order: bool = True
    sha256: str = ""  # of the file the weights were read from
    dataset: bool = False
    labels: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.labels = plain_labels(self.tag_ids) if self.dataset else list(self.tag_ids)

    @property
    def standardised(self) -> bool:
        return self.mean is not None

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """(N, n_freq * width) clip embeddings -> (N, C) probabilities, in float64.

        The AudioSet head first takes the mean of the frequency tokens (its eval-mode BatchNorm is
        the standardisation); the rest is the one scoring rule every head shares."""
        x = np.asarray(emb, dtype=np.float64)
        if self.kind == "audioset":
            x = x.reshape(len(x), -1, self.weight.shape[1]).mean(axis=1)
        return probabilities(x, self.weight, self.bias, self.activation, self.mean, self.scale)

    @classmethod
    def from_trained(cls, trained: TrainedHead, name: str = "trained", source: str = "", sha256: str = "") -> Head:
        """A head written by `matpac train`, ready to score: its weights and scaler handed over
        as they are, so it scores exactly as the training run's validation did."""
        return cls(
            name=name,
            tag_ids=trained.classes,
            activation=trained.activation,
            weight=trained.weight,
            bias=trained.bias,
            mean=trained.mean,
            scale=trained.scale,
            source=source,
            sha256=sha256,
        )


def plain_labels(tag_ids: list[str]) -> list[str]:
    """The one display rule for the registry's dataset labels (never a user's own class names):
    MTG-Jamendo's `category---name` tags -> `name`, and underscores read as spaces
    (`Acoustic_guitar` -> `Acoustic guitar`); the `tag_id` keeps the dataset's id exactly. A plain name that would appear twice in one head keeps its full tag,
    so names stay unique."""
    plain = [t.rsplit("---", 1)[-1].replace("_", " ").strip() or t for t in tag_ids]
    seen: dict[str, int] = {}
    for name in plain:
        seen[name] = seen.get(name, 0) + 1
    return [p if seen[p] == 1 else t for p, t in zip(plain, tag_ids)]


def audioset_head(state: dict, spec: HeadSpec | None, source: str) -> Head:
    """Build the AudioSet head from a checkpoint's `head_norm.*` and `head.*` tensors."""
    w = state["head.weight"].double().numpy()
    b = state["head.bias"].double().numpy()
    rm = state["head_norm.running_mean"].double().numpy()
    rv = state["head_norm.running_var"].double().numpy()
    dataset = spec is not None and len(spec.labels()) == len(w)
    labels = spec.labels() if dataset else _numbered(len(w))
    return Head(
        name="audioset",
        tag_ids=labels,
        activation="sigmoid",
        weight=w,
        bias=b,
        kind="audioset",
        mean=rm,
        scale=np.sqrt(rv + BN_EPS),
        source=source,
        dataset=dataset,
    )


def load_probe(path: Path, spec: HeadSpec | None, in_dim: int, labels: list[str] | None = None) -> Head:
    """Read a probe file: exactly one (C, in_dim) weight and one (C,) bias, maybe mean/scale."""
    tensors = _flat_tensors(path)
    mats = {k: v for k, v in tensors.items() if v.ndim == 2}
    if len(mats) != 1 or next(iter(mats.values())).shape[1] != in_dim:
        raise ModelError(f"{path}: expected one ({in_dim}-wide) probe weight, found keys {_describe(tensors)}")
    wkey, weight = next(iter(mats.items()))
    classes = weight.shape[0]
    bias_keys = [k for k, v in tensors.items() if v.ndim == 1 and v.shape[0] == classes and "bias" in k.lower()]
    if len(bias_keys) != 1:
        raise ModelError(f"{path}: expected one ({classes},) bias, found keys {_describe(tensors)}")
    stats = {k: v for k, v in tensors.items() if v.ndim == 1 and v.shape[0] == in_dim}
    mean, scale = _standardisation(stats, path)
    extra = set(tensors) - {wkey, bias_keys[0]} - set(stats)
    extra = {k for k in extra if tensors[k].numel() > 1}
    if extra:
        raise ModelError(f"{path}: unexpected tensors in probe file: {', '.join(sorted(extra))}")
    name = spec.name if spec else path.stem
    dataset = labels is None and spec is not None
    if labels is None:
        labels = spec.labels() if spec else _numbered(classes)
    if len(labels) != classes:
        raise ModelError(f"{path}: head has {classes} classes but its label list has {len(labels)}")
    return Head(
        name=name,
        tag_ids=labels,
        activation=spec.activation if spec else "sigmoid",
        weight=weight.double().numpy(),
        bias=tensors[bias_keys[0]].double().numpy(),
        mean=mean,
        scale=scale,
        source=str(path),
        sha256=_sha256(path),
        confirmed_order=spec.confirmed_order if spec else False,
        dataset=dataset,
    )


def _flat_tensors(path: Path) -> dict:
    """Every tensor of a probe file by dotted key, read safely; NaN or infinite values are refused."""
    import torch

    from matpac_cli.checkpoints.resolve import check_finite, read_weights_file

    raw = read_weights_file(path, "probe file", fix="a plain dict of tensors (the probe's weight and bias)")
    out: dict = {}

    def walk(obj: object, prefix: str) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix.rstrip(".")] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}.")

    walk(raw, "")
    if not out:
        raise ModelError(f"{path}: no tensors found in probe file")
    check_finite(out, f"probe file {path}")
    return out


def _standardisation(stats: dict, path: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not stats:
        return None, None

    def kind(key: str) -> str:  # last key component, sklearn's trailing underscore dropped
        return key.lower().rsplit(".", 1)[-1].rstrip("_")

    mean = [v for k, v in stats.items() if kind(k) in ("mean", "mu", "avg")]
    scale = [v for k, v in stats.items() if kind(k) in ("scale", "std", "sigma")]
    var = [v for k, v in stats.items() if kind(k) in ("var", "variance")]
    if len(mean) == 1 and (len(scale) == 1 or len(var) == 1):
        s = scale[0].double().numpy() if scale else np.sqrt(var[0].double().numpy())
        return mean[0].double().numpy(), s
    raise ModelError(f"{path}: feature statistics not understood: {', '.join(stats)}")


def _describe(tensors: dict) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(tensors.items())[:8])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbered(n: int) -> list[str]:
    return [f"class_{i}" for i in range(n)]


def resolve_head(
    name: str,
    family: str | None,
    in_dim: int,
    progress: bool = False,
    labels_file: Path | None = None,
    encoder: tuple[str, str] | None = None,
) -> Head:
    """A registry head (name or alias) for an encoder family, or a local probe file.

    `encoder` (name, sha256) is the model the head will run on; a head from `matpac train` is
    refused on any other than its own."""
    registry = load_registry()
    path = Path(name).expanduser()
    if path.suffix in HEAD_SUFFIXES and path.is_file():
        if is_trained_head(path):  # classes, activation and scaler are in its metadata
            return load_trained(path, in_dim, encoder)
        spec = spec_for_stem(path.stem)
        if spec is not None:  # a known head: its labels come from the registry
            return load_probe(path, spec, in_dim)
        if labels_file is None:
            raise UsageError(
                f"{name}: unknown head name {path.stem!r}; give its labels with labels_file=FILE",
                settings=("labels_file",),
            )
        return load_probe(path, None, in_dim, read_labels(labels_file))
    if path.suffix in HEAD_SUFFIXES and path.is_dir():
        raise UsageError(f"head {name} is a folder, not a probe file")
    if path.suffix in HEAD_SUFFIXES:
        raise UsageError(f"head file {name} does not exist")
    spec = registry.head(name)
    if spec.builtin:
        raise UsageError(f"head {spec.name} comes with model {spec.builtin}, not the probe zip")
    if family is None:
        raise UsageError(probe_encoder_unknown(spec, encoder[0] if encoder else None), settings=("model", "heads"))
    probe = find_probe(probes_dir(progress), family, spec.task or spec.name)
    head = load_probe(probe, spec, in_dim)
    head.source = f"probes:{family}/{probe.name}"
    return head


def probe_encoder_unknown(spec: HeadSpec, model: str | None) -> str:
    """Why a registry probe cannot run on `model`, and what to do instead."""
    what = f"model {model}" if model else "this model"
    return (
        f"head {spec.name} is the authors' probe for the MATPAC++ encoders, and {what} is not one of them "
        "as far as matpac can tell (a checkpoint file is known by the sha256 recorded when matpac "
        "downloaded it, not by its name); use model=matpac-plus-music or matpac-plus (offline: "
        "`matpac models download matpac-plus-music probes` on a connected machine, then copy its "
        f"HF_HOME here), or heads=FILE with a probe file ({spec.task or spec.name}.pth from the probe zip)"
    )


def load_trained(path: Path, in_dim: int, encoder: tuple[str, str] | None = None) -> Head:
    """A head written by `matpac train`, checked against the encoder it will run on."""
    from matpac_cli.checkpoints.trained_head import check_encoder, load_head

    trained = load_head(path)
    if encoder is not None:
        check_encoder(path, trained.encoder, *encoder)
    if trained.weight.shape[1] != in_dim:
        raise ModelError(f"{path}: head takes {trained.weight.shape[1]}-d embeddings, the encoder gives {in_dim}")
    return Head.from_trained(trained, path.stem, str(path), _sha256(path))


def spec_for_stem(stem: str) -> HeadSpec | None:
    registry = load_registry()
    try:
        return registry.head(stem)
    except UsageError:
        for spec in registry.heads.values():
            if spec.task == stem:
                return spec
    return None
