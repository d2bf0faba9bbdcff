"""`search --duplicates` at 25,000 / 50,000 / 100,000 rows, by k-means cells against every pair,
and what an IVF index (k-means lists, exact re-ranking) would give `search` at the largest size.

The index is synthetic and clustered like clip embeddings of a music library: a large shared
mean, 16 genres, artists of about 40 tracks, track offsets, each level in a 256-dimensional
subspace with a decaying spectrum, plus a small isotropic floor (unrelated tracks score about
0.2-0.87, tracks of one artist 0.86-0.97), with planted near copies (half at about 0.999, half
about 0.985). It is written block by block into a temporary .npy and memory-mapped; the smaller
sizes are its first rows. Figures are CPU seconds (time.process_time, every thread counted) of
this process; the machine's load and BLAS threads are printed with them.

  (a) duplicates by cells (`jobs.dup_cells`) at each size: CPU s, pairs found, pairs scored in full;
      the growth exponent between sizes (2 is every pair);
  (b) every pair (`exact_duplicates`) at --exact-rows (25,000): CPU s, and the cells' recall
      against it (found / exact pairs), and the planted pairs found at every size;
  (c) IVF for `search`: build (the assignment of every row to --lists k-means lists), recall@10
      of --queries queries against exact, and their query time against exact `nearest`.

  OPENBLAS_NUM_THREADS=1 python benchmarks/duplicates.py
  python benchmarks/duplicates.py --sizes 5000 10000 --exact-rows 5000 --dim 768 --no-search
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from matpac_cli.jobs.dup_cells import CellStats, _kmeans, _unit32, cell_duplicates
from matpac_cli.jobs.similarity import exact_duplicates, nearest


def write_catalogue(npy: Path, n: int, dim: int, seed: int = 1, plants: int = 200) -> list[tuple[int, int]]:
    """The synthetic index (see above) written in blocks; the planted pairs (a < b)."""
    rng = np.random.default_rng(seed)
    rank = 256
    basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(dim)
    spec = (1.0 + np.arange(rank)) ** -0.5
    spec = (spec / np.sqrt((spec**2).sum())).astype(np.float32)

    def offsets(m: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((m, rank)).astype(np.float32) * spec * scale) @ basis

    mean = rng.standard_normal(dim).astype(np.float32)
    mean *= 1.3 / np.linalg.norm(mean)
    genres = offsets(16, 1.0)
    artists = genres[rng.integers(0, 16, n // 40 + 1)] + offsets(n // 40 + 1, 0.6)
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, 8192):
        m = min(8192, n - s)
        floor = 0.08 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
        out[s : s + m] = mean + artists[rng.integers(0, len(artists), m)] + offsets(m, 0.45) + floor
    planted = []
    for p in range(plants):
        a, b = sorted(rng.choice(n, 2, replace=False).tolist())
        noise = rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
        out[b] = out[a] + (0.02 if p % 2 else 0.12) * np.linalg.norm(out[a]) * noise
        planted.append((a, b))
    out.flush()
    return planted


def cos64(x: np.ndarray, a: int, b: int) -> float:
    u, v = np.asarray(x[a], dtype=np.float64), np.asarray(x[b], dtype=np.float64)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def cpu(fn):
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def ivf(index: np.ndarray, queries: np.ndarray, lists: int, probes: list[int], seed: int = 0) -> dict:
    """An IVF index over `index`: k-means lists fit on a sample, every row assigned (the build),
    then each query's `probe` nearest lists searched exactly. {probe: (cpu s, answers)}, build s."""
    valid = np.arange(len(index))
    build, (cents, _) = cpu(lambda: _kmeans(index, valid, lists, np.random.default_rng(seed)))
    t0 = time.process_time()
    owner = np.concatenate([np.argmax(_unit32(index[s : s + 4096]) @ cents.T, 1) for s in range(0, len(index), 4096)])
    build += time.process_time() - t0
    members = [np.nonzero(owner == c)[0] for c in range(len(cents))]
    out = {"build_s": build}
    for probe in probes:
        t0 = time.process_time()
        top = np.argsort(-(_unit32(queries) @ cents.T), axis=1)[:, :probe]
        answers = []
        for q, cells in zip(queries, top):
            rows = np.sort(np.concatenate([members[c] for c in cells]))
            r, _ = nearest(index[rows], q[None, :], 11)[0]
            answers.append(rows[r])
        out[probe] = (time.process_time() - t0, answers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--exact-rows", type=int, default=25_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--lists", type=int, default=316)
    ap.add_argument("--no-search", action="store_true", help="skip (c)")
    args = ap.parse_args()
    print(
        f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    with tempfile.TemporaryDirectory(prefix="matpac-bench-dups-") as tmp:
        npy = Path(tmp) / "emb.npy"
        planted = write_catalogue(npy, max(args.sizes), args.dim)
        full = np.load(npy, mmap_mode="r")
        t = args.threshold
        timed = []
        for n in sorted(args.sizes):
            x = full[:n]
            stats = CellStats()
            secs, found = cpu(lambda x=x, stats=stats: cell_duplicates(x, t, stats))
            pairs = set(zip(found[0].tolist(), found[1].tolist())) if found is not None else set()
            want = [p for p in planted if p[1] < n and cos64(x, *p) >= t + 1e-5]
            timed.append((n, secs))
            print(
                f"(a) {n} x {args.dim}: cells {secs:.1f} s CPU, {len(pairs)} pairs >= {t}, {stats.cells} cells, "
                f"{stats.compared} of {stats.all_pairs} pairs scored in full ({stats.notes.get('projected', 0)} projected), "
                f"planted found {sum(p in pairs for p in want)}/{len(want)}, fallback {stats.fallback}"
            )
            if n == args.exact_rows:
                esecs, exact = cpu(lambda x=x: list(exact_duplicates(x, t)))
                both = pairs & {(a, b) for a, b, _ in exact}
                print(
                    f"(b) {n}: every pair {esecs:.1f} s CPU, {len(exact)} pairs; cells' recall "
                    f"{len(both)}/{len(exact)}, extra {len(pairs) - len(both)}; {esecs / secs:.0f}x less CPU"
                )
        for (n0, s0), (n1, s1) in zip(timed, timed[1:]):
            print(f"    growth {n0} -> {n1}: exponent {np.log(s1 / s0) / np.log(n1 / n0):.2f}")
        if args.no_search:
            return
        picks = np.sort(np.random.default_rng(2).choice(len(full), args.queries, replace=False))
        queries = np.asarray(full[picks])
        esecs, exact = cpu(lambda: nearest(full, queries, 11))
        got = ivf(full, queries, args.lists, [4, 8, 16, 32])
        print(
            f"(c) search, {args.queries} queries, {len(full)} rows: exact {esecs:.1f} s CPU; IVF build {got['build_s']:.1f} s CPU"
        )
        for probe in (4, 8, 16, 32):
            secs, answers = got[probe]
            recall = np.mean([len(set(a[1:].tolist()) & set(e[0][1:].tolist())) / 10 for a, e in zip(answers, exact)])
            print(f"    IVF {args.lists} lists, {probe} probed: recall@10 {recall:.3f}, {secs:.2f} s CPU")
    print(f"load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
