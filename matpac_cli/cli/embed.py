"""`matpac embed`: audio files -> one N x 3840 matrix, its row index and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from matpac_cli.cli._common import Reporter, argv, finish, items_for, load_predictor
from matpac_cli.cli._options import (BatchOpt, DeviceOpt, ExtOpt, FailuresOpt, ForceOpt, Inputs, ModelOpt,
                                     NullOpt, PrecisionOpt, QuietOpt, ThreadsOpt, WorkersOpt)


def embed(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (N x 3840); FILE.csv indexes its rows.")],
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option(help="Encoder layer 1-12, 'last' (12) or 'all' (N x 12 x 3840).")] = "last",
    frames: Annotated[Optional[Path], typer.Option("--frames", help="Also write one 3840-d vector per 160 ms per file, as .npy under this folder (mirrors the input tree).")] = None,
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
    """Embed audio files into one N x 3840 matrix (clip mean of the encoder's time columns).

    Example: matpac embed ./clips --out emb.npy
    """
    from matpac_cli.embedding import EmbedConfig, embed as run_embed

    items = items_for(inputs, ext, null)
    predictor = load_predictor(model or "matpac-plus", device, precision, threads, quiet)
    reporter = Reporter(quiet, len(items))
    try:
        config = EmbedConfig(out=out, layer=layer, frames_dir=frames, batch_size=batch_size, workers=workers, force=force)
        summary = run_embed(items, predictor, config, reporter.advance, reporter.failure, argv=argv(),
                            on_audio=reporter.audio)
    finally:
        reporter.close()
    raise typer.Exit(finish(summary, reporter, failures, "embedded"))
