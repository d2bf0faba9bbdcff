"""What the person at the terminal sees on stderr: a progress bar, skipped files, the summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from matpac_cli.errors import MatpacError


class Reporter:
    """stderr messages and a progress bar (rich, only on a TTY and without --quiet)."""

    def __init__(self, quiet: bool, total: int = 0) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.progress = None
        if not quiet and sys.stderr.isatty() and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[audio]}"), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task("files", total=total, audio="")
            self.seconds = 0.0
            self.progress.start()

    def advance(self, item: object, seconds: float) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def audio(self, seconds: float) -> None:
        """Audio encoded so far, so the display moves inside long files."""
        if self.progress is not None:
            self.seconds += seconds
            minutes = self.seconds / 60
            self.progress.update(self.task, audio=f"{minutes:.1f} min of audio" if minutes < 120 else f"{minutes / 60:.1f} h of audio")

    def failure(self, err: MatpacError) -> None:
        self.console.print(f"matpac: skipped {err}", markup=False, style="yellow", soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def finish(summary, reporter: Reporter, failures: Optional[Path], verb: str) -> int:
    """Write --failures, print the summary line; the exit status (1 when any input failed)."""
    from matpac_cli.writers import write_failures

    if failures is not None:
        write_failures(failures, summary.failures)
    parts = [f"{verb} {summary.done + summary.reused} file(s)"]
    if summary.reused:
        parts.append(f"{summary.reused} reused from an earlier run")
    if summary.failures:
        parts.append(f"{len(summary.failures)} failed")
    written = ", ".join(str(p) for p in summary.outputs if Path(p).exists())
    reporter.info("matpac: " + "; ".join(parts) + (f"; wrote {written}" if written else ""))
    return 1 if summary.failures else 0


def check_run_options(batch_size: int, workers: Optional[int], threads: Optional[int]) -> None:
    """Option errors that depend only on the arguments: refused before anything loads."""
    from matpac_cli.errors import UsageError

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: give at least 1")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers}: give a positive count, or 0 for the default")
    if threads is not None and threads < 0:
        raise UsageError(f"--threads {threads}: give a positive count, or 0 for the default")


def items_for(inputs: list[str], ext: Optional[str], null: bool):
    from matpac_cli.discovery import discover, parse_extensions

    items = discover(inputs, parse_extensions(ext), sys.stdin, null)
    if not items:
        raise MatpacError(f"no audio files found in {' '.join(inputs)}")
    return items


def load_predictor(model: str, device: str, precision: str, threads: Optional[int], quiet: bool):
    import torch

    from matpac_cli.predictor import Predictor

    predictor = Predictor.load(model, device, precision, threads, progress=not quiet and sys.stderr.isatty())
    if predictor.device == "cpu" and torch.cuda.is_available() and not quiet:
        Reporter(quiet).info("matpac: note: a CUDA GPU is available but --device cpu was asked for")
    return predictor


def argv() -> list[str]:
    return ["matpac", *sys.argv[1:]]
