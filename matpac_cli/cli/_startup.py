"""The program's start-up tuning: the garbage collector stays off while torch imports and the
model loads (`entry` turns it off), then what loading made is frozen and the collector turned
back on (`startup_done`); and the command line a manifest records (`argv`)."""

from __future__ import annotations

import gc
import sys


def startup_done() -> None:
    """Imports and model loading are over: freeze what they made (the collector never walks it
    again), turn the collector back on (`entry` turned it off), and have glibc keep each batch's
    freed temporaries for the next (`cpu.keep_freed_memory`: this process is the program's own)."""
    from matpac_cli.encoder.cpu import keep_freed_memory

    gc.freeze()
    gc.enable()
    keep_freed_memory()


def argv() -> list[str]:
    return ["matpac", *sys.argv[1:]]
