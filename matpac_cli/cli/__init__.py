"""The `matpac` command: options -> config -> library call -> messages and exit codes.

One module per command group (`embed`, `tag`, `train`, `search`, `report`, `playlist`, `models`, `library`); shared option aliases in
`_options`, the checks before a run in `_preflight`, stderr rendering in `_reporter`, stdout in `_stdout`, start-up
tuning in `_startup`; the one map from errors to messages and exit codes is `main` here.
Only this package imports typer and rich; torch loads inside the commands, so `matpac --help`
stays instant. Exit codes: 0 all done, 1 some inputs failed, 2 usage/model/weights/output error,
130 interrupted. Set MATPAC_DEBUG=1 for tracebacks.

Examples:
  matpac embed ./clips --out emb.npy
  matpac tag ./music --top-k 3 --out tags.csv
  matpac train ./labelled --out mine.safetensors   # then: matpac tag ./new --head ./mine.safetensors
  matpac search song.flac --index emb.npy --top-k 5   # or --duplicates --threshold 0.98
  matpac report tags.csv --embeddings emb.npy --out report.html   # one offline HTML page
  matpac playlist song.flac --n 30 --out mix.m3u8   # a song radio from the library
  find . -name '*.flac' -print0 | matpac tag - --null --out - | grep -i jazz
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from typing import Annotated

import typer

from matpac_cli import __version__
from matpac_cli.cli import _reporter, _stdout
from matpac_cli.cli import embed as _embed
from matpac_cli.cli import library as _library
from matpac_cli.cli import models as _models
from matpac_cli.cli import playlist as _playlist
from matpac_cli.cli import report as _report
from matpac_cli.cli import search as _search
from matpac_cli.cli import tag as _tag
from matpac_cli.cli import train as _train
from matpac_cli.cli._errors import flagged
from matpac_cli.cli._options import Command, Group
from matpac_cli.errors import MatpacError
from matpac_cli.outputs.safetext import for_terminal

app = typer.Typer(
    name="matpac",
    cls=Group,
    no_args_is_help=True,
    add_completion=True,
    help="Tag and embed audio with the MATPAC / MATPAC++ self-supervised audio encoders.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"matpac {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Tag and embed audio with the MATPAC / MATPAC++ self-supervised audio encoders.

    Exit status: 0 every input done; 1 some inputs failed; 2 usage, model, weights or output
    error; 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): finished files are kept and a
    re-run resumes. A closed stdout pipe (`| head`) ends the run quietly with 0.
    """


app.command("embed", cls=Command)(_embed.embed)
app.command("tag", cls=Command)(_tag.tag)
app.command("search", cls=Command)(_search.search)
app.command("train", cls=Command)(_train.train)
app.command("report", cls=Command)(_report.report)
app.command("playlist", cls=Command)(_playlist.playlist)
app.add_typer(_models.app, name="models")
app.add_typer(_library.app, name="library")


def _on_signal(signum, frame) -> None:
    raise _stdout.Stopped(143 if signum == signal.SIGTERM else 130)


def main(argv: list[str] | None = None) -> int:
    """Run the app and turn every known error into one line and an exit code.

    Typer reports usage errors itself (exit 2); matpac's own errors are caught here, so the user
    sees one line, not a traceback. Ctrl-C and SIGTERM raise `Stopped` in the main thread (a
    BaseException, so no library `except Exception` swallows it and Typer does not turn it into
    a bare exit code); the run's own clean-up runs on the way out.
    """
    handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 go out as their bytes
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError):
            pass
    try:
        app(args=argv, prog_name="matpac")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except MatpacError as exc:
        _debug()
        sys.stderr.write(for_terminal(f"matpac: error: {flagged(exc)}") + "\n")
        if isinstance(exc, _stdout.StdoutError):
            _quiet_stdout()  # or Python's exit flush reports the same full disk again
        return exc.exit_code
    except (_stdout.Stopped, KeyboardInterrupt) as exc:
        _debug()
        code = getattr(exc, "code", 130)
        line = f"matpac: {'terminated' if code == 143 else 'interrupted'}{_reporter.stop_note()}"
        sys.stderr.write(for_terminal(line) + "\n")
        return code
    except (_stdout.StdoutClosed, BrokenPipeError):
        _quiet_stdout()
        return 0
    except OSError as exc:  # a machine fault outside matpac's own writers (stdout on a full disk ...)
        _debug()
        where = f" {exc.filename}:" if exc.filename else " cannot write output:"
        sys.stderr.write(for_terminal(f"matpac: error:{where} {exc.strerror or exc}") + "\n")
        _quiet_stdout()
        return 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def entry() -> None:
    """The `matpac` program (and `python -m matpac_cli`): `main`, then exit without the
    interpreter's teardown.

    Tearing down after torch costs 0.6-0.7 s, most of it the garbage collector walking torch's
    objects, and does nothing a finished run needs: every output is written, renamed and closed
    by the time `main` returns, so only stdout and stderr are flushed here. The collector also
    stays off while torch imports and the model loads (`_startup.startup_done` turns it back on
    and freezes what loading made, and has glibc keep the encoder's freed temporaries for the
    next batch)."""
    gc.disable()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _quiet_stdout()
        except (OSError, ValueError) as exc:
            if stream is sys.stdout:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(
                        for_terminal(f"matpac: error: cannot write to stdout: {getattr(exc, 'strerror', None) or exc}")
                        + "\n"
                    )
                    sys.stderr.flush()
                code = code or 2
    os._exit(code)


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): stop quietly, and keep Python's exit flush
    from reporting the same broken pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _debug() -> None:
    if os.environ.get("MATPAC_DEBUG"):
        import traceback

        traceback.print_exc()
