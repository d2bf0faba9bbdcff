"""The map of a report: the clip embeddings of the tagged files, matched by path, projected on
their first two principal components, and each file's nearest neighbours by cosine.

PCA is a randomised subspace iteration (Halko, Martinsson and Tropp, 2011) over blocks of rows of
the memory-mapped matrix, centred on the fly: ten passes of N x D x 12 products instead of an
N x D SVD, so 50,000 x 3840 takes seconds; the centred rows stay in memory up to 512 MB, and
beyond that are read again from the map on each pass, one block at a time. Neighbours are exact
(`similarity.nearest`, blocked too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from matpac_cli.errors import UsageError
from matpac_cli.outputs.readers import Embeddings

BLOCK_ROWS = 2048
OVERSAMPLE = 10
POWER_ITERATIONS = 4
CACHE_BYTES = 512 * 2**20  # centred rows kept in memory for the passes up to this size


@dataclass
class Map:
    rows: list[int | None]  # per report file: its row in the embeddings, or None
    xy: np.ndarray  # (files with a row, 2), in the order of `placed`
    placed: list[int]  # report files that have a row
    explained: tuple[float, float]  # share of the variance on each axis
    neighbours: list[list[tuple[int, float]]] = field(default_factory=list)  # per placed file: (emb row, cosine)
    extra: list[str] = field(default_factory=list)  # embedded paths that are not in the tags
    missing: int = 0  # report files without an embedding
    layer_note: str = ""


def match_rows(paths: Sequence[str], emb: Embeddings) -> tuple[list[int | None], list[str]]:
    """Each tag path's row in the embeddings (paths compared as written, after normpath, so
    `./a.wav` is `a.wav`); and the embedded paths no tag path names. Refuses embeddings that share
    no file with the tags."""
    rows = {}
    for i, p in enumerate(emb.paths):
        rows.setdefault(os.path.normpath(p), i)
    found = [rows.get(os.path.normpath(p)) for p in paths]
    if not any(r is not None for r in found):
        raise UsageError(
            f"{emb.path}: none of its {len(emb.paths)} files is in the tags "
            f"(first: {emb.paths[0] if emb.paths else 'none'}); these embeddings are of other files"
        )
    named = {os.path.normpath(p) for p in paths}
    extra = [p for p in emb.paths if os.path.normpath(p) not in named]
    return found, extra


def build_map(paths: Sequence[str], emb: Embeddings, neighbours: int = 5, seed: int = 0) -> Map:
    rows, extra = match_rows(paths, emb)
    placed = [i for i, r in enumerate(rows) if r is not None]
    matrix = emb.clip()
    note = "" if emb.matrix.ndim == 2 else f"embeddings hold {emb.matrix.shape[1]} layers; the map uses the last"
    sel = np.array([rows[i] for i in placed], dtype=np.int64)
    xy, explained = pca2(matrix, sel, seed)
    result = Map(rows, xy, placed, explained, extra=extra, missing=len(rows) - len(placed), layer_note=note)
    if neighbours > 0 and len(matrix) > 1:
        result.neighbours = nearest_rows(matrix, sel, neighbours)
    return result


def nearest_rows(matrix: np.ndarray, sel: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each row in `sel`: the `k` other rows of `matrix` most cosine-similar to it, as
    (row, cosine), best first. Queries go 1,024 at a time, one pass over the matrix each."""
    from matpac_cli.jobs.similarity import QUERY_BLOCK, nearest

    out = []
    for a in range(0, len(sel), QUERY_BLOCK):
        part = sel[a : a + QUERY_BLOCK]
        found = nearest(matrix, np.asarray(matrix[part], dtype=np.float32), k, exclude=part.tolist())
        out.extend([(int(r), round(float(c), 4)) for r, c in zip(rs, cs)] for rs, cs in found)
    return out


def pca2(matrix: np.ndarray, sel: np.ndarray, seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """Rows `sel` of `matrix` (N, D) projected on their first two principal components, and the
    share of the total variance each explains. The sign of an axis is arbitrary."""
    n, dim = len(sel), matrix.shape[1]
    blocks = [sel[a : a + BLOCK_ROWS] for a in range(0, n, BLOCK_ROWS)]
    mean = sum(_read(matrix, b).sum(axis=0, dtype=np.float64) for b in blocks) / max(n, 1)
    centred = _Centred(matrix, blocks, mean.astype(np.float32))
    total = sum(float(np.square(x, dtype=np.float64).sum()) for x in centred)
    k = min(2 + OVERSAMPLE, dim, max(n, 1))
    y = centred.times(np.random.default_rng(seed).standard_normal((dim, k)))
    for _ in range(POWER_ITERATIONS):
        q, _ = np.linalg.qr(y)
        z, _ = np.linalg.qr(centred.t_times(q))
        y = centred.times(z)
    q, _ = np.linalg.qr(y)
    _, s, vt = np.linalg.svd(centred.t_times(q).T, full_matrices=False)
    axes = vt[:2]
    if len(axes) < 2:  # one dimension or one file: a flat second axis
        axes = np.vstack([axes, np.zeros((2 - len(axes), dim))])
    xy = centred.times(axes.T)
    shares = [float(v * v / total) if total > 0 else 0.0 for v in s[:2]] + [0.0, 0.0]
    return xy, (shares[0], shares[1])


def _read(matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(matrix[rows], dtype=np.float32))


class _Centred:
    """The selected rows minus their mean, block by block: kept in memory when they fit in
    CACHE_BYTES, read again from the memory map on every pass otherwise."""

    def __init__(self, matrix: np.ndarray, blocks: list[np.ndarray], mean: np.ndarray) -> None:
        self.matrix, self.blocks, self.mean = matrix, blocks, mean
        size = sum(len(b) for b in blocks) * matrix.shape[1] * 4
        self.cache = list(self._read()) if size <= CACHE_BYTES else None

    def _read(self):
        for b in self.blocks:
            yield _read(self.matrix, b) - self.mean

    def __iter__(self):
        return iter(self.cache) if self.cache is not None else self._read()

    def times(self, q: np.ndarray) -> np.ndarray:  # (X - mean) @ q, (n, k) in float64
        q = q.astype(np.float32)
        parts = [x @ q for x in self]
        return np.vstack(parts).astype(np.float64) if parts else np.zeros((0, q.shape[1]))

    def t_times(self, y: np.ndarray) -> np.ndarray:  # (X - mean).T @ y, (D, k)
        out, start = np.zeros((self.matrix.shape[1], y.shape[1])), 0
        for x in self:
            out += x.T @ y[start : start + len(x)].astype(np.float32)
            start += len(x)
        return out
