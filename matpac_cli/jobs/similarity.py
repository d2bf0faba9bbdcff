"""Exact cosine similarity over an embedding matrix, in blocks: nearest rows and near-duplicate pairs.

Exact search over the (often memory-mapped) matrix, in blocks: a block of index rows is
multiplied by every (unit-length) query at once, where it lies in the map (one BLAS call, no
copy), divided by the rows' norms, and a running top-k per query keeps the best rows seen so far.
Memory stays at one block (about 64 MiB) plus the queries, whatever the size of the index;
100k x 3840 float32 is read once per 1,024 queries. Below 200,000 rows this is all `search`
does; above, a few queries go through a vector index (`jobs.vector_index`) whose candidates are
scored here (`cosines`), so its scores are these.

Cosine of a zero vector with anything is taken as 0. Scores are float32 dot products of unit
vectors, clipped to [-1, 1]; norms are summed in float64 (a float32 sum of squares overflows past
about 1e19), and a block with rows longer than 1e30 is multiplied in float64. The `search` job
(`jobs.search`) and the report's map (`jobs.report.mapping`) both search through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

BLOCK_BYTES = 64 * 2**20  # index rows read, normalised and multiplied at a time
QUERY_BLOCK = 1024  # queries per pass over the index
SAFE_NORM = 1e30  # rows longer than this are multiplied in float64 (a float32 dot could overflow)
PAIR_BUDGET = 1 << 20  # pairs of --duplicates held at once (about 20 MiB), however many match


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


def exact_duplicates(
    index: np.ndarray, threshold: float = 0.98, rows_per_block: int | None = None, pair_budget: int = PAIR_BUDGET
) -> Iterator[tuple[int, int, float]]:
    """Every pair of rows (a < b) whose cosine is at least `threshold`, each pair once, in row
    order, yielded as found, comparing every pair. Compares a block of rows with the blocks after
    them, counting the matches of each row; while a block's pairs fit `pair_budget` they are kept
    and yielded in order, else its rows are taken again in runs whose matches fit the budget (one
    row's never exceed the index's row count), so memory stays bounded however many rows match."""
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
