"""`search --duplicates` by k-means cells (`jobs.dup_cells`): the same pairs, scores and order as
comparing every pair, on clustered sets shaped like real embeddings (a large shared mean,
genres, artists, tracks), while comparing a small share of the pairs.

The reference is the exact all-pairs path (`exact_duplicates`), itself checked against a float64
numpy cosine in test_search.py, and a float64 numpy cosine here for the planted pairs.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import run_matpac

from matpac_cli.jobs import dup_cells
from matpac_cli.jobs.dup_cells import CellStats, cell_duplicates, duplicates
from matpac_cli.jobs.similarity import exact_duplicates


def catalogue(n: int, dim: int = 96, seed: int = 0, per_artist: int = 12) -> np.ndarray:
    """Rows = shared mean + genre + artist + track offsets (each in a low-rank subspace with a
    decaying spectrum) + a small isotropic floor: unrelated rows score about 0.2-0.9, rows of one
    artist 0.85-0.97, as clip embeddings of a music library do."""
    rng = np.random.default_rng(seed)
    rank = min(32, dim)
    basis = rng.standard_normal((rank, dim)) / np.sqrt(dim)
    spec = (1.0 + np.arange(rank)) ** -0.5
    spec /= np.sqrt((spec**2).sum())

    def offsets(m: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((m, rank)) * spec * scale) @ basis

    mean = rng.standard_normal(dim)
    genres = offsets(8, 1.0)
    artists = genres[rng.integers(0, 8, n // per_artist + 1)] + offsets(n // per_artist + 1, 0.6)
    x = 1.3 * mean / np.linalg.norm(mean) + artists[rng.integers(0, len(artists), n)] + offsets(n, 0.45)
    return (x + 0.08 * rng.standard_normal((n, dim)) / np.sqrt(dim)).astype(np.float32)


def plant(x: np.ndarray, pairs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Near copies: half at cosine about 0.999, half about 0.985 (a re-encode, a lossy copy)."""
    planted = []
    for p in range(pairs):
        a, b = sorted(rng.choice(len(x), 2, replace=False).tolist())
        noise = rng.standard_normal(x.shape[1]) / np.sqrt(x.shape[1])
        x[b] = x[a] + (0.02 if p % 2 else 0.12) * np.linalg.norm(x[a]) * noise
        planted.append((a, b))
    return planted


def cosine64(x: np.ndarray, a: int, b: int) -> float:
    u, v = x[a].astype(np.float64), x[b].astype(np.float64)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def same_answer(got, want, x: np.ndarray, threshold: float) -> None:
    """The same pairs in the same order with the same scores (to float32 rounding), but for a
    pair whose cosine is within rounding of the threshold: float32 products of other shapes may
    put it on either side (the exact path's own answer for it changes with its block size)."""
    scores = {(a, b): s for a, b, s in want}
    odd = {(a, b) for a, b, _ in got} ^ set(scores)
    assert all(abs(cosine64(x, a, b) - threshold) < 2e-6 for a, b in odd), odd
    assert [(a, b) for a, b, _ in got if (a, b) not in odd] == [p for p in scores if p not in odd]
    if scores:
        np.testing.assert_allclose(
            [s for a, b, s in got if (a, b) in scores], [scores[a, b] for a, b, _ in got if (a, b) in scores], atol=2e-6
        )


@pytest.mark.parametrize("threshold", [0.98, 0.999])
def test_planted_duplicates_are_all_found_comparing_few_pairs(threshold):
    """Every planted pair at or above the threshold is found (the float64 cosine decides which
    are), the answer is the exact path's, and under 2% of the pairs were scored in full."""
    rng = np.random.default_rng(11)
    x = catalogue(6000, seed=3)
    planted = plant(x, 40, rng)
    stats = CellStats()
    i, j, s = cell_duplicates(x, threshold, stats)
    got = list(zip(i.tolist(), j.tolist(), s.tolist()))
    want = list(exact_duplicates(x, threshold))
    same_answer(got, want, x, threshold)
    above = [p for p in planted if cosine64(x, *p) >= threshold + 1e-5]
    assert len(above) >= 15 and set(above) <= {(a, b) for a, b, _ in got}
    assert stats.fallback is None and stats.cells > 10
    assert stats.compared < 0.02 * stats.all_pairs, stats


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equals_every_pair_compared_on_random_sets(seed):
    """Several sets (clustered at random widths, with zero, NaN and repeated rows) and
    thresholds: `duplicates` through the cells equals `duplicates(exact=True)` pair for pair."""
    rng = np.random.default_rng(100 + seed)
    x = catalogue(int(rng.integers(1500, 4000)), dim=int(rng.choice([48, 96, 160])), seed=seed)
    plant(x, 30, rng)
    x[5] = 0.0
    x[17] = np.nan
    x[40:46] = x[39]  # identical rows: all their pairs
    for threshold in (0.9, 0.95, 0.98, 0.999):
        same_answer(
            list(duplicates(x, threshold, exact=False)), list(duplicates(x, threshold, exact=True)), x, threshold
        )


