"""`search`: the nearest files of an embedding index by cosine similarity, and near-duplicate pairs.

This module is the job: it opens the index (a memory-mapped .npy, or a Parquet index whose
embedding column is read into memory once), picks the layer, plans and embeds the queries, and
turns the neighbours into rows. The similarity maths (exact blocked cosine search and
near-duplicate pairs) lives in `jobs.similarity`; from 200,000 rows (or once an index has a
cache) neighbours come from a vector index, re-ranked exactly (`jobs.search_index`).

Queries are rows already in the index (named by their path) or audio files, embedded with the
model that made the index (found from its manifest, refused if its sha256 differs) through the
same `embed` job, so a file queried gives the vector the index holds for it. A query that is a
row of the index is left out of its own neighbours unless `include_self`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matpac_cli.config import RunOptions
from matpac_cli.errors import InputError, UsageError
from matpac_cli.events import RunEvents
from matpac_cli.jobs.dup_cells import duplicates
from matpac_cli.jobs.similarity import nearest
from matpac_cli.outputs import naming
from matpac_cli.outputs.readers import Embeddings, read_embeddings
from matpac_cli.pipeline.discovery import AUDIO_EXTENSIONS, Item, discover

NEIGHBOUR_COLUMNS = ["query", "rank", "path", "score"]
DUPLICATE_COLUMNS = ["path_a", "path_b", "score"]
QUERY_BATCH = 16  # encoder chunks per batch for audio-file queries (`search --batch-size`'s default)


# ---------------------------------------------------------------- the index and its queries


def open_index(path: Path, model: str | None = None, layer: str | None = None) -> Embeddings:
    """The index a search runs on: a `matpac embed --out X.npy` output (matrix, row index,
    manifest), `X.parquet` (a file or a folder of shards; its embedding column is read into
    memory, where a .npy is memory-mapped), or a library folder (its files on disk, of `model`
    where it holds several, at `layer`: `jobs.library.library_embeddings`)."""
    from matpac_cli.library.views import is_library

    if is_library(path):
        from matpac_cli.jobs.library import library_embeddings

        return library_embeddings(Path(path), model, layer)
    return read_embeddings(Path(path))


def index_layer(emb: Embeddings, layer: str | None) -> tuple[np.ndarray, int | None]:
    """The (N, D) matrix to search and the encoder layer it holds (None if the manifest does not
    say). A one-layer index holds one layer; an `--layer all` index gives `layer` (default last)."""
    recorded = list(((emb.manifest or {}).get("settings") or {}).get("layers") or [])
    if emb.matrix.ndim == 2:
        held = recorded[0] if len(recorded) == 1 else None
        if layer not in (None, "last") and held is not None and str(held) != str(layer).strip():
            raise UsageError(f"layer={layer}: {emb.path} holds layer {held} only", settings=("layer",))
        return emb.clip(), held
    depth = emb.matrix.shape[1]
    layers = recorded if len(recorded) == depth else list(range(1, depth + 1))
    text = "last" if layer is None else str(layer).strip().lower()
    if text == "last":
        return emb.clip(-1), layers[-1]
    if not text.isdigit() or int(text) not in layers:
        raise UsageError(f"layer={layer}: {emb.path} holds layers {layers[0]}..{layers[-1]}", settings=("layer",))
    return emb.clip(layers.index(int(text))), int(text)


@dataclass(frozen=True)
class Query:
    """One query as the user named it: a row of the index, or an audio file to embed."""

    name: str
    row: int | None = None
    path: Path | None = None
    key: str | None = None  # a library index's audio key of a file found by its audio (moved, copied)


class PathLookup:
    """Finds a path in the index: as written there, normalised (`./a.wav`), or as the same file
    on disk (the index's paths taken from the current folder, as `matpac embed` wrote them)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths
        self.exact = {}
        for i, p in enumerate(paths):
            self.exact.setdefault(p, i)
            self.exact.setdefault(os.path.normpath(p), i)
        self._real: dict[str, int] | None = None

    def find(self, name: str) -> int | None:
        row = self.exact.get(name, self.exact.get(os.path.normpath(name)))
        if row is not None or not os.path.exists(name):
            return row
        if self._real is None:
            self._real = {}
            for i, p in enumerate(self.paths):
                if os.path.exists(p):
                    self._real.setdefault(os.path.realpath(p), i)
        return self._real.get(os.path.realpath(name))


def plan_queries(
    emb: Embeddings, queries: Sequence[str], extensions: tuple[str, ...] = AUDIO_EXTENSIONS
) -> tuple[list[Query], list[InputError]]:
    """Each query: a path of the index (its row), an audio file (to embed), or a folder of them
    (the command has read a `-` list from stdin already). A name that is none of these is a
    per-query failure."""
    lookup = PathLookup(emb.paths)
    if emb.library is not None:
        lookup = KeyLookup(emb.paths, emb.library)
    planned: list[Query] = []
    failed: list[InputError] = []
    index_csv = naming.row_index(emb.path)
    for name in queries:
        row = lookup.find(name)
        if row is not None:
            planned.append(Query(name, row=row))
        elif os.path.isdir(name):
            for item in discover([name], extensions):
                planned.append(_file_query(lookup, item.name, item.path))
        elif os.path.isfile(name):
            planned.append(_file_query(lookup, name, Path(name)))
        else:
            failed.append(InputError(name, f"not a path in {index_csv} and does not exist"))
    return planned, failed


class KeyLookup(PathLookup):
    """A library index's lookup: by path as `PathLookup`, then by the file's audio key, so a
    file moved, renamed or retagged since it was embedded is found without encoding it."""

    def __init__(self, paths: Sequence[str], view) -> None:
        super().__init__(paths)
        self.view = view
        self.rows = {}
        for i, key in enumerate(view.keys):
            self.rows.setdefault(key, i)

    def key_of(self, path: Path) -> str | None:
        from matpac_cli.library.key import audio_key

        key = audio_key(os.path.realpath(path))
        return key if key in self.view.vectors else None


def _file_query(lookup: PathLookup, name: str, path: Path) -> Query:
    """An audio file as a query: its row where the index holds it (by path, or in a library by
    its audio), its library vector where only that is held, else a file to embed."""
    hit = lookup.find(name)
    if hit is not None:
        return Query(name, row=hit)
    key = lookup.key_of(path) if isinstance(lookup, KeyLookup) else None
    if key is None:
        return Query(name, path=path)
    row = lookup.rows.get(key)
    return Query(name, row=row) if row is not None else Query(name, key=key)


def library_vectors(emb: Embeddings, queries: Sequence[Query]) -> dict[str, np.ndarray]:
    """{query name: vector} of the queries a library index knows by audio key but not by row."""
    if emb.library is None:
        return {}
    return {q.name: emb.library.vectors[q.key] for q in queries if q.key is not None}


def query_model(emb: Embeddings, model: str | None = None):
    """The model that made the index, resolved and verified (a `checkpoints.resolve.Resolved` for
    `Predictor.load`): the manifest's, or `model` in its place (same sha256 where recorded)."""
    from matpac_cli.checkpoints.resolve import resolve
    from matpac_cli.errors import ModelError

    manifest_path = naming.embed_manifest(emb.path)
    info = ((emb.manifest or {}).get("models") or [{}])[0]
    spec = model or info.get("name")
    if not spec:
        raise UsageError(
            f"{manifest_path}: missing, so the model that made {emb.path} is unknown; "
            "give it with `model` to embed audio queries",
            settings=("model",),
        )
    try:
        resolved = resolve(spec)
    except ModelError as exc:
        if model is None and info.get("source") == "file":
            raise UsageError(
                f"{emb.path} was made with the checkpoint file {spec}, which is not found "
                "from here; give it with model=FILE",
                settings=("model",),
            ) from None
        raise exc from None
    want = info.get("sha256")
    if want and resolved.sha256 != want:
        raise UsageError(
            f"model {spec} has sha256 {resolved.sha256[:12]}..., but {emb.path} was made with "
            f"{info.get('name')} (sha256 {want[:12]}...); give that checkpoint with `model`",
            settings=("model",),
        )
    return resolved


def embed_queries(
    queries: Sequence[Query],
    predictor,
    layer: int | None,
    options: RunOptions | None = None,
    events: RunEvents | None = None,
    library: Path | bool | None = None,
) -> dict[str, np.ndarray]:
    """{query name: clip embedding} for the audio-file queries, through the `embed` job itself
    (same decoding, chunking and pooling as the index), into a temporary folder. `options`
    default to `QUERY_BATCH` chunks per batch; `events` hear of each query that fails."""
    from matpac_cli.jobs.embed import EmbedConfig, embed

    files = [q for q in queries if q.path is not None]
    if not files:
        return {}
    real = {q.name: os.path.realpath(q.path) for q in files}  # `a.wav` and `./a.wav` are embedded once
    with tempfile.TemporaryDirectory(prefix="matpac-search-") as tmp:
        out = Path(tmp) / "queries.npy"
        config = EmbedConfig(
            out=out,
            layer=str(layer or "last"),
            options=options or RunOptions(batch_size=QUERY_BATCH),
            library=library,
            retry_failed=True,  # a query named is tried whatever the library recorded of it
        )
        summary = embed([Item(q.name, q.path) for q in files], predictor, config, events)
        if not summary.done + summary.reused:  # encoded now, or found in the library
            return {}
        got = read_embeddings(out)
        by_file = {real[r["path"]]: np.array(got.matrix[i]) for i, r in enumerate(got.index)}
    return {q.name: by_file[real[q.name]] for q in files if real[q.name] in by_file}


def neighbour_rows(
    emb_paths: Sequence[str],
    matrix: np.ndarray,
    queries: Sequence[Query],
    vectors: dict[str, np.ndarray],
    top_k: int = 10,
    include_self: bool = False,
    threshold: float | None = None,
    finder: Callable | None = None,
) -> Iterator[dict]:
    """Long-format rows `query, rank, path, score` for every query that has a vector, in order.
    `finder` searches (`similarity.nearest` by default; `search_index.NeighbourSearch` answers
    from a vector index where that pays)."""
    ready = [q for q in queries if q.row is not None or q.name in vectors]
    if not ready:
        return
    dim = matrix.shape[1]
    vecs = np.stack([np.asarray(matrix[q.row]) if q.row is not None else vectors[q.name] for q in ready])
    if vecs.shape[1] != dim:
        raise UsageError(f"the queries' embeddings have {vecs.shape[1]} dimensions but the index has {dim}")
    exclude = [None if include_self else q.row for q in ready]
    found = finder(vecs, top_k, exclude) if finder is not None else nearest(matrix, vecs, top_k, exclude)
    for q, (rows, scores) in zip(ready, found):
        for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
            if threshold is not None and score < threshold:
                break
            yield {"query": q.name, "rank": rank, "path": emb_paths[row], "score": score}


def duplicate_rows(
    emb_paths: Sequence[str], matrix: np.ndarray, threshold: float = 0.98, exact: bool = False
) -> Iterator[dict]:
    """Rows `path_a, path_b, score` of the near-duplicate pairs; `exact` compares every pair
    (otherwise only those the cells' bound leaves: the same pairs, `jobs.dup_cells`)."""
    for a, b, score in duplicates(matrix, threshold, exact=exact or None):
        yield {"path_a": emb_paths[a], "path_b": emb_paths[b], "score": score}
