"""`matpac tag --write` and `--undo`: the options, checked before any model loads, and the undo
run, which loads no model at all (jobs/tag_write.py does the work)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from matpac_cli.cli._reporter import Reporter
from matpac_cli.cli._stdout import SafeStdout

WriteOpt = Annotated[
    bool,
    typer.Option(
        "--write",
        help=(
            "Write each file's labels into its own tags (MOOD, MATPAC_GENRE, MATPAC_MOOD, MATPAC_INSTRUMENTS, "
            "MATPAC_SOURCE; README: Tags in your files), through a verified copy; the old values are kept in "
            "the library for --undo. Prints each change; no rows."
        ),
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="With --write or --undo: print what would change, change nothing.")
]
UndoOpt = Annotated[
    bool, typer.Option("--undo", help="Put back the tags matpac replaced in these files (no model runs).")
]
GenreOpt = Annotated[
    str | None,
    typer.Option(
        "--genre",
        metavar="append|replace",
        help="With --write: also write GENRE (the librarian's field): append matpac's genres, or replace it.",
    ),
]
SeparatorOpt = Annotated[str, typer.Option("--separator", help="With --write: between labels in one field.")]
TouchOpt = Annotated[
    bool, typer.Option("--touch", help="With --write: let the files' modification time change (default: kept).")
]


def write_spec(write: bool, dry_run: bool, genre: str | None, separator: str, touch: bool, refused: dict, library):
    """The WriteSpec of `--write` (None without it); `refused`: option -> whether it was given,
    for the options that make rows and have no meaning here; `library`: the run's (one is needed)."""
    from matpac_cli.errors import UsageError
    from matpac_cli.outputs.filetags import SEPARATOR, WriteSpec, check_spec

    if not write:
        given = [name for name, on in (("genre", genre), ("touch", touch), ("dry_run", dry_run)) if on]
        if separator != SEPARATOR:
            given.append("separator")
        if given:
            raise UsageError(f"`{given[0]}` goes with `write`", settings=(given[0], "write"))
        return None
    for name, on in refused.items():
        if on:
            raise UsageError(f"`write` puts the labels into the files, not rows: give no `{name}`", settings=(name,))
    spec = WriteSpec(genre=genre, separator=separator, dry_run=dry_run, touch=touch)
    check_spec(spec)
    from matpac_cli.jobs.tag_write import check_library

    check_library(library)
    return spec


def run_undo(items: list, library, dry_run: bool, quiet: bool) -> int:
    """`tag --undo`: restore, say how many, exit 1 where any file failed."""
    from matpac_cli.jobs.tag_write import undo

    started = time.monotonic()
    reporter = Reporter(quiet, items, started)
    try:
        summary = undo(items, library, dry_run, SafeStdout(sys.stdout), reporter)
    finally:
        reporter.close()
    verb = "would restore" if dry_run else "restored"
    typer.echo(
        f"matpac: {verb} the tags of {summary.done} file(s), {len(summary.failures)} failed "
        f"({len(items) - summary.done - len(summary.failures)} had nothing recorded)",
        err=True,
    )
    return 1 if summary.failures else 0
