"""Inputs (files, folders, stdin lists) -> sorted items with the path the user will recognise.

Folders are walked recursively, hidden files and folders are skipped, files are filtered by
extension; explicitly named files are taken whatever their extension. Paths are kept as
discovered (relative to how the input was named), which keys every output row. Order: inputs in
the order given (a stdin list keeps its order), each folder's files sorted by path.
"""

from __future__ import annotations

import errno
import operator
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from matpac_cli.errors import UsageError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au", "m4a", "aac", "wma", "mp4")


@dataclass(order=True, slots=True)
class Item:
    """One input file: `name` is the path as shown and written, `path` the one opened.

    `problem`: why discovery could not take this entry (a symlink loop, an unreadable folder);
    such an item fails like any bad input, named, counted, and the run goes on. Never changed
    once made (a run keys its results by item), though not frozen: a frozen dataclass's fields
    are set through `object.__setattr__`, 3.5x the cost (0.06 s at 100,000 files)."""

    name: str
    path: Path
    problem: str | None = field(default=None, compare=False)
    linked: bool = field(default=False, compare=False)  # found in a walked folder through a symlink
    # what the folder walk learnt of a file that is not a symlink, so that no later step asks the
    # disk again (a realpath is an lstat per component: seconds at 100,000 files): its real path
    real: str | None = field(default=None, compare=False, repr=False)

    def __hash__(self) -> int:
        """By name alone (equal items have equal names): a run keys its results by item, and a
        `Path`'s hash costs its string, made on first use (seconds at 100,000 files)."""
        return hash(self.name)


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
                for item in sorted(_walk(path, name, exts), key=_order):
                    items.setdefault(item.name, item)
            else:  # a missing file fails on its own, like any other bad input
                items.setdefault(name, Item(name, path, _named_problem(path)))
    return _unique_files(list(items.values()))


# An item's place in its folder's order (the dataclass's: name, then path), as a key: its name
# alone, since no two of one walk's items share a name (each is the walked folder's name and the
# file's path below it, and a folder is entered once). A tuple per item, compared element by
# element, and a Python call each cost 0.15 s at 100,000 files.
_order = operator.attrgetter("name")


def real_path(item: Item) -> str:
    """The item's real path (`os.path.realpath`), from the walk where it learnt it."""
    return item.real if item.real is not None else os.path.realpath(item.path)


def _unique_files(items: list[Item]) -> list[Item]:
    """One item per file on disk: `a.wav` and `./a.wav` named twice give one row, not two."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.problem and "\0" in item.name:  # realpath raises ValueError on a NUL
            out.append(item)
            continue
        real = real_path(item)  # never raises (loops included) for a name without NUL
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
    for dirpath, dirnames, files in _tree(str(root), unreadable):
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
        rel = os.path.relpath(dirpath, root)
        yield from _files(
            dirpath, files, exts, shown if rel == "." else os.path.join(shown, rel), dirpath in linked_dirs
        )
    yield from problems


def _tree(top: str, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[os.DirEntry]]]:
    """`os.walk(top, followlinks=True, onerror=onerror)`, top down, with each folder's other
    entries as `os.DirEntry`s rather than names: what an entry is (a symlink or not) comes with
    the listing on most file systems, so the walk asks the disk nothing per file (an lstat each
    cost 0.2 s at 100,000 files, and the library asks each file's stat anyway, later and fresh).
    The caller may prune the folder names, as os.walk's. A stack, not recursion: a tree
    thousands of folders deep is walked, not a RecursionError."""
    stack = [top]
    while stack:
        top = stack.pop()
        dirs, files = [], []
        try:
            with os.scandir(top) as listing:
                for entry in listing:
                    try:
                        is_dir = entry.is_dir()  # a symlink to a folder is a folder, as os.walk's
                    except OSError:
                        is_dir = False
                    (dirs if is_dir else files).append(entry)
        except OSError as exc:
            onerror(exc)
            continue
        names = [d.name for d in dirs]
        yield top, names, files
        stack.extend(os.path.join(top, name) for name in reversed(names))  # the first named walked first


def _files(dirpath: str, entries: list[os.DirEntry], exts: set[str], shown: str, linked_dir: bool) -> Iterable[Item]:
    """The audio files of one walked folder (`shown`: its name as the user will see it). A file
    that is no symlink (as the listing says) takes the folder's real path, resolved once, and its
    name (a realpath per file, an lstat per component, cost seconds at 100,000 files); its stat
    is asked later, once (`library.bypath.stat_of`)."""
    base, named = os.path.join(dirpath, ""), os.path.join(shown, "")  # with their separator
    real_dir, child = None, _child_of(Path(dirpath), base)
    for entry in entries:
        fname = entry.name
        dot = fname.rfind(".")
        if fname.startswith(".") or dot < 0 or fname[dot:].lower() not in exts:  # hidden, or not audio
            continue
        try:
            link = entry.is_symlink()  # False for a file gone since the listing: its own error when opened
        except OSError:  # asked of the disk (a file system whose listing does not say), and it failed
            link = True  # named below, with the reason
        if not link:
            real_dir = os.path.join(os.path.realpath(dirpath), "") if real_dir is None else real_dir
            yield Item(named + fname, child(fname), None, linked_dir, real_dir + fname)
            continue
        full, problem = base + fname, None
        if not os.path.exists(full):
            try:
                os.stat(full)
            except OSError as exc:
                problem = _link_problem(exc)
        yield Item(named + fname, child(fname), problem, True)


def _child_of(folder: Path, base: str):
    """`name -> folder / name` for a name the walk listed (one component, never `.` or `..`): with
    CPython's own shortcut for such a name where it has one (no parse: a Path per file parsed from
    its string cost a second at 100,000 files), else `/`. Where that shortcut leaves the string
    to be made on first use (3.11: 0.2 s at 100,000 files, when the library looks at each file
    again), it is given the one the walk has, `base + name`, once it is seen to be the same."""
    made = getattr(folder, "_make_child_relpath", None)
    if made is None or made("a.wav") != folder / "a.wav":
        return folder.__truediv__
    probe = made("a.wav")
    try:
        if str(probe) != base + "a.wav":
            return made
        probe._str = base + "a.wav"  # a slot of 3.11's paths: where it is not, the shortcut alone
    except AttributeError:
        return made

    def child(name: str) -> Path:
        path = made(name)
        path._str = base + name
        return path

    return child


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
