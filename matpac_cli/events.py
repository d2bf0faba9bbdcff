"""What a run tells its caller while it works: one events object, carried whole from the job to
the engine, instead of a callback per kind of news.

The CLI's `Reporter` (progress bar, skipped files, warnings) implements `RunEvents`; a library
call gets `NoEvents` unless it passes its own object (a subclass of `NoEvents` overrides only
what it wants, or `Listeners` wraps plain functions). The engines and jobs call these methods
from the thread that runs the job, never from a decoding thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RunEvents(Protocol):
    """The news of a run. `item` is a `discovery.Item`; `err` an `errors.InputError`."""

    def progress(self, item, seconds: float) -> None:
        """A file is done (computed or failed: `seconds` 0.0 then)."""

    def failure(self, err) -> None:
        """A file failed; the run goes on without it."""

    def audio(self, seconds: float) -> None:
        """Seconds of audio encoded since the last call, so a display moves inside long files."""

    def reused(self, item, seconds: float) -> None:
        """A file taken whole from the library (an earlier run encoded it)."""

    def warning(self, text: str) -> None:
        """Something the person should know that fails nothing (a file cut short, a retried job)."""

    def encoding(self, items) -> None:
        """Once, after the library has handed on the files it holds (each heard as `reused`):
        the files the run will encode. Optional (a run asks for it with `getattr`): a display
        sizes the run from these alone, not by reading every input's header again."""


class NoEvents:
    """The library's default: hears everything, says nothing. A file reused from an earlier run
    counts as progress unless `reused` is overridden."""

    def progress(self, item, seconds: float) -> None:
        pass

    def failure(self, err) -> None:
        pass

    def audio(self, seconds: float) -> None:
        pass

    def reused(self, item, seconds: float) -> None:
        self.progress(item, seconds)

    def warning(self, text: str) -> None:
        pass

    def encoding(self, items) -> None:
        pass


class Listeners(NoEvents):
    """Events from plain functions, for a caller that wants one or two:
    `embed(items, predictor, config, Listeners(failure=print))`."""

    def __init__(
        self,
        progress: Callable | None = None,
        failure: Callable | None = None,
        audio: Callable | None = None,
        reused: Callable | None = None,
        warning: Callable | None = None,
    ) -> None:
        given = {"progress": progress, "failure": failure, "audio": audio, "reused": reused, "warning": warning}
        for name, function in given.items():
            if function is not None:
                setattr(self, name, function)


class KeepFailures:
    """`events` with every failure also kept in `failures` (a job's summary lists them)."""

    def __init__(self, events: RunEvents, failures: list) -> None:
        self.events, self.failures = events, failures

    def failure(self, err) -> None:
        self.failures.append(err)
        self.events.failure(err)

    def __getattr__(self, name: str):
        return getattr(self.events, name)


@dataclass(frozen=True)
class Ran:
    """What an engine reports of its run: the tries that reran work whose process (or node) died
    (Ray's), and the device its encoder ran on when that is not the plans' own predictors' (a Ray
    cluster's actors, e.g. `cuda`, while the driver's copy sits on its CPU); None: theirs."""

    retries: int = 0
    device: str | None = None
    received: int = 0  # bytes of results the driver received from a Ray cluster
