"""What the person at the terminal sees on stderr: a progress bar, skipped files, warnings, the
line printed when a run is stopped, and the summary."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from matpac_cli.cli._errors import flagged
from matpac_cli.cli._startup import startup_done
from matpac_cli.config import precision_name
from matpac_cli.encoder.cpu import bf16_hardware
from matpac_cli.errors import MatpacError, OutputError
from matpac_cli.outputs.safetext import for_terminal

# `matpac embed` at --precision bf16 against fp32, 4 x 30 s FLAC, full-size ViT-B, in turn (RESULTS.md)
BF16_MEASURED = "ran 1.6x as fast as fp32 on a 2-core AMX Xeon (family 6, model 167)"
BF16_HINT_S = 600.0  # audio computed, in seconds, from which the summary mentions it
_ACTIVE: list[Reporter] = []  # the run's reporter, for the line printed when it is stopped


def stop_note() -> str:
    """What an interrupted run kept, for the one line printed when it is stopped."""
    if not _ACTIVE:
        return ""
    r = _ACTIVE[-1]
    done = f" after {r.files} of {r.total_files} file(s) ({max(r.files - r.failed, 0)} finished, {r.failed} failed)"
    return done + (f"; {r.keeps}" if r.keeps else "")


class Reporter:
    """The run's events (`events.RunEvents`) as the person at the terminal sees them: stderr
    messages and a progress display (rich, only on a TTY and without --quiet). Every
    message shows control characters as escapes (`safetext.for_terminal`): a file name or label
    never reaches the terminal as a command.

    The bar counts audio, not files: seconds encoded out of the run's total (the durations the
    library holds of the files it hands on; the others' read from their headers in a background
    thread once the run says which it encodes, estimated where a header does not say), the rate
    in times real time, elapsed time and an ETA from the audio still to go.
    """

    def __init__(
        self,
        quiet: bool,
        items: Sequence = (),
        started: float | None = None,
        keeps: str = "",
        failures: Path | None = None,
    ) -> None:
        from rich.console import Console

        from matpac_cli.outputs.writers import FailureLog

        self.failure_log = FailureLog(failures) if failures is not None else None
        if items and not gc.isenabled():  # a run that loads no model: its start-up is over too
            startup_done()

        self.console = Console(stderr=True, highlight=False)
        self.keeps = keeps  # what an interrupted run leaves behind, e.g. the library to resume from
        if items:
            _ACTIVE.append(self)
        self.quiet = quiet
        self.bar = None
        self.total_files = len(items)
        self.files = self.failed = self.reused_files = 0
        self.encoded_s = self.reused_s = 0.0
        self.total_s: float | None = None
        self.started = started or time.monotonic()
        if not quiet and sys.stderr.isatty() and items:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
                transient=True,
                # rows written to stdout go there, not to the bar's terminal: `tag dir > tags.csv`
                # on a terminal showed every row and left the file empty; where stdout is that
                # terminal too, rich shows them above the bar
                redirect_stdout=_terminal(sys.stdout),
            )
            self.task = self.bar.add_task("matpac", total=None, info="", eta="")
            self.bar.start()
            self.unsized = list(items)  # sized once the run says what it encodes (`encoding`)

    unsized: list | None = None  # the inputs whose audio is still to be sized (with a bar only)

    def encoding(self, items: Sequence) -> None:
        """The files the run encodes, once the library has handed on those it holds: only these
        are sized from their headers (a re-run over 100,000 files it holds reads none)."""
        self._size(list(items))

    def _size(self, items: list | None) -> None:
        """Start sizing the run (once), in a background thread: `items`, or every input where
        the run never said which it encodes (no library)."""
        if self.unsized is None:
            return
        items, self.unsized = (self.unsized if items is None else items), None
        threading.Thread(target=self._size_run, args=(items,), daemon=True).start()

    def _size_run(self, items: list) -> None:
        """The run's audio: what the library handed on (its durations are known) and what the
        headers of `items` say, estimated for files whose header does not say."""
        from matpac_cli.pipeline.audio import probe_duration

        known, unknown = 0.0, 0
        for item in items:
            seconds = probe_duration(item.path)
            if seconds is None:
                unknown += 1
            else:
                known += seconds
        counted = len(items) - unknown
        self.total_s = self.reused_s + known + (unknown * known / counted if counted else 0.0)
        self._refresh()

    def reused(self, item: object, seconds: float) -> None:
        self.reused_files += 1
        self.reused_s += seconds
        self.files += 1
        self._refresh()

    def progress(self, item: object, seconds: float) -> None:
        self._size(None)
        self.files += 1
        self._refresh()

    def audio(self, seconds: float) -> None:
        """Audio encoded so far, so the display moves inside long files."""
        self._size(None)
        self.encoded_s += seconds
        self._refresh()

    def _refresh(self) -> None:
        progress = self.bar  # read once: close() may clear it from the main thread meanwhile
        if progress is None:
            return
        done = self.encoded_s + self.reused_s
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.encoded_s / elapsed
        total = self.total_s
        size = f"{_audio(done)}/{_audio(total)}" if total else _audio(done)
        info = f"{size} audio  {rate:.1f}x real time  {self.files}/{self.total_files} files"
        eta = ""
        if total and rate > 0:
            eta = f"ETA {_clock(max(total - done, 0.0) / rate)}"
        progress.update(self.task, total=total or None, completed=min(done, total or done), info=info, eta=eta)

    def failure(self, err: MatpacError) -> None:
        self._size(None)
        self.failed += 1
        if self.failure_log is not None:
            self.failure_log.add(err)
        self.console.print(
            for_terminal(f"matpac: skipped {flagged(err)}"), markup=False, style="yellow", soft_wrap=True
        )

    def warning(self, text: str) -> None:
        self.console.print(for_terminal(f"matpac: warning: {text}"), markup=False, style="yellow", soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(for_terminal(text), markup=False, soft_wrap=True)

    def close(self) -> None:
        """Called from `finally`: when an exception is already on its way (Ctrl-C, SIGTERM, an
        error), a --failures file that cannot be moved into place is a warning, so the exit code
        and line stay that exception's (130 and 'interrupted', not 2)."""
        if self.failure_log is not None:
            try:
                self.failure_log.close()
            except OutputError as exc:
                if sys.exc_info()[1] is None:  # nothing propagating: this is the run's error
                    raise
                self.warning(f"{flagged(exc)} (the list of failed files so far is lost)")
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _audio(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def finish(summary, reporter: Reporter, verb: str, predictors: Sequence = ()) -> int:
    """Print the summary line (--failures is put in place by `Reporter.close`); the exit status
    (1 when any input failed).

    The line always gives files done/reused/failed; then the audio computed in this run with the
    wall time, its rate and the device and precision that actually ran; then the audio reused from
    an earlier run (no time of its own, so it never inflates the rate); then what was written.
    """
    wall = time.monotonic() - reporter.started
    computed_s = max(summary.audio_s - reporter.reused_s, 0.0)
    rate = computed_s / wall if wall > 0 else 0.0
    computed = (
        f"{computed_s / 3600:.2f} h of audio computed in {_clock(wall)} ({rate:.1f}x real time)"
        if summary.done
        else f"nothing computed in {_clock(wall)}"
    )  # no 0.0x rate for reuse alone
    line = (
        f"matpac: {verb} {summary.done + summary.reused} file(s): {summary.done} done, {summary.reused} reused, "
        f"{len(summary.failures)} failed; {computed}"
    )
    device = getattr(summary, "ran_on", None)  # where the engine ran the encoder, if not on the predictors' own
    ran = sorted({f"{device or p.device}, {precision_name(p.dtype) or p.dtype}" for p in predictors})
    if ran:
        line += " on " + " and ".join(ran)
    hint = "" if device else _bf16_hint(ran, computed_s)  # a Ray run's actors ran on the cluster's CPUs
    line += f"; {reporter.reused_s / 3600:.2f} h reused"
    found = getattr(summary, "found", None)
    if found:
        hows = ", ".join(f"{n} {how}" for how, n in sorted(found.items(), key=lambda kv: -kv[1]))
        line += f" ({sum(found.values())} from the library: {hows})"
    if getattr(summary, "kept", 0):
        line += f"; kept {summary.kept} row(s) of earlier files"
    if getattr(summary, "pruned", 0):
        line += f"; pruned {summary.pruned} row(s) of files gone from disk"
    retries = getattr(summary, "retries", 0)
    if retries:
        line += f"; {retries} task {'retry' if retries == 1 else 'retries'} (work rerun after a Ray worker or node was lost)"
    failures = [] if reporter.failure_log is None else [reporter.failure_log.path]  # in place by now
    written = ", ".join(
        (["rows to stdout"] if getattr(summary, "streamed", False) else [])
        + ([f"tags into {summary.tagged} file(s)"] if getattr(summary, "tagged", 0) else [])  # tag --write
        + [str(p) for p in [*summary.outputs, *failures] if Path(p).exists()]
    )
    left = ", ".join(str(p) for p in getattr(summary, "left", []))
    if written:
        line += f"; wrote {written}"
    else:
        line += "; wrote nothing" + (f" ({left} from an earlier run, left as it was)" if left else "")
    reporter.info(line + hint)
    return 1 if summary.failures else 0


def _bf16_hint(ran: list[str], computed_s: float) -> str:
    """Where fp32 ran on a CPU that computes bf16 in hardware (AMX, AVX-512 BF16), the summary of
    a run that computed `BF16_HINT_S` of audio or more (a run long enough for its speed to matter)
    says that `--precision bf16` is there and what it gave where it was measured."""
    if "cpu, fp32" not in ran or computed_s < BF16_HINT_S or not bf16_hardware():
        return ""
    return f"; this CPU computes bf16 in hardware: `--precision bf16` {BF16_MEASURED}, its embeddings within 3e-2"


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
