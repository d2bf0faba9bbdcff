"""`matpac embed` against the authors' inference code on the same files, end to end (not a test).

Both run as whole commands (interpreter start, imports, model load, decode, resample, log-mel,
encoder, writing), in interleaved rounds, so a noisy machine slows both alike; the ratio per
round and its median are printed, with the largest difference between the two embeddings.
A third contender, matpac with `MATPAC_CPU_LINEAR=plain`, shows what the oneDNN layers give.

The authors' code runs from its own copy and interpreter (it needs timm 0.4.12 and einops):

    python benchmarks/cpu_vs_authors.py --authors PATH/TO/matpac/inference_matpac \\
        --authors-python PATH/TO/venv/bin/python [--files 6 --seconds 30 --rounds 7]
    python benchmarks/cpu_vs_authors.py --batch-sweep      # encoder ms per chunk at 4/8/16/32

The authors' side reads each file whole with soundfile, averages channels, resamples with
torchaudio (the spec's Kaiser settings), and calls their model (`inference_type="precise"`,
the paper's) once per file, as their README shows; it writes the clip embeddings to a .npy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import make_checkpoint, make_flac  # noqa: E402

AUTHORS_RUNNER = textwrap.dedent('''
    import sys
    import numpy as np, soundfile as sf, torch, torchaudio
    import matpac.encoder as E
    E.encoder_layers_config.__hash__ = object.__hash__  # their dataclass default fails on Python >= 3.11
    from matpac.model import get_matpac
    ckpt, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    model = get_matpac(checkpoint_path=ckpt).eval()
    rows = []
    with torch.inference_mode():
        for f in files:
            x, sr = sf.read(f, dtype="float32", always_2d=True)
            x = torch.from_numpy(x.mean(axis=1))
            x = torchaudio.functional.resample(x, sr, 16000, lowpass_filter_width=64,
                rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser", beta=14.769656459379492)
            emb, _ = model(x[None])
            rows.append(emb[0].numpy())
    np.save(out, np.stack(rows))
''')


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])} ...\n{proc.stderr.decode()[-2000:]}")
    return took


def compare(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="matpac-vs-authors-"))
    ckpt = tmp / "vitb.pt"
    make_checkpoint(ckpt)
    clips = tmp / "clips"
    clips.mkdir()
    files = []
    for i in range(args.files):
        files.append(clips / f"clip{i:02d}.flac")
        make_flac(files[-1], args.seconds, seed=i)
    runner = tmp / "authors_runner.py"
    runner.write_text(AUTHORS_RUNNER)
    env_authors = {"PYTHONPATH": str(Path(args.authors).resolve())}
    authors = [args.authors_python, str(runner), str(ckpt), str(tmp / "authors.npy"), *map(str, files)]
    matpac = [sys.executable, "-m", "matpac_cli", "embed", str(clips), "--out", str(tmp / "matpac.npy"),
              "--model", str(ckpt), "--device", "cpu", "--quiet", "--force"]
    plain = list(matpac)
    plain[plain.index("--out") + 1] = str(tmp / "plain.npy")
    contenders = {"authors": (authors, env_authors), "matpac": (matpac, {}),
                  "matpac-plain": (plain, {"MATPAC_CPU_LINEAR": "plain"})}
    for cmd, env in contenders.values():  # warm-up: page cache, first-run caches (hash, probes)
        timed(cmd, env)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    audio_s = args.files * args.seconds
    print(f"{args.files} x {args.seconds:.0f} s 44.1 kHz stereo FLAC ({audio_s / 60:.1f} min), full-size random ViT-B, "
          f"fp32, {os.cpu_count()} cores")
    print("round  authors  matpac  plain   authors/matpac  authors/plain")
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            times[name].append(timed(*contenders[name]))
        a, m, p = times["authors"][-1], times["matpac"][-1], times["matpac-plain"][-1]
        print(f"{r + 1:5d}  {a:7.2f}  {m:6.2f}  {p:6.2f}   {a / m:14.2f}  {a / p:13.2f}")
    ratios = [a / m for a, m in zip(times["authors"], times["matpac"])]
    ratios_plain = [a / p for a, p in zip(times["authors"], times["matpac-plain"])]
    ref, got, got_plain = (np.load(tmp / f) for f in ("authors.npy", "matpac.npy", "plain.npy"))
    print(f"median authors/matpac = {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"authors/plain-linear = {statistics.median(ratios_plain):.2f}")
    print(f"max |matpac - authors| = {np.abs(got - ref).max():.2e}, "
          f"max |plain - authors| = {np.abs(got_plain - ref).max():.2e}")


def batch_sweep(args: argparse.Namespace) -> None:
    import torch

    from matpac_cli.predictor import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="matpac-sweep-"))
    make_checkpoint(tmp / "vitb.pt")
    for kind in ("onednn", "plain"):
        os.environ["MATPAC_CPU_LINEAR"] = kind
        pred = Predictor.load(str(tmp / "vitb.pt"), device="cpu")
        print(f"{pred.encoder.linear_kind} linear layers, {torch.get_num_threads()} threads:")
        for batch in (4, 8, 16, 32):
            mel = torch.randn(batch, 80, pred.dims.n_t)
            with torch.inference_mode():
                pred.encoder(mel)
                t0, n = time.perf_counter(), 0
                while n < 3 * batch or time.perf_counter() - t0 < 4:
                    pred.encoder(mel)
                    n += batch
            print(f"  batch {batch:3d}: {1000 * (time.perf_counter() - t0) / n:6.1f} ms per chunk")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", help="the authors' inference_matpac folder (holds the matpac package)")
    ap.add_argument("--authors-python", default=sys.executable, help="interpreter with timm 0.4.12 and einops")
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-sweep", action="store_true")
    args = ap.parse_args()
    if args.batch_sweep:
        batch_sweep(args)
    elif not args.authors:
        ap.error("--authors PATH is needed (or --batch-sweep)")
    else:
        compare(args)


if __name__ == "__main__":
    main()
