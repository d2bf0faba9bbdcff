"""`--engine ray`'s write tasks: the workers write, the driver steers.

Where the job stores its results in a library (`embed`'s clip embeddings, `tag`'s and their
segments), the encoder actors finish each file whole in a pack (`packs.DONE`) and a write task
after them stores up to `WRITE_FILES` such files at a time (`write_size`) straight into the
library's clips (and segments) table, as data files of their own (the `shard`'s `write`: Lance
fragments, not committed). What reaches the driver is the fragments' metadata (`FRAGMENTS`, a
few hundred bytes) and a status per file (`WRITTEN`: its key and facts, about 100 bytes), never
the vectors; the driver commits the fragments with the library's own commits, hands each file
on once they are committed, and the job reads the vectors back from the library when it writes
its output.

A write that fails (the library is not on this node's storage, a full disk) hands its files on
as they came, and the driver stores them itself (`UNWRITTEN` says why, once): nothing is lost.
Every other entry (parts of files longer than a pack, facts of failed files) passes through.
"""

from __future__ import annotations

import pickle
import socket

import numpy as np

from matpac_cli.engines.work import DONE, FRAGMENTS, UNWRITTEN, WRITTEN
from matpac_cli.errors import RAY_LIMIT, one_line

WRITE_FILES = 256  # files per write task at most (rows of the encoders' answers): a fragment of ~4 MB (with
# `tag --segments`, every chunk's vector: ~146 MB for 3.5-minute tracks, in the task's memory while it writes)
RUN_FRAGMENTS = 64  # ... and fewer in a smaller run, so that it writes this many fragments or so: a file is in
# the library (and the progress moves) within 1/64 of a run, and a catalogue's run of a million files
# leaves 3,906 fragments, not 62,500 (a Lance commit rewrites the list of every fragment)


def write_size(files: int) -> int:
    """Files per write task, for a run of `files`: 1 up to 64 files, `WRITE_FILES` from 16,384."""
    return max(1, min(WRITE_FILES, files // RUN_FRAGMENTS))


def write_files(batch: dict[str, np.ndarray], shard) -> dict[str, np.ndarray]:
    """A Ray task: the `DONE` files of `batch` (pickled entry lists, a row each) written into the
    library through `shard`; one row back, a pickled list: the fragments first, then each
    written file's status, then every other entry as it came."""
    entries = [entry for blob in batch["data"] for entry in pickle.loads(blob)]
    done = [e for e in entries if e[2] == DONE]
    out = _written(done, shard) if done else []
    data = np.empty(1, dtype=object)
    data[0] = pickle.dumps(out + [e for e in entries if e[2] != DONE], protocol=pickle.HIGHEST_PROTOCOL)
    return {"data": data}


def _written(done: list[tuple], shard) -> list[tuple]:
    """The fragments holding `done`'s rows and a status per file; or, where the write failed,
    why and the files themselves (the driver stores them)."""
    try:
        if not shard.visible():
            raise OSError(f"not seen on Ray node {socket.gethostname()} (not on storage the nodes share?)")
        fragments = shard.write([(p["key"], p["facts"], p["outputs"]) for _, _, _, p in done])
    except Exception as exc:  # noqa: BLE001 - the driver stores these files itself, and says why
        return [(-1, 0, UNWRITTEN, f"the library {shard.root}: {one_line(exc, RAY_LIMIT)}"), *done]
    keys, files = [p["key"] for _, _, _, p in done], [i for i, _, _, _ in done]
    statuses = [(i, 0, WRITTEN, {k: p[k] for k in ("key", "facts", "audio")}) for i, _, _, p in done]
    return [(-1, 0, FRAGMENTS, (fragments, keys, files)), *statuses]
