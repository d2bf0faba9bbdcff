"""Exact search speed: 100 queries against a 100k x 3840 float32 index, and --duplicates.

Writes a random index in the format `matpac embed --out` writes (matrix, row index; no manifest,
so only path queries), in a temporary folder, then times:
  (a) `matpac_cli.jobs.similarity.nearest`, 100 queries x the memory-mapped index, top 10, exact;
  (b) the `matpac search` program end to end (start-up, reading the row index, writing CSV),
      with the same 100 queries named by their paths;
  (c) `matpac_cli.jobs.similarity.exact_duplicates` over the first --dup-rows rows (all pairs;
      `benchmarks/duplicates.py` measures the k-means cells that `search --duplicates` uses);
  (d) the vector index `search` uses from 200,000 rows (`jobs.vector_index`), on the clustered
      catalogue of benchmarks/duplicates.py (a shared mean, genres, artists; like real clip
      embeddings, where a random index has no neighbours worth the name): its build (k-means
      and every row assigned, then written as the cache), 1 and --queries queries against exact
      `nearest` over the same rows, and recall@10 against exact. --index-only runs (d) alone.
Each figure is the best of --repeat runs with the index in the page cache (the first run after
writing it), and a check that (a) equals a float64 numpy cosine on a few queries.

  python benchmarks/search.py                       # 100k x 3840, 100 queries, duplicates on 20k
  python benchmarks/search.py --rows 20000 --json out.json
  python benchmarks/search.py --index-only --rows 1000000 --dim 768   # 1M x 3840 is 15 GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matpac_cli.jobs.search_index import save
from matpac_cli.jobs.similarity import exact_duplicates, nearest
from matpac_cli.jobs.vector_index import VectorIndex


def write_index(folder: Path, rows: int, dim: int, seed: int = 0) -> Path:
    """A random (rows, dim) float32 .npy written block by block (never whole in memory), + .csv."""
    npy = folder / "emb.npy"
    rng = np.random.default_rng(seed)
    with open(npy, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for start in range(0, rows, 4096):
            fh.write(rng.standard_normal((min(4096, rows - start), dim), dtype=np.float32).tobytes())
    with open(folder / "emb.csv", "w") as fh:
        fh.write("row,path,duration_s,sample_rate,channels,truncated\n")
        fh.writelines(f"{i},lib/track{i:06d}.flac,30.000,44100,2,0\n" for i in range(rows))
    return npy


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def check(index: np.ndarray, picks: np.ndarray, got) -> float:
    """Largest score difference from a float64 numpy cosine, on three queries (rows must agree);
    read in blocks of rows, so float64 never holds the whole index."""
    x = np.asarray(index[picks[:3]], dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.empty((3, len(index)))
    for start in range(0, len(index), 8192):
        block = np.asarray(index[start : start + 8192], dtype=np.float64)
        sims[:, start : start + len(block)] = x @ block.T / np.linalg.norm(block, axis=1)
    worst = 0.0
    for q in range(3):
        sims[q, picks[q]] = -np.inf
        top = np.argsort(-sims[q])[:10]
        assert got[q][0].tolist() == top.tolist(), "rows differ from numpy"
        worst = max(worst, float(np.abs(got[q][1] - sims[q, top]).max()))
    return worst


def vector_index(folder: Path, rows: int, dim: int, queries: int) -> dict:
    """(d): build, query and recall of the vector index against exact search, same rows."""
    sys.path.insert(0, str(Path(__file__).parent))
    from duplicates import write_catalogue

    npy = folder / "catalogue.npy"
    t0 = time.perf_counter()
    write_catalogue(npy, rows, dim)
    out = {"catalogue_write_s": time.perf_counter() - t0}
    index = np.load(npy, mmap_mode="r")
    picks = np.sort(np.random.default_rng(3).choice(rows, queries, replace=False))
    q, skip = np.asarray(index[picks]), picks.tolist()
    nearest(index, q[:1], 10, skip[:1])  # the page cache warm for both
    out["exact_1_s"], _ = best_of(2, lambda: nearest(index, q[:1], 10, skip[:1]))
    out["exact_s"], exact = best_of(1, lambda: nearest(index, q, 10, skip))
    t0 = time.perf_counter()
    built = VectorIndex.build(index)
    save(built, folder / "index.npz", "benchmark")
    out["build_s"] = time.perf_counter() - t0
    out["lists"], out["probes"] = len(built.centroids), built.probes
    out["index_1_s"], _ = best_of(2, lambda: built.nearest(index, q[:1], 10, skip[:1]))
    out["index_s"], got = best_of(1, lambda: built.nearest(index, q, 10, skip))
    hits = [len(set(a[0].tolist()) & set(e[0].tolist())) / 10 for a, e in zip(got, exact)]
    out["recall_at_10"], out["worst_query_recall"] = float(np.mean(hits)), float(np.min(hits))
    out["rows_read_per_query"] = built.probes * rows // len(built.centroids)  # about: lists differ in size
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def print_index(result: dict, queries: int) -> None:
    d = result["index"]
    build, one = d["build_s"], d["exact_1_s"]
    print(
        f"(d) vector index, clustered catalogue: build {build} s ({d['lists']} lists, {d['probes']} probed; "
        f"{build / max(one, 1e-9):.1f}x one exact query); recall@10 {d['recall_at_10']:.3f} "
        f"(worst query {d['worst_query_recall']:.1f}); a query reads about {d['rows_read_per_query']:,} rows"
    )
    print(
        f"    1 query: exact {one} s, index {d['index_1_s']} s ({one / max(d['index_1_s'], 1e-9):.0f}x); "
        f"{queries} queries: exact {d['exact_s']} s, index {d['index_s']} s "
        f"({d['exact_s'] / max(d['index_s'], 1e-9):.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dup-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--index-only", action="store_true", help="only (d), the vector index")
    args = ap.parse_args()
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="matpac-bench-search-") as tmp:
        result["index"] = vector_index(Path(tmp), args.rows, args.dim, args.queries)
        print(f"index {args.rows} x {args.dim} float32, {result['cpus']} CPUs, {result['machine']}")
        print_index(result, args.queries)
        if args.index_only:
            if args.json:
                args.json.write_text(json.dumps(result, indent=2) + "\n")
            return
        t0 = time.perf_counter()
        npy = write_index(Path(tmp), args.rows, args.dim)
        result["write_s"] = round(time.perf_counter() - t0, 2)
        index = np.load(npy, mmap_mode="r")
        picks = np.random.default_rng(1).choice(args.rows, args.queries, replace=False)
        queries = np.asarray(index[np.sort(picks)])
        picks = np.sort(picks)
        result["nearest_s"], got = best_of(args.repeat, lambda: nearest(index, queries, 10, picks.tolist()))
        result["max_score_error"] = check(index, picks, got)
        names = [f"lib/track{i:06d}.flac" for i in picks]
        cmd = [
            sys.executable,
            "-m",
            "matpac_cli",
            "search",
            *names,
            "--index",
            str(npy),
            "--quiet",
            "--out",
            str(Path(tmp) / "near.csv"),
            "--force",
        ]
        result["cli_s"], _ = best_of(args.repeat, lambda: subprocess.run(cmd, check=True))
        sub = index[: args.dup_rows]
        result["dup_rows"] = len(sub)
        result["duplicates_s"], pairs = best_of(1, lambda: list(exact_duplicates(sub, 0.98)))
        result["duplicate_pairs"] = len(pairs)
    for key in ("nearest_s", "cli_s", "duplicates_s"):
        result[key] = round(result[key], 2)
    print(
        f"index {args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / 2**30:.2f} GiB), "
        f"{result['cpus']} CPUs, {result['machine']}"
    )
    print(
        f"(a) nearest, {args.queries} queries, top 10, exact: {result['nearest_s']} s "
        f"(max |score - numpy float64| {result['max_score_error']:.1e})"
    )
    print(f"(b) `matpac search` program, {args.queries} path queries: {result['cli_s']} s")
    print(
        f"(c) duplicates over {result['dup_rows']} rows (all pairs): {result['duplicates_s']} s, "
        f"{result['duplicate_pairs']} pairs >= 0.98"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
