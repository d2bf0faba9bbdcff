"""How big and how slow `matpac report` is for a library (not a test).

Writes, under a temporary folder (or --keep DIR), a synthetic run in exactly the formats matpac
writes: `tags.csv` with `--segments` rows (top 5 per head and per segment, genre and mood heads,
real label names) and its manifest, and `emb.npy` + `emb.csv` + `emb.manifest.json` (N x D
float32). Tracks belong to one of a dozen styles, which set both their scores and their
embeddings, so the page has structure to show. Then runs the real command

    matpac report tags.csv --embeddings emb.npy --out report.html

and prints the page size, the build time and the peak RSS of that process (the inputs are
written by another one, so it does not count theirs).

    python benchmarks/report_size.py                  # 5,000 tracks of about 3.5 minutes, 3840-d
    python benchmarks/report_size.py --files 300 --keep /tmp/lib   # keep the inputs and the page
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HEADS = ("mtg_genre", "mtg_mood")
STYLES = 12
HOP, LENGTH = 6.08, 6.095  # matpac's 608-frame segments


def _labels(head: str) -> list[str]:
    return (REPO / "weights" / "labels" / f"{head}.txt").read_text().split()


def _top5(name: str, head: str, tags: list[str], scores: np.ndarray, times=None):
    for rank, i in enumerate(np.argsort(-scores)[:5], start=1):
        row = {
            "path": name,
            "head": head,
            "label": tags[i].rsplit("---", 1)[-1],
            "score": float(scores[i]),
            "rank": rank,
            "tag_id": tags[i],
            "start_s": None,
            "end_s": None,
        }
        if times is not None:
            row.update(start_s=round(times[0], 3), end_s=round(times[1], 3))
        yield row


def write_run(folder: Path, n: int, dim: int, seed: int = 0) -> None:
    # imported here: tag_rows brings torch, and a parent that holds torch makes its children's
    # peak RSS (counted from the fork, before exec) look 500 MB larger
    from matpac_cli.jobs.tag_rows import columns
    from matpac_cli.outputs import writers
    from matpac_cli.outputs.readers import INDEX_COLUMNS

    rng = np.random.default_rng(seed)
    style = rng.integers(0, STYLES, n)
    durations = np.clip(rng.lognormal(np.log(210), 0.35, n), 20, 900)
    names = [
        f"music/{['rock', 'jazz', 'ambient', 'electronic'][s % 4]}/album{s:02d}/track{i:05d}.flac"
        for i, s in enumerate(style)
    ]
    centres = rng.standard_normal((STYLES, dim)).astype(np.float32)
    tags = {h: _labels(h) for h in HEADS}
    bias = {h: rng.normal(0, 2.2, (STYLES, len(tags[h]))) - 2.0 for h in HEADS}
    with writers.Unit() as unit, unit.open(folder / "tags.csv") as fh:
        out = writers.RowWriter(fh, "csv", columns(True))
        for i, name in enumerate(names):
            for h in HEADS:
                logits = bias[h][style[i]] + rng.normal(0, 0.8, len(tags[h]))
                for row in _top5(name, h, tags[h], 1 / (1 + np.exp(-logits))):
                    out.write(row)
                starts = np.arange(0, durations[i] - 0.015, HOP)
                drift = np.cumsum(rng.normal(0, 0.35, (len(starts), len(tags[h]))), axis=0)
                for s, seg in zip(starts, 1 / (1 + np.exp(-(logits + drift)))):
                    times = (s, min(s + LENGTH, durations[i] - 0.005))
                    for row in _top5(name, h, tags[h], seg, times):
                        out.write(row)
    manifest = {
        "matpac_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "command": ["matpac", "tag", "music", "--segments", "--out", "tags.csv"],
        "models": [
            {
                "name": "matpac-plus-music",
                "source": "synthetic",
                "sha256": "0" * 64,
                "device": "cuda",
                "precision": "bfloat16",
            }
        ],
        "heads": [
            {
                "name": h,
                "encoder": "matpac-plus-music",
                "source": f"probes:music/{h}.pth",
                "activation": "sigmoid",
                "classes": len(tags[h]),
            }
            for h in HEADS
        ],
        "output": {"path": "tags.csv", "format": "csv", "columns": columns(True), "top_k": 5, "threshold": None},
    }
    writers.write_json(folder / "tags.csv.manifest.json", manifest)
    rows = (centres[s] + 0.9 * rng.standard_normal(dim).astype(np.float32) for s in style)
    with writers.Unit() as unit:
        unit.matrix(folder / "emb.npy", list(rows))
        unit.csv(
            folder / "emb.csv",
            INDEX_COLUMNS,
            [[i, name, f"{d:.3f}", 44100, 2, 0] for i, (name, d) in enumerate(zip(names, durations))],
        )
        unit.json(folder / "emb.manifest.json", {"matpac_version": "0.1.0", "models": [{"name": "matpac-plus-music"}]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--keep", type=Path, help="write inputs and page here instead of a temporary folder")
    ap.add_argument("--inputs-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inputs_only:  # in a child process, so the measured command does not start from its memory
        write_run(args.inputs_only, args.files, args.dim)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--files",
                str(args.files),
                "--dim",
                str(args.dim),
                "--inputs-only",
                str(folder),
            ],
            check=True,
        )
        rows = sum(1 for _ in open(folder / "tags.csv")) - 1
        print(
            f"inputs: {args.files} tracks, {rows:,} tag rows ({(folder / 'tags.csv').stat().st_size / 2**20:.0f} MB), "
            f"{args.files} x {args.dim} embeddings; written in {time.monotonic() - started:.1f} s"
        )
        cmd = [
            sys.executable,
            "-m",
            "matpac_cli",
            "report",
            "tags.csv",
            "--embeddings",
            "emb.npy",
            "--out",
            "report.html",
            "--force",
        ]
        started = time.monotonic()
        with open(folder / "report.stderr", "w+") as err:
            proc = subprocess.Popen(cmd, cwd=folder, stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)})
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the input writer's
            wall = time.monotonic() - started
            err.seek(0)
            message = err.read().strip()
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"matpac report failed: {message}")
        rss = usage.ru_maxrss / 1024
        size = (folder / "report.html").stat().st_size
        print(
            f"report.html: {size / 2**20:.2f} MB for {args.files} tracks; built in {wall:.1f} s, peak RSS {rss:.0f} MB"
        )
        print(message)


if __name__ == "__main__":
    main()
