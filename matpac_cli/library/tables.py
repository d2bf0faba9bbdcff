"""The library's four Lance tables and the few operations on them, with no matpac rules in them.

- `clips`: one row per (audio key, model sha256, front-end settings, layer): the file's clip
  embedding of that layer (float32, as the encoder's outputs are written) and its facts.
- `segments`: one row per (key, model, front-end): the last layer's per-chunk embeddings, with each
  chunk's span and time columns (what `tag --segments` rows and its short-tail merge need).
- `paths`: one row per real path seen: its key, its stat, when it was last seen.
- `failed`: one row per file given up because it killed the process working on it (`failed`);
  a library made before it has none, and reads as if it were empty.
Rows are appended (a fragment per commit); a lookup that meets a row twice (two runs at once
encoded the same file) takes either: they are equal.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

os.environ.setdefault("LANCE_LOG", "error")  # Lance's notices ("it will be created") are not the user's business

import lance  # noqa: E402 - after its log level

from matpac_cli.errors import MatpacError, OutputError, one_line  # noqa: E402

RETRIES = 8  # commits that lost a race with another writer's are tried again this often
IN_BATCH = 512  # keys per `IN (...)` filter

CLIPS = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),
        ("frontend", pa.string()),
        ("layer", pa.int32()),
        ("embedding", pa.list_(pa.float32())),
        ("duration_s", pa.float64()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("promised", pa.int64()),  # frames the header promised, where fewer could be read (else null)
        ("read", pa.int64()),
        ("added", pa.float64()),
    ]
)
SEGMENTS = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),
        ("frontend", pa.string()),
        ("start_s", pa.list_(pa.float64())),
        ("end_s", pa.list_(pa.float64())),
        ("columns", pa.list_(pa.int32())),
        ("embedding", pa.list_(pa.list_(pa.float32()))),
        ("added", pa.float64()),
    ]
)
PATHS = pa.schema(
    [
        ("path", pa.binary()),  # the real path's bytes (os.fsencode): a name need not be UTF-8
        ("key", pa.string()),
        ("dev", pa.uint64()),
        ("ino", pa.uint64()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("seen", pa.float64()),
    ]
)
FAILED = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),  # "" where the file failed before any model ran (its decoding)
        ("frontend", pa.string()),
        ("reason", pa.string()),  # the error's line, as the run said it
        ("added", pa.float64()),
    ]
)
SCHEMAS = {"clips": CLIPS, "segments": SEGMENTS, "paths": PATHS, "failed": FAILED}


def uri(root: Path, name: str) -> str:
    return str(root / f"{name}.lance")


def open_table(root: Path, name: str):
    """The table's latest version, or None where nothing was written to it yet."""
    path = uri(root, name)
    if not os.path.isdir(path):
        return None
    try:
        return lance.dataset(path)
    except (OSError, ValueError):
        return None  # a folder with no committed version yet (a first writer is mid-commit)


def ensure(root: Path) -> None:
    """Every table made (empty) if it is not there yet, under a lock: two runs that each create a
    table at once would each commit a first version, and one of them would be lost (measured:
    25 of 1,525 rows), where appends to a table that exists never lose a row."""
    import fcntl

    if all(open_table(root, name) is not None for name in SCHEMAS):
        return
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".create.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for name, schema in SCHEMAS.items():
            if open_table(root, name) is None:
                lance.write_dataset(schema.empty_table(), uri(root, name), mode="create")
    finally:
        os.close(fd)


def append(root: Path, name: str, rows: dict[str, list]) -> None:
    """Rows as one fragment, committed atomically; a lost race with a concurrent writer is retried."""
    table = pa.table(rows, schema=SCHEMAS[name])
    if not table.num_rows:
        return
    ensure(root)
    _retry(lambda: lance.write_dataset(table, uri(root, name), mode="append"), root)


