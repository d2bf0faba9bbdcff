"""Ctrl-C and SIGTERM held off while a step that must be whole runs.

The CLI turns both signals into an exception in the main thread (`cli.main`), which can land
between any two lines. A few steps must not be cut: files moved into place together, rows grown
into an output with their header, and a finished file stored in the library and counted (so that
the summary of an interrupted run says exactly what the library holds). `whole()` holds a signal
that arrives during the step and hands it to the handler it had right after, so the run stops
there.

Python runs signal handlers in the main thread, whichever thread the kernel gave the signal to;
so the step's handlers are swapped for one that only notes the signal (blocking the signals with
`pthread_sigmask`, as this once did, held them in the calling thread alone: with decoding threads
running, the kernel handed the signal to one of those and the exception landed mid-step).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)
_held: list[int] = []  # signals that came during the outermost step, in order
_depth = 0  # steps open in the main thread (a step inside a step is part of it)


@contextmanager
def whole() -> Iterator[None]:
    """The body runs to its end before SIGINT or SIGTERM is acted on; one that came meanwhile
    goes to the handler it had, right after (in a thread other than the main one, a signal never
    interrupts the body: nothing is held)."""
    global _depth
    main = threading.current_thread() is threading.main_thread()
    if not main or _depth:
        _depth += main
        try:
            yield
        finally:
            _depth -= main
        return
    before = {sig: signal.getsignal(sig) for sig in HELD}
    swapped = [sig for sig, handler in before.items() if handler is not None]  # None: not set from Python
    for sig in swapped:
        signal.signal(sig, _note)
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for sig in swapped:
            signal.signal(sig, before[sig])
        if _held:
            sig = _held[0]
            _held.clear()
            _deliver(sig, before[sig])


def _note(signum: int, frame) -> None:
    _held.append(signum)


def _deliver(signum: int, handler) -> None:
    """The signal, as its handler would have taken it when it came."""
    if callable(handler):
        handler(signum, None)  # Python's KeyboardInterrupt, the CLI's `Stopped`: raised here
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action, now
