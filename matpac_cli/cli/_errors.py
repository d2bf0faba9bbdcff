"""The one place where the library's setting names become the command's flags.

Below `cli/`, a message names a setting as the Python API spells it (`top_k=-1: ...`, ``use
`force` ...``) and the error lists the settings it names (`MatpacError.settings`); see
`errors.MatpacError` for the two forms. What the terminal shows is the same message with those
settings as flags (`--top-k -1: ...`, `use --force ...`): `FLAGS` is the table, `flagged` applies
it wherever the CLI prints a library error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from matpac_cli.errors import MatpacError

# setting (config field or keyword of the Python API) -> the flag that sets it
FLAGS = {
    "batch_size": "--batch-size",
    "device": "--device",
    "dry_run": "--dry-run",
    "embeddings": "--embeddings",
    "end": "--to",
    "engine": "--engine",
    "exact": "--exact",
    "extensions": "--ext",
    "fmt": "--format",
    "folds": "--folds",
    "force": "--force",
    "frames_dir": "--frames",
    "genre": "--genre",
    "heads": "--head",
    "labels_file": "--labels",
    "layer": "--layer",
    "library": "--library",
    "lrs": "--lr",
    "min_segment": "--min-segment",
    "model": "--model",
    "n": "--n",
    "neighbours": "--neighbours",
    "out": "--out",
    "precision": "--precision",
    "prune": "--prune",
    "report": "--report",
    "retry_failed": "--retry-failed",
    "segments": "--segments",
    "separator": "--separator",
    "start": "--from",
    "task": "--task",
    "threads": "--threads",
    "threshold": "--threshold",
    "top_k": "--top-k",
    "touch": "--touch",
    "undo": "--undo",
    "update": "--update",
    "val": "--val",
    "wide": "--wide",
    "workers": "--workers",
    "write": "--write",
}


def with_flags(text: str, settings: Iterable[str]) -> str:
    """`text` with each of `settings` as its flag: `name=VALUE` -> `--flag VALUE`, `` `name` `` ->
    `--flag`, `name=` only at the start of the text or after a space or `(`. Only the settings the
    error lists are touched, so a file name in the same message that reads like one stays as it is."""
    for name in settings:
        flag = FLAGS.get(name)
        if flag is None:  # a gap in the table (test_setting_names keeps it whole): the Python name shows
            continue
        text = re.sub(rf"(?<![^\s(]){re.escape(name)}=", flag + " ", text)  # at a word's start
        text = text.replace(f"`{name}`", flag)
    return text


def flagged(exc: MatpacError) -> str:
    """The message of a library error as the terminal shows it (flags, not setting names)."""
    return with_flags(str(exc), getattr(exc, "settings", ()))
