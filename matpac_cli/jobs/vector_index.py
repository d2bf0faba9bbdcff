"""An approximate neighbour index for `search` at a million rows: k-means lists (IVF), probed,
then re-ranked by the exact cosine.

Exact search (`similarity.nearest`) reads the whole matrix for every pass of queries: 15 GB at a
million rows of 3840 floats, about 20 s here each time. An inverted file splits the unit rows
into about sqrt(N) k-means lists, made in the rows' 128 leading principal directions (fit on a
sample: `dup_cells`' k-means works at full width, 30 times the cost of the assignment at 3840-d,
where the lists need only be good, not exact); a query reads only the
rows of its `probes` nearest lists (about 1-3% of the matrix) and scores them with the exact
cosine (`similarity.cosines`), so the rows returned carry their exact scores and only recall may
differ from exact search. The probe count is set where recall@10 against exact search stays at
or above 0.95 on a clustered catalogue like real embeddings (benchmarks/search.py measures it).

The index is over *items*: the rows of the matrix, or, for a library, its audio keys (a file
copied to two paths is one item and two rows; the keys do not change when files move, so the
index outlives a rename). `row_items` maps each row of the searched matrix to its item.
Lance's own vector index is not used: it takes fixed-size list columns only, and the library's
clips embedding column is a variable-length list<float32> (its schema stays as it is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from matpac_cli.jobs.dup_cells import _unit32
from matpac_cli.jobs.similarity import block_rows, cosines, unit_rows

PROBE_SHARE = 1 / 32  # lists probed per query, a share of the lists (at least MIN_PROBES): recall@10 0.98-0.99
MIN_PROBES = 8
MOST_LISTS = 4096
WIDTH = 128  # principal directions the lists are made in
QUERY_BLOCK = 1024  # queries per pass (their candidates held at once: k per list probed)


class Items:
    """Rows `ids` of a matrix, or of a library's vectors by key, read a block at a time (so a
    library's vectors are never copied into a second matrix whole)."""

    def __init__(self, source, keys: Sequence[str] | None = None) -> None:
        self.source, self.keys = source, keys
        first = source[keys[0]] if keys is not None and len(keys) else None
        dim = len(first) if first is not None else (source.shape[1] if keys is None else 0)
        self.shape = (len(keys) if keys is not None else len(source), dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids) -> np.ndarray:
        if self.keys is None:
            return np.asarray(self.source[ids], dtype=np.float32)
        picked = range(*ids.indices(len(self))) if isinstance(ids, slice) else np.asarray(ids).tolist()
        rows = [self.source[self.keys[i]] for i in picked]
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, self.shape[1]), np.float32)


def lists_for(items: int) -> int:
    """About sqrt(N) lists: the build grows as N * lists, a query as lists + N / lists * probes."""
    return int(np.clip(round(np.sqrt(items)), 1, MOST_LISTS))


def probes_for(lists: int) -> int:
    return int(min(lists, max(MIN_PROBES, round(lists * PROBE_SHARE))))


