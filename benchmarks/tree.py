"""How fast matpac walks a large tree of unreadable files (not a test).

Builds, under a temporary folder, N files that are empty or 1 byte long, named `.wav`, spread over
folders of 500, plus a few good WAVs; then runs the real command

    matpac embed TREE --out e.npy --model TINY.pt -q

(TINY.pt: a generated width-128, depth-2 checkpoint, so the encoder costs next to nothing) and
prints the wall time, files per second and the peak RSS of that process.

    python benchmarks/tree.py                      # 50,000 files
    python benchmarks/tree.py --files 2000
    PYTHONPATH=/tmp/old python benchmarks/tree.py --files 2000   # another copy of matpac_cli

The command runs in the temporary folder, so PYTHONPATH decides which matpac_cli it imports.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference import make_checkpoint

PER_FOLDER = 500


def build_tree(root: Path, n_bad: int, n_good: int) -> None:
    for i in range(n_bad):
        folder = root / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:06d}.wav").write_bytes(b"" if i % 2 == 0 else b"\0")
    rng = np.random.default_rng(0)
    for k in range(n_good):
        t = np.arange(16000) / 16000
        x = 0.1 * rng.standard_normal(16000) + 0.2 * np.sin(2 * np.pi * (220 + 110 * k) * t)
        sf.write(root / f"d{k % max(1, n_bad // PER_FOLDER):04d}" / f"good{k}.wav", x.astype(np.float32), 16000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000, help="empty and 1-byte .wav files (default 50000)")
    ap.add_argument("--good", type=int, default=3, help="good 1 s WAVs among them (default 3)")
    ap.add_argument("--workers", default=None, help="passed to matpac as --workers")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="matpac-tree-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "tree").mkdir()
        t0 = time.perf_counter()
        build_tree(tmp_path / "tree", args.files, args.good)
        torch.save(make_checkpoint(width=128, depth=2, n_t=608, seed=0), tmp_path / "tiny.pt")
        print(
            f"tree: {args.files} empty/1-byte .wav + {args.good} good, built in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        cmd = [
            sys.executable,
            "-m",
            "matpac_cli",
            "embed",
            "tree",
            "--out",
            "e.npy",
            "--model",
            "tiny.pt",
            "-q",
            *(["--workers", args.workers] if args.workers else []),
        ]
        start = time.perf_counter()
        with open(tmp_path / "stderr.txt", "wb") as err:
            proc = subprocess.run(
                cmd,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ),
                check=False,
            )
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

        lines = (tmp_path / "stderr.txt").read_text(errors="replace").splitlines()
        rows = np.load(tmp_path / "e.npy").shape[0] if (tmp_path / "e.npy").exists() else 0
        total = args.files + args.good
        probe = subprocess.run(
            [sys.executable, "-c", "import matpac_cli, sys; sys.stdout.write(matpac_cli.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=False,
        ).stdout
        print(f"matpac_cli: {Path(probe).parent}")
        print(f"exit status {proc.returncode}; {rows} row(s) embedded; {len(lines)} line(s) on stderr")
        for line in lines[:2]:
            print(f"  e.g. {line}")
        print(f"wall      : {wall:8.1f} s")
        print(f"rate      : {total / wall:8.0f} files/s")
        print(f"peak RSS  : {peak_mb:8.0f} MB")


if __name__ == "__main__":
    main()
