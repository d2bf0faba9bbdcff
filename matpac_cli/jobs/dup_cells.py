"""Near-duplicate pairs without comparing every pair: k-means cells and the bisector bound.

Exact all-pairs search (`similarity.exact_duplicates`, `duplicates` with `exact`) is quadratic: 100,000 x 3840 rows
took 478 s of CPU. Here the unit rows are split into k-means cells (about sqrt(N/2) of them, fit
on a sample), and a pair is compared only where geometry allows it to match. For unit vectors
cos(a, b) >= t exactly when ||a - b|| <= eps = sqrt(2 - 2t). A row `b` of cell j is at least as
close to centroid cj as to ci, so it lies in the half-space of the bisector of ci and cj; a row
`a` of cell i is at least (||a - cj||^2 - ||a - ci||^2) / (2 ||ci - cj||) from that half-space.
A pair (a in i, b in j) can match only if a is within eps of j's half-space and b within eps of
i's: the rows of each cell are compared with each other, and across two cells only the rows near
their common bisector. Nothing is sampled or guessed, so every pair the exact search finds is
found (a bound never prunes a match), then scored by the same cosine (`similarity.cosines`),
to float32 rounding: a score within about 1e-6 of the threshold may fall on either side, as it
does in the exact path between two block sizes (a product's rounding follows its shape).

Float32 error is covered by slack on both sides of every test (`SLACK` on squared distances, a
lower threshold for the bound): slack admits a few more candidates, never fewer. Where the
cells do not separate the rows (the bound would keep most pairs: random, structureless data),
where the matches are too many to hold and sort (`PAIR_LIMIT`), or below `PRUNE_FROM` (zero rows
match at thresholds <= 0, and eps there covers the whole sphere) the caller runs the exact path.
Memory: one block of rows, the centroids, each row's 64 projected coordinates (256 bytes a row),
the list of rows near another cell (12 bytes an entry, at most `NEAR_LIMIT`: about 10 a row on
the benchmark's set), and the pairs found (at most `PAIR_LIMIT`); never N x N.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.jobs.similarity import PAIR_BUDGET, block_rows, cosines, exact_duplicates, row_norms, unit_rows

PRUNE_FROM = 0.5  # thresholds below this take the exact path
PRUNE_ROWS = 8192  # fewer rows: the exact path is as cheap, and the caller takes it
PAIR_LIMIT = 1 << 22  # matches held (16 bytes each) to sort; more: the exact path streams them
NEAR_LIMIT = 1 << 25  # row-cell entries near a bisector (12 bytes each); more: the cells do not separate the rows
WORK_SHARE = 0.1  # cells keeping more of all pairs than this save nothing: a pair they keep costs
# several times what the exact path pays for one (16.7% of pairs kept: 5.5 s against 0.7 s)
SLACK = 1e-3  # allowance for float32 error on squared distances and on the threshold
GROUP = 2048  # rows of one cell compared at a time
PROJECT = 64  # leading principal directions each row is projected on (a cheap first test)


@dataclass
class CellStats:
    """What a run of `cell_duplicates` did (the benchmark prints it; tests check the pruning)."""

    cells: int = 0
    rows: int = 0
    compared: int = 0  # pairs whose cosine was computed
    all_pairs: int = 0  # N (N - 1) / 2
    fallback: str | None = None  # why the exact path must run instead, if it must
    notes: dict = field(default_factory=dict)


def duplicates(
    index: np.ndarray,
    threshold: float = 0.98,
    rows_per_block: int | None = None,
    pair_budget: int = PAIR_BUDGET,
    exact: bool | None = None,
) -> Iterator[tuple[int, int, float]]:
    """Every pair of rows (a < b) whose cosine is at least `threshold`, each pair once, in row
    order. `exact` None: from `PRUNE_ROWS` rows up, only the pairs the k-means cells' bound
    cannot rule out are compared (`cell_duplicates`: the same pairs and scores, far fewer
    comparisons), falling back to all pairs where the cells do not help; False: the cells at
    any size; True: all pairs (`similarity.exact_duplicates`)."""
    if not exact and (exact is False or len(index) >= PRUNE_ROWS):
        found = cell_duplicates(index, threshold)
        if found is not None:
            i, j, s = found
            for c0 in range(0, len(i), 1 << 16):  # a few Python objects at a time
                c1 = c0 + (1 << 16)
                yield from zip(i[c0:c1].tolist(), j[c0:c1].tolist(), np.clip(s[c0:c1], -1.0, 1.0).tolist())
            return
    yield from exact_duplicates(index, threshold, rows_per_block, pair_budget)


def cell_duplicates(index: np.ndarray, threshold: float, stats: CellStats | None = None, seed: int = 0):
    """Every pair (a < b) of rows whose cosine is at least `threshold`, as (i, j, score) arrays
    in row order, or None where the exact path must run instead (`stats.fallback` says why)."""
    stats = stats if stats is not None else CellStats()
    n = len(index)
    stats.rows, stats.all_pairs = n, n * (n - 1) // 2
    if threshold < PRUNE_FROM:
        stats.fallback = f"threshold below {PRUNE_FROM}"
        return None
    valid = _valid_rows(index)  # zero, NaN and infinite rows match nothing at a threshold > 0
    if len(valid) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = int(np.clip(round(np.sqrt(len(valid) / 2)), 1, 1024))
    cents, basis = _kmeans(index, valid, k, np.random.default_rng(seed))
    stats.cells = len(cents)
    eps = float(np.sqrt(2.0 - 2.0 * (threshold - SLACK)))
    cell, near, proj = _assign(index, valid, cents, basis, eps)
    if near is None:
        stats.fallback = "the cells do not separate the rows"
        return None
    members = _members(valid, cell, len(cents))
    cross = _cross_groups(near, len(cents))
    work = sum(len(m) * (len(m) - 1) // 2 for m in members) + sum(len(a) * len(b) for _, a, b in cross)
    stats.notes["near_entries"] = len(near)
    if work > WORK_SHARE * max(stats.all_pairs, 1):
        stats.fallback = f"the bound keeps {work / max(stats.all_pairs, 1):.0%} of the pairs"
        return None
    found = _Found(index, proj, threshold, eps**2 + SLACK)
    for rows in members:
        for g0 in range(0, len(rows), GROUP):
            for h0 in range(g0, len(rows), GROUP):
                found.compare(rows[g0 : g0 + GROUP], rows[h0 : h0 + GROUP], same=g0 == h0)
                if found.count > PAIR_LIMIT:
                    stats.fallback = f"more than {PAIR_LIMIT} pairs match"
                    return None
    for _, a, b in cross:
        for g0 in range(0, len(a), GROUP):
            for h0 in range(0, len(b), GROUP):
                found.compare(a[g0 : g0 + GROUP], b[h0 : h0 + GROUP], same=False)
        if found.count > PAIR_LIMIT:
            stats.fallback = f"more than {PAIR_LIMIT} pairs match"
            return None
    stats.compared, stats.notes["projected"] = found.compared, found.projected
    return found.ordered()


def _valid_rows(index: np.ndarray) -> np.ndarray:
    """Rows with a finite, non-zero norm (the others have no cosine above 0 with anything)."""
    step = block_rows(index.shape[1])
    keep = []
    for start in range(0, len(index), step):
        with np.errstate(over="ignore", invalid="ignore"):
            norms = row_norms(np.asarray(index[start : start + step], dtype=np.float32))
        keep.append(start + np.nonzero(np.isfinite(norms) & (norms > 0))[0])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def _kmeans(index: np.ndarray, valid: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8):
    """k centroids of the unit rows, and the `PROJECT` leading principal directions (orthonormal
    rows), both fit on a sample: their quality changes the speed, never the answer (the bisector
    bound holds for any centroids, and a projection onto orthonormal rows never lengthens a
    difference, so ||P(a - b)|| > eps rules a pair out as surely as ||a - b|| > eps)."""
    take = np.sort(rng.choice(valid, min(len(valid), max(32 * k, 4096)), replace=False))
    sample = _unit32(index[take])
    cents = sample[rng.choice(len(sample), min(k, len(sample)), replace=False)].copy()
    for _ in range(iters):
        own = np.argmax(sample @ cents.T - 0.5 * np.einsum("ij,ij->i", cents, cents)[None, :], axis=1)
        onehot = np.zeros((len(cents), len(sample)), dtype=np.float32)
        onehot[own, np.arange(len(sample))] = 1.0
        counts = onehot.sum(axis=1)
        filled = counts > 0  # an empty cell keeps its centroid
        cents[filled] = (onehot[filled] @ sample) / counts[filled, None]
    centred = sample - sample.mean(axis=0)
    width = min(PROJECT, *centred.shape)
    span = centred.T @ (centred @ rng.standard_normal((centred.shape[1], width + 8)).astype(np.float32))
    for _ in range(2):  # power iterations: the span settles on the leading directions
        span = np.linalg.qr(centred.T @ (centred @ span))[0]
    basis = np.linalg.qr(span.astype(np.float64))[0][:, :width].T  # orthonormal in float64
    return np.unique(cents, axis=0), basis.astype(np.float32)  # equal centroids have no bisector


def _assign(index: np.ndarray, valid: np.ndarray, cents: np.ndarray, basis: np.ndarray, eps: float):
    """Each valid row's cell, the (row, own cell, other cell) entries where the row is within
    eps of the other cell (None where they pass NEAR_LIMIT), and every row's projection."""
    sq, gap = _gaps(cents)
    cell = np.full(len(index), -1, dtype=np.int64)
    proj = np.zeros((len(index), len(basis)), dtype=np.float32)
    near, total = [], 0
    step = min(block_rows(index.shape[1]), 4096)
    for v0 in range(0, len(valid), step):
        rows = valid[v0 : v0 + step]
        unit = _unit32(index[rows] if rows[-1] - rows[0] + 1 > len(rows) else index[rows[0] : rows[-1] + 1])
        proj[rows] = unit @ basis.T
        dist = sq[None, :] - 2.0 * (unit @ cents.T)  # ||u - c||^2 - 1
        own = np.argmin(dist, axis=1)
        cell[rows] = own
        bound = _bound(dist, gap)
        bound[np.arange(len(rows)), own] = np.inf
        r, c = np.nonzero(bound <= eps)
        total += len(r)
        if total > NEAR_LIMIT:
            return cell, None, proj
        near.append(np.stack([rows[r], own[r], c], axis=1).astype(np.int32))  # 12 bytes an entry
    return cell, (np.concatenate(near) if near else np.zeros((0, 3), dtype=np.int32)), proj


