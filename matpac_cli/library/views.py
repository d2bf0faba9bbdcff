"""The library read as a matrix: one home for every command that takes the library as its index
(`library export`, `search`, `train`, `report`) and for what `library info` and `prune` count.

A view is one (model sha256, front-end setting, layer): every path the library knows whose audio
key has that embedding, one row per path in path order (a file copied to two places is two rows,
as two `embed` inputs would be), with the file's facts and whether the path is on disk now. The
embeddings are stored per key, so a row's vector is its key's, whatever the path.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.library import bypath, tables
from matpac_cli.library.key import Setting, Stat, audio_key
from matpac_cli.library.shards import row_facts


@dataclass
class Held:
    """What the library holds for one (model, front end): its layers and how many files."""

    setting: Setting
    layers: list[int]
    keys: int
    segments: int = 0


@dataclass
class View:
    """Rows of one (setting, layer): `paths[i]` (a real path), `keys[i]`, `facts[i]` (duration_s,
    sample_rate, channels, truncated), `on_disk[i]`, and `matrix[i]` (float32, N x D). `notes`
    name the files of the model on disk that it leaves out (no embedding of `layer`, or another
    front-end setting), one line each, so that a reader never drops them in silence."""

    setting: Setting
    layer: int
    paths: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    facts: list[dict] = field(default_factory=list)
    on_disk: list[bool] = field(default_factory=list)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # every key's vector, with or without a path
    key_facts: dict[str, dict] = field(default_factory=dict)  # every key's facts, likewise
    notes: list[str] = field(default_factory=list)  # what a reader says: files of the model not read

    def present(self) -> View:
        """The rows whose path is on disk now (what an output or an index of today's files holds)."""
        keep = [i for i, ok in enumerate(self.on_disk) if ok]
        return View(
            self.setting,
            self.layer,
            [self.paths[i] for i in keep],
            [self.keys[i] for i in keep],
            [self.facts[i] for i in keep],
            [True] * len(keep),
            self.matrix[keep] if len(keep) else self.matrix[:0],
            self.vectors,
            self.key_facts,
            self.notes,
        )


def is_library(path: Path | str) -> bool:
    """A folder holding a library's tables (what `--index` and `--embeddings` accept besides files)."""
    return Path(path).is_dir() and (Path(path) / "clips.lance").is_dir()


def held(root: Path) -> list[Held]:
    """Every (model, front end) the library holds, most files first."""
    ds = tables.open_table(root, "clips")
    if ds is None:
        return []
    t = ds.to_table(columns=["key", "model", "frontend", "layer"]).to_pydict()
    layers, keys = defaultdict(set), defaultdict(set)
    for k, m, f, layer in zip(t["key"], t["model"], t["frontend"], t["layer"]):
        layers[(m, f)].add(layer)
        keys[(m, f)].add(k)
    segs: Counter = Counter()
    seg = tables.open_table(root, "segments")
    if seg is not None:
        s = seg.to_table(columns=["key", "model", "frontend"]).to_pydict()
        files = set(zip(s["key"], s["model"], s["frontend"]))  # files with segments, each once
        segs.update((m, f) for _, m, f in files)
    out = [Held(Setting(m, f), sorted(layers[(m, f)]), len(keys[(m, f)]), segs[(m, f)]) for (m, f) in layers]
    return sorted(out, key=lambda h: (-h.keys, h.setting.model, h.setting.frontend))


def model_name(sha256: str) -> str | None:
    """The registry name of a model known by its sha256 (None for a checkpoint of one's own)."""
    from matpac_cli.checkpoints.resolve import registered_as

    try:
        spec = registered_as(sha256.lower())
    except Exception:  # noqa: BLE001 - an unreadable registry or hash record: the name is unknown
        return None
    return spec.name if spec is not None else None


def model_sha(root: Path, spec: str) -> str:
    """The sha256 of `model=spec` as the library holds it: a sha256 (or its first characters), a
    registry name, or a checkpoint file (hashed, never loaded)."""
    stored = sorted({h.setting.model for h in held(root)})
    text = spec.strip().lower()
    hits = [m for m in stored if len(text) >= 6 and m.lower().startswith(text)]
    if len(hits) == 1:
        return hits[0]
    named = [m for m in stored if model_name(m) == spec]
    if named:
        return named[0]
    if os.path.isfile(spec):
        from matpac_cli.checkpoints.downloads import sha256_of

        return sha256_of(Path(spec))
    known = ", ".join(_shown(m) for m in stored) or "none"
    raise UsageError(f"model={spec}: not a model of the library {root} (it holds: {known})", settings=("model",))


def _shown(sha256: str) -> str:
    name = model_name(sha256)
    return f"{sha256[:12]}" + (f" ({name})" if name else "")


def pick(root: Path, model: str | None = None, layer: str | int | None = None) -> tuple[Setting, int]:
    """The (setting, layer) to read: the model's (the only one held, where `model` is None) with
    the most files, and `layer` (a number, or `last`: the deepest layer stored for that setting).
    What this leaves out (files without that layer, other settings) is `view`'s `notes`."""
    hs = held(root)
    if not hs:
        raise UsageError(f"{root}: the library holds no embeddings yet (run `matpac embed` with it first)")
    if model is not None:
        sha = model_sha(root, model)
        hs = [h for h in hs if h.setting.model == sha]
        if not hs:
            raise UsageError(f"model={model}: the library {root} holds nothing of it", settings=("model",))
    elif len({h.setting.model for h in hs}) > 1:
        listed = ", ".join(_shown(m) for m in dict.fromkeys(h.setting.model for h in hs))
        raise UsageError(f"{root} holds several models ({listed}); say which with `model`", settings=("model",))
    chosen = hs[0]
    text = "last" if layer is None else str(layer).strip().lower()
    if text in ("last", ""):
        return chosen.setting, chosen.layers[-1]
    if not text.isdigit() or int(text) not in chosen.layers:
        raise UsageError(
            f"layer={layer}: the library holds layers {', '.join(map(str, chosen.layers))} of this model",
            settings=("layer",),
        )
    return chosen.setting, int(text)


def view(root: Path, setting: Setting, layer: int) -> View:
    """Every known path whose key has `setting`'s embedding of `layer`, in path order."""
    ds = tables.open_table(root, "clips")
    out = View(setting, layer)
    if ds is None:
        return out
    where = f"{tables.equals('model', setting.model)} AND {tables.equals('frontend', setting.frontend)} AND layer = {int(layer)}"
    table = ds.to_table(columns=[n for n in tables.CLIPS.names if n != "added"], filter=where)
    t = table.drop_columns(["embedding"]).to_pydict()
    embeddings = tables.vectors(table.column("embedding"))  # numpy views: no float lists
    by_key = {}
    for j, key in enumerate(t["key"]):
        by_key.setdefault(key, j)  # two runs at once stored it twice: the rows are equal
    out.vectors = {k: embeddings[j] for k, j in by_key.items()}
    out.key_facts = {k: row_facts(t, j) for k, j in by_key.items()}
    current = _current_keys(root)
    rows = sorted((p, k, here) for p, (k, here) in current.items() if k in by_key)
    out.paths = [p for p, _, _ in rows]
    out.keys = [k for _, k, _ in rows]
    out.on_disk = [here for _, _, here in rows]
    out.facts = [row_facts(t, by_key[k]) for k in out.keys]
    dim = len(next(iter(out.vectors.values()))) if out.vectors else 0
    out.matrix = np.stack([out.vectors[k] for k in out.keys]) if rows else np.zeros((0, dim), np.float32)
    out.notes = _left_out(ds, setting, int(layer), {k for k, here in current.values() if here} - set(by_key))
    return out


def _left_out(ds, setting: Setting, layer: int, unread: set[str]) -> list[str]:
    """One line for the files on disk not read (`unread`: their keys) that hold this setting's
    other layers only; one, where the model is held under several front-end settings (fp32 and
    bf16 runs, say), for which setting was read and how many files the others hold."""
    t = ds.to_table(columns=["key", "frontend", "layer"], filter=tables.equals("model", setting.model)).to_pydict()
    deepest: dict[str, int] = {}
    files: dict[str, set[str]] = defaultdict(set)
    for key, frontend, held_layer in zip(t["key"], t["frontend"], t["layer"]):
        files[frontend].add(key)
        if frontend == setting.frontend and key in unread:
            deepest[key] = max(held_layer, deepest.get(key, held_layer))
    notes = []
    if deepest:
        by_layer = Counter(deepest.values())
        listed = ", ".join(f"layer={d} reads {n:,} of them" for d, n in sorted(by_layer.items(), reverse=True))
        notes.append(
            f"{len(deepest):,} file(s) on disk hold no layer {layer} embedding of this model and are left out ({listed})"
        )
    others = {f: keys for f, keys in files.items() if f != setting.frontend}
    if others:
        mine = files[setting.frontend]
        only = len((set().union(*others.values()) - mine) & unread)
        listed = ", ".join(f"{f}: {len(keys):,}" for f, keys in sorted(others.items()))
        notes.append(
            f"read the front-end setting {setting.frontend} of this model ({len(mine):,} files, the most); "
            f"its other setting(s) hold {listed} file(s)"
            + (f", {only:,} of them on disk and not read" if only else "")
            + " (`matpac library info` lists them)"
        )
    return notes


def _current_keys(root: Path) -> dict[str, tuple[str, bool]]:
    """path -> (key, on disk) for every path the library has seen, the key checked against the
    disk: a path whose stat changed since it was keyed is keyed again (its audio may have been
    replaced: its old key would give another file's embedding), one gone keeps its old key."""
    out = {}
    for path, (key, stat, seen) in bypath.known(root).items():
        try:
            now = Stat.of(path)
        except OSError:
            out[path] = (key, False)
            continue
        if now is None:
            continue  # no longer a regular file
        out[path] = (key if now.vouches(stat, seen) else audio_key(path), True)
    return out


def path_keys(root: Path) -> dict[str, str]:
    """path -> key of every path the library has seen (the latest row of each)."""
    return {p: k for p, (k, _, _) in bypath.known(root).items()}


def size_on_disk(root: Path) -> int:
    """Bytes of every file under the library folder."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
