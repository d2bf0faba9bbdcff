"""`matpac embed` against the authors' inference code on the same files, end to end (not a test).

Both run as whole commands (interpreter start, imports, model load, decode, resample, log-mel,
encoder, writing), in interleaved rounds, so a noisy machine slows both alike; the ratio per
round and its median are printed, with the largest difference between the two embeddings.
matpac runs twice a round, with `MATPAC_CPU_LINEAR=onednn` and `=plain`, and the one it picks
by itself on this CPU (cpu.choose) is marked. Each round also gives the other tenants' load
(cores busy with anything else, from /proc/stat, steal included): on a shared machine the median
is taken over the rounds where it stayed under 0.2 cores, and `--wait-quiet` waits for such a
moment before each round.
`--glibc-defaults` adds matpac's default layers without its allocator setting
(cpu.keep_freed_memory), to show what that setting gives.

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
import resource
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

from matpac_cli.encoder.cpu import cpu_label  # noqa: E402

QUIET_LOAD = 0.2  # others' load (cores) under which a round counts as quiet

AUTHORS_RUNNER = textwrap.dedent("""
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
""")


def busy_s() -> float:
    """CPU seconds every core of this machine has spent busy so far (Linux /proc/stat), steal
    included: another tenant's work, seen from here."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, others' load): the mean number of cores busy with anything but this command
    while it ran, so a round slowed by a neighbour can be told from a quiet one."""
    busy0, kids0, t0 = busy_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True)
    took = time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])} ...\n{proc.stderr.decode()[-2000:]}")
    return took, max(0.0, busy_s() - busy0 - own) / took


def wait_quiet(limit_s: float = 300.0, load: float = QUIET_LOAD) -> float:
    """Wait (up to `limit_s`) until the other tenants' load stays under `load` for 3 s."""
    t_end = time.monotonic() + limit_s
    while True:
        b0 = busy_s()
        time.sleep(3.0)
        others = (busy_s() - b0) / 3.0
        if others < load or time.monotonic() > t_end:
            return others


