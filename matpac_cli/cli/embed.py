"""`matpac embed`: audio files -> one N x 3840 matrix, its row index and manifest."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

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
    ModelOpt,
    NoLibraryOpt,
    NullOpt,
    PrecisionOpt,
    PruneOpt,
    QuietOpt,
    RayAddressOpt,
    RetryFailedOpt,
    ThreadsOpt,
    UpdateOpt,
    WorkersOpt,
    library_of,
)
from matpac_cli.cli._preflight import check_model, check_outputs, items_for, load_on, named_inputs, run_options
from matpac_cli.cli._reporter import Reporter, finish
from matpac_cli.cli._startup import argv


def embed(
    inputs: Inputs,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help=(
                "Output .npy (N x 3840; FILE.csv indexes its rows) or .parquet (one row per file: path, duration_s, "
                "sample_rate, channels, embedding)."
            ),
        ),
    ],
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option(help="Encoder layer 1-12, 'last' (12) or 'all' (N x 12 x 3840).")] = "last",
    frames: Annotated[
        Path | None,
        typer.Option(
            "--frames",
            help="Also write one 3840-d vector per 160 ms per file, as .npy under this folder (mirrors the input tree; emb.csv names each file in its frames column).",
        ),
    ] = None,
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
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    library: LibraryOpt = None,
    no_library: NoLibraryOpt = False,
    retry_failed: RetryFailedOpt = False,
) -> None:
    """Embed audio files into one N x 3840 matrix (clip mean of the encoder's time columns).

    Example: matpac embed ./clips --out emb.npy
    """
    started = time.monotonic()
    # everything the arguments alone decide, the inputs and the lock come before any model
    options = run_options(device, precision, threads, batch_size, workers, engine, ray_address)  # before torch
    from matpac_cli.engines import Engine
    from matpac_cli.engines import check as check_engine
    from matpac_cli.jobs.embed import EmbedConfig, check_config, check_inputs
    from matpac_cli.jobs.embed import embed as run_embed
    from matpac_cli.jobs.stored import resume_note
    from matpac_cli.outputs import naming
    from matpac_cli.outputs.writers import ensure_writable, locked

    check_engine(options)
    config = EmbedConfig(
        out=out,
        layer=layer,
        frames_dir=frames,
        force=force,
        update=update,
        prune=prune,
        options=options,
        library=library_of(library, no_library),
        retry_failed=retry_failed,
    )
    check_config(config)  # --out, --layer, --frames, --update: refused before the model loads
    if failures is not None:
        ensure_writable(failures)
    items = items_for(inputs, ext, null)
    paths = naming.embed_outputs(config.out)
    written = check_outputs(
        {
            "--out": paths["matrix"],
            "the row index of --out": paths.get("index"),
            "the manifest of --out": paths["manifest"],
        },
        items + named_inputs(model),
        force,
        failures,
    )
    with locked(*written, *([naming.frames_lock(frames)] if frames is not None else [])):  # and the --frames folder
        check_inputs(config, items)  # rows of files that are not inputs: kept, replaced or refused
        spec = check_model(model or "matpac-plus")
        runner = Engine(options)
        config = dataclasses.replace(config, options=runner.options)  # a Ray cluster's placement
        try:
            predictor = load_on(runner, spec, quiet)
            reporter = Reporter(
                quiet,
                items,
                started,
                failures=failures,
                keeps=resume_note(config.library),
            )
            try:
                summary = run_embed(items, predictor, config, reporter, argv())
            finally:
                reporter.close()
        finally:
            runner.close()
    raise typer.Exit(finish(summary, reporter, "embedded", [predictor]))
