"""What comes before a run, in its order: the options built and checked from the arguments alone,
the inputs found, every output checked against `--out`'s rules (all before the lock and any
model), the model named checked; then the encoder loaded where the engine says it runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from matpac_cli.cli._reporter import Reporter
from matpac_cli.cli._startup import startup_done
from matpac_cli.errors import MatpacError


def run_options(
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    engine: str = "local",
    address: str | None = None,
):
    """The run's options, built (and so checked) from the arguments alone, before anything loads
    (torch included: `--precision fp8` is refused at once)."""
    from matpac_cli.config import RunOptions
    from matpac_cli.encoder.cpu import choose

    options = RunOptions(device, precision, threads, batch_size, workers, engine, address)
    choose()  # a misspelt MATPAC_CPU_LINEAR is refused now, not after a download
    return options


def items_for(inputs: list[str], ext: str | None, null: bool):
    from matpac_cli.pipeline.discovery import discover, parse_extensions

    items = discover(inputs, parse_extensions(ext), sys.stdin, null)
    if not items:
        raise MatpacError(f"no audio files found in {' '.join(inputs)}")
    if "-" not in inputs and all(item.problem or not os.path.lexists(item.path) for item in items):
        # nothing to do at all: said now, not after a model download (one missing input among
        # others fails as that file, and the run goes on)
        why = [f"{item.name}: {item.problem}" if item.problem else f"{item.name} does not exist" for item in items]
        raise MatpacError(
            why[0]
            if len(why) == 1
            else f"none of the inputs can be read: {'; '.join(why[:5])}{' ...' if len(why) > 5 else ''}"
        )
    return items


def named_inputs(*names: str | None) -> list:
    """Files named by options (--model, --head, --labels) as inputs of the run: never outputs."""
    from matpac_cli.pipeline.discovery import Item

    return [Item(str(n), Path(n)) for n in names if n and os.path.isfile(n)]


def check_outputs(outputs: dict, items, force: bool, failures: Path | None, ours: dict | None = None) -> list[Path]:
    """`--out`'s rules for every file the run writes (`outputs.rules`), before the lock and any
    model: returns the files to lock. `ours` maps an option to how a file it wrote is recognised."""
    from matpac_cli.outputs import rules as R

    outputs = {k: Path(v) for k, v in outputs.items() if v is not None}
    if failures is not None:
        outputs["--failures"] = Path(failures)
    R.check_distinct(outputs)
    R.check_not_inputs(outputs, items)
    for option, recognise in {**(ours or {}), "--failures": R.is_failures}.items():
        R.check_ours(outputs.get(option), option, force, recognise)
    written = list(outputs.values())
    R.check_side_files(written)
    return written


def check_model(model: str):
    """Refuse an unknown model name before anything loads; a local file is resolved (hashed)
    here once, a registry or hf: name is left for `load_predictor` to download."""
    from matpac_cli.checkpoints.registry import load_registry
    from matpac_cli.checkpoints.resolve import resolve

    if model.startswith("hf:") or model in load_registry().models:
        return model
    return resolve(model)


def load_predictor(model, options, quiet: bool, note: bool = True):
    """The encoder on `options`' device and precision (`RunOptions`), with a note when a GPU
    sits unused."""
    import torch

    from matpac_cli.inference.predictor import Predictor

    predictor = Predictor.load(
        model, options.device, options.precision, options.threads, progress=not quiet and sys.stderr.isatty()
    )
    startup_done()
    if note and predictor.on.is_cpu and torch.cuda.is_available() and not quiet:
        Reporter(quiet).info("matpac: note: a CUDA GPU is available but --device cpu was asked for")
    return predictor


def load_on(engine, model, quiet: bool):
    """The encoder as `engine` (an `engines.Engine`) loads it here: on this machine's device, or,
    with a Ray cluster, the driver's own copy on its CPU (no note about an idle GPU then)."""
    return load_predictor(model, engine.load_options, quiet, note=engine.remote is None)
