"""The `matpac` command: options -> config -> library call -> messages and exit codes.

One module per command group (`embed`, `tag`, `models`); shared option aliases in `_options`,
stderr rendering in `_common`; the one map from errors to messages and exit codes is `main` here.
Only this package imports typer and rich; torch loads inside the commands, so `matpac --help`
stays instant. Exit codes: 0 all done, 1 some inputs failed, 2 usage/model/weights/output error,
130 interrupted. Set MATPAC_DEBUG=1 for tracebacks.

Examples:
  matpac embed ./clips --out emb.npy
  matpac tag ./music --top-k 3 --out tags.csv
  find . -name '*.flac' -print0 | matpac tag - --null --out - | grep -i jazz
"""

from __future__ import annotations

import os
import sys

import typer

from matpac_cli.cli import embed as _embed
from matpac_cli.cli import models as _models
from matpac_cli.cli import tag as _tag
from matpac_cli.errors import MatpacError

app = typer.Typer(
    name="matpac",
    no_args_is_help=True,
    add_completion=False,
    help="Tag and embed audio with the MATPAC / MATPAC++ self-supervised audio encoders.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("embed")(_embed.embed)
app.command("tag")(_tag.tag)
app.add_typer(_models.app, name="models")

INTERRUPTED = "matpac: interrupted; finished files are kept, run the same command to resume\n"


def main(argv: list[str] | None = None) -> int:
    """Run the app and turn every known error into one line and an exit code.

    Typer reports usage errors itself (exit 2); matpac's own errors are caught here, so the user
    sees one line, not a traceback.
    """
    try:
        app(args=argv, prog_name="matpac")
        return 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if code == 130:
            sys.stderr.write(INTERRUPTED)
        return code
    except MatpacError as exc:
        _debug()
        sys.stderr.write(f"matpac: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _debug() -> None:
    if os.environ.get("MATPAC_DEBUG"):
        import traceback

        traceback.print_exc()
