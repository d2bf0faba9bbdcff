"""sha256 of weight files, re-hashed only when the file may have changed (as git's index does).

Hashing a 350 MB checkpoint costs 0.2-0.35 s on every run. The guarantee stays: a changed file is
never loaded under an old hash. Each digest is remembered with the file's (size, mtime_ns,
ctime_ns, inode, device); any difference, and the file is hashed again. ctime cannot be set back
by a user (only the kernel moves it), so a file rewritten with its old mtime restored is still
seen as changed. `matpac models verify` always re-hashes (`fresh=True`).

Threat model: an entry is a promise that the file with that stamp has that digest, so whoever can
write the cache can make matpac accept another checkpoint under a pinned sha256 (an entry for
the path, with the file's current stamp and a forged digest). Only the user running matpac may
write it: a cache that is not this user's regular file (a symlink, another owner's file) or
that its group or others may write is ignored, not obeyed (every file is hashed, as with no
cache), and malformed entries are ignored too. A file replaced since it was hashed has another
(inode, device, ctime) and is hashed again, whatever the cache says. The cache is written with
mode 0600, atomically, never through a symlink. A user who can write the cache can also replace
the weights themselves: this protects against other users, not against oneself.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from matpac_cli.sidefiles import read_cache, save_cache

MAX_ENTRIES = 256  # a cache of weight files, not of a library
MAX_BYTES = 1 << 20  # 256 entries take about 50 kB


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _valid(hit: object) -> bool:
    return (
        isinstance(hit, list)
        and len(hit) == 6
        and all(type(v) is int for v in hit[:5])
        and isinstance(hit[5], str)
        and re.fullmatch(r"[0-9a-f]{64}", hit[5]) is not None
    )


def file_sha256(path: Path, cache: Path, fresh: bool = False) -> str:
    """The file's sha256, from the JSON file `cache` when its stat stamp is unchanged since it
    was hashed."""
    key = os.path.realpath(path)
    before = os.stat(key)
    entries = read_cache(cache, MAX_BYTES)
    hit = entries.get(key)
    if not fresh and _valid(hit) and hit[:5] == _stamp(before):
        return str(hit[5])
    digest = _hash(Path(key))
    after = os.stat(key)
    if _stamp(after) == _stamp(before):  # not written to while it was read
        entries.pop(key, None)
        entries[key] = _stamp(after) + [digest]
        save_cache(cache, dict(list(entries.items())[-MAX_ENTRIES:]))
    return digest
