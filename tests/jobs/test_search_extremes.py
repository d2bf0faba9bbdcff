"""`matpac search` on extreme indexes (issue 20): values near float32's limits keep their
cosines, and `--duplicates` streams its pairs in bounded memory however many rows match.

The indexes are hand-written `.npy` + `.csv` pairs, as `matpac embed` lays them out, searched
through the real command.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import run_matpac


def write_index(folder: Path, matrix: np.ndarray) -> Path:
    """`folder/e.npy` with its row index `e.csv` (paths `f0000.wav`...)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "e.npy", matrix.astype(np.float32))
    with open(folder / "e.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", "path", "duration_s", "sample_rate", "channels", "truncated"])
        for i in range(len(matrix)):
            w.writerow([i, f"f{i:04d}.wav", "1.000", 16000, 1, 0])
    return folder / "e.npy"


def test_huge_and_tiny_values_keep_their_cosines(tmp_path):
    """Rows scaled by 1e30 (their float32 squared norm overflows) and by 1e-30 (it vanishes):
    the neighbours and scores are those of the unscaled rows, not 0."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 64))
    base[1] = base[0] + 0.05 * rng.standard_normal(64)
    for scale in (1e30, 1e-30, 3e36):
        npy = write_index(tmp_path / f"s{scale:g}", base * scale)
        proc = run_matpac(["search", "f0000.wav", "--index", str(npy), "-k", "5"], cwd=npy.parent)
        assert proc.returncode == 0 and b"Warning" not in proc.stderr, proc.stderr
        got = list(csv.DictReader(proc.stdout.decode().splitlines()))
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        want = unit[1:] @ unit[0]
        assert got[0]["path"] == "f0001.wav", (scale, got)
        np.testing.assert_allclose(
            sorted((float(r["score"]) for r in got), reverse=True), np.sort(want)[::-1], atol=1e-5
        )
    dup = run_matpac(["search", "--index", str(tmp_path / "s1e+30" / "e.npy"), "--duplicates", "--threshold", "0.99"])
    assert dup.returncode == 0 and dup.stdout.decode().splitlines()[1].startswith("f0000.wav,f0001.wav,")


def _peak_rss_mib(args: list[str], cwd: Path) -> tuple[int, float]:
    """(exit status, peak resident MiB) of `matpac ARGS` alone in a fresh parent, so no other
    child of this test session counts in RUSAGE_CHILDREN."""
    code = (
        "import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'matpac_cli', *{args!r}], stdout=subprocess.DEVNULL)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, check=True, text=True)
    rc, kib = out.stdout.split()
    return int(rc), int(kib) / 1024


def test_duplicates_of_3000_identical_rows_stream_in_bounded_memory(tmp_path):
    """3,000 identical rows are 4,498,500 pairs: every one is written, in index order, while the
    command's peak memory stays far below what holding them costs (before pairs were streamed
    the command held a block's pairs as a list and peaked at 992 MiB; streamed, 140 MiB)."""
    n = 3000
    write_index(tmp_path, np.ones((n, 8)))
    rc, peak = _peak_rss_mib(["search", "--index", "e.npy", "--duplicates", "--out", "d.csv", "-q"], tmp_path)
    assert rc == 0
    with open(tmp_path / "d.csv", "rb") as fh:
        assert fh.readline() == b"path_a,path_b,score\n"
        first = [fh.readline() for _ in range(n)]
        count = n + 1 + sum(1 for _ in fh)
    assert count - 1 == n * (n - 1) // 2
    assert first[0] == b"f0000.wav,f0001.wav,1\n" and first[-2] == b"f0000.wav,f2999.wav,1\n"
    assert first[-1] == b"f0001.wav,f0002.wav,1\n"
    print(f"duplicates of {n} identical rows: peak RSS {peak:.0f} MiB")
    assert peak < 300, f"peak RSS {peak:.0f} MiB"


def test_rows_holding_nan_or_infinity_are_nobodys_neighbour(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5, 16))
    X[1] = np.nan
    X[3, 2] = np.inf
    npy = write_index(tmp_path, X)
    dup = run_matpac(["search", "--index", str(npy), "--duplicates", "--threshold", "-1"])
    assert dup.returncode == 0 and b"Warning" not in dup.stderr, dup.stderr
    pairs = [ln.split(",")[:2] for ln in dup.stdout.decode().splitlines()[1:]]
    assert pairs == [["f0000.wav", "f0002.wav"], ["f0000.wav", "f0004.wav"], ["f0002.wav", "f0004.wav"]]
    near = run_matpac(["search", "f0001.wav", "f0003.wav", "f0000.wav", "--index", str(npy), "-k", "0"], cwd=tmp_path)
    assert near.returncode == 0 and b"Warning" not in near.stderr, near.stderr
    got = [ln.split(",") for ln in near.stdout.decode().splitlines()[1:]]
    assert {r[0] for r in got} == {"f0000.wav"} and {r[2] for r in got} == {"f0002.wav", "f0004.wav"}
