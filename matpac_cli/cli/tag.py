"""`matpac tag`: labels from the released heads, as long-format rows (CSV, JSON Lines or Parquet)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import typer

from matpac_cli.cli._options import (
    BatchOpt,
    DeviceOpt,
    EngineOpt,
    ExtOpt,
    FailuresOpt,
    ForceOpt,
    Inputs,
    LibraryOpt,
    NoLibraryOpt,
    NullOpt,
    PrecisionOpt,
    PruneOpt,
    QuietOpt,
    RayAddressOpt,
    RetryFailedOpt,
    RowsOutOpt,
    ThreadsOpt,
    UpdateOpt,
    WorkersOpt,
    library_of,
)
from matpac_cli.cli._preflight import check_outputs, items_for, named_inputs, run_options
from matpac_cli.cli._reporter import Reporter, finish
from matpac_cli.cli._startup import argv
from matpac_cli.cli._stdout import SafeStdout
from matpac_cli.cli._tag_models import check_device, check_models, load_groups
from matpac_cli.cli._tag_options import (
    FormatOpt,
    HeadOpt,
    LabelsOpt,
    ManifestOpt,
    MinSegmentOpt,
    ModelTagOpt,
    ReportOpt,
    SegmentsOpt,
    ThresholdOpt,
    TopKOpt,
    WideOpt,
)
from matpac_cli.cli._tag_write import DryRunOpt, GenreOpt, SeparatorOpt, TouchOpt, UndoOpt, WriteOpt, write_spec


def tag(
    inputs: Inputs,
    model: ModelTagOpt = None,
    head: HeadOpt = None,
    top_k: TopKOpt = None,
    threshold: ThresholdOpt = None,
    out: RowsOutOpt = None,
    fmt: FormatOpt = None,
    manifest: ManifestOpt = None,
    wide: WideOpt = False,
    segments: SegmentsOpt = False,
    min_segment: MinSegmentOpt = None,
    labels: LabelsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    force: ForceOpt = False,
    update: UpdateOpt = False,
    prune: PruneOpt = False,
    report: ReportOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    library: LibraryOpt = None,
    no_library: NoLibraryOpt = False,
    retry_failed: RetryFailedOpt = False,
    write: WriteOpt = False,
    dry_run: DryRunOpt = False,
    undo: UndoOpt = False,
    genre: GenreOpt = None,
    separator: SeparatorOpt = "; ",
    touch: TouchOpt = False,
) -> None:
    """Label audio with the released heads: genre, mood, instrument by default (music encoder).

    Rows: path,head,label,score,rank,tag_id,truncated (label: the plain name, trance; tag_id: the dataset's tag, genre---trance; truncated: 1 when the file ended before its header said).

    Examples: matpac tag ./music --top-k 3 --out tags.csv
              matpac tag ./music --wide --out tags.csv   (one row per file, each head's top label)
              matpac tag ./music --write   (the labels into the files' own tags)
    """
    started = time.monotonic()
    if undo:  # no model: the values the library recorded go back
        from matpac_cli.cli._tag_write import run_undo

        raise typer.Exit(run_undo(items_for(inputs, ext, null), library_of(library, no_library), dry_run, quiet))
    refused = {
        "out": out is not None,
        "segments": segments,
        "report": report,
        "update": update,
        "prune": prune,
        "wide": wide,
    }
    spec = write_spec(write, dry_run, genre, separator, touch, refused, library_of(library, no_library))
    # the arguments alone, then the inputs, then every output and its lock; only then anything
    # that reads a model file (a local --model is hashed, the probe zip looked for) or loads one
    options = run_options(device, precision, threads, batch_size, workers, engine, ray_address)  # before torch
    config, target, plan = _check_arguments(
        options,
        head=head,
        model=model,
        top_k=top_k,
        threshold=threshold,
        out=out,
        fmt=fmt,
        manifest=manifest,
        segments=segments,
        min_segment=min_segment,
        wide=wide,
        failures=failures,
        report=report,
        force=force,
        library=library_of(library, no_library),
        keep=(update, prune),
        write=spec,
    )
    config = dataclasses.replace(config, retry_failed=retry_failed)
    items = items_for(inputs, ext, null)
    written = _check_outputs(
        target, manifest, failures, report, items + named_inputs(model, labels, *(head or ())), force
    )
    from matpac_cli.outputs.writers import locked

    with locked(*written):
        from matpac_cli.jobs.tag import check_inputs

        check_inputs(config, target, items)  # rows of files that are not inputs: kept, replaced or refused
        groups, summary, reporter = _run(items, check_models(plan), config, target, labels, quiet, failures, started)
        if report is not None and target in summary.outputs:
            from matpac_cli.jobs.report import build_report

            page = build_report(target, report, force=True)  # checked before the run
            for cut in page.cuts:
                reporter.warning(cut)
            summary.outputs.append(page.path)
    raise typer.Exit(finish(summary, reporter, "tagged", [g.predictor for g in groups]))


def _check_arguments(
    options,
    *,
    head,
    model,
    top_k,
    threshold,
    out,
    fmt,
    manifest,
    segments,
    min_segment,
    wide,
    failures,
    report,
    force,
    library,
    keep,
    write=None,
):
    """Everything the arguments alone decide (no torch, no model file read), given the run
    `options` already checked: the tag settings, the --out file (None: stdout) and which encoder
    each head runs on (`keep`: --update and --prune). Keyword-only, so no caller depends on the
    order of fifteen settings."""
    from matpac_cli.checkpoints.resolve import parse_hf
    from matpac_cli.engines import check as check_engine
    from matpac_cli.jobs.tag import TagConfig
    from matpac_cli.jobs.tag_plan import DEFAULT_HEADS, check_output, plan_groups
    from matpac_cli.jobs.tag_rows import MIN_SEGMENT_S, check_min_segment, check_selection, check_wide
    from matpac_cli.outputs.earlier import check_settings
    from matpac_cli.outputs.writers import output_format

    check_settings(*keep, force)
    check_selection(top_k, threshold)
    check_wide(wide, segments, top_k)
    min_segment = MIN_SEGMENT_S if min_segment is None else min_segment
    check_min_segment(min_segment)
    fmt = output_format(out, fmt)
    target = None if out in (None, "-") else Path(out)
    _check_paths(target, manifest, failures, force, check_output)
    _check_report(report, target, force, wide)
    plan = plan_groups(head or DEFAULT_HEADS, model, check=False)
    for name, _ in plan:
        if name.startswith("hf:"):
            parse_hf(name)  # OWNER/REPO[@REV], refused here rather than at its download
    check_engine(options)
    from matpac_cli.jobs.stored import open_library

    open_library(library)  # a library that cannot be made: one line, before the model
    config = TagConfig(
        top_k=top_k,
        threshold=threshold,
        segments=segments,
        min_segment=min_segment,
        wide=wide,
        fmt=fmt,
        force=force,
        update=keep[0],
        prune=keep[1],
        manifest=manifest,
        options=options,
        library=library,
        write=write,
    )
    return config, target, plan


def _run(
    items: list,
    plan: list,
    config,
    target: Path | None,
    labels: Path | None,
    quiet: bool,
    failures: Path | None,
    started: float,
):
    """Load the encoders and their heads, then tag every input: (groups, summary, reporter)."""
    from matpac_cli.engines import Engine
    from matpac_cli.jobs.stored import resume_note
    from matpac_cli.jobs.tag import tag as run_tag

    if config.options.engine == "local":  # with ray, the cluster's devices count, not the driver's
        check_device(config.options)
    runner = Engine(config.options)
    config = dataclasses.replace(config, options=runner.options)  # a Ray cluster's placement
    try:
        groups = load_groups(plan, runner, labels, quiet)
        keeps = resume_note(config.library)
        reporter = Reporter(quiet, items, started, keeps=keeps, failures=failures)
        try:
            summary = run_tag(items, groups, config, target, SafeStdout(sys.stdout), reporter, argv())
        finally:
            reporter.close()
    finally:
        runner.close()
    return groups, summary, reporter


def _check_outputs(
    target: Path | None, manifest: Path | None, failures: Path | None, report: Path | None, items: list, force: bool
) -> list[Path]:
    """--out's rules for every file the run writes; the files to lock."""
    from matpac_cli.outputs import naming
    from matpac_cli.outputs.rules import is_manifest

    outputs: dict = {"--out": target}
    man = manifest or (None if target is None else naming.tags_manifest(target))
    option = "--manifest" if manifest is not None else "the manifest of --out"
    outputs[option] = man
    outputs["--report"] = report
    return check_outputs(outputs, items, force, failures, ours={option: is_manifest})


def _check_report(report: Path | None, target: Path | None, force: bool, wide: bool = False) -> None:
    """`--report` is refused before any model loads: it is built from the --out file's long rows."""
    if report is None:
        return
    from matpac_cli.errors import UsageError

    if wide:
        raise UsageError(f"--report {report} is drawn from the long rows (a row per label); give it without --wide")
    if target is None:
        raise UsageError(f"--report {report} is built from the tags file: give --out tags.csv (not stdout)")
    from matpac_cli.jobs.report import check_out

    check_out(report, force, "report")


def _check_paths(target: Path | None, manifest: Path | None, failures: Path | None, force: bool, check_output) -> None:
    from matpac_cli.outputs.writers import ensure_writable

    for path in (target, manifest, failures):
        if path is not None:
            ensure_writable(path)
    if target is not None:
        check_output(target, force, manifest)
