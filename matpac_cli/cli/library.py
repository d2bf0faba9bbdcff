"""`matpac library`: what the library holds (info), dropping what is gone (prune), and an embed
output made from it without encoding (export). The work is `jobs.library`'s; this module turns
options into calls and results into lines (stdout: the data; stderr: what was done)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from matpac_cli.cli._errors import with_flags
from matpac_cli.cli._options import Command, ForceOpt, Group, LibraryOpt
from matpac_cli.outputs.safetext import for_terminal

app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    help="The library of embeddings every command reads and writes: info, prune, export.",
)

LibModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="A model the library holds: registry name, sha256 (or its first 6+ characters) or checkpoint file.",
    ),
]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _say(line: str) -> None:
    sys.stdout.write(for_terminal(line) + "\n")


@app.command("info", cls=Command)
def library_info(
    library: LibraryOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of text.")] = False,
) -> None:
    """What the library holds: rows, models, layers, settings, size on disk, paths known and missing.

    Example: matpac library info --library ~/music-library
    """
    from matpac_cli.jobs.library import library_info, library_root

    data = library_info(library_root(library))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    _say(f"library   {data['library']}")
    _say(f"size      {_size(data['bytes'])} on disk")
    _say(f"rows      {data['rows']:,} clip rows, {data['files']:,} files (by audio)")
    _say(f"paths     {data['paths']:,} known, {data['missing']:,} missing on disk")
    if data["failed"]:
        _say(f"failed    {data['failed']:,} files runs skip (they killed a worker; --retry-failed tries them)")
    for m in data["models"]:
        name = f" ({m['name']})" if m["name"] else ""
        _say(f"model     {m['sha256'][:12]}{name}: layers {', '.join(map(str, m['layers']))}")
        for s in m["settings"]:
            _say(f"  setting {s['frontend']}: {s['files']:,} files, {s['segments']:,} with segments")


@app.command("prune", cls=Command)
def library_prune(
    library: LibraryOpt = None,
    model: LibModelOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete; without it, only say what would go.")] = False,
) -> None:
    """Drop the entries whose paths are all gone from disk (or, with --model, every entry of that
    model). Without --yes a dry run: it says what would go and deletes nothing.

    Example: matpac library prune --yes
    """
    from matpac_cli.jobs.library import library_root, prune_library

    root = library_root(library)
    p = prune_library(root, model, yes)
    what = f"of model {model}" if model is not None else "whose paths are all gone from disk"
    verb = "dropped" if p.done else "would drop"
    rows = ", ".join(f"{n:,} {name} rows" for name, n in p.rows.items() if n or name != "failed")
    paths = f", and {p.paths:,} paths no longer on disk" if p.paths else ""
    sys.stderr.write(for_terminal(f"matpac: {verb} {p.keys:,} files {what} ({rows}){paths}") + "\n")
    if not p.done and (p.keys or p.paths):
        sys.stderr.write("matpac: nothing deleted; run again with --yes to delete\n")


@app.command("export", cls=Command)
def library_export(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output .npy (N x D; FILE.csv indexes its rows) or .parquet, as `embed` writes."
        ),
    ],
    library: LibraryOpt = None,
    model: LibModelOpt = None,
    layer: Annotated[
        str, typer.Option(help="A layer the library holds (1-12) or 'last' (the deepest stored).")
    ] = "last",
    force: ForceOpt = False,
) -> None:
    """Write the library's embeddings as `embed` writes them, without encoding: one row per
    file on disk, in path order (files the library knows that are gone are skipped and counted).

    Example: matpac library export --out emb.npy
    """
    from matpac_cli.jobs.library import export_library, library_root

    done = export_library(library_root(library), out, model, layer, force)
    skipped = f"; {done.skipped:,} paths not on disk skipped" if done.skipped else ""
    for note in done.notes:  # files of the model not exported: never left out in silence
        sys.stderr.write(for_terminal(f"matpac: warning: {with_flags(note, ('layer',))}") + "\n")
    sys.stderr.write(
        for_terminal(f"matpac: exported {done.rows:,} files (layer {done.layer}) to {out}{skipped}") + "\n"
    )
