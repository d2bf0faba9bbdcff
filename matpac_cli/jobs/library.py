"""`matpac library`: what the library holds (`info`), dropping what is gone (`prune`), and an
embed output made from it without encoding (`export`); and the library as an index for
`search`, `train` and `report` (`library_embeddings`), so they read it as they read an `emb.npy`.

Everything here reads the library through `library.views` (the one home of the library as a
matrix) and writes only inside the library folder (`prune`) or to the output named (`export`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from matpac_cli import __version__
from matpac_cli.config import FRONT_END
from matpac_cli.errors import UsageError
from matpac_cli.library import tables, views
from matpac_cli.library.location import resolve_root
from matpac_cli.outputs import earlier, naming, writers
from matpac_cli.outputs.readers import Embeddings


def library_root(library: Path | str | None) -> Path:
    """The library folder a `matpac library` command reads (`library`, else the default), which
    must exist: these commands never make one."""
    root = resolve_root(library)
    if root is None:
        raise UsageError(
            "the library is turned off ($MATPAC_LIBRARY=off); give one with `library`", settings=("library",)
        )
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        raise UsageError(f"library {root}: {what}", settings=("library",))
    if any(root.iterdir()) and not any((root / f"{name}.lance").is_dir() for name in tables.SCHEMAS):
        raise UsageError(
            f"library {root}: not a library (no clips.lance, segments.lance or paths.lance in it)",
            settings=("library",),
        )
    return root


@tables.guards
def library_info(root: Path) -> dict:
    """Rows, models (sha256, registry name, layers, files per front-end setting), size on disk,
    paths known and paths missing on disk."""
    clips = tables.open_table(root, "clips")
    paths = views.path_keys(root)
    missing = sum(1 for p in paths if not os.path.exists(p))
    models: dict[str, dict] = {}
    for h in views.held(root):
        m = models.setdefault(
            h.setting.model,
            {"sha256": h.setting.model, "name": views.model_name(h.setting.model), "layers": [], "settings": []},
        )
        m["layers"] = sorted(set(m["layers"]) | set(h.layers))
        m["settings"].append({"frontend": h.setting.frontend, "files": h.keys, "segments": h.segments})
    return {
        "library": str(root),
        "rows": clips.count_rows() if clips is not None else 0,
        "files": len(_keys(root, "clips")),
        "models": list(models.values()),
        "bytes": views.size_on_disk(root),
        "paths": len(paths),
        "missing": missing,
        "failed": len(_keys(root, "failed")),  # files runs skip: they killed a worker (`retry_failed`)
    }


TABLES = ("clips", "segments", "failed")  # the tables of a file's entries, which `prune` drops


@dataclass
class Pruned:
    """What `prune` drops (or would drop): keys with every path gone (or of `model`), the rows
    of them in each table, and the path rows that are gone from disk."""

    keys: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    paths: int = 0
    done: bool = False


@tables.guards
def prune_library(root: Path, model: str | None = None, yes: bool = False) -> Pruned:
    """Drop the entries whose paths are all gone from disk (or, with `model`, every entry of that
    model); a dry run unless `yes`. Only the library's own tables are touched."""
    paths = views.path_keys(root)
    gone_paths = [p for p in paths if not os.path.exists(p)]
    where_model = None
    if model is not None:
        where_model = tables.equals("model", views.model_sha(root, model))
        keys: list[str] = []
    else:
        gone = set(gone_paths)
        alive = {k for p, k in paths.items() if p not in gone}
        held = _keys(root, "clips") | _keys(root, "segments") | _keys(root, "failed")
        keys = sorted(held - alive)
    out = Pruned(keys=len(keys), paths=0 if model is not None else len(gone_paths))
    for name in TABLES:
        ds = tables.open_table(root, name)
        if ds is None:
            out.rows[name] = 0
        elif where_model is not None:
            out.rows[name] = ds.count_rows(filter=where_model)
        else:
            out.rows[name] = sum(ds.count_rows(filter=p) for p in _key_filters(keys))
    if model is not None:
        out.keys = len(_keys(root, "clips", where_model))
    if not yes:
        return out
    for name in TABLES:
        for predicate in [where_model] if where_model is not None else _key_filters(keys):
            tables.delete(root, name, predicate)
    if model is None:
        for predicate in _path_filters(gone_paths):
            tables.delete(root, "paths", predicate)
    tables.tidy(root, most_fragments=1)
    out.done = True
    return out


def _keys(root: Path, name: str, where: str | None = None) -> set[str]:
    ds = tables.open_table(root, name)
    return set() if ds is None else set(ds.to_table(columns=["key"], filter=where)["key"].to_pylist())


def _path_filters(paths: list[str]) -> list[str]:
    """Paths are stored as their bytes (any file name): matched as binary literals."""
    step = tables.IN_BATCH
    return [
        "path IN (" + ", ".join("X'" + os.fsencode(p).hex() + "'" for p in paths[i : i + step]) + ")"
        for i in range(0, len(paths), step)
    ]


