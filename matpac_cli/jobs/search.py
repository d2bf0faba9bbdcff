"""`search`: the nearest files of an embedding index by cosine similarity, and near-duplicate pairs.

Exact search over the memory-mapped matrix, in blocks: a block of index rows is multiplied by
every (unit-length) query at once, where it lies in the map (one BLAS call, no copy), divided by
the rows' norms, and a running top-k per query keeps the best rows seen so far. Memory stays at one block (about 64 MiB) plus the
queries, whatever the size of the index; 100k x 3840 float32 is read once per 1,024 queries.
A Parquet index cannot be mapped: its embedding column is read into memory once (the matrix's
size), and searched the same way.
Exact is the default on purpose: approximate indexes (HNSW) trade recall for speed, and at
this size the exact answer takes seconds.

Queries are rows already in the index (named by their path) or audio files, embedded with the
model that made the index (found from its manifest, refused if its sha256 differs) through the
same `embed` job, so a file queried gives the vector the index holds for it. A query that is a
row of the index is left out of its own neighbours unless `include_self`.

Cosine of a zero vector with anything is taken as 0. Scores are float32 dot products of unit
vectors, clipped to [-1, 1]; norms are summed in float64 (a float32 sum of squares overflows past
about 1e19), and a block with rows longer than 1e30 is multiplied in float64.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matpac_cli.config import RunOptions
from matpac_cli.errors import InputError, UsageError
from matpac_cli.events import RunEvents
from matpac_cli.outputs import naming
from matpac_cli.outputs.readers import Embeddings, read_embeddings
from matpac_cli.pipeline.discovery import AUDIO_EXTENSIONS, Item, discover

BLOCK_BYTES = 64 * 2**20  # index rows read, normalised and multiplied at a time
QUERY_BLOCK = 1024  # queries per pass over the index
SAFE_NORM = 1e30  # rows longer than this are multiplied in float64 (a float32 dot could overflow)
PAIR_BUDGET = 1 << 20  # pairs of --duplicates held at once (about 20 MiB), however many match
NEIGHBOUR_COLUMNS = ["query", "rank", "path", "score"]
DUPLICATE_COLUMNS = ["path_a", "path_b", "score"]
QUERY_BATCH = 16  # encoder chunks per batch for audio-file queries (`search --batch-size`'s default)


# ---------------------------------------------------------------- numerics


def row_norms(x: np.ndarray) -> np.ndarray:
    """Norms of float32 rows summed in float64 (in float32, squares past 1e19 overflow to inf)."""
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


@np.errstate(over="ignore", invalid="ignore")  # infinities and NaNs: rows left out, silently
def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length, in float64 (a zero row stays zero, so its cosines are
    0; a row holding NaN or infinity becomes NaN, so it is nobody's neighbour)."""
    x = np.array(x, dtype=np.float64)  # a copy: never written back into a memory map
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    np.divide(x, norms, out=x, where=norms > 0)
    return x.astype(np.float32)


