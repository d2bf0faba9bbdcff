"""`matpac tag`'s own options, declared once for its signature (`cli.tag`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelTagOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=(
            "Registry name, checkpoint file, or hf:OWNER/REPO\\[@REV]; every head then uses it. Default: each "
            "head's own encoder: matpac-plus for sounds (fsd50k), esc50, us8k; matpac-plus-audioset for events; "
            "matpac-plus-music for the others."
        ),
    ),
]
HeadOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--head",
        "-H",
        help="Head name or alias (genre, mood, instrument, instruments, tags, events, sounds, esc50 ...), MODEL:HEAD, or a probe file. Repeatable. The head column gives the head's own name (genre: mtg_genre, events: audioset).",
    ),
]
TopKOpt = Annotated[
    int | None,
    typer.Option("--top-k", "-k", help="Labels kept per head (0: all). Default 5, or all above --threshold."),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        help=(
            "Keep labels scoring at least this, 0 to 1, on every head: a multi-label (sigmoid) head's "
            "independent probabilities, a single-label (softmax) head's class probabilities."
        )
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="csv, jsonl or parquet (a file only, typed columns; default: from the --out extension, else csv).",
    ),
]
ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help=(
            "Write the provenance manifest here. Default: beside --out (tags.csv.manifest.json); "
            "with --out - (stdout) none unless this is given."
        ),
    ),
]
WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        help=(
            "One row per file: path,duration_s,truncated, then <head>_label,<head>_score (each head's top label) "
            "for a spreadsheet. Not with --segments."
        ),
    ),
]
SegmentsOpt = Annotated[bool, typer.Option(help="Add one row set per encoder chunk (start_s, end_s).")]
MinSegmentOpt = Annotated[
    float | None,
    typer.Option(
        "--min-segment",
        metavar="SECONDS",
        help=(
            "With --segments: a last segment shorter than this joins the one before it, scored as one window "
            "(0 keeps every segment). Default 1."
        ),
    ),
]
LabelsOpt = Annotated[Path | None, typer.Option(help="Label file (one per line) for a probe file of an unknown head.")]
ReportOpt = Annotated[
    Path | None,
    typer.Option(
        "--report",
        help="Also write an offline HTML page of the run's tags (as `matpac report` does); needs a file --out.",
    ),
]
