"""When `search` answers from a vector index (`jobs.vector_index`), and where the index is kept.

Building the index costs several exact passes (k-means, then every row read once to assign it);
each query after it reads a few percent of the matrix. So it is built from `INDEX_ROWS` rows up
(measured in benchmarks/search.py: at 100,000 x 3840 the build took as long as a handful of exact
queries; below that exact search is quick anyway), or whenever the index already has a cache
(a valid one is used; a stale or damaged one rebuilt); `exact` skips it always, and so do
`top_k` 0 (every row) and a `top_k` past `MOST_K`. $MATPAC_SEARCH_INDEX_ROWS moves the threshold.
So many queries at once that together they would probe every list are answered exactly, in one
pass (`MANY_QUERIES`): the index pays for a few queries, exact search for a crowd.

The cache, written atomically (a temporary file, then a rename), never beside the user's file:
  - a library's, inside the library folder: `<library>/search-index/<model, front end, layer>.npz`,
    valid for the keys it was built over;
  - a .npy or .parquet index's, under $XDG_CACHE_HOME/matpac/search-index (~/.cache/...), named
    by the index's real path and layer, valid for the size, mtime_ns and inode of its files.
A file that does not match is rebuilt and replaced, never used; one that cannot be read is
rebuilt with a warning (never a traceback): the answer does not depend on the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matpac_cli.config import cache_home
from matpac_cli.errors import MatpacError, OutputError, UsageError
from matpac_cli.events import NoEvents, RunEvents
from matpac_cli.jobs.similarity import nearest
from matpac_cli.jobs.vector_index import Items, VectorIndex, lists_for, probes_for
from matpac_cli.sidefiles import open_existing, replace_with

INDEX_ROWS = 200_000  # rows from which `search` builds an index (with no cache yet)
ENV = "MATPAC_SEARCH_INDEX_ROWS"
MOST_K = 1000  # a larger top_k reads a large share of the rows anyway: exact
MANY_QUERIES = 1.0  # queries x probes past this many times the lists: they would read most rows,
# and one exact pass, many queries to a BLAS product, is cheaper (100k x 3840: 100 queries took
# 7.5 s through the index, 3.5 s exact; 1 query 0.13 s against 1.4 s)
FORMAT = 1  # the cache file's layout; another layout is rebuilt
DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def index_rows() -> int:
    """The row count from which an index is built: $MATPAC_SEARCH_INDEX_ROWS, else `INDEX_ROWS`."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return INDEX_ROWS
    try:
        return max(0, int(text.replace("_", "")))
    except ValueError:
        raise UsageError(f"${ENV}={text}: give a row count (e.g. 200000)") from None


def cache_root() -> Path:
    """Where a file index's cache goes: $XDG_CACHE_HOME/matpac/search-index (~/.cache/...)."""
    return cache_home() / "search-index"


@dataclass
class Place:
    """Where one index's cache lives, what it must have been built from (`signature`), its
    items (the matrix's rows, or a library's vectors by key) and each row's item."""

    path: Path
    signature: str
    items: object
    row_items: np.ndarray | None = None


def place(emb, matrix: np.ndarray, layer: int | None) -> Place:
    """The cache of the index of `matrix`, the searched layer of the embed output or library `emb`."""
    if emb.library is not None:
        return _library_place(emb, matrix)
    from matpac_cli.outputs.readers import embeddings_inputs

    files = []
    for file in embeddings_inputs(Path(emb.path)):
        try:
            st = os.stat(file)
        except OSError:
            continue  # a manifest not written: nothing to compare
        files.append([os.path.realpath(file), st.st_size, st.st_mtime_ns, st.st_ino])
    facts = {"format": FORMAT, "files": files, "layer": layer, "shape": list(matrix.shape)}
    name = _digest(f"{os.path.realpath(emb.path)}|{layer}")[:32] + ".npz"
    return Place(cache_root() / name, json.dumps(facts, sort_keys=True), matrix)


def _library_place(emb, matrix: np.ndarray) -> Place:
    """A library's index is over its keys (every file with this embedding, on disk or not), so
    moving, copying or deleting files leaves it valid, and so do commits of other settings (a
    key's vector for one model, front end and layer never changes); a new key rebuilds it."""
    view, root = emb.library, Path(emb.path)
    keys = sorted(view.vectors)
    position = {key: i for i, key in enumerate(keys)}
    row_items = np.fromiter((position[k] for k in view.keys), dtype=np.int64, count=len(view.keys))
    facts = {
        "format": FORMAT,
        "model": view.setting.model,
        "frontend": view.setting.frontend,
        "layer": view.layer,
        "keys": _digest("\n".join(keys)),
        "dim": int(matrix.shape[1]),
    }
    name = _digest(f"{view.setting.model}|{view.setting.frontend}|{view.layer}")[:24] + ".npz"
    return Place(root / "search-index" / name, json.dumps(facts, sort_keys=True), Items(view.vectors, keys), row_items)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def load(path: Path, signature: str, items: int, dim: int) -> VectorIndex | None:
    """The cached index, or None where it was built from something else (stale). Raises one of
    `DAMAGED` where the file cannot be read as an index."""
    with np.load(path, allow_pickle=False) as z:
        if str(z["signature"]) != signature:
            return None
        index = VectorIndex(
            np.asarray(z["basis"], dtype=np.float32),
            np.asarray(z["centroids"], dtype=np.float32),
            np.asarray(z["offsets"], dtype=np.int64),
            np.asarray(z["items"], dtype=np.int64),
            int(z["probes"]),
        )
    index.check(items, dim)
    return index


