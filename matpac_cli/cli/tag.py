"""`matpac tag`: labels from the released heads, as long-format rows (CSV or JSON Lines)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from matpac_cli.cli._common import Reporter, argv, finish, items_for, load_predictor
from matpac_cli.cli._options import (BatchOpt, DeviceOpt, ExtOpt, FailuresOpt, ForceOpt, Inputs, ModelOpt,
                                     NullOpt, PrecisionOpt, QuietOpt, ThreadsOpt, WorkersOpt)
from matpac_cli.errors import UsageError


def tag(
    inputs: Inputs,
    model: ModelOpt = None,
    head: Annotated[Optional[list[str]], typer.Option("--head", "-H", help="Head name or alias (genre, mood, instrument, instruments, tags, events, sounds, esc50 ...), MODEL:HEAD, or a probe file. Repeatable.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", "-k", help="Labels kept per head (0: all). Default 5, or all above --threshold.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Keep labels scoring at least this (multi-label heads).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output file, or '-' for stdout (the default).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv or jsonl (default: from the --out extension, else csv).")] = None,
    segments: Annotated[bool, typer.Option(help="Add one row set per encoder chunk (start_s, end_s).")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="Label file (one per line) for a probe file of an unknown head.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    force: ForceOpt = False,
) -> None:
    """Label audio with the released heads: genre, mood, instrument by default (music encoder).

    Example: matpac tag ./music --top-k 3 --out tags.csv
    """
    from matpac_cli.tagging import DEFAULT_HEADS, DEFAULT_MODEL, Group, TagConfig, build_heads, plan_groups
    from matpac_cli.tagging import tag as run_tag

    if fmt is None:
        fmt = "jsonl" if out and out.lower().endswith((".jsonl", ".ndjson")) else "csv"
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"--format {fmt}: expected csv or jsonl")
    if top_k is not None and top_k < 0:
        raise UsageError(f"--top-k {top_k}: give 0 (every label) or a positive count")
    items = items_for(inputs, ext, null)
    reporter = Reporter(quiet)
    groups = []
    for model_name, head_names in plan_groups(head or DEFAULT_HEADS, model or DEFAULT_MODEL):
        predictor = load_predictor(model_name, device, precision, threads, quiet)
        groups.append(Group(model_name, build_heads(head_names, predictor, labels, not quiet and sys.stderr.isatty()), predictor))
    if len(groups) > 1:
        plan = "; ".join(f"{g.model} for {', '.join(h.name for h in g.heads)}" for g in groups)
        reporter.info(f"matpac: these heads need {len(groups)} encoders, each run once per file: {plan}")
    for g in groups:
        for h in g.heads:
            if h.standardised and h.kind == "probe":
                reporter.info(f"matpac: head {h.name}: standardising features with the statistics in its file")
    reporter = Reporter(quiet, len(items))
    config = TagConfig(top_k=top_k, threshold=threshold, segments=segments, fmt=fmt,
                       batch_size=batch_size, workers=workers, force=force)
    target = None if out in (None, "-") else Path(out)
    try:
        summary = run_tag(items, groups, config, target, sys.stdout, reporter.advance, reporter.failure,
                          argv=argv(), on_audio=reporter.audio)
    finally:
        reporter.close()
    raise typer.Exit(finish(summary, reporter, failures, "tagged"))
