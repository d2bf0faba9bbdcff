"""Every name matpac derives from an output path: the one place that says which files go together.

An `embed --out X.npy` run writes `X.npy`, its row index `X.csv` and `X.manifest.json`;
`X.parquet` is its own row index (its `path` column) and shares the manifest name
`X.manifest.json`. A `tag --out T.csv` run writes `T.csv.manifest.json` beside it (the suffix
kept: `T.csv` and `T.jsonl` never share a manifest). A
`train --out H.safetensors` run writes `H.report.json` and computes its embeddings into `H.emb.npy`.
Every layer set (`--layer last`, `7`, `all`) writes the same files: the layers are one matrix's
middle axis, never files of their own. Per-file frames go to the input's path mirrored under the
`--frames` folder (`mirror_name`). The writers and the readers both name files through here, so
what `embed` writes is what `search`, `train` and `report` find, and a rename happens in one place.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from matpac_cli.errors import UsageError
from matpac_cli.sidefiles import lock_path, temp_path  # noqa: F401 - the side names, for the layers above

EMBED_SUFFIXES = (".npy", ".parquet")  # what `embed --out` writes
PARQUET = ".parquet"  # a file, or a folder of shards named so
INDEX_COLUMNS = ["row", "path", "duration_s", "sample_rate", "channels", "truncated"]  # of `X.csv`
FRAMES_COLUMNS = ["frames", "frame_s"]  # appended to INDEX_COLUMNS by `embed --frames`
FRAMES_SUFFIX = ".npy"  # of each per-file frames file


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == PARQUET


def row_index(matrix: Path) -> Path:
    """The file that names the rows of the embed output `matrix`: `X.csv` beside `X.npy`; a
    Parquet output is its own index."""
    return matrix if is_parquet(matrix) else matrix.with_suffix(".csv")


def indexed_matrix(index: Path) -> Path | None:
    """The `X.npy` whose row index `index` would be if it is a `X.csv` (whether or not either
    exists), so replacing a `.csv` is refused in words that say it would orphan that matrix."""
    return index.with_suffix(".npy") if index.suffix.lower() == ".csv" else None


def embed_manifest(matrix: Path) -> Path:
    """An embed output's manifest: `X.manifest.json` for `X.npy` and `X.parquet` alike."""
    return matrix.with_suffix(".manifest.json")


def manifest_sharers(matrix: Path) -> list[Path]:
    """The other embed outputs whose manifest has the same name as `matrix`'s."""
    return [matrix.with_suffix(s) for s in EMBED_SUFFIXES if s != matrix.suffix]


def embed_files(matrix: Path) -> list[Path]:
    """Every file an embed output is read from: the matrix, its row index, its manifest."""
    return list(dict.fromkeys([matrix, row_index(matrix), embed_manifest(matrix)]))


def embed_outputs(out: Path) -> dict[str, Path]:
    """What `embed --out out` writes, by role: `matrix`, `index` (.npy only) and `manifest`."""
    if out.suffix not in EMBED_SUFFIXES:
        raise UsageError(
            f"out={out}: the embeddings are written as .npy (e.g. emb.npy, rows indexed "
            "in emb.csv) or .parquet (emb.parquet)",
            settings=("out",),
        )
    paths = {"matrix": out, "index": row_index(out), "manifest": embed_manifest(out)}
    if paths["index"] == out:
        del paths["index"]  # the path column is the index
    return paths


def written(paths: dict[str, Path]) -> list[Path]:
    """`embed_outputs`' files, as a list."""
    return list(paths.values())


def tags_manifest(out: Path) -> Path:
    """A tag output's default manifest: `tags.csv.manifest.json`."""
    return out.with_name(out.name + ".manifest.json")


def head_report(out: Path) -> Path:
    """The validation report a trained head `H.safetensors` is written with: `H.report.json`."""
    return Path(out).with_suffix(".report.json")


def head_embeddings(out: Path) -> Path:
    """Where `train` keeps the embeddings it computes for head `H.safetensors` by default: `H.emb.npy`."""
    return Path(out).with_suffix(".emb.npy")


def frames_name(name: str) -> str:
    """The frames file of input `name`, relative to the --frames folder (as the row index names it)."""
    return mirror_name(name, FRAMES_SUFFIX)


def frames_file(frames_dir: Path, name: str) -> Path:
    """Where the frames of input `name` go under `frames_dir` (never outside it)."""
    return frames_dir / frames_name(name)


def frames_record(frames_dir: Path) -> Path:
    """The record of the frames files matpac wrote into `frames_dir`, and for which output."""
    return frames_dir / ".matpac-frames"


def frames_lock(frames_dir: Path) -> Path:
    """The name locked for a --frames folder (`.frames.lock` inside it), so two runs never write
    one folder's frames files at once."""
    return frames_dir / "frames"


MIRROR_MAX = 1024  # bytes of a mirrored name; past this (or a component past 240) it is hashed


def mirror_name(name: str, suffix: str) -> str:
    """The name, relative to an output folder, of the per-file output of input `name`: its path
    mirrored, one to one, so two inputs never share one. A component that begins with `_` gets
    one more (`_x` -> `__x`), which leaves `_`-names free for what is not a plain component:
    `..` is `_up`, a leading `/` is `_root` (`../x` -> `_up/x.npy`, `/tmp/x` -> `_root/tmp/x.npy`).
    A name too long to mirror (a component past 240 bytes, or 1 KiB in all) is
    `_long/<sha256 of the name, 16 hex>/<its last 100 characters>`."""
    pure = PurePath(name)
    parts = [
        "_root" if pure.anchor and i == 0 else "_up" if p == ".." else "__" + p[1:] if p[:1] == "_" else p
        for i, p in enumerate(pure.parts)
        if p not in (".", "")
    ]
    parts = [p for p in parts if p not in ("/", "\\")]
    mirrored = "/".join(parts) + suffix
    if (
        parts
        and max(len(os.fsencode(p)) for p in parts) + len(suffix) <= 240
        and len(os.fsencode(mirrored)) <= MIRROR_MAX
    ):
        return mirrored
    import hashlib

    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    tail = (pure.name or "file")[-100:]
    return f"_long/{digest}/{tail}{suffix}"
