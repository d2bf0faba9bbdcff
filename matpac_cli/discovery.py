"""Inputs (files, folders, stdin lists) -> sorted items with the path the user will recognise.

Folders are walked recursively, hidden files and folders are skipped, files are filtered by
extension; explicitly named files are taken whatever their extension. Paths are kept as
discovered (relative to how the input was named), which keys every output row.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from matpac_cli.errors import UsageError

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "oga", "opus", "mp3", "aiff", "aif", "au", "m4a", "aac", "wma", "mp4")


@dataclass(frozen=True, order=True)
class Item:
    """One input file: `name` is the path as shown and written, `path` the one opened."""

    name: str
    path: Path


def parse_extensions(text: str | None) -> tuple[str, ...]:
    if not text:
        return AUDIO_EXTENSIONS
    exts = tuple(e.strip().lower().lstrip(".") for e in text.split(",") if e.strip())
    if not exts:
        raise UsageError("--ext: give a comma-separated list such as wav,flac")
    return exts


def read_path_list(stream: TextIO, null: bool) -> list[str]:
    """Paths from stdin, one per line, or NUL-separated (`find -print0`)."""
    data = stream.read()
    parts = data.split("\0") if null else data.splitlines()
    return [p for p in (x.strip("\r\n") if not null else x for x in parts) if p]


def discover(inputs: Iterable[str], extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
             stdin: TextIO | None = None, null: bool = False) -> list[Item]:
    """Expand inputs into a sorted, de-duplicated list of files; `-` reads paths from stdin."""
    exts = {"." + e for e in extensions}
    items: dict[str, Item] = {}
    for arg in inputs:
        if arg == "-":
            for line in read_path_list(stdin or sys.stdin, null):
                path = Path(line)
                if path.is_dir():
                    for item in _walk(path, line, exts):
                        items.setdefault(item.name, item)
                else:
                    items.setdefault(line, Item(line, path))
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            for item in _walk(path, arg, exts):
                items.setdefault(item.name, item)
        else:  # a missing file fails on its own, like any other bad input
            items.setdefault(arg, Item(arg, path))
    return _unique_files(sorted(items.values()))


def _unique_files(items: list[Item]) -> list[Item]:
    """One item per file on disk: `a.wav` and `./a.wav` named twice give one row, not two."""
    seen: set[Path] = set()
    out = []
    for item in items:
        try:
            real = item.path.resolve()
        except OSError:
            real = item.path
        if real in seen:
            continue
        seen.add(real)
        out.append(item)
    return out


def _walk(root: Path, shown: str, exts: set[str]) -> Iterable[Item]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for fname in filenames:
            if fname.startswith(".") or os.path.splitext(fname)[1].lower() not in exts:
                continue
            rel = fname if rel_dir == "." else os.path.join(rel_dir, fname)
            yield Item(os.path.join(shown, rel), Path(dirpath) / fname)
