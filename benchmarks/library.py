"""What the library costs and saves: `tag` after `embed`, a renamed and re-tagged folder, the audio
key against decoding, the key check of a large library, and the bytes it keeps per file.

Everything is made in a temporary folder: 30 FLAC files (44.1 kHz stereo, --seconds each), a
random checkpoint with an AudioSet head (tiny: width 128, depth 2; --full: ViT-B, width 768,
depth 12, the release's size), and a library of its own ($MATPAC_LIBRARY is not touched). Times:
  (a) `matpac embed` of the 30 files, then `matpac tag --head events` of them (both end to end,
      start-up included): the ratio; goal tag < 10% of embed;
  (b) the folder renamed, every file re-tagged with mutagen, chmod -R: files a second embed
      encodes; goal 0;
  (c) `audio_key` of the 30 files against decoding them (pipeline.audio.AudioSource);
  (d) the key check (`Library.identify`, then `Library.lookup`) of an unchanged library of 10k,
      30k and 100k paths: synthetic paths and clips rows written straight into the Lance tables,
      each path a hard link to one of 100 real files with its real stat; lookups per second; an
      incremental run with 1% of the paths changed (their audio keyed again); and a linear fit of
      the measured sizes extrapolated to 1,000,000; goals < 30 s and >= 10,000 lookups/s;
  (e) disk: library bytes per file, clip only (after embed) and with segments (after
      `tag --segments`), against the .npy row each replaces.

  python benchmarks/library.py               # tiny checkpoint, 30 x 30 s files
  python benchmarks/library.py --full --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from reference import make_checkpoint  # noqa: E402 - the tests' random checkpoint in the release layout

from matpac_cli.library import tables  # noqa: E402
from matpac_cli.library.key import Stat, audio_key  # noqa: E402
from matpac_cli.library.store import Library, Setting  # noqa: E402
from matpac_cli.pipeline.audio import AudioSource  # noqa: E402
from matpac_cli.pipeline.discovery import Item  # noqa: E402

FILES = 30
BASE_FILES = 100  # real files behind the synthetic library's paths
SIZES = (10_000, 30_000, 100_000)


def write_files(folder: Path, n: int, seconds: float, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        t = np.arange(int(seconds * 44100)) / 44100
        tone = 0.2 * np.sin(2 * np.pi * (110 + 7 * i) * t)
        x = 0.05 * rng.standard_normal((len(t), 2)) + tone[:, None]
        sf.write(folder / f"track{i:03d}.flac", x.astype(np.float32), 44100)
        out.append(folder / f"track{i:03d}.flac")
    return out


def matpac(*args: str, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "matpac_cli", *args], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"matpac {' '.join(args)} failed:\n{proc.stderr}")
    return dt, proc.stderr


def done(err: str) -> int:
    return int(re.search(r"(\d+) done", err)[1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def end_to_end(work: Path, ckpt: Path, seconds: float) -> dict:
    """(a), (b), (e): real `matpac` runs on one library."""
    music = work / "music"
    write_files(music, FILES, seconds)
    lib = work / "lib"
    env = {**os.environ, "MATPAC_LIBRARY": str(lib), "PYTHONPATH": str(REPO)}
    model = ["--model", str(ckpt), "--device", "cpu"]
    t_embed, _ = matpac("embed", str(music), "--out", str(work / "e.npy"), *model, env=env)
    clip_bytes = {name: du(lib / f"{name}.lance") for name in tables.SCHEMAS}
    t_tag, err = matpac("tag", str(music), "-H", "events", "--out", str(work / "t.csv"), *model, env=env)
    assert done(err) == 0, err
    matpac("tag", str(music), "-H", "events", "--segments", "--out", str(work / "s.csv"), *model, env=env)
    seg_bytes = du(lib / "segments.lance")
    import lance

    segs = lance.dataset(tables.uri(lib, "segments")).to_table(columns=["start_s"])["start_s"]
    seg_rows = sum(len(x) for x in segs.to_pylist())  # segments stored, one .npy row each otherwise

    import mutagen

    renamed = music.rename(work / "renamed")
    for path in renamed.iterdir():
        f = mutagen.File(str(path))
        if f.tags is None:
            f.add_tags()
        f["title"] = [f"retagged {path.stem}"]
        f["comment"] = ["a longer comment " * 40]
        f.save()
    subprocess.run(["chmod", "-R", "go-r", str(renamed)], check=True)
    t_again, err = matpac("embed", str(renamed), "--out", str(work / "e2.npy"), *model, env=env)
    npy = np.load(work / "e.npy")
    return {
        "embed_s": t_embed,
        "tag_s": t_tag,
        "tag_over_embed": t_tag / t_embed,
        "renamed_retagged_chmod_encoded": done(err),
        "renamed_embed_s": t_again,
        "library_bytes_per_file_clip": sum(clip_bytes.values()) / FILES,
        "library_bytes_per_file_segments": seg_bytes / FILES,
        "npy_row_bytes": npy.shape[1] * 4,
        "segments_npy_bytes_per_file": seg_rows * npy.shape[1] * 4 / FILES,
        "clips_table_bytes": clip_bytes,
    }


def key_cost(folder: Path) -> dict:
    """(c): the audio key of every file against decoding it, warm page cache, best of 3."""

    def keys():
        for p in folder.iterdir():
            audio_key(p)

    def decode():
        for p in folder.iterdir():
            src = AudioSource(p)
            for _ in src.blocks():
                pass
            src.close()

    t_key, t_dec = best(keys), best(decode)
    return {"key_s": t_key, "decode_s": t_dec, "key_over_decode": t_key / t_dec}


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def links(work: Path, n: int) -> list[str]:
    """`n` paths, each a hard link to one of `BASE_FILES` real 1 s FLAC files (1,000 per folder)."""
    base = write_files(work / "base", BASE_FILES, 1.0, seed=1)
    old = time.time() - 3600  # written an hour before the library saw them (not "racy": see library.key)
    for path in base:
        os.utime(path, (old, old))
    out = []
    for j in range(n):
        path = work / "links" / f"d{j // 1000:04d}" / f"t{j:07d}.flac"
        if j % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.link(base[j % BASE_FILES], path)
        out.append(os.path.realpath(path))
    return out


def fill(root: Path, paths: list[str], setting: Setting, dim: int, changed: float, layer: int = 12) -> None:
    """The paths and clips tables of a library that has seen every path (their real stat, a
    random key each, as audio hashes are) and holds one clip embedding per key (of `layer`); `changed` of the paths
    are recorded with another mtime, as if edited since."""
    import lance
    import pyarrow as pa

    now, step = time.time(), 20_000
    for start in range(0, len(paths), step):
        part = paths[start : start + step]
        stats = [Stat.of(p) for p in part]
        moved = {int(i) for i in np.flatnonzero(np.random.default_rng(start).random(len(part)) < changed)}
        keys = [f"a:{hashlib.blake2b(str(start + i).encode(), digest_size=20).hexdigest()}" for i in range(len(part))]
        rows = {
            "path": [os.fsencode(p) for p in part],
            "key": keys,
            "dev": [s.dev for s in stats],
            "ino": [s.ino for s in stats],
            "size": [s.size for s in stats],
            "mtime_ns": [s.mtime_ns - (i in moved) for i, s in enumerate(stats)],
            "ctime_ns": [s.ctime_ns for s in stats],
            "seen": [now] * len(part),
        }
        lance.write_dataset(pa.table(rows, schema=tables.PATHS), tables.uri(root, "paths"), mode="append")
        values = np.random.default_rng(start).standard_normal(len(part) * dim).astype(np.float32)
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, dim, dtype=np.int32)), values)
        n = len(part)
        clips = {
            "key": keys,
            "model": [setting.model] * n,
            "frontend": [setting.frontend] * n,
            "layer": [layer] * n,
            "embedding": embedding,
            "duration_s": [1.0] * n,
            "sample_rate": [44100] * n,
            "channels": [2] * n,
            "promised": [None] * n,
            "read": [None] * n,
            "added": [now] * n,
        }
        lance.write_dataset(pa.table(clips, schema=tables.CLIPS), tables.uri(root, "clips"), mode="append")


def key_check(root: Path, paths: list[str], setting: Setting) -> dict:
    """What `embed` and `tag` do before encoding: identify every path, look its key up."""
    lib = Library(root)
    items = [Item(p, Path(p)) for p in paths]
    t0 = time.perf_counter()
    known = lib.identify(items)
    t1 = time.perf_counter()
    lib.commit()  # the paths seen again (the changed ones' new keys)
    t2 = time.perf_counter()
    found = lib.lookup([k.key for k in known.values()], setting, (12,), False)
    t3 = time.perf_counter()
    return {
        "identify_s": t1 - t0,
        "commit_s": t2 - t1,
        "lookup_s": t3 - t2,
        "total_s": t3 - t0,
        "lookups_per_s": len(known) / (t3 - t2),
        "missing": len(paths) - len(found),
    }


def large(work: Path, dim: int, sizes: tuple[int, ...] = SIZES) -> dict:
    """(d) at each of `sizes`, unchanged and 1% changed, and the linear fit to 1,000,000."""
    paths = links(work, max(sizes))
    setting = Setting("0" * 64, "benchmark")
    out = {"sizes": list(sizes)}
    for n in sizes:
        for changed in (0.0, 0.01):
            root = work / f"lib{n}_{changed}"
            fill(root, paths[:n], setting, dim, changed)
            out[f"{n}_{changed}"] = key_check(root, paths[:n], setting)
            shutil.rmtree(root)
    if len(sizes) < 2:
        return out
    xs = np.array(sizes, dtype=np.float64)
    ys = np.array([out[f"{n}_0.0"]["total_s"] for n in sizes])
    slope, icept = np.polyfit(xs, ys, 1)
    out["fit_1M_s"] = slope * 1_000_000 + icept
    out["fit_per_100k_s"] = slope * 100_000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="a ViT-B size checkpoint (width 768, depth 12)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each of the 30 files")
    ap.add_argument("--dim", type=int, default=3840, help="embedding width of the synthetic library")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="library sizes for (d); 0: skip (d)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="matpac-library-") as tmp:
        work = Path(tmp)
        width, depth = (768, 12) if args.full else (128, 2)
        sd = make_checkpoint(width=width, depth=depth, n_t=992, seed=2, with_audioset_head=True, n_classes=527)
        torch.save(sd, work / "model.pt")
        figures = end_to_end(work, work / "model.pt", args.seconds)
        figures.update(key_cost(work / "renamed"))
        sizes = tuple(int(x) for x in args.sizes.split(",") if int(x))
        figures["large"] = large(work, args.dim, sizes) if sizes else {"sizes": []}
    report(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def report(f: dict, args) -> None:
    model = "ViT-B (768 x 12)" if args.full else "tiny (128 x 2)"
    print(f"library benchmark: {FILES} files x {args.seconds:g} s, model {model}, CPU, synthetic dim {args.dim}")
    rows = [
        ("embed 30 files (s)", f"{f['embed_s']:.2f}", ""),
        ("tag after embed (s)", f"{f['tag_s']:.2f}", ""),
        ("tag / embed", f"{f['tag_over_embed']:.1%}", "< 10%"),
        ("renamed + retagged + chmod -R: encoded", f"{f['renamed_retagged_chmod_encoded']}", "0"),
        ("audio_key 30 files (s)", f"{f['key_s']:.3f}", ""),
        ("decode 30 files (s)", f"{f['decode_s']:.3f}", ""),
        ("key / decode", f"{f['key_over_decode']:.1%}", ""),
    ]
    big = f["large"]
    for n in big["sizes"]:
        for changed, label in ((0.0, "unchanged"), (0.01, "1% changed")):
            r = big[f"{n}_{changed}"]
            rows.append(
                (
                    f"key check {n:,} paths, {label} (s)",
                    f"{r['total_s']:.2f} (identify {r['identify_s']:.2f}, lookup {r['lookup_s']:.2f})",
                    "< 30",
                )
            )
            rows.append((f"  lookups/s, {n:,} {label}", f"{r['lookups_per_s']:,.0f}", ">= 10,000"))
    if "fit_1M_s" in big:
        rows.append(("key check 1,000,000 (linear fit, s)", f"{big['fit_1M_s']:.1f}", "< 30 at 100k"))
    rows.append(("library bytes/file, clip", f"{f['library_bytes_per_file_clip']:,.0f}", ""))
    rows.append(("  .npy row it replaces", f"{f['npy_row_bytes']:,}", ""))
    rows.append(("library bytes/file, segments", f"{f['library_bytes_per_file_segments']:,.0f}", ""))
    rows.append(("  .npy rows they replace", f"{f['segments_npy_bytes_per_file']:,.0f}", ""))
    width = max(len(r[0]) for r in rows)
    for name, value, goal in rows:
        print(f"  {name:<{width}}  {value:>40}  {goal}")


if __name__ == "__main__":
    main()
