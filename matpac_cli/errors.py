"""Typed errors. The CLI maps each family to an exit code in one place (cli/__init__.py).

Exit codes: 1 when some inputs failed (InputError is per file and never stops a run),
2 for usage, model, weights or output errors (the run cannot go on).
"""

from __future__ import annotations

RAY_LIMIT = 300  # characters of a Ray error's first line shown (its messages run longer than most)


def one_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first non-blank line of an exception's message, stripped and cut to `limit` characters
    (None: whole); its type name when the message is empty. Every error matpac shows is one line,
    so a library's multi-line message (a traceback, a hint block) is reduced here, in one way."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


class MatpacError(Exception):
    """Base class: the message is meant for the person at the terminal, one line.

    The library is used from Python as well as through the `matpac` command, so a message names a
    setting as the Python API spells it (the config field or keyword), never as a command-line
    flag, and lists the settings it names in `settings`. A setting is written in one of two forms:
    `name=VALUE` for a value (`top_k=-1: give 0 ...`) and the name in backticks for the setting
    itself (``use `force` to replace it``). The CLI turns exactly these, for the settings listed,
    into its flags (`--top-k -1`, `--force`) in one place (`cli/_errors.py`), so the terminal reads
    flags and a Python caller reads the names it passed.
    """

    exit_code = 2

    def __init__(self, *args: object, settings: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.settings = tuple(settings)  # kept when pickled (a Ray worker's error): it is in __dict__


class UsageError(MatpacError):
    """Bad options or arguments."""


class ModelError(MatpacError):
    """A checkpoint that cannot be used: wrong keys or shapes, unknown name."""


class WeightsError(MatpacError):
    """Weights that cannot be fetched or verified (network, offline cache miss, checksum)."""


class ChecksumError(WeightsError):
    """A weight file whose sha256 is not the pinned or recorded one: never loaded."""


class OutputError(MatpacError):
    """An output that cannot be written or would be overwritten silently."""


class InputError(MatpacError):
    """One input file cannot be used; the run goes on with the others."""

    exit_code = 1

    def __init__(self, path: str, reason: str, settings: tuple[str, ...] = ()) -> None:
        super().__init__(f"{path}: {reason}", settings=settings)
        self.path = path
        self.reason = reason

    def __reduce__(self):  # pickled as (path, reason): a Ray task sends a file's error to the driver
        return (type(self), (self.path, self.reason, self.settings))


class GaveUp(InputError):
    """A file given up because working on it killed its process again and again (a segfault, an
    out-of-memory kill): unlike an error a decoder raises, which costs little to meet again, the
    library records it (`stage` "decode": whatever the model; "encode": for the run's models),
    and a later run skips the file until `retry_failed` is given."""

    def __init__(self, path: str, reason: str, stage: str = "decode") -> None:
        super().__init__(path, reason)
        self.stage = stage

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.stage))
