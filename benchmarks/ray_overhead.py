"""Ray's fixed cost: `matpac embed` on the local engine against `--engine ray` on the same files
(not a test). Whole commands, interleaved rounds, wall time of each and the difference.

Three contenders on the same folder of 44.1 kHz stereo FLAC and a full-size ViT-B checkpoint
(random weights): the local engine; `--engine ray` on a running cluster (a head on 127.0.0.2
started here, as the tests do); and `--engine ray` with no cluster (matpac starts a local Ray
instance for the run). Outputs are checked to agree (max difference printed).

    python benchmarks/ray_overhead.py [--files 6 --seconds 30 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from raycluster import ENV, Node  # noqa: E402
from throughput import make_checkpoint, make_flac  # noqa: E402


def timed(args: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "matpac_cli", *args], env={**os.environ, **env}, capture_output=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr.decode()[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="matpac-ray-bench-"))
    ckpt = work / "vitb.pt"
    make_checkpoint(ckpt)
    clips = work / "clips"
    clips.mkdir()
    for i in range(a.files):
        make_flac(clips / f"t{i}.flac", a.seconds, seed=i)
    head = Node("127.0.0.2")
    try:
        base = ["embed", str(clips), "--model", str(ckpt), "-q", "--force"]
        runs = {
            "local": (base + ["--out", str(work / "local.npy")], {}),
            "ray, running cluster": (
                base + ["--out", str(work / "ray.npy"), "--engine", "ray"],
                {**ENV, "RAY_ADDRESS": head.address},
            ),
            "ray, local instance": (
                base + ["--out", str(work / "inst.npy"), "--engine", "ray"],
                {"RAY_USAGE_STATS_ENABLED": "0"},
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(a.rounds):
            for name, (args, env) in runs.items():
                times[name].append(timed(args, env))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    finally:
        head.cleanup()
    local = np.load(work / "local.npy")
    diff = max(float(np.abs(np.load(work / f) - local).max()) for f in ("ray.npy", "inst.npy"))
    audio = a.files * a.seconds
    print(
        f"\n{a.files} files x {a.seconds:.0f} s (44.1 kHz stereo FLAC), ViT-B, {os.cpu_count()} cores; "
        f"max |ray - local| = {diff:.2e}"
    )
    med_local = statistics.median(times["local"])
    for name, values in times.items():
        med = statistics.median(values)
        extra = "" if name == "local" else f"  (+{med - med_local:.1f} s over local)"
        print(f"  {name:22s} median {med:6.1f} s  {audio / med:6.1f}x real time{extra}")


if __name__ == "__main__":
    main()