def _gaps(cents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centroids' squared norms and their distances to each other (inf to themselves), in
    float64: in float32 the gap of two close centroids lost most of its digits (0.32x the true
    gap at 1e-3 apart in 3840-d), and a gap too small makes the bisector bound too large."""
    c64 = cents.astype(np.float64)
    sq = np.einsum("ij,ij->i", c64, c64)
    gap = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c64 @ c64.T), 0.0))
    np.fill_diagonal(gap, np.inf)
    return sq, gap


def _unit32(x: np.ndarray) -> np.ndarray:
    """Unit rows scaled in float32 (`unit_rows` works in float64, at twice the memory traffic),
    where the norms allow it; where they are extreme, `unit_rows`."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = row_norms(x)
    if not len(x) or norms.min() < 1e-15 or norms.max() > 1e15:
        return unit_rows(x)
    return x * (1.0 / norms).astype(np.float32)[:, None]


def _bound(dist: np.ndarray, gap: np.ndarray, sides: int = 8) -> np.ndarray:
    """(rows, k) lower bounds on the distance from each row to any row of each cell j: a row of
    j is on j's side of its bisector with every other centroid m, so the largest distance to
    those half-spaces, over the row's `sides` nearest centroids m, bounds it."""
    near = np.argpartition(dist, min(sides, dist.shape[1]) - 1, axis=1)[:, :sides]
    bound = np.full(dist.shape, -np.inf)
    for m in near.T:  # one nearby centroid per row at a time
        g = gap[m]  # (rows, k): ||cm - cj||
        excess = dist - dist[np.arange(len(m)), m][:, None] - SLACK
        with np.errstate(divide="ignore", invalid="ignore"):
            side = np.where(g >= 1e-6, excess / (2.0 * g), -np.inf)  # too close to trust: no bound
        np.maximum(bound, side, out=bound)
    return bound


def _members(valid: np.ndarray, cell: np.ndarray, k: int) -> list[np.ndarray]:
    """Rows of each cell, in row order."""
    own = cell[valid]
    order = np.argsort(own, kind="stable")
    cuts = np.searchsorted(own[order], np.arange(k + 1))
    return [valid[order[cuts[i] : cuts[i + 1]]] for i in range(k) if cuts[i + 1] > cuts[i]]


def _cross_groups(near: np.ndarray, k: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """For each pair of cells (i < j): the rows of i near j's half-space, and those of j near
    i's, where both are non-empty (a match needs one of each)."""
    keys = near[:, 1].astype(np.int64) * k + near[:, 2]
    order = np.lexsort((near[:, 0], keys))
    keys, rows = keys[order], near[order, 0]
    uniq, starts = np.unique(keys, return_index=True)
    bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(keys)])))
    groups = []
    for key, (s0, s1) in bounds.items():
        i, j = divmod(key, k)
        if i < j and (other := bounds.get(j * k + i)) is not None:
            groups.append((key, rows[s0:s1], rows[other[0] : other[1]]))
    return groups


