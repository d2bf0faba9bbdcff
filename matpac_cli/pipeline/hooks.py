"""Test-only hooks of the decoding of a file, inert unless MATPAC_TEST_HOOKS=1 is set (the tests'
switch, never set for users): a decoder that dies on one file (`crash_on`: a segfault's
stand-in; Ray's decoding tasks), one that waits for a flag file (`hold_on`: a slow disk's, so
that a test can act while the rest of the run is done: Ray's decoding tasks, told by the driver,
and the local engine's decoding threads, `pipeline.feed.Feed`), and a Ray encoder actor that
waits for a flag file in the middle of a call (`hold_encoding`: a slow device's, so that a test
can kill an actor known to be busy). A test that stops a run then needs no long audio to catch it
mid-way (tests/cli/test_progress.py, tests/engines/test_ray.py)."""

from __future__ import annotations

import os

CRASH_ON = "MATPAC_TEST_CRASH_ON"  # TEST ONLY: decoding a file whose name ends so kills its process ...
HOLD_ON = "MATPAC_TEST_HOLD_ON"  # TEST ONLY: `ENDING:FLAG`: decoding a file whose name ends so waits for FLAG ...
HOLD_ENCODING = "MATPAC_TEST_HOLD_ENCODING"  # TEST ONLY: `CALL:FLAG`: an actor's calls from the CALL-th wait ...
HOLD_S = 120.0  # ... this long at most
TEST_HOOKS = "MATPAC_TEST_HOOKS"  # ... and only when this is 1 too (the tests' switch, never set for users)


def crash_on() -> str | None:
    """The test-only crash hook's file-name ending, or None (always, unless MATPAC_TEST_HOOKS=1
    is set as well): tests/engines/test_ray.py's stand-in for a decoder that segfaults on one file."""
    if os.environ.get(TEST_HOOKS) != "1":
        return None
    return os.environ.get(CRASH_ON) or None


def hold_on() -> tuple[str, str] | None:
    """The test-only hold hook (MATPAC_TEST_HOLD_ON=ENDING:FLAG, with MATPAC_TEST_HOOKS=1): decoding
    a file whose name ends with ENDING waits until the file FLAG exists, so that a test can act
    while the rest of the job is done and the encoder actors wait for work."""
    if os.environ.get(TEST_HOOKS) != "1":
        return None
    spec = os.environ.get(HOLD_ON) or ""
    ending, _, flag = spec.partition(":")
    return (ending, flag) if ending and flag else None


def hold_encoding() -> tuple[int, str] | None:
    """The test-only encoder hold hook (MATPAC_TEST_HOLD_ENCODING=CALL:FLAG, with
    MATPAC_TEST_HOOKS=1): from its CALL-th call on, a Ray encoder actor waits in the call until
    the file FLAG exists, having first left a file `FLAG.PID` (`busy`), so that a test knows which
    process is busy with a batch."""
    if os.environ.get(TEST_HOOKS) != "1":
        return None
    call, _, flag = (os.environ.get(HOLD_ENCODING) or "").partition(":")
    return (int(call), flag) if call.isdigit() and flag else None


def busy(flag: str) -> None:
    """Leave `FLAG.PID` for the test, then `hold(flag)`: this process is mid-call until FLAG exists."""
    if not os.path.exists(flag):
        with open(f"{flag}.{os.getpid()}", "w"):
            pass
    hold(flag)


def hold(flag: str, stop=lambda: False) -> None:
    """Wait for the file `flag` (at most `HOLD_S` seconds, or until `stop()`: the run is ending)."""
    import time

    deadline = time.monotonic() + HOLD_S
    while not os.path.exists(flag) and time.monotonic() < deadline and not stop():
        time.sleep(0.05)
