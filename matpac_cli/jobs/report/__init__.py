"""`matpac report`: one self-contained HTML page of a tag output (and, optionally, embeddings).

    from matpac_cli.jobs.report import build_report
    build_report("tags.csv", "report.html", embeddings="emb.npy")

The page holds a library summary (files, hours, heads and models from the manifest, each head's
label distribution), a sortable, filterable files table, per file a label x time heatmap of
each head when the tags have `--segments` (with an `<audio>` player when `audio=True`), and,
with embeddings, a PCA map of the clip embeddings and each file's nearest neighbours. Inputs are
read through `readers` only; the page is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from matpac_cli.errors import OutputError, UsageError
from matpac_cli.jobs.report.data import Library, collect
from matpac_cli.jobs.report.mapping import Map, build_map
from matpac_cli.jobs.report.page import GENERATOR, Content, failures, render
from matpac_cli.outputs import naming
from matpac_cli.outputs.readers import read_embeddings
from matpac_cli.outputs.tag_readers import scan_tags
from matpac_cli.outputs.writers import atomic, ensure_writable

SUFFIXES = (".html", ".htm")


@dataclass
class Report:
    path: Path
    files: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what stderr says too: files left out or missing
    cuts: list[str] = field(default_factory=list)  # what the report's bounds left out (said on stderr)


def check_out(out: Path, force: bool = False, setting: str = "out") -> None:
    """Refuse, before any work, a report path that is not .html, cannot be written, or is an
    existing file that matpac did not write (a page it wrote is replaced: it is rebuilt from
    its inputs)."""
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{setting}={out}: a report is an .html file", settings=(setting,))
    ensure_writable(out)
    if out.exists() and not force and not is_report(out):
        raise OutputError(f"{out} exists and is not a matpac report; use `force` to replace it", settings=("force",))


def is_report(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}'.encode() in head


def build_report(
    tags: Path | str,
    out: Path | str,
    embeddings: Path | str | None = None,
    audio: bool = False,
    audio_root: Path | str | None = None,
    title: str | None = None,
    neighbours: int = 5,
    force: bool = False,
) -> Report:
    """Write the report of `tags` to `out`. `audio`: a player per file, its source the tag path
    (taken from `audio_root`, default the current folder) relative to the report's folder."""
    tags, out = Path(tags), Path(out)
    check_out(out, force)
    if neighbours < 0:
        raise UsageError(f"neighbours={neighbours}: give a count, or 0 for none", settings=("neighbours",))
    emb = _embeddings(Path(embeddings)) if embeddings is not None else None
    stream = scan_tags(tags)
    lib = collect(stream)
    if emb is not None and emb.library is not None:  # a library: its files named as the tags name them
        from matpac_cli.jobs.library import as_named

        emb = as_named(emb, lib.paths)
    notes: list[str] = list(lib.cuts)
    fmap = build_map(lib.paths, emb, neighbours) if emb is not None else None
    durations = _durations(lib, emb, fmap, notes)
    warnings: list[str] = []
    if fmap is not None:
        _match_notes(fmap, emb.path, warnings)
    named, failed = failures(stream.manifest)
    if failed:
        listed = (
            "the page lists them."
            if len(named) == failed
            else f"the page lists {len(named):,} of them."
            if named
            else "its manifest does not name them (the tag run's --failures file does)."
        )
        warnings.append(f"{failed:,} file(s) failed in the tag run and have no rows; {listed}")
    notes += warnings
    if stream.manifest is None:
        notes.append(
            f"No manifest beside {tags} ({naming.tags_manifest(tags).name}): the models and heads are not known."
        )
    content = Content(
        title or f"matpac report: {tags.name}",
        str(tags),
        lib,
        durations,
        stream.manifest,
        notes,
        fmap,
        emb.paths if emb is not None else [],
        _emb_label(emb) if emb is not None else "",
        audio_sources(lib.paths, out, audio_root) if audio else None,
    )
    page = render(content).encode("utf-8", "backslashreplace")  # a non-UTF-8 file name as \udcXX
    with atomic(out, "wb") as fh:
        fh.write(page)
    return Report(out, len(lib.paths), len(page), notes, warnings, lib.cuts)


def _embeddings(path: Path):
    from matpac_cli.library.views import is_library

    if is_library(path):
        from matpac_cli.jobs.library import library_embeddings

        return library_embeddings(path)
    if path.suffix.lower() not in naming.EMBED_SUFFIXES:
        raise UsageError(
            f"embeddings={path}: give the .npy (its .csv row index and manifest are read "
            "beside it) or the .parquet that `matpac embed --out` writes",
            settings=("embeddings",),
        )
    return read_embeddings(path)


def _emb_label(emb) -> str:
    dim = emb.matrix.shape[-1]
    return f"{emb.path.name}, {emb.model or 'model unknown'}, {dim}-d"


def _durations(lib: Library, emb, fmap: Map | None, notes: list[str]) -> list[float | None]:
    """Per file: its tag rows' duration_s, else the embedding index's, else the end of its last
    segment, else None (tag outputs written before the duration_s column)."""
    out: list[float | None] = []
    for i, end in enumerate(lib.seg_end):
        row = fmap.rows[i] if fmap is not None else None
        d = emb.index[row]["duration_s"] if row is not None else None
        tagged = lib.durations[i] if i < len(lib.durations) else None
        out.append(tagged if tagged is not None else d if d is not None and d == d else end)
    if all(d is not None for d in lib.durations):
        return out
    if fmap is None and lib.segments:
        notes.append("Durations are the end of each file's last segment (within 15 ms of the file's length).")
    elif fmap is None:
        notes.append(
            "Durations are unknown: the tags have no duration_s column, no --segments, and no --embeddings were given."
        )
    return out


def _match_notes(fmap: Map, emb_path: Path, notes: list[str]) -> None:
    if fmap.missing:
        notes.append(f"{fmap.missing:,} tagged file(s) are not in {emb_path.name}: they are not on the map.")
    if fmap.extra:
        notes.append(
            f"{len(fmap.extra):,} file(s) of {emb_path.name} are not in the tags: left out of the table "
            "and the map, but listed as neighbours where they are near."
        )


def audio_sources(paths: list[str], out: Path, root: Path | str | None) -> list[str]:
    """Each tag path as a URL relative to the report's folder (`root`: the folder the tag paths
    are relative to, by default the current one)."""
    base = Path(root) if root is not None else Path.cwd()
    folder = out.resolve().parent
    srcs = []
    for p in paths:
        target = Path(p) if os.path.isabs(p) else base / p
        rel = os.path.relpath(os.path.abspath(target), folder)
        srcs.append(quote(os.fsencode(rel.replace(os.sep, "/"))))
    return srcs
