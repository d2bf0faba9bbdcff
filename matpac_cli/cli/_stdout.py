"""stdout as matpac's data channel: a closed pipe ends the run quietly, any other write error is
one line; and the signal that stops a run. `cli.main` maps each to its exit code."""

from __future__ import annotations

import sys

from matpac_cli.errors import OutputError


class Stopped(BaseException):
    """Ctrl-C (exit 130) or SIGTERM (143), raised by the CLI's signal handlers in the main thread."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class StdoutClosed(BaseException):
    """The reader of stdout went away (`| head -1`): the run ends quietly, exit 0."""


class StdoutError(OutputError):
    """stdout cannot take the data (`> /dev/full`, a full disk): one line, exit 2."""


class SafeStdout:
    """sys.stdout for data: a closed pipe becomes `StdoutClosed`, any other write error (a full
    disk) a one-line `StdoutError`, wherever it is written."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise StdoutClosed() from None
        except OSError as exc:
            raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from None

    def isatty(self) -> bool:
        """A person's terminal (rows are then shown with control characters escaped)."""
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError, OSError):
            return False

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None
        except OSError as exc:
            raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from None