def write_fragments(root: Path, name: str, rows: dict[str, list]) -> list[str]:
    """Rows written as new data files of the table, not committed: what a Ray worker does, the
    driver committing them with its next commit (`commit_fragments`). Their metadata, as JSON
    text: a few hundred bytes, whatever the rows hold."""
    import json

    from lance.fragment import write_fragments as write

    table = pa.table(rows, schema=SCHEMAS[name])
    if not table.num_rows:
        return []
    ensure(root)
    return [json.dumps(f.to_json()) for f in write(table, uri(root, name), schema=SCHEMAS[name])]


def commit_fragments(root: Path, name: str, fragments: list[str]) -> dict[str, int]:
    """Fragments written by `write_fragments` (anywhere the library's folder is seen), appended to
    the table in one commit; a lost race with a concurrent writer is retried. Where each landed:
    data file -> fragment id (an Append's fragments are the version's last, in order)."""
    from lance.fragment import FragmentMetadata

    if not fragments:
        return {}
    ensure(root)
    append = lance.LanceOperation.Append([FragmentMetadata.from_json(f) for f in fragments])
    ds = _retry(
        lambda: lance.LanceDataset.commit(uri(root, name), append, read_version=open_table(root, name).version), root
    )
    ids = list(ds.fragment_ids())[-len(fragments) :]  # no object per fragment (4,000 of them: 20 ms)
    return {f.path: i for i in ids for f in ds.get_fragment(i).metadata.files}


def upsert_paths(root: Path, rows: dict[str, list]) -> None:
    """Paths rows by path: a path seen again gets its new key, stat and time (the last held)."""
    last = {p: j for j, p in enumerate(rows["path"])}  # one row per path, the last one held: a
    keep = sorted(last.values())  # merge on `path` takes each path once
    table = pa.table({name: [values[j] for j in keep] for name, values in rows.items()}, schema=PATHS)
    if not table.num_rows:
        return
    ensure(root)

    def merge():
        lance.dataset(uri(root, "paths")).merge_insert(
            "path"
        ).when_matched_update_all().when_not_matched_insert_all().execute(table)

    _retry(merge, root)


def where_keys(ds, keys: list[str], extra: str, columns: list[str], fragments: list | None = None) -> pa.Table:
    """Rows whose key is one of `keys` (and `extra`, a filter), in batches of `IN_BATCH` keys;
    within `fragments` alone where given (a scan of every fragment costs 0.6 s at 4,000)."""
    parts = []
    for i in range(0, len(keys), IN_BATCH):
        listed = ", ".join(quoted(k) for k in keys[i : i + IN_BATCH])
        where = f"key IN ({listed}){' AND ' + extra if extra else ''}"
        parts.append(ds.scanner(columns=columns, filter=where, fragments=fragments).to_table())
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})


def keys_with(root: Path, name: str, keys: list[str], setting) -> set[str]:
    """The keys of `keys` with a row in table `name` for `setting` (its model and front end): one
    scan of the key column of that setting, no vector read."""
    ds = open_table(root, name)
    if ds is None or not keys:
        return set()
    where = f"{equals('model', setting.model)} AND {equals('frontend', setting.frontend)}"
    found = ds.to_table(columns=["key"], filter=where)["key"]
    return set(found.filter(pc.is_in(found, value_set=pa.array(sorted(set(keys)), pa.string()))).to_pylist())


def vectors(column: pa.ChunkedArray) -> list:
    """A list<float32> column as one float32 numpy array per row: views of its values, no copy
    (`offsets` index the whole child array, whatever slice the chunk is)."""
    out = []
    for chunk in column.chunks:
        values = chunk.values.to_numpy(zero_copy_only=False)
        offsets = chunk.offsets.to_numpy()
        out.extend(values[offsets[j] : offsets[j + 1]] for j in range(len(chunk)))
    return out


def nested_vectors(column: pa.ChunkedArray) -> list[list]:
    """A list<list<float32>> column as, per row, its list of float32 numpy arrays."""
    out = []
    for chunk in column.chunks:
        inner = vectors(pa.chunked_array([chunk.values]))
        offsets = chunk.offsets.to_numpy()
        out.extend(inner[offsets[j] : offsets[j + 1]] for j in range(len(chunk)))
    return out


