"""What `matpac train` learns from: labelled files, and their clip embeddings.

LABELS is a folder whose subfolders are the class names (every audio file under `dog/` is a
dog; one label per file), or a CSV with columns `path,label`, one row per (file, label): a path on
several rows has several labels, and relative paths are taken from the CSV's folder. `--task
auto` makes the task multi-label when any file has two labels. A file named twice (`a.wav`,
`./a.wav`, a symlink) is one file, with the union of its labels.

Embeddings come from the embedding pipeline (`jobs.embed.embed` into a cache beside the head,
so an interrupted run resumes and a re-run reuses them) or from an earlier `matpac embed`
output, read through `readers.read_embeddings` and matched by path: the path as the index
names it, or the same real file.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.pipeline.discovery import AUDIO_EXTENSIONS, Item, discover


@dataclass
class Labelled:
    source: Path
    items: list[Item]  # one per file: name as shown (and written in the cache index), path opened
    labels: list[list[str]]  # per file, sorted
    classes: list[str]  # sorted
    task: str  # single | multi
    ignored: int = 0  # files in a labels folder that sit in no class folder

    def targets(self) -> np.ndarray:
        """(N,) class indices for single-label, (N, C) 0/1 for multi-label."""
        index = {c: i for i, c in enumerate(self.classes)}
        if self.task == "single":
            return np.array([index[ls[0]] for ls in self.labels], dtype=np.int64)
        y = np.zeros((len(self.items), len(self.classes)), dtype=np.float32)
        for row, ls in enumerate(self.labels):
            y[row, [index[c] for c in ls]] = 1
        return y

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.classes, 0)
        for ls in self.labels:
            for c in ls:
                out[c] += 1
        return out

    def subset(self, keep: list[int]) -> Labelled:
        """The files at `keep` (those that could be embedded); a class left with too few files
        stays listed, so `check_counts` names it."""
        return Labelled(
            self.source,
            [self.items[i] for i in keep],
            [self.labels[i] for i in keep],
            self.classes,
            self.task,
            self.ignored,
        )


def read_labels(source: Path, task: str = "auto", extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> Labelled:
    """Read a labels folder or CSV; refuse a task that the labels contradict."""
    source = Path(source)
    if task not in ("auto", "single", "multi"):
        raise UsageError(f"task={task}: expected auto, single or multi", settings=("task",))
    if source.is_dir():
        pairs, ignored = _from_folder(source, extensions)
    elif source.is_file() and source.suffix.lower() == ".csv":
        pairs, ignored = _from_csv(source), 0
    elif source.exists():
        raise UsageError(f"{source}: expected a folder of class folders, or a CSV with columns path,label")
    else:
        raise UsageError(f"{source}: no such labels folder or CSV")
    items, labels = _merge(pairs)
    if not items:
        raise UsageError(f"{source}: no labelled audio files found")
    multi = [(it.name, ls) for it, ls in zip(items, labels) if len(ls) > 1]
    if task == "single" and multi:
        name, ls = multi[0]
        raise UsageError(
            f"{source}: {name} has {len(ls)} labels ({', '.join(ls)}) but task=single "
            f"takes one per file ({len(multi)} such file(s)); use task=multi",
            settings=("task",),
        )
    resolved = task if task != "auto" else ("multi" if multi else "single")
    classes = sorted({c for ls in labels for c in ls})
    return Labelled(source, items, labels, classes, resolved, ignored)


def check_counts(labelled: Labelled, at_least: int = 2) -> None:
    """Refuse classes with fewer than `at_least` files (a linear probe cannot learn them, nor
    can a split validate them); name them all."""
    few = [(c, n) for c, n in labelled.counts().items() if n < at_least]
    if few:
        listed = ", ".join(f"{c} ({n})" for c, n in few)
        raise UsageError(
            f"{labelled.source}: classes with fewer than {at_least} files: {listed}; add files or remove the class"
        )
    if len(labelled.classes) < 2 and labelled.task == "single":
        raise UsageError(
            f"{labelled.source}: only one class ({labelled.classes[0]}); a single-label head needs two or more"
        )


def _from_folder(root: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[Item, str]], int]:
    pairs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        for item in discover([str(entry)], extensions):
            pairs.append((item, entry.name))
    exts = {"." + e for e in extensions}
    ignored = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in exts)
    return pairs, ignored


def _from_csv(path: Path) -> list[tuple[Item, str]]:
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "path" not in fields or "label" not in fields:
                raise UsageError(f"{path}: expected a header with columns path,label (found {','.join(fields)})")
            reader.fieldnames = fields
            rows = list(reader)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeError) as exc:
        raise UsageError(f"{path}: not a readable CSV ({exc})") from None
    pairs = []
    for n, row in enumerate(rows, start=2):
        name, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not name or not label:
            raise UsageError(f"{path}: line {n}: empty {'path' if not name else 'label'}")
        if "\0" in name:
            raise UsageError(f"{path}: line {n}: a path with a NUL byte, which no file name holds")
        shown = name if os.path.isabs(name) or str(path.parent) == "." else os.path.join(str(path.parent), name)
        pairs.append((Item(shown, Path(shown).expanduser()), label))
    return pairs


def _merge(pairs: list[tuple[Item, str]]) -> tuple[list[Item], list[list[str]]]:
    """One entry per real file, first-seen order, with the union of its labels."""
    index: dict[str, int] = {}
    items: list[Item] = []
    labels: list[set[str]] = []
    for item, label in pairs:
        key = os.path.realpath(item.path)
        if key not in index:
            index[key] = len(items)
            items.append(item)
            labels.append(set())
        labels[index[key]].add(label)
    return items, [sorted(ls) for ls in labels]


# ---------------------------------------------------------------- embeddings


@dataclass
class Features:
    x: np.ndarray  # (N, D) float32, row i for labelled.items[i]
    labelled: Labelled  # the files that have an embedding
    encoder: dict  # name, source, sha256 (+ path of a local checkpoint)
    source: str  # where the embeddings were read from
    layer: int


def from_index(labelled: Labelled, npy: Path, model: str | None = None) -> Features:
    """Clip embeddings of every labelled file from an earlier embed output, matched by path, or
    from a library folder (`from_library`; `model` picks one of several there)."""
    from matpac_cli.library.views import is_library
    from matpac_cli.outputs.naming import embed_manifest
    from matpac_cli.outputs.readers import read_embeddings

    if is_library(npy):
        return from_library(labelled, Path(npy), model)
    emb = read_embeddings(Path(npy))
    if emb.manifest is None or not emb.manifest.get("models"):
        raise UsageError(
            f"{emb.path}: its manifest ({embed_manifest(emb.path).name}) is missing, "
            "so the encoder that made it is unknown; a head must name its encoder"
        )
    model = emb.manifest["models"][0]
    depth = int((model.get("geometry") or {}).get("depth") or 12)
    layers = list((emb.manifest.get("settings") or {}).get("layers") or [depth])
    if layers[-1] != depth:
        raise UsageError(
            f"{emb.path} holds layer {layers[-1]} embeddings; heads score layer {depth} "
            "(embed with the default `layer`, or layer=all)",
            settings=("layer",),
        )
    lookup = _index_keys(emb.paths, emb.path.parent)
    rows, missing = [], []
    for item in labelled.items:
        row = next((lookup[k] for k in _item_keys(item) if k in lookup), None)
        (missing.append(item.name) if row is None else rows.append(row))
    gone = [it.name for it in labelled.items if it.name in missing and not os.path.exists(it.path)]
    if gone:  # embedding them is no remedy
        raise UsageError(
            f"{labelled.source}: {len(gone)} labelled file(s) do not exist ({_few(gone)}) and are not "
            f"in {emb.path}; remove them from the labels"
        )
    if missing:
        raise UsageError(
            f"{emb.path}: {len(missing)} of {len(labelled.items)} labelled files are not in its "
            f"index ({_few(missing)}); embed them too, or remove them from the labels"
        )
    x = np.asarray(emb.clip(-1)[np.array(rows)], dtype=np.float32)
    return Features(x, labelled, _encoder_record(model), str(emb.path), depth)


def from_library(labelled: Labelled, root: Path, model: str | None = None) -> Features:
    """Clip embeddings (the deepest layer stored) of every labelled file from a library, found by
    path or else by its audio key, so a labelled file moved or retagged since it was embedded is
    found; the head names the encoder by its registry name, or by `model` (a checkpoint file)."""
    from matpac_cli.jobs.library import library_embeddings
    from matpac_cli.library.key import audio_key

    emb = library_embeddings(root, model, "last")
    view = emb.library
    by_path = {p: i for i, p in enumerate(emb.paths)}
    rows, missing = [], []
    for item in labelled.items:
        real = os.path.realpath(item.path)
        if real in by_path:
            rows.append(emb.matrix[by_path[real]])
            continue
        key = audio_key(real) if os.path.isfile(real) else None
        (rows.append(view.vectors[key]) if key in view.vectors else missing.append(item.name))
    if missing:
        raise UsageError(
            f"{root}: {len(missing)} of {len(labelled.items)} labelled files are not in the library "
            f"({_few(missing)}); embed them with it too, or remove them from the labels"
        )
    info = emb.manifest["models"][0]
    encoder = {"name": info.get("name"), "source": "library", "sha256": view.setting.model}
    if model is not None and Path(model).is_file():
        encoder.update(name=str(model), source="file", path=str(Path(model).resolve()))
    if encoder["name"] is None:
        raise UsageError(
            f"{root}: the model {view.setting.model[:12]} is a checkpoint of one's own; name its file "
            "with `model`, so the head names its encoder",
            settings=("model",),
        )
    return Features(np.stack(rows).astype(np.float32), labelled, encoder, str(root), view.layer)


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _index_keys(paths: list[str], folder: Path) -> dict[str, int]:
    keys: dict[str, int] = {}
    for row, name in enumerate(paths):
        candidates = [name, os.path.normpath(name), os.path.realpath(name)]
        if not os.path.isabs(name):
            candidates.append(os.path.realpath(folder / name))
        for key in candidates:
            keys.setdefault(key, row)
    return keys


def _item_keys(item: Item) -> list[str]:
    return [item.name, os.path.normpath(item.name), os.path.realpath(item.path)]


def _encoder_record(model: dict) -> dict:
    record = {"name": model.get("name"), "source": model.get("source"), "sha256": model.get("sha256")}
    if record["source"] == "file" and record["name"] and Path(record["name"]).is_file():
        record["path"] = str(Path(record["name"]).resolve())
    return record


def embed_labelled(
    labelled: Labelled,
    predictor,
    config,
    events=None,
    argv: list[str] | None = None,
):
    """Embed the labelled files into `config.out` (an `EmbedConfig`; resumable from the library) and
    return (Features of the files that embedded, the embed Summary); `events` as `embed`'s."""
    from matpac_cli.jobs.embed import embed
    from matpac_cli.outputs.readers import read_embeddings

    summary = embed(labelled.items, predictor, config, events, argv)
    if summary.done + summary.reused == 0:
        raise UsageError(f"{labelled.source}: no labelled file could be embedded")
    emb = read_embeddings(config.out)
    row_of = {name: i for i, name in enumerate(emb.paths)}
    keep = [i for i, item in enumerate(labelled.items) if item.name in row_of]
    x = np.asarray(emb.clip(-1)[np.array([row_of[labelled.items[i].name] for i in keep])], dtype=np.float32)
    res = predictor.resolved
    encoder = {"name": res.name, "source": res.source, "sha256": res.sha256}
    if res.source == "file":
        encoder["path"] = str(Path(res.path).resolve())
    return Features(x, labelled.subset(keep), encoder, str(config.out), predictor.dims.depth), summary