class _Found:
    """Matches found so far, and the counts of pairs projected and compared."""

    def __init__(self, index: np.ndarray, proj: np.ndarray, threshold: float, reach: float) -> None:
        self.index, self.proj, self.threshold, self.reach = index, proj, threshold, reach
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.count = self.compared = self.projected = 0

    def compare(self, a: np.ndarray, b: np.ndarray, same: bool) -> None:
        """The matches among rows `a` x rows `b` (both in row order; `same`: the same rows, so
        each pair once): pairs whose projections are within reach (squared) are scored as the
        exact path scores them, the earlier row's unit vector with the later row."""
        if not len(a) or not len(b):
            return
        pa, pb = self.proj[a], self.proj[b]
        d2 = np.einsum("ij,ij->i", pa, pa)[:, None] + np.einsum("ij,ij->i", pb, pb)[None, :] - 2.0 * (pa @ pb.T)
        close = d2 <= self.reach
        if same:
            close &= np.arange(len(b))[None, :] > np.arange(len(a))[:, None]
        self.projected += len(a) * (len(a) - 1) // 2 if same else len(a) * len(b)
        i, j = np.nonzero(close)
        if not len(i):
            return
        self.compared += len(i)
        ra, rb = np.minimum(a[i], b[j]), np.maximum(a[i], b[j])
        ua, ia = np.unique(ra, return_inverse=True)  # one product over the rows involved: the
        ub, ib = np.unique(rb, return_inverse=True)  # exact path's own arithmetic, row for row
        scores = cosines(unit_rows(self.index[ua]), self.index[ub])[ia, ib]
        hit = scores >= self.threshold
        if hit.any():
            self.parts.append((ra[hit], rb[hit], scores[hit]))
            self.count += int(hit.sum())

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        i, j, s = (np.concatenate(x) for x in zip(*self.parts))
        order = np.lexsort((j, i))
        return i[order], j[order], s[order]
