"""What a re-run of `matpac embed` costs at a large library: nothing new, and 10 new files.

Everything is made in a temporary folder (no $MATPAC_LIBRARY touched):
  - a random checkpoint (width --width, depth 1: embeddings of 5 x width values, 3840 at 768,
    the release's width) and one real `matpac embed` of one file, to learn the library setting
    the checkpoint stores under (its model and front-end keys);
  - --files paths on disk, each a hard link to one of 100 real 1 s FLAC files (real stats, as
    `benchmarks/library.py` does), and a library that has seen every path and holds one clip
    embedding per path: synthetic random vectors with a distinct key each, written straight into
    the Lance tables through `benchmarks/library.fill`;
  - the output made by `matpac embed` itself from that library (the export: every row taken from
    the library, none encoded), as `.npy` and as `.parquet`.
Then, for each format, end to end (start-up included), each in a fresh process, --repeat times
(interleaved; the median of each kind reported, CPU medians apart):
  (a) the same command again, nothing new;
  (b) 10 new real files (distinct audio, in a folder sorted last) added and the command run again;
  (c) the 10 new files alone into a new output and an empty library: the cost of encoding them,
      which (b) is measured beyond.
Peak RSS and CPU seconds (user + sys) of each run are the child's own (`/usr/bin/time`). The
export is written back to disk (`sync`) before the re-runs: else their fsync of the output waits
for the export's 1.5 GB (0.5 s of wall time that no later re-run pays).
`--profile DIR` also records each run with py-spy (raw folded stacks) and prints the functions
holding the most samples.

  python benchmarks/resume.py                       # 100,000 files, dim 3840
  python benchmarks/resume.py --files 20000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from library import fill, links, write_files  # noqa: E402 - the library benchmark's synthetic library
from reference import make_checkpoint  # noqa: E402

from matpac_cli.library import tables  # noqa: E402
from matpac_cli.library.store import Setting  # noqa: E402


def run(args: list[str], env: dict, profile: Path | None = None) -> dict:
    """One `matpac` process: wall seconds, its CPU seconds (user + sys: on a shared machine the
    wall time counts the others' work too), its own peak RSS, and its closing line."""
    cmd = [sys.executable, "-m", "matpac_cli", *args]
    if profile is not None:
        cmd = ["py-spy", "record", "-r", "50", "-f", "raw", "-o", str(profile), "--", *cmd]
    # the peak RSS through /usr/bin/time, a small process: a child forked from this one (which
    # holds the synthetic library's arrays) would report this process's RSS as its floor, since
    # Linux keeps the peak of the memory a process had before exec
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        peak_kb, user, system = rss.read().split()[-3:]
    if proc.returncode:
        raise SystemExit(f"matpac {' '.join(args)} failed:\n{proc.stderr}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {
        "s": dt,
        "cpu_s": float(user) + float(system),
        "rss_mb": int(peak_kb) / 1024,
        "said": lines[-1] if lines else "",
    }


SKIP = {"<module>", "entry", "main", "embed", "_embed", "run", "_run", "wrapper", "__call__", "invoke"}


def hot(profile: Path, top: int = 12) -> list[tuple[str, float]]:
    """The matpac (and library) functions in the most samples of a raw py-spy profile, inclusive."""
    counts, total = Counter(), 0
    for line in profile.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0] + " " + frame.split("/")[-1].split(":")[0].rstrip(")")
            if name.split(" ")[0] in SKIP or name in seen:
                continue
            if "matpac_cli" in frame or "lance" in frame or "pyarrow" in frame:
                seen.add(name)
                counts[name] += int(n)
    return [(name, n / max(total, 1)) for name, n in counts.most_common(top)]


def learn_setting(work: Path, ckpt: Path, env: dict) -> Setting:
    """The (model, frontend) the checkpoint's embeddings are stored under: from one real run."""
    import lance

    write_files(work / "one", 1, 1.0, seed=9)
    lib = work / "lib_one"
    run(["embed", str(work / "one"), "--out", str(work / "one.npy"), "--model", str(ckpt)], env | _lib(lib))
    t = lance.dataset(tables.uri(lib, "clips")).to_table(columns=["model", "frontend"]).to_pydict()
    return Setting(t["model"][0], t["frontend"][0])


def _lib(root: Path) -> dict:
    return {"MATPAC_LIBRARY": str(root)}