@dataclass
class VectorIndex:
    """IVF lists over unit vectors: list j holds items[offsets[j]:offsets[j + 1]], the rows whose
    projection on `basis` is nearest to centroids[j]; a query probes its `probes` nearest lists
    (more where they hold too few)."""

    basis: np.ndarray  # (width, D) float32: orthonormal leading principal directions
    centroids: np.ndarray  # (lists, width) float32, in the projected space
    offsets: np.ndarray  # (lists + 1,) int64
    items: np.ndarray  # int64 item ids, list by list
    probes: int

    @classmethod
    def build(cls, vectors, lists: int | None = None, probes: int | None = None, seed: int = 0) -> VectorIndex:
        """k-means on the projections of a sample of the valid unit rows of `vectors` (a matrix
        or `Items`) on their `WIDTH` leading principal directions, then every row projected and
        assigned to its nearest centroid, a block at a time. In the projection the build costs
        about WIDTH / D of the full-width one (at 3840-d, 1/30); recall is the probes' concern."""
        rng = np.random.default_rng(seed)
        n, dim = len(vectors), vectors.shape[1]
        k = lists or lists_for(n)
        take = np.sort(rng.choice(n, min(n, max(32 * k, 4096)), replace=False)) if n else np.zeros(0, np.int64)
        sample = _unit32(vectors[take]) if n else np.zeros((0, dim), np.float32)
        sample = sample[np.all(np.isfinite(sample), axis=1) & np.any(sample != 0, axis=1)]  # no NaN centroid
        basis = principal(sample, min(WIDTH, dim), rng)
        cents = kmeans(sample @ basis.T, min(k, max(len(sample), 1)), rng)
        owner = np.empty(n, dtype=np.int64)
        step = min(block_rows(dim), 4096)
        for start in range(0, n, step):
            owner[start : start + step] = nearest_lists(cents, _projected(vectors[start : start + step], basis), 1)[
                :, 0
            ]
        order = np.argsort(owner, kind="stable")
        offsets = np.searchsorted(owner[order], np.arange(len(cents) + 1)).astype(np.int64)
        return cls(basis, cents, offsets, order.astype(np.int64), probes or probes_for(len(cents)))

    def check(self, items: int, dim: int) -> None:
        """Raise ValueError where the arrays do not describe an index of `items` x `dim` (a cache
        file cut short or written by something else)."""
        lists = len(self.centroids)
        ok = (
            self.basis.ndim == 2
            and self.basis.shape[1] == dim
            and self.centroids.ndim == 2
            and self.centroids.shape[1] == len(self.basis)
            and self.offsets.shape == (lists + 1,)
            and self.items.shape == (items,)
            and self.offsets[0] == 0
            and self.offsets[-1] == items
            and bool(np.all(np.diff(self.offsets) >= 0))
            and (items == 0 or (self.items.min() >= 0 and self.items.max() < items))
            and 1 <= self.probes
        )
        if not ok:
            raise ValueError("the arrays do not make an index of this matrix")

    def nearest(
        self,
        matrix: np.ndarray,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[int | None] | None = None,
        row_items: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`similarity.nearest`'s answer from the probed lists: the `k` rows of `matrix` most
        cosine-similar to each query among the rows of its lists, best first (equal scores in
        row order), with their exact cosines. `row_items[r]` is row r's item (None: row r is
        item r); `exclude[q]`, when not None, is never returned for query q. The work goes list
        by list: each list probed is read once and scored against every query probing it (one
        BLAS product), as exact search reads a block once for a pass of queries."""
        queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        exclude = list(exclude) if exclude is not None else [None] * len(queries)
        k = min(k, len(matrix))
        offsets, rows = self._list_rows(len(matrix), row_items)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for q0 in range(0, len(queries), QUERY_BLOCK):
            q = unit_rows(queries[q0 : q0 + QUERY_BLOCK])
            probed = self._probed(q, np.diff(offsets), k + 1)
            found: list[list] = [[] for _ in q]
            for j in sorted(set().union(*probed)):
                asking = [i for i, lists in enumerate(probed) if j in lists]
                listed = rows[offsets[j] : offsets[j + 1]]
                step = block_rows(matrix.shape[1])  # a list of identical rows (silence) may be most of them
                for s0 in range(0, len(listed), step):
                    got = listed[s0 : s0 + step]
                    scores = cosines(q[asking], np.asarray(matrix[got]))
                    for a, i in enumerate(asking):
                        found[i].append(_best(got, scores[a], k, exclude[q0 + i]))
            out.extend(_merged(parts, k) for parts in found)
        return out

    def _list_rows(self, n: int, row_items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, rows): the rows of `matrix` in each list, list by list, in row order."""
        if row_items is None:
            return self.offsets, self.items
        owner = np.empty(len(self.items), dtype=np.int64)
        owner[self.items] = np.repeat(np.arange(len(self.centroids)), np.diff(self.offsets))
        row_owner = owner[np.asarray(row_items, dtype=np.int64)]
        order = np.argsort(row_owner, kind="stable")
        return np.searchsorted(row_owner[order], np.arange(len(self.centroids) + 1)), order

    def _probed(self, q: np.ndarray, sizes: np.ndarray, need: int) -> list[set[int]]:
        """Each query's lists: its `probes` nearest, and more while they hold fewer than `need`
        rows (a query whose lists are nearly empty still gets k neighbours)."""
        order = nearest_lists(self.centroids, q @ self.basis.T, len(self.centroids))
        out = []
        for lists in order:
            upto = max(self.probes, int(np.searchsorted(np.cumsum(sizes[lists]), need)) + 1)
            out.append(set(lists[:upto].tolist()))
        return out