def test_falls_back_to_every_pair_where_cells_cannot_help(monkeypatch):
    """Below 0.5, where the bound prunes nothing, and where more pairs match than are held to
    sort, the exact path answers (the same pairs, streamed)."""
    x = catalogue(800, seed=5)
    stats = CellStats()
    assert cell_duplicates(x, 0.3, stats) is None and "threshold" in stats.fallback
    x[100:400] = x[99]  # 44,850 identical pairs: one cell holds 14% of all pairs
    stats = CellStats()
    assert cell_duplicates(x, 0.98, stats) is None and "keeps" in stats.fallback  # every pair is cheaper
    monkeypatch.setattr(dup_cells, "WORK_SHARE", 1.0)
    monkeypatch.setattr(dup_cells, "PAIR_LIMIT", 10_000)
    stats = CellStats()
    assert cell_duplicates(x, 0.98, stats) is None and "pairs match" in stats.fallback
    same_answer(list(duplicates(x, 0.98, exact=False)), list(exact_duplicates(x, 0.98)), x, 0.98)


def write_index(folder, x: np.ndarray):
    np.save(folder / "e.npy", x)
    with open(folder / "e.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", "path", "duration_s", "sample_rate", "channels", "truncated"])
        w.writerows([i, f"t{i:05d}.flac", "30.000", 44100, 2, 0] for i in range(len(x)))
    return folder / "e.npy"


def test_command_finds_planted_pairs_with_and_without_exact(tmp_path):
    """`matpac search --duplicates` on an index past PRUNE_ROWS (the cells' path) and with
    --exact (every pair): the same file, byte for byte but the last digits of a score, holding
    every planted pair above the threshold."""
    rng = np.random.default_rng(21)
    x = catalogue(dup_cells.PRUNE_ROWS + 500, dim=64, seed=8)
    planted = plant(x, 20, rng)
    npy = write_index(tmp_path, x)
    runs = {}
    for name, extra in (("cells", []), ("exact", ["--exact"])):
        proc = run_matpac(["search", "--index", str(npy), "--duplicates", "--threshold", "0.98", *extra])
        assert proc.returncode == 0, proc.stderr
        runs[name] = list(csv.DictReader(proc.stdout.decode().splitlines()))
    assert [(r["path_a"], r["path_b"]) for r in runs["cells"]] == [(r["path_a"], r["path_b"]) for r in runs["exact"]]
    np.testing.assert_allclose(
        [float(r["score"]) for r in runs["cells"]], [float(r["score"]) for r in runs["exact"]], atol=2e-6
    )
    found = {(r["path_a"], r["path_b"]) for r in runs["cells"]}
    above = [(f"t{a:05d}.flac", f"t{b:05d}.flac") for a, b in planted if cosine64(x, a, b) >= 0.98 + 1e-5]
    assert len(above) >= 10 and set(above) <= found


def test_the_gap_of_two_close_centroids_keeps_its_digits():
    """The bisector bound divides by the centroids' gap: one computed too small (float32 lost most
    of the digits of two centroids 1e-3 apart) makes the bound too large, and a match is lost."""
    rng = np.random.default_rng(3)
    c = rng.standard_normal(3840)
    c /= np.linalg.norm(c)
    step = rng.standard_normal(3840)
    cents = np.stack([c, c + 1e-3 * step / np.linalg.norm(step)]).astype(np.float32)
    want = np.linalg.norm(cents[0].astype(np.float64) - cents[1].astype(np.float64))
    _, gap = dup_cells._gaps(cents)
    assert gap[0, 1] == pytest.approx(want, rel=1e-6) and gap[1, 0] == gap[0, 1] and np.isinf(gap[0, 0])