def _contenders(
    args: argparse.Namespace, tmp: Path, ckpt: Path, clips: Path, files: list[Path], default: str
) -> dict[str, tuple[list[str], dict]]:
    """The commands timed each round: the authors' code, matpac with each kind of linear layers
    and, with --glibc-defaults, matpac's default kind without the allocator setting."""
    runner = tmp / "authors_runner.py"
    runner.write_text(AUTHORS_RUNNER)
    contenders = {
        "authors": (
            [args.authors_python, str(runner), str(ckpt), str(tmp / "authors.npy"), *map(str, files)],
            {"PYTHONPATH": str(Path(args.authors).resolve())},
        )
    }
    for kind in ("onednn", "plain"):
        cmd = [
            sys.executable,
            "-m",
            "matpac_cli",
            "embed",
            str(clips),
            "--out",
            str(tmp / f"{kind}.npy"),
            "--model",
            str(ckpt),
            "--device",
            "cpu",
            "--quiet",
            "--force",
        ]
        contenders[kind] = (cmd, {"MATPAC_CPU_LINEAR": kind})
    if args.glibc_defaults:
        cmd = list(contenders[default][0])
        cmd[1:3] = [
            "-c",
            "import sys; from matpac_cli.encoder import cpu; cpu.keep_freed_memory = lambda: False; "
            "from matpac_cli.cli import entry; sys.argv[0] = 'matpac'; entry()",
        ]
        cmd[cmd.index("--out") + 1] = str(tmp / "glibc.npy")
        contenders["glibc"] = (cmd, {"MATPAC_CPU_LINEAR": default})
    return contenders


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
    default = subprocess.run(
        [sys.executable, "-c", "from matpac_cli.encoder.cpu import choose; print(choose())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    contenders = _contenders(args, tmp, ckpt, clips, files, default)
    for cmd, env in contenders.values():  # warm-up: page cache, first-run caches (hash, probes)
        timed(cmd, env)
    mine = [k for k in contenders if k != "authors"]
    times: dict[str, list[float]] = {k: [] for k in contenders}
    others: list[float] = []
    audio_s = args.files * args.seconds
    print(
        f"{args.files} x {args.seconds:.0f} s 44.1 kHz stereo FLAC ({audio_s / 60:.1f} min), full-size random ViT-B, "
        f"fp32, {os.cpu_count()} cores of {cpu_label()}; matpac's default linear layers here: {default}"
        + (f"; glibc = {default} without the allocator setting" if "glibc" in mine else "")
    )
    print(
        "round  authors  "
        + "  ".join(f"{k:>6}" for k in mine)
        + "  "
        + "  ".join(f"authors/{k}" for k in mine)
        + "  others' load (cores)"
    )
    for r in range(args.rounds):
        if args.wait_quiet:
            wait_quiet()
        load = 0.0
        for name in list(contenders) if r % 2 == 0 else list(reversed(contenders)):
            took, busy = timed(*contenders[name])
            times[name].append(took)
            load = max(load, busy)
        others.append(load)
        a = times["authors"][-1]
        print(
            f"{r + 1:5d}  {a:7.2f}  "
            + "  ".join(f"{times[k][-1]:6.2f}" for k in mine)
            + "  "
            + "  ".join(f"{a / times[k][-1]:{len(k) + 8}.2f}" for k in mine)
            + f"  {load:5.2f}",
            flush=True,
        )
    quiet = [r for r in range(args.rounds) if others[r] < QUIET_LOAD] or list(range(args.rounds))
    label = f"{len(quiet)} rounds with others' load < {QUIET_LOAD}" if len(quiet) < args.rounds else "all rounds"
    for kind in mine:
        ratios = [times["authors"][r] / times[kind][r] for r in quiet]
        mark = "  <- matpac's default here" if kind == default else ""
        print(
            f"median authors/{kind} = {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
            f"max {max(ratios):.2f}; {label}){mark}"
        )
    ref = np.load(tmp / "authors.npy")
    print(", ".join(f"max |{k} - authors| = {np.abs(np.load(tmp / f'{k}.npy') - ref).max():.2e}" for k in mine))


def batch_sweep(args: argparse.Namespace) -> None:
    """Encoder ms per chunk, oneDNN and plain layers at each batch size, in interleaved rounds:
    every round times each (kind, batch) on 16 chunks (one batch of 32), the two kinds of one
    batch size back to back, so a neighbour's load slows both alike; the medians over rounds are
    printed, with their spread and the median of each round's plain/oneDNN ratio."""
    import torch

    from matpac_cli.encoder import cpu
    from matpac_cli.inference.predictor import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="matpac-sweep-"))
    make_checkpoint(tmp / "vitb.pt")
    encoders = {}
    for kind in ("onednn", "plain"):
        os.environ["MATPAC_CPU_LINEAR"] = kind
        encoders[kind] = Predictor.load(str(tmp / "vitb.pt"), device="cpu").encoder
        assert encoders[kind].linear_kind == kind, (kind, encoders[kind].linear_kind)
    cpu.keep_freed_memory()  # as the `matpac` program does once its model has loaded
    batches = (4, 8, 16, 32)
    mels = {b: torch.randn(b, 80, encoders["plain"].dims.n_t) for b in batches}
    cells = [(k, b) for b in batches for k in encoders]
    ms: dict[tuple, list[float]] = {c: [] for c in cells}
    others: list[float] = []
    print(
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of max(16, batch) chunks per cell; "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    with torch.inference_mode():
        for kind, b in cells:  # warm-up: oneDNN primitives, allocator
            encoders[kind](mels[b])
        for r in range(args.rounds):
            if args.wait_quiet:
                wait_quiet()
            busy0, self0, t_round = busy_s(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for kind, b in cells if r % 2 == 0 else cells[::-1]:
                t0, reps = time.perf_counter(), max(1, 16 // b)
                for _ in range(reps):
                    encoders[kind](mels[b])
                ms[(kind, b)].append(1000 * (time.perf_counter() - t0) / (reps * b))
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            own = self1.ru_utime - self0.ru_utime + self1.ru_stime - self0.ru_stime
            others.append(max(0.0, busy_s() - busy0 - own) / (time.perf_counter() - t_round))
            print(
                f"  round {r + 1}: "
                + "  ".join(f"{k[0]}{b}={ms[(k, b)][-1]:.0f}" for k, b in cells)
                + f"   others' load {others[-1]:.2f}",
                flush=True,
            )
    quiet = [r for r in range(args.rounds) if others[r] < QUIET_LOAD] or list(range(args.rounds))
    print(f"over {len(quiet)} of {args.rounds} rounds (others' load < {QUIET_LOAD}, or all if none was):")
    print("batch  onednn ms/chunk (min..max)  plain ms/chunk (min..max)  plain/onednn: median of rounds' ratios")
    for b in batches:
        o, p = [ms[("onednn", b)][r] for r in quiet], [ms[("plain", b)][r] for r in quiet]
        paired = statistics.median(y / x for x, y in zip(o, p))  # each round's two cells ran back to back
        print(
            f"{b:5d}  {statistics.median(o):6.1f} ({min(o):.0f}..{max(o):.0f})        "
            f"{statistics.median(p):6.1f} ({min(p):.0f}..{max(p):.0f})       {paired:5.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", help="the authors' inference_matpac folder (holds the matpac package)")
    ap.add_argument("--authors-python", default=sys.executable, help="interpreter with timm 0.4.12 and einops")
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-sweep", action="store_true")
    ap.add_argument(
        "--glibc-defaults", action="store_true", help="also time matpac's default layers without its allocator setting"
    )
    ap.add_argument(
        "--wait-quiet",
        action="store_true",
        help="before each round, wait (up to 5 min) until other tenants leave the cores idle",
    )
    args = ap.parse_args()
    if args.batch_sweep:
        batch_sweep(args)
    elif not args.authors:
        ap.error("--authors PATH is needed (or --batch-sweep)")
    else:
        compare(args)


if __name__ == "__main__":
    main()
