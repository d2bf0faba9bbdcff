"""Files matpac creates beside an output: temporaries, probes, locks.

Anyone who can write the output folder can plant a name there before a run: a symlink
`.tags.csv.lock -> /etc/passwd`, or a hard link to someone else's file. So every such file is
opened with O_NOFOLLOW (a symlink there is refused in one line, never followed); a file matpac
creates is created with O_EXCL (a name that is already there is never written as if it were
new); and a file matpac did not create is never truncated.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from matpac_cli.errors import OutputError

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def lock_path(path: Path) -> Path:
    """The lock file of output `path`: a hidden `.NAME.lock` beside it (see `locked`)."""
    return path.with_name(f".{path.name}.lock")


def temp_path(path: Path) -> Path:
    """matpac's temporary name for `path`: hidden, in the same folder, with this process's PID
    (`.NAME.tmp<PID>`), so a killed run's leftovers are recognised and removed."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def symlink_refused(path: Path) -> OutputError:
    return OutputError(f"{path} is a symlink; matpac does not follow symlinks beside its outputs (remove it)")


def refuse_symlink(path: Path) -> None:
    """One line, before anything is written, for a symlink planted where matpac keeps a file."""
    if Path(path).is_symlink():
        raise symlink_refused(path)


def create(path: Path, mode: str = "wb", perm: int = 0o644) -> IO:
    """A new file at `path`, one of matpac's own names (`.NAME.tmp<PID>`, `.NAME.probe<PID>`):
    created, never opened. A symlink there is refused; a plain file there (left by a dead run
    whose PID this one now has) is removed first, and the name created again. OSError for the
    caller to word, except the symlink, refused here."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
    try:
        fd = os.open(path, flags, perm)
    except FileExistsError:
        refuse_symlink(path)
        os.unlink(path)  # removes the name only: a hard link's other names keep their data
        fd = os.open(path, flags, perm)
    if "b" in mode:
        return os.fdopen(fd, mode)
    return os.fdopen(fd, mode, encoding="utf-8", errors="surrogateescape", newline="")


def open_existing(path: Path, flags: int = os.O_RDONLY) -> int | None:
    """An fd on the regular file at `path`, never through a symlink (refused); None when there
    is no file. Only for reading and appending to matpac's own files (hash cache)."""
    try:
        fd = os.open(path, flags | NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise symlink_refused(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path} is not a regular file; matpac keeps its own file there (remove it)")
    return fd


_HELD: dict[str, int] = {}  # outputs this process holds the lock of (a nested `locked` is free)


@contextmanager
def locked(*paths: Path) -> Iterator[None]:
    """An advisory lock on every file a run writes, for the length of the run, so two runs never
    write the same file: `embed --out x.npy` (which writes x.csv) and `tag --out x.csv` at once
    are refused, the second at once and naming the holder's PID. Each lock is a hidden
    `.NAME.lock` beside NAME, removed again while still held when the run ends, as git removes
    its `index.lock` (safe because `_take` checks, once it holds a lock, that the name still
    points at the file it locked). A lock file matpac did not write is locked as it is and left."""
    with contextlib.ExitStack() as stack:
        for path in sorted({os.path.abspath(p): Path(p) for p in paths}.items()):
            stack.enter_context(_locked(path[1], path[0]))
        yield


@contextmanager
def _locked(path: Path, key: str) -> Iterator[None]:
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    import fcntl

    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd, created = _take(lock, path, fcntl)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        ours = created or _pid_only(fd)
        if ours:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            if ours:
                _remove_held(lock, fd)
    finally:
        os.close(fd)


def _remove_held(lock: Path, fd: int) -> None:
    """Remove the lock file this run holds, if the name still is that file (never another's)."""
    with contextlib.suppress(OSError):
        now, st = os.lstat(lock), os.fstat(fd)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(lock)


def _take(lock: Path, path: Path, fcntl) -> tuple[int, bool]:
    """The lock file, opened and locked: (fd, whether this run created it). A lock file removed
    or replaced between the open and the lock (its run finished and removed it) is opened again,
    so two runs never hold locks on two different files of the same name."""
    for _ in range(20):
        fd, created = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"another matpac is writing {path} (pid {pid}); wait for it to finish or choose another `out`",
                settings=("out",),
            ) from None
        try:
            now = os.lstat(lock)
        except FileNotFoundError:
            now = None
        st = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return fd, created
        os.close(fd)
    raise OutputError(f"cannot lock {path}: its lock file {lock} keeps changing")


def _open_lock(lock: Path) -> tuple[int, bool]:
    with contextlib.suppress(FileExistsError):
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644), True
    try:
        fd = open_existing(lock, os.O_RDWR)
    except PermissionError:  # another user's run made it: a lock needs no write access
        fd = open_existing(lock, os.O_RDONLY)
    if fd is None:  # removed since: create it
        return _open_lock(lock)
    return fd, False


def _pid_only(fd: int) -> bool:
    """A lock file an earlier matpac left (this user's, one name, a PID at most): the only kind
    rewritten. Anything else there is locked as it is and never truncated."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_nlink != 1 or st.st_size > 20:
        return False
    return os.pread(fd, 21, 0).strip().isdigit() or st.st_size == 0


def ensure_writable(path: Path, folder_only: bool = False) -> None:
    """Fail now, in one line, if `path` cannot be written: checked before any model loads or any
    work is done, by creating (and removing) a probe file in the folder that would hold it.
    `folder_only`: `path` is a folder to write files into (`--frames`), named so in the message."""
    target = f"into {path}" if folder_only else str(path)
    folder = path if folder_only else path.parent
    if not folder_only and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {target}: {parent} is not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.probe{os.getpid()}"
        create(probe).close()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None


def replace_with(path: Path, write: Callable[[IO], object], mode: str = "w", perm: int = 0o600) -> None:
    """`path` replaced whole by what `write` writes, or left as it was: written under one of
    matpac's own temporary names (`create`), then renamed over it (a link there is replaced,
    never written through). OSError, or the refused symlink, for the caller to word."""
    tmp = temp_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with create(tmp, mode, perm) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_cache(path: Path, limit: int = 1 << 20) -> dict:
    """A JSON cache of matpac's own (the checkpoints' hashes, the CPU's measured layers), or
    none where it cannot be trusted: missing, damaged, over `limit` bytes, reached through a
    symlink, not a regular file, or not this user's alone (another could write what it says)."""
    try:
        fd = open_existing(path)  # never through a symlink, only a regular file
    except (OSError, OutputError):
        return {}
    if fd is None:
        return {}
    with open(fd, "rb") as fh:
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or st.st_size > limit:
                return {}
            data = json.loads(fh.read(limit))
        except (OSError, ValueError):
            return {}
    return data if isinstance(data, dict) else {}


def save_cache(path: Path, data: dict) -> None:
    """`data` as the cache at `path`, whole; where it cannot be written (a read-only cache on a
    shared offline cluster), nothing is kept."""
    with contextlib.suppress(OSError, OutputError):
        replace_with(path, lambda fh: fh.write(json.dumps(data)))
