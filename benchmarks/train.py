"""Time `matpac train`'s probe training on synthetic embeddings (no audio, no encoder).

    python benchmarks/train.py                      # 1,000 x 3840, 10 classes, single-label
    python benchmarks/train.py --n 5000 --task multi --folds 5

The embeddings are class means plus Gaussian noise (classes a probe separates only in part), the shape of MATPAC++ clip embeddings
(3840-d). It times what `matpac train --embeddings emb.npy` spends after reading them: the
split, the scaler, the learning-rate grid (1e-4, 3e-4, 1e-3, 3e-3) with early stopping, and the
report; and prints the validation figure so a run that learned nothing is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from matpac_cli.jobs.probe import TrainConfig
from matpac_cli.jobs.train import train
from matpac_cli.jobs.train_data import Features, Labelled
from matpac_cli.pipeline.discovery import Item

SEPARATION = 0.08  # class-mean scale against unit noise: about 85% validation accuracy, not 100%


def synthetic(n: int, dim: int, classes: int, task: str, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))
    names = [f"c{k}" for k in range(classes)]
    if task == "single":
        y = rng.integers(0, classes, n)
        labels = [[names[k]] for k in y]
        x = centres[y] * SEPARATION + rng.normal(0, 1, (n, dim))
    else:
        y = rng.random((n, classes)) < 2 / classes
        y[np.arange(n), rng.integers(0, classes, n)] = True
        labels = [[names[k] for k in np.flatnonzero(row)] for row in y]
        x = (y @ centres) * SEPARATION + rng.normal(0, 1, (n, dim))
    items = [Item(f"f{i}.wav", Path(f"f{i}.wav")) for i in range(n)]
    labelled = Labelled(Path("synthetic"), items, labels, sorted(names), task)
    return Features(
        x.astype(np.float32) + 3.0, labelled, {"name": "synthetic", "source": "none", "sha256": ""}, "synthetic", 12
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--task", choices=("single", "multi"), default="single")
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    features = synthetic(args.n, args.dim, args.classes, args.task, args.seed)
    import torch  # imported before the clock starts, as the CLI has it loaded by then

    start = time.perf_counter()
    result = train(features, TrainConfig(folds=args.folds, seed=args.seed))
    seconds = time.perf_counter() - start
    r = result.report
    out = {
        "n": args.n,
        "dim": args.dim,
        "classes": args.classes,
        "task": args.task,
        "folds": args.folds,
        "seconds": round(seconds, 2),
        "metric": r["metric"],
        "chosen": r["chosen"],
        "epochs_run": [s.get("epochs_run") for s in r["search"]],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    print(
        f"train {args.n} x {args.dim}, {args.classes} classes ({args.task}"
        f"{f', {args.folds} folds' if args.folds else ', 0.1 split'}): {seconds:.2f} s; "
        f"validation {r['metric']['name']} {r['metric']['value']:.3f}, lr {r['chosen']['lr']:g}, "
        f"epoch {r['chosen']['epoch']}"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
