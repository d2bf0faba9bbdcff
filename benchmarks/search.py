"""Exact search speed: 100 queries against a 100k x 3840 float32 index, and --duplicates.

Writes a random index in the format `matpac embed --out` writes (matrix, row index; no manifest,
so only path queries), in a temporary folder, then times:
  (a) `matpac_cli.jobs.similarity.nearest`, 100 queries x the memory-mapped index, top 10, exact;
  (b) the `matpac search` program end to end (start-up, reading the row index, writing CSV),
      with the same 100 queries named by their paths;
  (c) `matpac_cli.jobs.similarity.exact_duplicates` over the first --dup-rows rows (all pairs;
      `benchmarks/duplicates.py` measures the k-means cells that `search --duplicates` uses).
Each figure is the best of --repeat runs with the index in the page cache (the first run after
writing it), and a check that (a) equals a float64 numpy cosine on a few queries.

  python benchmarks/search.py                       # 100k x 3840, 100 queries, duplicates on 20k
  python benchmarks/search.py --rows 20000 --json out.json
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

from matpac_cli.jobs.similarity import exact_duplicates, nearest


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--dup-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "queries": args.queries,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    with tempfile.TemporaryDirectory(prefix="matpac-bench-search-") as tmp:
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
