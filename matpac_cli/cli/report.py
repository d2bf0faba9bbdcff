"""`matpac report`: one offline HTML page of a tag output: summary, files, timelines, map."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from matpac_cli.cli._options import QuietOpt
from matpac_cli.cli._reporter import Reporter

ReportOutOpt = Annotated[Path, typer.Option("--out", "-o", help="The page to write (.html).")]
EmbeddingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--embeddings",
        "-e",
        help="A `matpac embed --out` output (.npy with its .csv beside it, or .parquet), or a library folder (files found by path, else by their audio): adds the map and nearest files.",
    ),
]
AudioOpt = Annotated[
    bool,
    typer.Option(
        "--audio", help="A player per file (the tag path, relative to the page), so a timeline click plays that moment."
    ),
]
AudioRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--audio-root", help="The folder the tag paths are relative to (default: the current one); with --audio."
    ),
]
NeighboursOpt = Annotated[
    int, typer.Option("--neighbours", help="Nearest files listed per file (cosine of the embeddings; 0: none).")
]
ReportForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing --out that is not a matpac report.")]
TitleOpt = Annotated[str | None, typer.Option("--title", help="The page's title (default: matpac report: TAGS).")]


def report(
    tags: Annotated[
        Path, typer.Argument(help="A `matpac tag --out` file (.csv, .jsonl, .ndjson or .parquet).", show_default=False)
    ],
    out: ReportOutOpt,
    embeddings: EmbeddingsOpt = None,
    audio: AudioOpt = False,
    audio_root: AudioRootOpt = None,
    neighbours: NeighboursOpt = 5,
    title: TitleOpt = None,
    quiet: QuietOpt = False,
    force: ReportForceOpt = False,
) -> None:
    """Write one self-contained HTML page of a library's tags: label counts, a filterable table,
    per-file label x time heatmaps (tags made with --segments) and, with --embeddings, a map.

    The page needs no network (no CDN, no fonts): open it from disk or mail it.

    Example: matpac report tags.csv --embeddings emb.npy --out report.html
    """
    from matpac_cli.jobs.report import build_report

    started = time.monotonic()
    result = build_report(
        tags,
        out,
        embeddings=embeddings,
        audio=audio,
        audio_root=audio_root,
        title=title,
        neighbours=neighbours,
        force=force,
    )
    reporter = Reporter(quiet)
    for text in [*result.warnings, *result.cuts]:  # not only in the page: files left out, failed or cut
        reporter.warning(text)
    reporter.info(
        f"matpac: report of {result.files:,} file(s) in {time.monotonic() - started:.1f} s; "
        f"wrote {result.path} ({_size(result.bytes)})"
    )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"
