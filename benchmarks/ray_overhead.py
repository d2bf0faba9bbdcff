"""Ray's fixed cost: `matpac embed` on the local engine against `--engine ray` on the same files
(not a test). Whole commands, interleaved rounds, wall time of each and the difference.

Three contenders on the same folder of 44.1 kHz stereo FLAC and a full-size ViT-B checkpoint
(random weights): the local engine; `--engine ray` on a running cluster (a head on 127.0.0.2
started here, as the tests do); and `--engine ray` with no cluster (matpac starts a local Ray
instance for the run). Outputs are checked to agree (max difference printed).

`--wire` instead prints the bytes per audio-second that cross the object store from the decoding
tasks to the encoder actors: the rows `engines.work.decode_files` yields (pickled chunks and their
index columns), as the driver configures it for a CPU cluster and for a GPU one, beside the
input-rate chunks a GPU run sent before (resampling on the GPU) and the 16 kHz float32 figure
(64,000 B). No cluster is needed: the rows are the same wherever the task runs.

    python benchmarks/ray_overhead.py [--files 6 --seconds 30 --rounds 3]
    python benchmarks/ray_overhead.py --wire [--seconds 60]
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


def wire_bytes(path: Path, defer: bool) -> tuple[int, float]:
    """(bytes, seconds of one thread) of the rows a decoding task yields for `path`."""
    import pickle

    from matpac_cli.engines.work import decode_files
    from matpac_cli.pipeline.discovery import Item

    batch = {"i": np.array([0]), "item": np.array([pickle.dumps(Item(str(path), path))], dtype=object)}
    t0 = time.perf_counter()
    rows = list(decode_files(batch, (608,), defer))
    took = time.perf_counter() - t0
    return sum(sum(len(b) for b in r["data"]) + 8 * 3 * len(r["data"]) for r in rows), took


def wire(seconds: float) -> None:
    """Bytes per audio-second from decoding to encoding, per input rate and path."""
    import torch

    from matpac_cli.engines.ray.driver import decode_kwargs

    torch.set_num_threads(1)  # a decoding task's share
    work = Path(tempfile.mkdtemp(prefix="matpac-ray-wire-"))
    paths = {
        "CPU cluster": decode_kwargs("cpu", (608,))["defer"],
        "GPU cluster": decode_kwargs("cuda", (608,))["defer"],
        "GPU, input rate (before)": True,
    }
    print(f"bytes per audio-second, decoding -> encoding ({seconds:.0f} s stereo FLAC; 16 kHz float32 = 64,000)")
    for sr in (16000, 44100, 48000):
        flac = work / f"t{sr}.flac"
        make_flac(flac, seconds, seed=1, sr=sr)
        for name, defer in paths.items():
            wire_bytes(flac, defer)  # warm
            size, took = wire_bytes(flac, defer)
            print(
                f"  {sr / 1000:4.1f} kHz  {name:25s} {size / seconds:9,.0f} B/s  decoding {seconds / took:5.0f}x real time"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wire", action="store_true", help="print the bytes per audio-second on the wire, and stop")
    a = ap.parse_args()
    if a.wire:
        wire(a.seconds if a.seconds != 30.0 else 60.0)
        return
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
