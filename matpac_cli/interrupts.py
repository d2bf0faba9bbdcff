"""Ctrl-C and SIGTERM held off while a step that must be whole runs.

The CLI turns both signals into an exception in the main thread (`cli.main`), which can land
between any two lines. A few steps must not be cut: files moved into place together, rows grown
into an output with their header, and a finished file stored in the library and counted (so that
the summary of an interrupted run says exactly what the library holds). `whole()` blocks the two
signals for the step; one that arrives meanwhile is delivered, and the run stops, right after.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HELD = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def whole() -> Iterator[None]:
    """The body runs with SIGINT and SIGTERM blocked in this thread (in the main thread, where
    Python runs its handlers, that holds off the exception they raise), then the mask as it was."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