def save(index: VectorIndex, path: Path, signature: str) -> None:
    """Write the index whole or not at all (`sidefiles.replace_with`)."""
    arrays = {"basis": index.basis, "centroids": index.centroids, "offsets": index.offsets, "items": index.items}
    replace_with(
        path,
        lambda fh: np.savez(fh, **arrays, probes=np.int64(index.probes), signature=np.array(signature)),
        "wb",
        0o644,
    )


class NeighbourSearch:
    """`similarity.nearest` for one searched matrix, from its vector index where that pays:
    call it as `nearest` is called, (queries, k, exclude). `builds` counts the indexes built;
    `note` hears of a build (one line), `events.warning` of a cache that could not be read or
    kept. `rows` overrides $MATPAC_SEARCH_INDEX_ROWS; `exact` never uses an index."""

    def __init__(
        self,
        emb,
        matrix: np.ndarray,
        layer: int | None = None,
        exact: bool = False,
        rows: int | None = None,
        events: RunEvents | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.emb, self.matrix, self.layer, self.exact = emb, matrix, layer, exact
        self.rows = index_rows() if rows is None and not exact else rows
        self.events = events or NoEvents()
        self.note = note or (lambda text: None)
        self.builds = 0
        self._ready: tuple[VectorIndex, np.ndarray | None] | None = None

    def __call__(self, queries: np.ndarray, k: int, exclude: Sequence[int | None] | None = None):
        if self.exact or k <= 0 or k > MOST_K or not len(self.matrix):
            return nearest(self.matrix, queries, k, exclude)
        if self._ready is None:
            lists = lists_for(len(self.matrix))
            if len(queries) > 1 and len(queries) * probes_for(lists) >= MANY_QUERIES * lists:
                return nearest(self.matrix, queries, k, exclude)  # a crowd goes exact: nothing built for it
            self._ready = self._index()
        index, row_items = self._ready
        if index is None or len(queries) * index.probes >= MANY_QUERIES * len(index.centroids):
            return nearest(self.matrix, queries, k, exclude)
        return index.nearest(self.matrix, queries, k, exclude, row_items)

    def _index(self) -> tuple[VectorIndex | None, np.ndarray | None]:
        """The index to search with (None: exact): the valid cache, else a new one where the
        matrix is large enough or a cache (stale or damaged) says one was wanted."""
        where = place(self.emb, self.matrix, self.layer)
        count, dim = len(where.items), self.matrix.shape[1]
        said = False
        try:
            cached = _usable(where.path)
        except (OSError, MatpacError) as exc:  # a folder that cannot be read, or a planted link
            self.events.warning(
                f"the search index cannot be kept in {where.path.parent} ({_why(exc)}); searching every row"
            )
            return None, None
        if cached:
            try:
                index = load(where.path, where.signature, count, dim)
                if index is not None:
                    return index, where.row_items
            except DAMAGED as exc:
                why = _why(exc) if isinstance(exc, OSError) else "not a search index"
                self.events.warning(f"the search index {where.path} cannot be read ({why}); rebuilding it")
                said = True
        elif self.rows is None or len(self.matrix) < self.rows:
            return None, None
        if not said:  # one line either way
            self.note(f"building a search index for {count:,} rows, cached in {where.path.parent}; `exact` skips it")
        index = VectorIndex.build(where.items)
        self.builds += 1
        try:
            save(index, where.path, where.signature)
        except (OSError, MatpacError) as exc:
            self.events.warning(f"the search index could not be kept in {where.path.parent} ({_why(exc)})")
        return index, where.row_items


def _usable(path: Path) -> bool:
    """Whether the cache file is there; raises where its folder is a symlink or not a folder (a
    cache is never read or written through a link someone planted) or cannot be read."""
    folder = path.parent
    if os.path.lexists(folder):
        if folder.is_symlink() or not folder.is_dir():
            raise OutputError(f"{folder} is a symlink or not a folder; matpac keeps its search index there")
        os.listdir(folder)  # unreadable: OSError
    fd = open_existing(path)  # never through a link
    if fd is None:
        return False
    os.close(fd)
    return True


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
