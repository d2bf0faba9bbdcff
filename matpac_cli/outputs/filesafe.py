"""Changing a user's audio file safely (`tag --write`), and the undo journal of what it replaced.

A user's music is not an output matpac owns, so a write must never leave it worse: the tags are
written into a copy beside the file (matpac's hidden temp name, created with O_EXCL|O_NOFOLLOW so
a symlink planted there is refused, never followed), the copy is read back (the tags as asked,
and the audio packets' key unchanged: only the tag block moved), given the file's mode, owner
where the user may set it, and its access and modification times (unless `touch`), and only
then renamed over the file, unless the file changed meanwhile (another program writing it). Any
failure removes the copy and leaves the file as it was. The rename gives the file a new inode: a
hard link's other names keep the old tags.

The journal (`filetags.jsonl` in the library folder) holds, per file (its absolute path and audio
key), the values every field had before matpac's first write, appended and flushed to disk
before that write. Append-only JSON Lines, not a Lance table: one short line per file costs the
same at the ten-thousandth file as at the first, a line torn by a crash is skipped without losing
the others, a person can read it, and outputs/ stays free of the library's storage (only
library/ imports Lance). A file's first record stands until `undo` restores it (a `restored`
line), so re-runs and changed settings never overwrite the values the user had.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from matpac_cli import sidefiles
from matpac_cli.outputs import filetags

JOURNAL = "filetags.jsonl"


class TagWriteError(Exception):
    """A file whose tags could not be written safely; it is left as it was."""


def replace_tags(path: Path, values: dict, key: Callable[[Path], str], touch: bool = False) -> None:
    """Write `values` (field -> value list, None: removed) into `path` through a verified copy."""
    path = Path(path)
    if path.is_symlink():
        raise TagWriteError("a symlink; matpac writes tags only into the file itself (name the file)")
    st = os.stat(path)
    if not os.access(path, os.W_OK) or (os.geteuid() != 0 and st.st_uid != os.geteuid()):
        raise TagWriteError("not a file you may write (read-only, or another user's)")
    before, others = key(path), filetags.other_fields(filetags.open_tags(path))
    tmp = sidefiles.temp_path(path)
    try:
        with sidefiles.create(tmp, "wb", perm=0o600) as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        f = filetags.open_tags(tmp, like=path)
        version = filetags.id3_version(f)
        filetags.set_fields(f, values)
        filetags.save(f, tmp, version)
        _verify(tmp, path, (values, others), before, key)
        _keep_attributes(tmp, st, touch)
        _sync(tmp)
        now = os.stat(path, follow_symlinks=False)
        if (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ):
            raise TagWriteError("the file changed while matpac wrote its tags (another program?); try again")
        os.replace(tmp, path)
        _sync(path.parent)  # the rename itself on disk: a crash now leaves one whole file or the other
    except BaseException:
        with contextlib.suppress(OSError):
            if not tmp.is_symlink():
                os.unlink(tmp)
        raise


def _sync(path: Path) -> None:
    """`path` (a file, or a folder's entries) on disk before anything relies on it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verify(tmp: Path, path: Path, wanted: tuple, before: str, key: Callable[[Path], str]) -> None:
    """The copy holds the values asked for, every other tag as the file had it, and the audio."""
    values, others = wanted
    f = filetags.open_tags(tmp, like=path)
    got = filetags.read_fields(f)
    wrong = [k for k, v in values.items() if (got.get(k) or None) != (v or None)]
    if wrong:
        raise TagWriteError(f"{', '.join(wrong)} did not read back as written")
    now = filetags.other_fields(f)
    changed = sorted(k for k in set(now) | set(others) if now.get(k) != others.get(k))
    if changed:
        raise TagWriteError(f"other tags would change ({', '.join(changed[:3])}); not written")
    if key(tmp) != before:
        raise TagWriteError("the audio packets changed in the copy (not replaced)")


def _keep_attributes(tmp: Path, st: os.stat_result, touch: bool) -> None:
    """The file's mode, owner (where this user may give it) and times onto the copy."""
    os.chmod(tmp, st.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)  # chown clears set-id bits; put them back where allowed
    if touch:
        os.utime(tmp, ns=(st.st_atime_ns, time.time_ns()))
    else:
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))


# ------------------------------------------------------------------------------------ undo journal


class Journal:
    """The library's record of the values matpac replaced (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / JOURNAL
        self.records = self._read()

    def _read(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        fd = sidefiles.open_existing(self.path)
        if fd is None:
            return records
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    name = rec["path"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: the others stand
                first = records.get(name)
                if rec.get("restored"):
                    records.pop(name, None)
                elif first is None or first.get("key") != rec.get("key"):
                    records[name] = rec
                else:  # a later write's fields the first one left alone: their values before it
                    for k, v in rec.get("fields", {}).items():
                        first["fields"].setdefault(k, v)
        return records

    def record(self, path: Path, audio: str, values: dict) -> None:
        """The previous `values` of `path` (with audio key `audio`), on disk before its write; a
        file already recorded with the same audio keeps the values it first had (only fields
        changed for the first time are added)."""
        name = str(Path(path).absolute())
        old = self.records.get(name)
        if old is not None and old.get("key") == audio:
            values = {k: v for k, v in values.items() if k not in old["fields"]}
            if values:  # fields this write changes for the first time (say GENRE, asked for later)
                self._append({"path": name, "key": audio, "fields": values, "at": time.time()})
                old["fields"].update(values)
            return
        rec = {"path": name, "key": audio, "fields": dict(values), "at": time.time()}
        self._append(rec)
        self.records[name] = rec

    def restored(self, path: Path) -> None:
        name = str(Path(path).absolute())
        self._append({"path": name, "restored": True, "at": time.time()})
        self.records.pop(name, None)

    def find(self, path: Path) -> dict | None:
        return self.records.get(str(Path(path).absolute()))

    def _append(self, rec: dict) -> None:
        sidefiles.refuse_symlink(self.path)
        made = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | sidefiles.NOFOLLOW, 0o644)
        with os.fdopen(fd, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            torn = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"  # a line a crash cut short
            # ASCII JSON: a name that is not UTF-8 is kept as its \udcXX escape, never refused
            fh.write((b"\n" if torn else b"") + json.dumps(rec).encode("ascii") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        if made:
            _sync(self.path.parent)
