"""The library as the jobs use it: which files it knows (and how it knew them), what it holds for
a run's model and settings, and the results of this run, committed every few files or seconds
(kill -9 loses at most the files in flight) and tidied at the end.

A file is found by its real path with an unchanged stat (no hashing), else by its audio key
(`key.audio_key`); what the run finds says how: `same path`, `retagged` (same path, new bytes,
same audio: a tag editor, `touch`), `moved` (a path the library has not seen with this audio:
a rename, a move, a copy).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from matpac_cli.library import bypath, tables
from matpac_cli.library.key import Setting, Stat, audio_key
from matpac_cli.library.shards import WRITTEN, Homes, clip_rows, row_facts, segments_row
from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan, Segment
from matpac_cli.pipeline.discovery import Item

COMMIT_FILES = 16  # results held before a commit ...
COMMIT_S = 5.0  # ... or seconds since the last one, whichever comes first;
COMMIT_MIN_S = 0.5  # but no sooner after the last: a Lance commit takes 10-20 ms (a cluster's driver
# finishing hundreds of files a second spent itself in commits: benchmarks/ray_driver.py)
SEEN_AGAIN_S = 86_400.0  # an unchanged path's `seen` time is refreshed at most this often
HOWS = ("same path", "retagged", "moved")


@dataclass
class Stored:
    """One file's stored results for one setting."""

    facts: dict
    layers: dict[int, np.ndarray] = field(default_factory=dict)
    segments: list[Segment] | None = None