def one_format(work: Path, ckpt: Path, env: dict, suffix: str, args) -> dict:
    out = work / f"out{suffix.strip('.')}" / f"emb{suffix}"
    cmd = ["embed", str(work / "links"), "--out", str(out), "--model", str(ckpt)]
    figures = {"export": run(cmd, env)}
    os.sync()  # the export's 1.5 GB on disk, as by the time anyone runs again: a re-run's fsync waits on none of it
    profile = args.profile
    runs: dict[str, list[dict]] = {"nothing_new": [], "ten_new": [], "encode_ten_alone": []}
    for r in range(args.repeat):  # interleaved: a machine's drift falls on both sides of the difference
        runs["nothing_new"].append(run(cmd, env, profile and profile / f"nothing{suffix}.txt"))
        earlier = len(list((work / "links").glob("zz_new*")))  # each run's new files sort after the last's
        new = work / "links" / f"zz_new{earlier:03d}{suffix.strip('.')}"
        write_files(new, 10, 1.0, seed=hash(suffix) % 1000 + 11 + 100 * r)
        runs["ten_new"].append(run(cmd, env, profile and profile / f"ten{suffix}.txt"))
        alone = work / f"alone{suffix}{r}"
        runs["encode_ten_alone"].append(
            run(
                ["embed", str(new), "--out", str(alone / f"emb{suffix}"), "--model", str(ckpt)],
                env | _lib(alone / "lib"),
            )
        )
    for key, each in runs.items():  # the median run of each kind (by wall time), with every run's figures
        figures[key] = sorted(each, key=lambda one: one["s"])[len(each) // 2] | {"all_s": [one["s"] for one in each]}
    figures["beyond_encoding_s"] = figures["ten_new"]["s"] - figures["encode_ten_alone"]["s"]
    figures["beyond_nothing_new_s"] = figures["ten_new"]["s"] - figures["nothing_new"]["s"]
    cpu = {key: sorted(one["cpu_s"] for one in each)[len(each) // 2] for key, each in runs.items()}
    figures["beyond_encoding_cpu_s"] = cpu["ten_new"] - cpu["encode_ten_alone"]
    figures["output_bytes"] = sum(p.stat().st_size for p in out.parent.glob(f"emb{suffix}*") if p.is_file())
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=768, help="checkpoint width (embeddings of 5 x width)")
    ap.add_argument("--formats", default=".npy,.parquet")
    ap.add_argument("--profile", type=Path, help="py-spy raw profiles of the re-runs into this folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="re-runs of each kind, interleaved: medians reported")
    ap.add_argument("--keep", type=Path, help="build in this new folder and keep it (to re-run commands by hand)")
    args = ap.parse_args()
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    figures: dict = {"files": args.files, "dim": 5 * args.width}
    with _work(args.keep) as work:
        torch.save(make_checkpoint(width=args.width, depth=1, n_t=992, seed=2), work / "model.pt")
        setting = learn_setting(work, work / "model.pt", env)
        t0 = time.perf_counter()
        paths = links(work, args.files)
        fill(work / "lib", paths, setting, 5 * args.width, 0.0, layer=1)  # depth 1: its last layer
        figures["build_s"] = time.perf_counter() - t0
        env = env | _lib(work / "lib")
        for suffix in args.formats.split(","):
            figures[suffix] = one_format(work, work / "model.pt", env, suffix, args)
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


@contextlib.contextmanager
def _work(keep: Path | None):
    """The folder everything is made in: a temporary one, or `keep` (new, and kept)."""
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="matpac-resume-") as tmp:
        yield Path(tmp)


def report(f: dict, args) -> None:
    print(f"resume benchmark: {f['files']:,} library rows, dim {f['dim']}, CPU (built in {f['build_s']:.0f} s)")
    for suffix in args.formats.split(","):
        r = f[suffix]
        print(f"  {suffix} output ({r['output_bytes'] / 1e9:.2f} GB with index and manifest)")
        for key, label in (
            ("export", f"export {f['files']:,} rows from the library"),
            ("nothing_new", "re-run, nothing new"),
            ("ten_new", "re-run, 10 new files"),
            ("encode_ten_alone", "the 10 new files alone (encoding cost)"),
        ):
            one = r[key]
            each = (
                ""
                if len(one.get("all_s", [])) < 2
                else " (median of " + ", ".join(f"{t:.2f}" for t in one["all_s"]) + ")"
            )
            print(
                f"    {label:<44} {one['s']:7.2f} s  CPU {one['cpu_s']:6.2f} s  peak RSS {one['rss_mb']:6.0f} MB{each}  "
                f"| {one['said'][:60]}"
            )
        cpu = r["beyond_encoding_cpu_s"]
        print(
            f"    {'10 new, beyond encoding them':<44} {r['beyond_encoding_s']:7.2f} s  CPU {cpu:6.2f} s  (goal < 2 s)"
        )
        print(
            f"    {'10 new, beyond the nothing-new run':<44} {r['beyond_nothing_new_s']:7.2f} s  (their encoding included)"
        )
        if args.profile:
            for name in ("nothing", "ten"):
                print(f"    hottest in {name}{suffix} (share of samples, inclusive):")
                for fn, share in hot(args.profile / f"{name}{suffix}.txt"):
                    print(f"      {share:6.1%}  {fn}")


if __name__ == "__main__":
    main()