def versions(root: Path) -> dict[str, int]:
    """Each table's version now (a run's manifest records them)."""
    return {name: ds.version for name in SCHEMAS if (ds := open_table(root, name)) is not None}


def equals(column: str, value: str) -> str:
    return f"{column} = {quoted(value)}"


def quoted(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def delete(root: Path, name: str, predicate: str) -> None:
    ds = open_table(root, name)
    if ds is not None:
        _retry(lambda: lance.dataset(uri(root, name)).delete(predicate), root)


def tidy(root: Path, most_fragments: int = 16, done: Collection[str] = ()) -> None:
    """Many small fragments (a commit every few files) merged into few, and versions older than an
    hour dropped (a run still reading one keeps its files that long), so the library stays small
    and fast to read however many runs wrote to it. Only fragments under a `most_fragments`th of
    the table are merged (`merging`). The tables in `done` were merged already (on a Ray cluster's
    workers: `library.compaction`): only their old versions are dropped."""
    from datetime import timedelta

    for name in SCHEMAS:
        ds = open_table(root, name)
        if ds is None:
            continue
        try:
            options = merging(ds, most_fragments) if name not in done else None
            if options is not None:
                ds.optimize.compact_files(**options)
            lance.dataset(uri(root, name)).cleanup_old_versions(older_than=timedelta(hours=1))
        except Exception:  # noqa: BLE001 - another run compacting at the same time: the next run tidies
            pass


def merging(ds, most_fragments: int = 16) -> dict | None:
    """The compaction `tidy` runs on `ds` (Lance's `CompactionOptions`), or None where it has
    `most_fragments` or fewer. Lance's default target (a million rows) took the big fragment too,
    and a library of 100,000 clips rewrote its 1.5 GB every 17th run; a `most_fragments`th of the
    table rewrites each row a few times in all."""
    if len(ds.get_fragments()) <= most_fragments:
        return None
    return {"target_rows_per_fragment": max(1024, ds.count_rows() // most_fragments)}


def _retry(commit, root: Path):
    """`commit`, again after a lost race with a concurrent writer; any other failure (a full
    disk, a read-only folder) is one line naming the library."""
    for attempt in range(RETRIES):
        try:
            return commit()
        except OSError as exc:
            if attempt == RETRIES - 1 or "onflict" not in str(exc) and "retry" not in str(exc).lower():
                raise Unwritable(f"library {root}: cannot write ({reason(exc)})", settings=("library",)) from None
            time.sleep(0.05 * (attempt + 1))
    return None


class Unwritable(OutputError):
    """A library write that failed for a reason other than a concurrent writer (a full disk)."""


def reason(exc: BaseException) -> str:
    """Lance's error in a user's words: the system's message for an OS error, without the Rust
    source location it appends."""
    text = str(exc)
    code = re.search(r"\(os error (\d+)\)", text)
    if code:
        return os.strerror(int(code.group(1)))
    text = re.sub(r"^.*?LanceError\(\w+\):\s*(Generic [\w/ ]+ error:\s*)?", "", text, flags=re.S)
    return one_line(re.sub(r",\s*\S+\.rs:\d+:\d+.*$", "", text, flags=re.S)) or type(exc).__name__


@contextlib.contextmanager
def guarded(root: Path) -> Iterator[None]:
    """Library reads and writes inside: a damaged or unreadable library (a table's files cut or
    overwritten, a folder of someone else's) is one line naming it, never a traceback."""
    try:
        yield
    except MatpacError:
        raise
    except (OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
        raise OutputError(
            f"library {root}: cannot be read ({reason(exc)}); move it aside (the next run starts a "
            "new one) or give another `library`",
            settings=("library",),
        ) from None


def guards(fn):
    """`fn(root, ...)` inside `guarded(root)`."""

    @functools.wraps(fn)
    def wrapper(root, *args, **kwargs):
        with guarded(root):
            return fn(root, *args, **kwargs)

    return wrapper