class Library:
    """One library folder. Reads see the latest committed version; writes are buffered and
    committed by `commit`: every `COMMIT_FILES` results (at most every `COMMIT_MIN_S` s), `COMMIT_S`
    s after the oldest one held (a thread sees to it: kill -9 loses the last seconds'), at `close`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._clips: dict[str, list] = {name: [] for name in tables.CLIPS.names}
        self._segments: dict[str, list] = {name: [] for name in tables.SEGMENTS.names}
        self._paths: dict[str, list] = {name: [] for name in tables.PATHS.names}
        self._fragments: list[tuple[list[str], list]] = []  # written by Ray workers (`adopt`)
        self._adopts = self.adopted = 0  # `adopt`s so far, and committed (in order)
        self._held = 0
        self._last = time.monotonic()
        self._writing = threading.Lock()  # one commit at a time: `_known` is read and grown by it
        # table -> (model, frontend) -> key -> the parts stored (layers; None for segments), for
        # the keys read so far: a file encoded again for a part it lacked stores only what lacks
        self._known: dict[str, dict[tuple[str, str], dict[str, set]]] = {"clips": {}, "segments": {}}
        self._stop, self._flusher, self._failed = threading.Event(), None, None
        self.unwritable: Exception | None = None  # the write that failed: nothing more is stored
        self.told = False  # the run has said so
        self.retry_failed = False  # the files `library.failed` records are tried again (`jobs.stored`)
        self.merged: dict[str, list] = {}  # tables merged already, and where (a Ray cluster's: `jobs.tidy`)
        self.homes: Homes | None = None  # where the workers' rows landed, kept where a job reads them back

    # reading -----------------------------------------------------------------------------------

    def identify(self, items: list[Item]) -> bypath.Identified:
        """Each readable item's key (by stat where the path is unchanged, else by its audio), and
        the path rows to record; items that cannot be stat'ed are left to the engine to name.
        The unchanged paths are matched as columns (`bypath.match`) and handed on as columns
        (`bypath.Identified`): Python only for the others."""
        found, reals, stats, odd = [], [], [], []
        for i, item in enumerate(items):
            if item.problem:
                continue
            try:
                real, st = bypath.stat_of(item)
            except OSError:
                continue
            if st is not None and not bypath.fits(st):  # a time past 2262: keyed by its audio, not recorded
                odd.append((i, real))
            elif st is not None:  # else not a regular file: the engine says so
                found.append(i)
                reals.append(real)
                stats.append(st)
        matched, now = bypath.match(self.root, reals, bypath.columns(stats)), time.time()
        known = bypath.Identified()
        sure = np.flatnonzero(matched.vouched)
        known.index = np.asarray(found, np.int64)[sure].tolist()
        known.audio_keys = matched.keys_at(matched.row[sure])
        known.hows = ["same path"] * len(sure)
        known.reals = np.asarray(reals, object)[sure].tolist() if len(sure) else []
        for j in sorted(matched.older(now - SEEN_AGAIN_S)):  # refreshed in the table at most once a day
            self._remember_path(reals[j], known.audio_keys[bisect.bisect_left(sure, j)], bypath.as_stat(stats[j]), now)
        for j in np.flatnonzero(~matched.vouched).tolist():
            real, stat, row = bypath.now_real(items[found[j]], reals[j]), bypath.as_stat(stats[j]), matched.recorded(j)
            try:
                key = audio_key(real)
            except OSError:  # unreadable (its mode, an I/O error): the engine names the file
                continue
            how = "moved" if row is None else ("same path" if row[1].same_bytes(stat) else "retagged")
            if row is not None and row[0] != key:
                how = "moved"  # the audio at this path changed: found only if it is elsewhere too
            known.add(found[j], key, how, real)
            self._remember_path(real, key, stat, now)
        for i, real in odd:
            with contextlib.suppress(OSError):  # unreadable: the engine names the file
                known.add(i, audio_key(real), "moved", real)
        return known

    def lookup(self, keys: list[str], setting: Setting, layers: tuple[int, ...], segments: bool) -> dict[str, Stored]:
        """The stored results of `keys` for `setting` that have every layer of `layers` (and the
        segments, where asked for); keys with less are missing (they are encoded again)."""
        ds = tables.open_table(self.root, "clips")
        if ds is None or not keys:  # nothing stored (the tables are made together): no read at each commit
            for name in ("clips", "segments")[: 1 + segments]:
                self._learn(name, setting, {k: set() for k in keys})
            return {}
        extra = f"{tables.equals('model', setting.model)} AND {tables.equals('frontend', setting.frontend)}"
        table = self._where_keys(ds, "clips", sorted(set(keys)), extra, [n for n in tables.CLIPS.names if n != "added"])
        vectors = tables.vectors(table.column("embedding"))  # numpy views: a Python float each costs 10x more
        t = table.drop_columns(["embedding"]).to_pydict()
        found: dict[str, Stored] = {}
        for j, key in enumerate(t["key"]):
            stored = found.setdefault(key, Stored(row_facts(t, j)))
            stored.layers[t["layer"][j]] = vectors[j]
        self._learn("clips", setting, {k: set(found[k].layers) if k in found else set() for k in keys})
        found = {k: s for k, s in found.items() if all(layer in s.layers for layer in layers)}
        if segments and found:
            for key, segs in self._segments_of(list(found), setting).items():
                found[key].segments = segs
            self._learn("segments", setting, {k: set() if s.segments is None else {None} for k, s in found.items()})
            found = {k: s for k, s in found.items() if s.segments is not None}
        return found

    def _where_keys(self, ds, name: str, keys: list[str], extra: str, columns: list[str]):
        """`tables.where_keys`, within the fragments the workers wrote the keys into, where known."""
        if self.homes is None:
            return tables.where_keys(ds, keys, extra, columns)
        return self.homes.where_keys(ds, name, keys, extra, columns)

    def holding(self, keys: list[str], setting: Setting, layers: tuple[int, ...]) -> set[str]:
        """The keys that have every layer of `layers` for `setting`: one scan of the key and
        layer columns of that setting, no embedding read (what a run asks of the files its own
        output already has, every run: no `IN` batch per 512 keys)."""
        ds = tables.open_table(self.root, "clips")
        if ds is None or not keys:
            self._learn("clips", setting, {k: set() for k in keys})  # nothing stored: no read at each commit
            return set()
        where = f"{tables.equals('model', setting.model)} AND {tables.equals('frontend', setting.frontend)}"
        t = ds.to_table(columns=["key", "layer"], filter=where).to_pydict()
        wanted, have = set(keys), {}
        for key, layer in zip(t["key"], t["layer"]):
            if key in wanted:
                have.setdefault(key, set()).add(layer)
        self._learn("clips", setting, {k: have.get(k, set()) for k in wanted})
        return {k for k, got in have.items() if set(layers) <= got}

    def _segments_of(self, keys: list[str], setting: Setting) -> dict[str, list[Segment]]:
        ds = tables.open_table(self.root, "segments")
        if ds is None:
            return {}
        extra = f"{tables.equals('model', setting.model)} AND {tables.equals('frontend', setting.frontend)}"
        table = self._where_keys(ds, "segments", keys, extra, ["key", "start_s", "end_s", "columns", "embedding"])
        rows = tables.nested_vectors(table.column("embedding"))
        t = table.drop_columns(["embedding"]).to_pydict()
        return {
            key: [Segment(s, e, v, c) for s, e, c, v in zip(t["start_s"][j], t["end_s"][j], t["columns"][j], rows[j])]
            for j, key in enumerate(t["key"])
        }

    # writing -----------------------------------------------------------------------------------

    def add(self, key: str, setting: Setting, plan: Plan, res: FileResult, out: EncoderOutput) -> None:
        """One file's results for one plan: its clip embedding per layer, its segments where the
        plan made them; committed with the next batch."""
        if self.unwritable is not None:
            return  # the run goes on without the library (`commit`)
        facts = (res.duration_s, res.sample_rate, res.channels, res.truncated, time.time())
        with self._lock:
            clip_rows(self._clips, key, (setting.model, setting.frontend), plan.resolved_layers(), out.embedding, facts)
            if plan.segments:
                segments_row(self._segments, key, (setting.model, setting.frontend), out.segments, facts[-1])
        self._queued(1)

    def adopt(self, fragments: dict[str, list[str]], parts: list[tuple[str, Setting, tuple, bool]]) -> int:
        """Rows a Ray worker wrote (`shards`): their fragments (per table) committed with the next
        batch, and the parts they hold, (key, setting, layers, with segments), known once they
        are. Its number: they are committed once `adopted` reaches it (never, once a write has
        failed)."""
        with self._lock:
            self._fragments.append((fragments, parts))
            self._adopts += 1
            number = self._adopts
        if self.unwritable is None:
            self._queued(len({part[0] for part in parts}))
        return number

    def _queued(self, files: int) -> None:
        """`files` more held: a commit where one is due (`COMMIT_FILES`, `COMMIT_S`)."""
        with self._lock:
            self._held += files
            since = time.monotonic() - self._last
            due = (self._held >= COMMIT_FILES and since >= COMMIT_MIN_S) or since >= COMMIT_S
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush, name="matpac-library", daemon=True)
                self._flusher.start()
        if self._failed is not None:
            raise self._failed
        if due:
            self.commit()

    def _flush(self) -> None:
        """Commit what was held `COMMIT_S` s, until `close` (a failure is the run thread's to raise)."""
        while not self._stop.wait(COMMIT_S / 4):
            with self._lock:
                due = self._held and time.monotonic() - self._last >= COMMIT_S
            try:
                if due:
                    self.commit()
            except Exception as exc:  # noqa: BLE001 - handed to the run's thread
                self._failed = exc
                return

    def _remember_path(self, path: str, key: str, stat: Stat, now: float) -> None:
        with self._lock:
            for name, value in zip(tables.PATHS.names, (os.fsencode(path), key, *asdict(stat).values(), now)):
                self._paths[name].append(value)

    def commit(self) -> None:
        """What is held, written as new fragments (paths first: results are found by key), less
        the rows the library already has: a file encoded again because it lacked one part (a
        layer, its segments) stores that part only, and a file met twice in a run once. A write
        that fails (a full disk) is kept in `unwritable`, and nothing more is stored: the run goes
        on, its outputs whole, and the files it encoded are encoded again next time."""
        try:
            self._commit()
        except tables.Unwritable as exc:
            self.unwritable = exc
            with self._lock:
                self._clips = {name: [] for name in tables.CLIPS.names}
                self._segments = {name: [] for name in tables.SEGMENTS.names}
                self._fragments = []

    def holds(self, keys: list[str], setting: Setting, layers: tuple[int, ...]) -> set[str]:
        """The keys of `keys` with every layer of `layers` committed for `setting` (by this run or
        before it, as far as this run has read or written; none once a write has failed)."""
        with self._writing:
            known = self._known["clips"].get((setting.model, setting.frontend), {}) if not self.unwritable else {}
            return {k for k in keys if set(layers) <= known.get(k, set())}

    def _commit(self) -> None:
        with self._writing:
            with self._lock:
                clips, segments, paths, adopted = self._clips, self._segments, self._paths, self._fragments
                self._fragments = []
                self._clips = {name: [] for name in tables.CLIPS.names}
                self._segments = {name: [] for name in tables.SEGMENTS.names}
                self._paths = {name: [] for name in tables.PATHS.names}
                self._held, self._last = 0, time.monotonic()
            try:
                if paths["path"]:
                    tables.upsert_paths(self.root, paths)
                for name in WRITTEN:  # as the driver appends its own: clips, then segments
                    landed = tables.commit_fragments(
                        self.root, name, [f for written, _ in adopted for f in written.get(name, ())]
                    )
                    if self.homes is not None:
                        self.homes.place(name, landed, adopted)
                for key, setting, layers, kept in (part for _, parts in adopted for part in parts):
                    pair, known = (setting.model, setting.frontend), self._known
                    known["clips"].setdefault(pair, {}).setdefault(key, set()).update(layers)
                    known["segments"].setdefault(pair, {}).setdefault(key, set()).update({None} if kept else ())
                self.adopted += len(adopted)
                tables.append(self.root, "clips", self._lacking("clips", clips))
                tables.append(self.root, "segments", self._lacking("segments", segments))
            except tables.Unwritable as exc:
                self.unwritable = exc  # before `_writing` is let go: `holds` never trusts this commit
                raise

    def _learn(self, name: str, setting: Setting, parts: dict[str, set]) -> None:
        """What a read found stored of each key (every part of it, for `setting`)."""
        with self._writing:
            known = self._known[name].setdefault((setting.model, setting.frontend), {})
            for key, got in parts.items():
                known.setdefault(key, set()).update(got)

    def _lacking(self, name: str, rows: dict[str, list]) -> dict[str, list]:
        """`rows` less those whose (key, model, frontend, part) is stored or came earlier in
        `rows`; keys no read has seen yet are looked up first (one filter per setting)."""
        triples = list(zip(rows["key"], rows["model"], rows["frontend"]))
        unseen = defaultdict(set)
        for key, model, frontend in triples:
            if key not in self._known[name].get((model, frontend), {}):
                unseen[(model, frontend)].add(key)
        for (model, frontend), keys in unseen.items():
            self._read_known(name, model, frontend, keys)
        keep = []
        for j, (key, model, frontend) in enumerate(triples):
            parts = self._known[name][(model, frontend)][key]
            part = rows["layer"][j] if name == "clips" else None
            if part not in parts:
                parts.add(part)
                keep.append(j)
        return {column: [values[j] for j in keep] for column, values in rows.items()}

    def _read_known(self, name: str, model: str, frontend: str, keys: set[str]) -> None:
        known = self._known[name].setdefault((model, frontend), {})
        for key in keys:
            known.setdefault(key, set())
        ds = tables.open_table(self.root, name)
        if ds is None:
            return
        where = f"{tables.equals('model', model)} AND {tables.equals('frontend', frontend)}"
        columns = ["key", "layer"] if name == "clips" else ["key"]
        t = tables.where_keys(ds, sorted(keys), where, columns).to_pydict()
        for j, key in enumerate(t["key"]):
            known[key].add(t["layer"][j] if name == "clips" else None)

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self._failed is not None:
            raise self._failed
        self.commit()
        if self.unwritable is None:
            tables.tidy(self.root, done=self.merged)

    def version(self) -> dict[str, int]:
        """Each table's version now (the manifest records it)."""
        return tables.versions(self.root)