def block_rows(dim: int, block_bytes: int = BLOCK_BYTES) -> int:
    return max(1, block_bytes // (4 * max(dim, 1)))


def nearest(
    index: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[int | None] | None = None,
    rows_per_block: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The `k` rows of `index` (N, D) most cosine-similar to each of `queries` (Q, D), best first.

    `k` 0 means every row. `exclude[q]`, when not None, is a row never returned for query q (the
    query itself). Returns one (rows int64, scores float32) pair per query; equal scores come out
    in row order. Reads `index` in blocks, so a memory map is never loaded whole."""
    queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    n = len(index)
    k = n if k <= 0 else min(k, n)
    exclude = list(exclude) if exclude is not None else [None] * len(queries)
    step = rows_per_block or block_rows(queries.shape[1])
    per_pass = max(1, min(QUERY_BLOCK, (1 << 24) // max(k + step, 1)))  # running top-k stays small
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for q0 in range(0, len(queries), per_pass):
        q = unit_rows(queries[q0 : q0 + per_pass])
        out.extend(_nearest_pass(index, q, k, exclude[q0 : q0 + per_pass], step))
    return out


@np.errstate(over="ignore", invalid="ignore")  # infinities and NaNs: left out below
def cosines(q: np.ndarray, block: np.ndarray) -> np.ndarray:
    """(Q, b) cosines of unit rows `q` with the rows of `block`, read once where they lie (a
    memory-mapped block is not copied): the dot products divided by the rows' norms. A block
    with values so large that a float32 dot product could overflow is multiplied in float64."""
    block = np.asarray(block, dtype=np.float32)
    norms = row_norms(block)
    if np.any(norms > SAFE_NORM):
        scores = (q.astype(np.float64) @ block.astype(np.float64).T).astype(np.float32)
        np.divide(scores, np.where(norms > 0, norms, 1.0), out=scores, casting="unsafe")
    else:
        scores = q @ block.T
        scores /= np.where(norms > 0, norms, 1.0).astype(np.float32)
    scores[np.isnan(scores)] = -np.inf  # a row of NaNs (or infinities) is never anyone's neighbour
    return scores


def _top(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] <= k:
        return scores, rows
    keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)


def _nearest_pass(index, q, k, exclude, step):
    best_s = np.empty((len(q), 0), dtype=np.float32)
    best_r = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, len(index), step):
        scores = cosines(q, index[start : start + step])
        for i, row in enumerate(exclude):
            if row is not None and start <= row < start + scores.shape[1]:
                scores[i, row - start] = -np.inf
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1], dtype=np.int64), scores.shape)
        scores, rows = _top(scores, rows, k)
        best_s, best_r = _top(np.hstack([best_s, scores]), np.hstack([best_r, rows]), k)
    order = np.lexsort((best_r, -best_s), axis=1)
    best_s, best_r = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_r, order, 1)
    found = []
    for s, r in zip(best_s, best_r):
        ok = np.isfinite(s)
        found.append((r[ok], np.clip(s[ok], -1.0, 1.0)))
    return found


def duplicates(
    index: np.ndarray, threshold: float = 0.98, rows_per_block: int | None = None, pair_budget: int = PAIR_BUDGET
) -> Iterator[tuple[int, int, float]]:
    """Every pair of rows (a < b) whose cosine is at least `threshold`, each pair once, in row
    order, yielded as found. Compares a block of rows with the blocks after them, counting the
    matches of each row; while a block's pairs fit `pair_budget` they are kept and yielded in
    order, else its rows are taken again in runs whose matches fit the budget (one row's never
    exceed the index's row count), so memory stays bounded however many rows are identical."""
    step = rows_per_block or min(block_rows(index.shape[1]), 4096)  # 4096 x 4096 scores: 64 MiB
    n = len(index)
    for a0 in range(0, n, step):
        a = unit_rows(index[a0 : a0 + step])
        counts = np.zeros((len(a), -(-n // step)), dtype=np.int64)  # matches of each row, per b-block
        kept: list[tuple[np.ndarray, ...]] | None = []
        for b0 in range(a0, n, step):
            hits, scores = _matches(a, a0, index, b0, step, threshold)
            counts[:, b0 // step] = hits.sum(axis=1)
            if kept is not None and counts.sum() <= pair_budget:
                i, j = np.nonzero(hits)
                kept.append((a0 + i, b0 + j, scores[i, j]))
            else:
                kept = None
        if kept is not None:
            yield from _in_order(kept)
            continue
        for r0, r1 in _runs(counts.sum(axis=1), pair_budget):
            found = []
            for col in np.nonzero(counts[r0:r1].any(axis=0))[0]:
                hits, scores = _matches(a[r0:r1], a0 + r0, index, int(col) * step, step, threshold)
                i, j = np.nonzero(hits)
                found.append((a0 + r0 + i, int(col) * step + j, scores[i, j]))
            yield from _in_order(found)


def _matches(a: np.ndarray, a0: int, index: np.ndarray, b0: int, step: int, threshold: float):
    """(hits, scores) of unit rows `a` (index rows a0...) with rows b0..b0+step; hits: later rows."""
    scores = cosines(a, index[b0 : b0 + step])
    hits = scores >= threshold
    if b0 < a0 + len(a):  # rows at or before each a row are not pairs (each pair once)
        hits &= (b0 + np.arange(scores.shape[1]))[None, :] > (a0 + np.arange(len(a)))[:, None]
    return hits, scores


def _runs(counts: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive runs of rows whose match counts add up to at most `budget` (a row on its own
    when it alone has more); rows without matches cost nothing."""
    start, total = 0, 0
    for r, c in enumerate(counts.tolist()):
        if total + c > budget and r > start:
            yield start, r
            start, total = r, 0
        total += c
    if total:
        yield start, len(counts)


def _in_order(parts: list[tuple[np.ndarray, ...]]) -> Iterator[tuple[int, int, float]]:
    if not parts:
        return
    i, j, s = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((j, i))
    for c0 in range(0, len(order), 1 << 16):  # a few Python objects at a time
        o = order[c0 : c0 + (1 << 16)]
        yield from zip(i[o].tolist(), j[o].tolist(), np.clip(s[o], -1.0, 1.0).tolist())


# ---------------------------------------------------------------- the index and its queries


def open_index(path: Path) -> Embeddings:
    """The index a search runs on: a `matpac embed --out X.npy` output (matrix, row index,
    manifest), or `X.parquet` (a file or a folder of shards; its embedding column is read into
    memory, where a .npy is memory-mapped)."""
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
    planned: list[Query] = []
    failed: list[InputError] = []
    index_csv = naming.row_index(emb.path)
    for name in queries:
        row = lookup.find(name)
        if row is not None:
            planned.append(Query(name, row=row))
        elif os.path.isdir(name):
            for item in discover([name], extensions):
                hit = lookup.find(item.name)
                planned.append(Query(item.name, row=hit) if hit is not None else Query(item.name, path=item.path))
        elif os.path.isfile(name):
            planned.append(Query(name, path=Path(name)))
        else:
            failed.append(InputError(name, f"not a path in {index_csv} and does not exist"))
    return planned, failed


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
        config = EmbedConfig(out=out, layer=str(layer or "last"), options=options or RunOptions(batch_size=QUERY_BATCH))
        summary = embed([Item(q.name, q.path) for q in files], predictor, config, events)
        if not summary.done:
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
) -> Iterator[dict]:
    """Long-format rows `query, rank, path, score` for every query that has a vector, in order."""
    ready = [q for q in queries if q.row is not None or q.name in vectors]
    if not ready:
        return
    dim = matrix.shape[1]
    vecs = np.stack([np.asarray(matrix[q.row]) if q.row is not None else vectors[q.name] for q in ready])
    if vecs.shape[1] != dim:
        raise UsageError(f"the queries' embeddings have {vecs.shape[1]} dimensions but the index has {dim}")
    exclude = [None if include_self else q.row for q in ready]
    for q, (rows, scores) in zip(ready, nearest(matrix, vecs, top_k, exclude)):
        for rank, (row, score) in enumerate(zip(rows.tolist(), scores.tolist()), start=1):
            if threshold is not None and score < threshold:
                break
            yield {"query": q.name, "rank": rank, "path": emb_paths[row], "score": score}


def duplicate_rows(emb_paths: Sequence[str], matrix: np.ndarray, threshold: float = 0.98) -> Iterator[dict]:
    for a, b, score in duplicates(matrix, threshold):
        yield {"path_a": emb_paths[a], "path_b": emb_paths[b], "score": score}
