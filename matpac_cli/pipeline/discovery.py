"""Inputs (files, folders, stdin lists) -> sorted items with the path the user will recognise.

Folders are walked recursively, hidden files and folders are skipped, files are filtered by
extension; explicitly named files are taken whatever their extension. Paths are kept as
discovered (relative to how the input was named), which keys every output row. Order: inputs in
the order given (a stdin list keeps its order), each folder's files sorted by path.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from matpac_cli.errors import UsageError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au", "m4a", "aac", "wma", "mp4")


@dataclass(frozen=True, order=True)
class Item:
    """One input file: `name` is the path as shown and written, `path` the one opened.

    `problem`: why discovery could not take this entry (a symlink loop, an unreadable folder);
    such an item fails like any bad input, named, counted, and the run goes on."""

    name: str
    path: Path
    problem: str | None = field(default=None, compare=False)
    linked: bool = field(default=False, compare=False)  # found in a walked folder through a symlink


def parse_extensions(text: str | None) -> tuple[str, ...]:
    if not text:
        return AUDIO_EXTENSIONS
    exts = tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not exts:
        raise UsageError("`extensions`: give a comma-separated list such as wav,flac", settings=("extensions",))
    return exts


def read_path_list(stream: TextIO, null: bool) -> list[str]:
    """Paths from stdin, one per line, or NUL-separated (`find -print0`)."""
    data = stream.read()
    parts = data.split("\0") if null else data.splitlines()
    return [p for p in (x.strip("\r\n") if not null else x for x in parts) if p]


def discover(
    inputs: Iterable[str],
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    stdin: TextIO | None = None,
    null: bool = False,
) -> list[Item]:
    """Expand inputs into a de-duplicated list of files; `-` reads paths from stdin.

    Inputs keep the order they were given in (so does a stdin list); a folder contributes its
    files sorted by path."""
    exts = {"." + e for e in extensions}
    items: dict[str, Item] = {}
    for arg in inputs:
        names = read_path_list(stdin or sys.stdin, null) if arg == "-" else [arg]
        for name in names:
            path = Path(name).expanduser() if arg != "-" else Path(name)
            if "\0" in name:  # only a newline-separated list can hold one: no file has such a name
                items.setdefault(name, Item(name, path, "the name holds a NUL byte, which no file name can"))
            elif os.path.isdir(path):  # False for a name too long to look up: that file's own error
                for item in sorted(_walk(path, name, exts)):
                    items.setdefault(item.name, item)
            else:  # a missing file fails on its own, like any other bad input
                items.setdefault(name, Item(name, path, _named_problem(path)))
    return _unique_files(list(items.values()))


def _unique_files(items: list[Item]) -> list[Item]:
    """One item per file on disk: `a.wav` and `./a.wav` named twice give one row, not two."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.problem and "\0" in item.name:  # realpath raises ValueError on a NUL
            out.append(item)
            continue
        real = os.path.realpath(item.path)  # never raises (loops included) for a name without NUL
        if real in seen:
            continue
        seen.add(real)
        out.append(item)
    return out


def _walk(root: Path, shown: str, exts: set[str]) -> Iterable[Item]:
    """Files under `root`, following symlinks but never round a loop: each real folder is
    entered once, and a link back to a folder already entered, a link that loops on itself or an
    unreadable folder becomes an item with its `problem`, so the run names it and goes on."""
    seen: set[tuple[int, int]] = set()
    problems: list[Item] = []
    linked_dirs: set[str] = set()  # folders below `root` reached through a symlink

    def shown_as(dirpath: str, name: str) -> str:
        rel = os.path.relpath(os.path.join(dirpath, name), root)
        return os.path.join(shown, rel)

    def unreadable(err: OSError) -> None:
        name = os.path.join(shown, os.path.relpath(err.filename, root)) if err.filename else shown
        problems.append(Item(name, Path(err.filename or root), f"cannot read folder: {err.strerror}"))

    try:
        st = os.stat(root)
        seen.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        keep = []
        for d in sorted(x for x in dirnames if not x.startswith(".")):
            full = os.path.join(dirpath, d)
            try:
                sub = os.stat(full)
            except OSError as exc:
                problems.append(Item(shown_as(dirpath, d), Path(full), _link_problem(exc)))
                continue
            if (sub.st_dev, sub.st_ino) in seen:  # entered already: a loop if it is an ancestor
                real, here = os.path.realpath(full), os.path.realpath(dirpath)
                if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                    problems.append(
                        Item(
                            shown_as(dirpath, d),
                            Path(full),
                            f"symlink loop (points back to {os.readlink(full)})"
                            if os.path.islink(full)
                            else "folder loop",
                        )
                    )
                continue
            seen.add((sub.st_dev, sub.st_ino))
            if dirpath in linked_dirs or os.path.islink(full):
                linked_dirs.add(full)
            keep.append(d)
        dirnames[:] = keep
        for fname in filenames:
            if fname.startswith(".") or os.path.splitext(fname)[1].lower() not in exts:
                continue
            full = os.path.join(dirpath, fname)
            problem = None
            if os.path.islink(full) and not os.path.exists(full):
                try:
                    os.stat(full)
                except OSError as exc:
                    problem = _link_problem(exc)
            linked = dirpath in linked_dirs or os.path.islink(full)
            yield Item(shown_as(dirpath, fname), Path(full), problem, linked)
    yield from problems


def _named_problem(path: Path) -> str | None:
    """A symlink named on the command line that leads nowhere: said as the folder walk says it."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        return _link_problem(exc)
    return None


def _link_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (its target does not exist)"
    return f"cannot open: {exc.strerror}"
