"""Which tracks a playlist holds and in what order: the rules of `matpac playlist`, as maths on
the library's rows (no files read, no library opened: `jobs.playlist` does that).

The pool is the library's files on disk, one row per audio key (a file copied to two places is
one track: its first path in path order), less any path a playlist line cannot hold (a line
break in its name). Similarity is cosine, exact, through `jobs.similarity.nearest`.

Radio (`radio`): the seeds, then the tracks nearest to the mean of the seeds' unit vectors, best
first, none twice. With `spread_folders` the same tracks are reordered so that two of one folder
(an album, as most libraries are laid out) never follow each other where another order allows:
each place takes the best-ranked track of another folder than the one before, unless a folder
holds so many of the tracks left that it must take this place for none of them to meet later
(more than half of them); only where no order avoids it do two of one folder meet.

Path (`path`): from the track A to the track B in `n` tracks. Each step aims at the point one
k-th of the way from the current track to B (unit vectors; k: the steps left, B's included), and
takes the unused track nearest to that point; the last step is B. So every step moves toward B
by an even share of what is left, from wherever the last step landed. With `spread_folders` a
step takes the nearest track of another folder than the one before (and, on the step before B,
than B's) where there is one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from matpac_cli.jobs.similarity import nearest, unit_rows


class Pool:
    """The rows a playlist may take: `rows` (indexes of `paths`, one per audio key, in path
    order), each one's folder, and the matrix to search."""

    def __init__(self, paths: Sequence[str], keys: Sequence[str], matrix: np.ndarray) -> None:
        self.paths, self.keys, self.matrix = paths, keys, matrix
        self.first: dict[str, int] = {}
        for i, (p, k) in enumerate(zip(paths, keys)):
            if "\n" not in p and "\r" not in p:
                self.first.setdefault(k, i)
        self.rows = set(self.first.values())

    @property
    def size(self) -> int:
        return len(self.rows)

    def folder(self, row: int) -> str:
        return os.path.dirname(self.paths[row])

    def ranked(self, target: np.ndarray, used: set[str], want: int) -> list[tuple[int, float]]:
        """Up to `want` rows of the pool not of the keys `used`, nearest to `target` first."""
        k = min(len(self.paths), want + len(used) + 16)
        while True:
            ((rows, scores),) = nearest(self.matrix, target[None, :], k)
            out = [
                (r, s) for r, s in zip(rows.tolist(), scores.tolist()) if r in self.rows and self.keys[r] not in used
            ]
            if len(out) >= want or k >= len(self.paths):
                return out[:want]
            k = min(len(self.paths), k * 4)


def radio(
    pool: Pool,
    seeds: Sequence[str],
    centre: np.ndarray,
    n: int,
    spread_folders: bool = False,
    before: str | None = None,
) -> list[tuple[int, float]]:
    """(row, score) of the `n - len(seeds)` tracks after the seeds (`seeds`: their keys; `before`:
    the last seed's folder)."""
    want = n - len(seeds)
    if want <= 0:
        return []
    chosen = pool.ranked(centre, set(seeds), want)
    if not spread_folders:
        return chosen
    return spread(chosen, [pool.folder(r) for r, _ in chosen], before)


def spread(items: list, folders: list[str], before: str | None = None) -> list:
    """`items` (best first) reordered so that no two of one folder are neighbours, nor the first
    a neighbour of the folder `before`, where any order allows it; otherwise best first."""
    left = list(range(len(items)))
    out: list[int] = []
    prev = before
    while left:
        counts = Counter(folders[i] for i in left)
        others = [i for i in left if folders[i] != prev]
        if not others:
            pick = left[0]  # every track left is of the last one's folder: they must meet
        else:
            crowded = max((f for f in counts if f != prev), key=lambda f: counts[f])
            must = 2 * counts[crowded] > len(left)  # it needs every other place from here on
            pick = next(i for i in others if folders[i] == crowded) if must else others[0]
        out.append(pick)
        left.remove(pick)
        prev = folders[pick]
    return [items[i] for i in out]


def path(
    pool: Pool,
    ends: tuple[str, str],
    vectors: tuple[np.ndarray, np.ndarray],
    folders: tuple[str, str],
    n: int,
    spread_folders: bool = False,
) -> list[tuple[int, float]]:
    """(row, score) of the `n - 2` tracks between A and B (`ends`: their keys, `vectors`, `folders`),
    each the unused track nearest to its step's aim (see the module's docstring)."""
    here, goal = unit_rows(np.stack([np.asarray(v, dtype=np.float32) for v in vectors]))
    used = set(ends)
    prev = folders[0]
    out: list[tuple[int, float]] = []
    for step in range(n - 2):
        left = n - 1 - step  # steps from here to B, B's own included
        aim = here + (goal - here) / left
        avoid = {prev, folders[1]} if step == n - 3 else {prev}
        got = _step(pool, aim, used, avoid if spread_folders else set())
        if got is None:
            break  # the pool is spent: B comes next
        row, score = got
        out.append((row, score))
        used.add(pool.keys[row])
        prev = pool.folder(row)
        here = unit_rows(pool.matrix[[row]])[0]
    return out


def _step(pool: Pool, aim: np.ndarray, used: set[str], avoid: set) -> tuple[int, float] | None:
    """The unused row nearest `aim`, of a folder not in `avoid` where there is one."""
    ranked = pool.ranked(aim, used, 1 if not avoid else 64)
    if not ranked:
        return None
    if avoid:
        other = next((rs for rs in ranked if pool.folder(rs[0]) not in avoid), None)
        if other is None and len(ranked) == 64:
            ranked = pool.ranked(aim, used, pool.size)
            other = next((rs for rs in ranked if pool.folder(rs[0]) not in avoid), None)
        return other or ranked[0]
    return ranked[0]