def principal(sample: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """(width, D) orthonormal leading principal directions of `sample`, float32: a randomized
    range finder (one power iteration), then the eigenvectors of the small projected covariance."""
    dim = sample.shape[1]
    if len(sample) < 2 or width >= dim:
        return np.eye(dim, dtype=np.float32)[:width]
    centred = sample - sample.mean(axis=0)
    span = centred.T @ (centred @ rng.standard_normal((dim, width + 8)).astype(np.float32))
    span = np.linalg.qr(centred.T @ (centred @ span))[0].astype(np.float64)
    small = (centred @ span.astype(np.float32)).astype(np.float64)
    _, vectors = np.linalg.eigh(small.T @ small)  # ascending: the last `width` lead
    return np.linalg.qr(span @ vectors[:, ::-1][:, :width])[0].T.astype(np.float32)


def _projected(block: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The unit rows of `block` projected on `basis`: the product first, then divided by the
    norms (no unit copy of the block; float32 norms suffice to pick a list, and a row too large
    for them projects to 0, a row of NaNs to NaN: list 0, nobody's neighbour)."""
    block = np.asarray(block, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        out = (block @ basis.T) / np.where(norms > 0, norms, 1.0)[:, None]
    return out


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """k centroids of `points` (Lloyd's, seeded from k of them; an empty list keeps its centroid)."""
    if not len(points):
        return np.zeros((1, points.shape[1]), np.float32)
    cents = points[rng.choice(len(points), min(k, len(points)), replace=False)].copy()
    for _ in range(iters):
        own = nearest_lists(cents, points, 1)[:, 0]
        order = np.argsort(own, kind="stable")
        counts = np.bincount(own, minlength=len(cents))
        filled = np.nonzero(counts)[0]
        sums = np.add.reduceat(points[order], np.searchsorted(own[order], filled), axis=0)
        cents[filled] = sums / counts[filled, None]
    return cents.astype(np.float32)


def nearest_lists(cents: np.ndarray, points: np.ndarray, count: int) -> np.ndarray:
    """(rows, count) ids of each point's nearest centroids, nearest first (Euclidean, as k-means
    assigns them; a row of NaNs goes to list 0 and is nobody's neighbour)."""
    dist = np.einsum("ij,ij->i", cents, cents)[None, :] - 2.0 * (points @ cents.T)
    dist[np.isnan(dist)] = np.inf
    if count == 1:
        return np.argmin(dist, axis=1)[:, None]
    if count >= dist.shape[1]:
        return np.argsort(dist, axis=1, kind="stable")
    part = np.argpartition(dist, count - 1, axis=1)[:, :count]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(dist, part, 1), axis=1, kind="stable"), 1)


def _best(rows: np.ndarray, scores: np.ndarray, k: int, exclude: int | None):
    """The best `k` (rows, scores) of one list for one query (the excluded row left out)."""
    if exclude is not None:
        scores = np.where(rows == exclude, -np.inf, scores)
    if len(rows) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        rows, scores = rows[keep], scores[keep]
    return rows, scores


def _merged(parts: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's best `k` over its lists, best first, equal scores in row order."""
    if not parts or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = np.concatenate([r for r, _ in parts]).astype(np.int64)
    scores = np.concatenate([s for _, s in parts])
    order = np.lexsort((rows, -scores))[:k]
    rows, scores = rows[order], scores[order]
    ok = np.isfinite(scores)
    return rows[ok], np.clip(scores[ok], -1.0, 1.0)
