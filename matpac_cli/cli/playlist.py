"""`matpac playlist`: a "song radio" (the seeds, then the library's nearest tracks to them) or a
smooth path from one track to another, as an M3U8 playlist a player opens. The work is
`jobs.playlist`'s; this module turns options into a `PlaylistConfig`, checks `--out` as every
command does, and writes the playlist (stdout: the playlist with `--out -`; stderr: what was done).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from matpac_cli.cli._errors import with_flags
from matpac_cli.cli._options import DeviceOpt, LibraryOpt, PrecisionOpt, QuietOpt
from matpac_cli.cli._preflight import check_outputs, load_predictor, run_options
from matpac_cli.cli._reporter import Reporter
from matpac_cli.cli._stdout import SafeStdout
from matpac_cli.errors import OutputError

SeedsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Audio files (or folders of them) the radio starts from; one not in the library yet is embedded into it first.",
        show_default=False,
    ),
]
CountOpt = Annotated[
    int, typer.Option("--n", "-n", help="Tracks in the playlist, the seeds (or --from and --to) among them.")
]
OutOpt = Annotated[
    str,
    typer.Option(
        "--out",
        "-o",
        help="The playlist to write (.m3u8; UTF-8), or '-' for stdout. Paths in it are relative to its folder (to the current one for stdout).",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option("--from", help="A path instead of a radio: the first track (with --to; no SEED then)."),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="The last track of the path: each step is the unused track nearest a point an even share of the way from the current track to this one.",
    ),
]
SpreadOpt = Annotated[
    bool,
    typer.Option(
        "--spread-folders",
        help="Never two tracks of one folder (an album) in a row where another order or choice avoids it.",
    ),
]
AbsoluteOpt = Annotated[
    bool, typer.Option("--absolute", help="Absolute paths in the playlist instead of relative ones.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Which of the library's models: registry name, sha256 (6+ characters) or checkpoint file (default: the only one it holds). A checkpoint of your own is given as its file, to embed seeds with.",
    ),
]


def playlist(
    seeds: SeedsArg = None,
    n: CountOpt = 30,
    out: OutOpt = "-",
    start: FromOpt = None,
    end: ToOpt = None,
    spread_folders: SpreadOpt = False,
    absolute: AbsoluteOpt = False,
    force: ForceOpt = False,
    model: ModelOpt = None,
    library: LibraryOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Make an M3U8 playlist from the library: the seeds, then the tracks most like them (cosine
    to the mean of the seeds), no track twice; or, with --from A --to B, a smooth path from A to B.

    Examples: matpac playlist song.flac --n 30 --out mix.m3u8
              matpac playlist a.flac b.mp3 --spread-folders --out mix.m3u8
              matpac playlist --from calm.flac --to loud.flac --n 12 --out path.m3u8
    """
    from matpac_cli.jobs.library import library_root
    from matpac_cli.jobs.playlist import PlaylistConfig, m3u8_text, write_playlist
    from matpac_cli.outputs.writers import locked

    started = time.monotonic()
    seeds = seeds or []
    config = PlaylistConfig(n, model, spread_folders, start, end, run_options(device, precision))
    config.check(seeds)
    target = None if out == "-" else Path(out)
    written = _check_outputs(target, force, [*seeds, start, end])
    root = library_root(library)
    reporter = Reporter(quiet)
    with locked(*written):
        made = _run(root, seeds, config, quiet)
        for note in made.notes:  # the library's files of this model that are not in the pool, said
            reporter.warning(with_flags(note, ("layer",)))
        if target is None:
            stream = SafeStdout(sys.stdout)
            stream.write(m3u8_text(made.tracks, None, absolute))
            stream.flush()
        else:
            write_playlist(made.tracks, target, absolute)
    embedded = f", {made.embedded} seed(s) embedded now" if made.embedded else ""
    wrote = f"; wrote {target}" if target is not None else ""
    reporter.info(
        f"matpac: {len(made.tracks)} tracks from {made.pool:,} in the library{embedded}, "
        f"in {time.monotonic() - started:.1f} s{wrote}"
    )
    if len(made.tracks) < n and not quiet:
        reporter.info(f"matpac: note: the library holds fewer tracks than --n {n}")


def _run(root: Path, seeds: list[str], config, quiet: bool):
    """The job, with the encoder loaded as every command loads it (only where a seed needs it)."""
    from matpac_cli.jobs.playlist import playlist as make

    return make(root, seeds, config, lambda resolved: load_predictor(resolved, config.options, quiet))


def _check_outputs(target: Path | None, force: bool, named: list[str | None]) -> list[Path]:
    """--out's rules (a seed is an input of this run, never an output); the files to lock."""
    from matpac_cli.outputs.writers import ensure_writable
    from matpac_cli.pipeline.discovery import Item

    if target is None:
        return []
    ensure_writable(target)
    if target.exists() and not force:
        raise OutputError(f"{target} exists; use --force to replace it")
    inputs = [Item(name, Path(name)) for name in named if name]
    return check_outputs({"--out": target}, inputs, force, None)