def _key_filters(keys: list[str]) -> list[str]:
    return _filters("key", keys)


def _filters(column: str, values: list[str]) -> list[str]:
    step = tables.IN_BATCH
    return [
        f"{column} IN ({', '.join(tables.quoted(v) for v in values[i : i + step])})"
        for i in range(0, len(values), step)
    ]


# ---------------------------------------------------------------- the library as an embed output


@tables.guards
def library_embeddings(root: Path, model: str | None = None, layer: str | int | None = None) -> Embeddings:
    """The library read as an embed output (what `search --index`, `train --embeddings` and
    `report --embeddings` take): one row per path on disk whose audio has the embedding, in path
    order; the vectors of every key ride along (`Embeddings.library`) so a moved file is found."""
    setting, held_layer = views.pick(root, model, layer)
    v = views.view(root, setting, held_layer)
    here = v.present()
    index = [dict(row=i, path=p, **_index_facts(f)) for i, (p, f) in enumerate(zip(here.paths, here.facts))]
    return Embeddings(root, here.matrix, index, _manifest(root, v, len(index)), library=here)


def _index_facts(facts: dict) -> dict:
    return {
        "duration_s": facts["duration_s"],
        "sample_rate": facts["sample_rate"],
        "channels": facts["channels"],
        "truncated": bool(facts["truncated"]),
    }


def _manifest(root: Path, v: views.View, rows: int, output: dict | None = None) -> dict:
    """A manifest as `embed` writes one, for what was read from the library (no model loaded)."""
    name = views.model_name(v.setting.model)
    data = {
        "matpac_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "models": [{"name": name, "source": "library", "sha256": v.setting.model}],
        "heads": [],
        "settings": {"job": "embed", "model_sha256": v.setting.model, "layers": [v.layer]},
        "front_end": FRONT_END.as_dict(),
        "versions": {},
        "counts": {"computed": 0, "reused": rows, "failed": 0},
        "truncated": [p for p, f, ok in zip(v.paths, v.facts, v.on_disk) if ok and f["truncated"]],
        "library": {"path": str(root), "frontend": v.setting.frontend},
    }
    if name is None:
        data["models"][0].pop("name")
    if output is not None:
        data["output"] = output
    return data


@dataclass
class Exported:
    rows: int
    skipped: int  # paths the library knows that are not on disk now
    outputs: list[Path]
    layer: int
    notes: list[str] = field(default_factory=list)  # files of the model left out (the view's notes)


@tables.guards
def export_library(
    root: Path, out: Path, model: str | None = None, layer: str | None = None, force: bool = False
) -> Exported:
    """`out` (.npy with its .csv index, or .parquet) and its manifest, in `embed`'s formats, from
    the library alone: one row per path on disk, in path order."""
    from matpac_cli.jobs.embed_output import described, write_matrix

    paths = naming.embed_outputs(Path(out))
    earlier.refuse_a_sharer(paths)  # `force` too: another output's manifest
    written = naming.written(paths)
    for path in written:
        writers.ensure_writable(path)
        if path.exists() and not force:
            raise UsageError(f"{path} exists; use `force` to replace it", settings=("force",))
    setting, held_layer = views.pick(root, model, layer)
    v = views.view(root, setting, held_layer)
    here = v.present()
    if not here.paths:
        raise UsageError(
            f"{root}: none of the {len(v.paths)} files it holds for this model is on disk; nothing to export"
        )
    done = [(p, _index_facts(f), row) for p, f, row in zip(here.paths, here.facts, here.matrix)]
    with writers.locked(*written), writers.Unit() as unit:
        write_matrix(unit, paths, done, (here.matrix.shape[1],))
        unit.json(paths["manifest"], _manifest(root, v, len(done), described(paths)))
    return Exported(len(done), len(v.paths) - len(done), written, held_layer, here.notes)


def as_named(emb: Embeddings, names: list[str]) -> Embeddings:
    """A library index with its rows named as `names` name the same files (a tag output's paths,
    as written): by real path, else by the file's audio key (a file moved since it was embedded
    gets its key's vector as a row of its own). Rows no name matches keep their real path."""
    from matpac_cli.library.key import audio_key

    view = emb.library
    real = {p: i for i, p in enumerate(emb.paths)}
    index = [dict(row) for row in emb.index]
    extra_rows, extra_vecs = [], []
    for name in dict.fromkeys(names):
        path = os.path.realpath(name)
        if path in real:
            index[real[path]]["path"] = name
        elif os.path.isfile(path) and (key := audio_key(path)) in view.vectors:
            facts = _index_facts(view.key_facts[key])  # the moved file's own, not another row's
            extra_rows.append(dict(row=len(index) + len(extra_rows), path=name, **facts))
            extra_vecs.append(view.vectors[key])
    if not extra_vecs:
        matrix = emb.matrix
    else:
        matrix = np.concatenate([emb.matrix, np.stack(extra_vecs)]) if len(emb.matrix) else np.stack(extra_vecs)
    return Embeddings(emb.path, matrix, index + extra_rows, emb.manifest, library=view)
