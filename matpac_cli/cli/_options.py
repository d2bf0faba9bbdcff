"""Option aliases shared by the commands (Annotated, as hf's CLI does), in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup


def _tidy(params: list) -> list:
    """Flags show no value type (typer writes `<bool>`), arguments their name in capitals
    (`INPUTS...`, not `{inputs}...`)."""
    for param in params:
        if param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""  # a flag takes no value: nothing to show
        elif param.param_type_name == "argument":
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
    return params


class Command(TyperCommand):
    """Help as a Unix tool prints it: `Usage: matpac tag [OPTIONS] INPUTS...` and clean flags.
    Every command uses it (`Group` for `matpac` and `matpac models`)."""

    def get_params(self, ctx) -> list:
        return _tidy(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(TyperGroup):
    def get_params(self, ctx) -> list:
        return _tidy(super().get_params(ctx))


Inputs = Annotated[
    list[str],
    typer.Argument(help="Audio files and/or folders (recursive); '-' reads paths from stdin.", show_default=False),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Registry name, checkpoint file, or hf:OWNER/REPO\\[@REV].")
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16.")]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        help="Encoder chunks (6 s each) per batch, across files. Default: 8 on a CPU, 128 on a GPU (the measured best).",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="Decoding threads (default: up to 4 when the CPU runs the encoder, all cores but two with a GPU)."
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads (default: torch's choice; 1 per decoding thread when a GPU runs the encoder)."
    ),
]
ExtOpt = Annotated[str | None, typer.Option("--ext", help="Extensions to pick up in folders, comma-separated.")]
NullOpt = Annotated[bool, typer.Option("--null", "-0", help="Paths on stdin are NUL-separated (find -print0).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary; errors still go to stderr.")]
FailuresOpt = Annotated[
    Path | None, typer.Option("--failures", help="Write the inputs that failed, with reasons, to this CSV.")
]
RowsOutOpt = Annotated[  # tag and search: rows to a file, or to stdout
    str | None,
    typer.Option(
        "--out", "-o", help="Output file (.csv, .jsonl, .ndjson or .parquet), or '-' for stdout (the default)."
    ),
]
LibraryOpt = Annotated[
    Path | None,
    typer.Option(
        "--library",
        help="The library: every file's embeddings, kept by its audio, so no command encodes a file twice "
        "(default: $MATPAC_LIBRARY, else ~/.cache/matpac/library).",
    ),
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="Try again the files the library records as failed (each killed the worker working on it; "
        "without this flag a run skips them, naming each).",
    ),
]
NoLibraryOpt = Annotated[
    bool, typer.Option("--no-library", help="Neither read nor write the library: encode everything, keep nothing.")
]


def library_of(library: Path | None, no_library: bool) -> Path | bool | None:
    """The config's `library`: a folder, None (the default one) or False (none)."""
    return False if no_library else library


ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute everything and replace existing outputs.")]
UpdateOpt = Annotated[
    bool,
    typer.Option(
        "--update",
        help=(
            "Keep the rows --out holds of files that are not inputs of this run, then write this run's "
            "(without it, such an output is refused: --force replaces it)."
        ),
    ),
]
PruneOpt = Annotated[bool, typer.Option("--prune", help="With --update: drop the rows of files gone from disk.")]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local (this machine) or ray (a Ray cluster: RAY_ADDRESS or --ray-address, else a local Ray instance; pip install '.\\[ray]' in matpac's source folder).",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="Ray cluster to run on with --engine ray, HOST:PORT of its head (default: RAY_ADDRESS)."
    ),
]
