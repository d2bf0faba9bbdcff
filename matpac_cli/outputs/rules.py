"""Every file one run writes, checked together before any model loads.

`--out`'s rules hold for all of them (the index and manifest beside `--out`, `--manifest`,
`--failures`, `--report`):
- two outputs of one run never share a path (`--manifest tags.csv --out tags.csv`);
- an input of the run is never an output, even with `--force` (`--failures lib/c1.wav`);
- an existing file that matpac did not write is refused without `--force` (a manifest is
  matpac's when `manifest.check_manifest` accepts it, as every reader of a manifest does, a
  failures list when it starts with matpac's header, `writers.FAILURES_COLUMNS`);
- a symlink where matpac keeps its own file beside an output (its lock) is refused.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from matpac_cli.errors import OutputError
from matpac_cli.outputs import naming
from matpac_cli.outputs.manifest import check_manifest
from matpac_cli.outputs.writers import FAILURES_COLUMNS, not_ours
from matpac_cli.sidefiles import refuse_symlink

FAILURES_HEADER = ",".join(FAILURES_COLUMNS).encode()


def where(path: Path) -> str:
    """The path a file would be written at (its folder resolved; a symlink named as the file
    itself is replaced, not followed, so it is a name of its own)."""
    return os.path.join(os.path.realpath(path.parent), path.name)


def check_distinct(outputs: dict[str, Path]) -> None:
    """Two outputs of one run never share a path; `outputs` maps what each is ('--manifest',
    'the row index of --out e.npy', ...) to its path."""
    seen: dict[str, str] = {}
    for what, path in outputs.items():
        key = where(Path(path))
        if key in seen:
            raise OutputError(f"{what} {path} is also {seen[key]}: two outputs of one run never share a path")
        seen[key] = what


def check_not_inputs(outputs: dict[str, Path], items: Iterable) -> None:
    """An input of the run is never written as an output, even with --force (the same file,
    through any name: a symlink or hard link to it counts). A file the folder walk found (its
    real path known) is asked no stat (0.3 s at 100,000 files) where no name of it can be an
    output's: each output has one link (no hard link elsewhere), and another file name (the
    same path, or a mount's view of the folder, would have the output's), compared as a file
    system that folds case and Unicode forms would (`C1.WAV` is `c1.wav` on macOS, FAT, NTFS)."""
    existing, names, linked = {}, set(), False
    for what, path in outputs.items():
        try:
            st = os.stat(path)
            real = os.path.realpath(path)
        except (OSError, ValueError):
            continue
        existing[(st.st_dev, st.st_ino)] = (what, path)
        names.add(_folded(os.path.basename(real)))  # a mount's view of its folder names the file so too
        linked = linked or st.st_nlink > 1  # a hard link: any name
    if not existing:
        return
    for item in items:
        walked = getattr(item, "real", None)
        if walked is not None and not linked and _folded(walked.rpartition(os.sep)[2]) not in names:
            continue  # no name of an output's file: not it
        try:
            st = os.stat(item.path)
        except (OSError, ValueError):  # ValueError: a NUL in a listed name, that input's own error
            continue
        hit = existing.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise OutputError(
                f"{hit[0]} {hit[1]} is an input of this run ({item.name}); an input is never "
                "written as an output, even with `force`",
                settings=("force",),
            )


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def check_side_files(written: Iterable[Path]) -> None:
    """A symlink planted at matpac's own name beside an output (its lock) is refused now, in one
    line."""
    for path in written:
        refuse_symlink(naming.lock_path(path))


def is_manifest(path: Path) -> bool:
    """A manifest matpac wrote: the rule `manifest.check_manifest` holds for every reader."""
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(16 << 20))
    except (OSError, ValueError):
        return False
    return check_manifest(data) is None


def is_failures(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.readline(64).rstrip(b"\r\n") == FAILURES_HEADER
    except OSError:
        return False


def check_ours(path: Path | None, option: str, force: bool, recognise) -> None:
    """An existing file at `path` that matpac did not write (`recognise` says) is not replaced
    without --force."""
    if path is None or force or not path.exists():
        return
    if not recognise(path):
        raise OutputError(not_ours(path, option), settings=("force",))
