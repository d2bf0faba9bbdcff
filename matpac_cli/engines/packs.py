"""The work of `--engine ray`'s decoding tasks and encoder actors, with no Ray in them: files are
cut into chunks and packed whole, and each file's chunks are summed where they are encoded.

`decode_files` (a task) decodes its files one after the other and yields packs: a pack is one
row holding whole parts of one or more files, `pack` chunks or so (at least one encoder batch),
and each file's facts. A part is up to `PART` consecutive chunks of one file on one encoder
grid: a file of up to 6.5 minutes is one part, a longer one several. `Encoder` (an actor)
encodes a pack's chunks in batches of any of its files, sums each part's chunks as the local
engine sums a file's (`pipeline.Slot`), and answers with one entry per part: its sums (and the
frames or segments a plan keeps), never a row per chunk. The driver's `work.Collector` merges a
file's parts and facts. Parts are cut the same way on every try, so a retried task's answers
are recognised (by file, grid and part) and taken once.

Entries are `(i, grid, part, payload)`: `i` the file's place in the input, `grid` the encoder
geometry (frames per chunk; 0 for facts), `part` its number (-1 for the file's facts). A pack
crosses the object store as one pickled list (`data`).

Where the library is written by the workers (`Encoder.finish`, `engines.writes`), a file whose
facts and every part are in one pack (any file of up to 6.5 minutes) is finished on the actor:
one `DONE` entry, in a row of its own, holds its clip embeddings (and segments), ready to store.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import threading
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace

import numpy as np

from matpac_cli.encoder import cpu
from matpac_cli.engines.work import DONE, GIVE_UP, Attempts, Recipe, died
from matpac_cli.errors import RAY_LIMIT, GaveUp, InputError, MatpacError, ModelError, one_line
from matpac_cli.pipeline.assemble import Plan, Slot, chunk_output, finite, run_layers

# The feed, and torch with it, load here, in the worker's main thread as it unpickles its task: a
# first `import torch` in two of Ray Data's threads at once fails half-initialised.
from matpac_cli.pipeline.feed import END, Feed
from matpac_cli.pipeline.hooks import busy, hold

PART = 64  # chunks of one file summed together: 6.5 minutes of audio, 25 MB of 16 kHz float32


class _Pack:
    """What a decoding task holds until it is worth sending: entries, and the chunks they carry."""

    def __init__(self, target: int) -> None:
        self.target, self.entries, self.chunks = target, [], 0

    def add(self, entry: tuple, chunks: int = 0) -> None:
        self.entries.append(entry)
        self.chunks += chunks

    def full(self) -> bool:
        return self.chunks >= self.target

    def row(self) -> dict[str, np.ndarray]:
        data = np.empty(1, dtype=object)
        data[0] = pickle.dumps(self.entries, protocol=pickle.HIGHEST_PROTOCOL)
        self.entries, self.chunks = [], 0
        return {"data": data}


def decode_files(
    batch: dict[str, np.ndarray],
    n_ts: tuple[int, ...],
    defer: bool,
    pack: int = PART,
    attempts=None,
    crash_on: str | None = None,
    hold_on: tuple[str, str] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """A Ray task: its files' parts and facts, in packs of about `pack` chunks (one row each). A
    file whose decoding killed the process `GIVE_UP` times is not decoded again: its facts say
    so. `attempts` has `Attempts`' methods (a Ray actor's, through engines.ray; else this
    process's)."""
    attempts = attempts if attempts is not None else Attempts()
    held = _Pack(pack)
    keys = batch["key"] if "key" in batch else [""] * len(batch["i"])
    for i, blob, key in zip(batch["i"], batch["item"], keys):
        i, item, key = int(i), pickle.loads(blob), str(key)  # key: where a worker stores it ("": the driver)
        deaths = attempts.begin(("decode", i))
        if deaths >= GIVE_UP:
            held.add(_facts(i, dict.fromkeys(n_ts, 0), {}, GaveUp(item.name, died(deaths, "decoding it")), None))
            continue
        if crash_on and item.name.endswith(crash_on):
            os.kill(os.getpid(), signal.SIGKILL)  # the test's stand-in for a decoder that segfaults
        if hold_on and item.name.endswith(hold_on[0]):
            hold(hold_on[1])  # the test's stand-in for a slow disk
        yield from _decode_one(i, item, (n_ts, defer, key), held, partial(attempts.end, ("decode", i)))
    if held.entries:
        yield held.row()


def _decode_one(i: int, item, how: tuple, held: _Pack, ended) -> Iterator[dict[str, np.ndarray]]:
    """One file into `held`, a part at a time; each time the pack is full, it goes."""
    n_ts, defer, key = how
    messages: queue.Queue = queue.Queue(maxsize=8)  # memory bounded by a few chunks, as locally
    feed = Feed(item, messages, n_ts, defer)
    worker = threading.Thread(target=feed.produce, daemon=True, name="matpac-decode")
    worker.start()
    counts, parts = dict.fromkeys(n_ts, 0), dict.fromkeys(n_ts, 0)
    open_parts: dict[int, list] = {n_t: [] for n_t in n_ts}
    error = None

    def close(n_t: int) -> None:
        if open_parts[n_t]:
            held.add((i, n_t, parts[n_t], open_parts[n_t]), len(open_parts[n_t]))
            parts[n_t] += 1
            open_parts[n_t] = []

    try:
        while True:
            try:
                _, msg = messages.get(timeout=1.0)
            except queue.Empty:
                if worker.is_alive():
                    continue
                error = InputError(item.name, "the decoder stopped without a word")
                break
            if msg is END or isinstance(msg, InputError):
                error = None if msg is END else msg
                break
            for n_t, pairs in msg.items():
                for pair in pairs:
                    if len(open_parts[n_t]) >= PART:  # closed as the next chunk comes: a file of
                        close(n_t)  # `PART` chunks travels whole, with its facts
                    open_parts[n_t].append(pair)
                    counts[n_t] += 1
            if held.full():
                yield held.row()
    finally:
        feed.cancelled = True
    for n_t in n_ts:
        close(n_t)
    ended()
    held.add(_facts(i, counts, parts, error, feed.source, key))
    if held.full():
        yield held.row()


def _facts(i: int, counts: dict, parts: dict, error: InputError | None, source, key: str = "") -> tuple:
    facts = {
        "key": key,
        "chunks": counts,
        "parts": parts,
        "error": error,
        "duration_s": source.duration_s if source else 0.0,
        "sample_rate": source.sample_rate if source else 0,
        "channels": source.channels if source else 0,
        "truncated": source.truncated if source else None,
    }
    return (i, 0, -1, facts)


class Encoder:
    """An actor: the run's encoders, loaded once; packs in, one entry per part and facts out."""

    recipes: list[Recipe] = []  # set on the subclass the driver makes for the job
    attempts = None  # likewise: `Attempts`' methods (the actor enlists, so the driver can stop it)
    batch_size = 8  # likewise: chunks per encoder batch
    hold_from: tuple[int, str] | None = None  # likewise, TEST ONLY: `pipeline.hooks.hold_encoding`

    def __init__(self) -> None:
        self.calls = 0
        self.error: ModelError | None = None  # a model this node cannot load stops the job, in one line
        self.plans: list[Plan] = []
        if self.attempts is not None:
            self.attempts.enlist()  # so that the driver can stop this actor with its round
        try:
            self.plans = [r.load() for r in self.recipes]
            cpu.keep_freed_memory()  # the actor's process is ours: no page faults for each batch's temporaries
        except MatpacError as exc:
            self.error = ModelError(str(exc), settings=exc.settings)
        except Exception as exc:  # noqa: BLE001 - sent to the driver, which stops the job with it
            why = one_line(exc, RAY_LIMIT)
            self.error = ModelError(f"cannot load the model on Ray node {socket.gethostname()}: {why}")

    finish = False  # likewise: files whole in a pack are finished here (`DONE`), for `engines.writes`

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.hold_from and self.calls >= self.hold_from[0]:
            busy(self.hold_from[1])  # the test's stand-in for a slow device: this call is in flight
        rows = []
        for blob in batch["data"]:
            out = self._pack(pickle.loads(blob))
            done = self._finished(out) if self.finish else []
            rows += [[entry] for entry in done]  # a row each: the write stage takes files by the row
            finished = {d[0] for d in done}
            rest = [e for e in out if e[0] not in finished]
            if rest:  # no empty row: it would take a file's place in a write task
                rows.append(rest)
        data = np.empty(len(rows), dtype=object)
        for j, entries in enumerate(rows):
            data[j] = pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)
        return {"data": data}

    def _finished(self, out: list[tuple]) -> list[tuple]:
        """The files of `out` a worker may store (a key) whose facts and every part are there,
        each finished as the driver would (`Slot.result`): a `DONE` entry with its facts, per plan
        its layers, embedding and segments (None where the plan keeps none), and the audio it
        advances. A file that failed, or whose result is not
        finite, stays for the driver to name."""
        by_file: dict[int, list] = {}
        for entry in out:
            by_file.setdefault(entry[0], []).append(entry)
        done = []
        for i, entries in by_file.items():
            facts = next((e[3] for e in entries if e[2] == -1), None)
            parts = [e[3] for e in entries if e[2] >= 0]
            if not facts or not facts["key"] or facts["error"] is not None or not sum(facts["chunks"].values()):
                continue  # failed, or too short to embed: the driver names it
            if len(parts) != sum(facts["parts"].values()) or not all(isinstance(p, tuple) for p in parts):
                continue
            slot = Slot(None, self.plans)
            for part in parts:
                slot.merge(part[:4])
            slot.added = sum(facts["chunks"].values())
            slot.facts(SimpleNamespace(**{k: facts[k] for k in ("duration_s", "sample_rate", "channels", "truncated")}))
            result = slot.result(self.plans) if slot.error is None else None
            if result is None or not finite(result):
                continue
            made = (result.duration_s, result.sample_rate, result.channels, result.truncated)
            outputs = [
                (plan.resolved_layers(), o.embedding, o.segments if plan.segments else None)
                for plan, o in zip(self.plans, result.outputs)
            ]
            payload = {"key": facts["key"], "facts": made, "outputs": outputs, "audio": sum(p[4] for p in parts)}
            done.append((i, 0, DONE, payload))
        return done

    def _pack(self, entries: list[tuple]) -> list[tuple]:
        """Each part's chunks encoded (in batches across the pack's files) and summed."""
        out = [e for e in entries if e[2] < 0]  # facts travel on as they are
        parts = [e for e in entries if e[2] >= 0]
        for grid in sorted({e[1] for e in parts}):
            mine = [e for e in parts if e[1] == grid]
            if self.error is not None:
                out += [(i, grid, part, self.error) for i, _, part, _ in mine]
                continue
            try:
                outs = self._encode(grid, [pair for e in mine for pair in e[3]])
            except Exception:  # noqa: BLE001 - each part again on its own: only the parts that fail fail
                out += [self._alone(e) for e in mine]
                continue
            start = 0
            for i, _, part, pairs in mine:
                out.append((i, grid, part, self._summed(grid, pairs, outs[start : start + len(pairs)])))
                start += len(pairs)
        return out

    def _alone(self, entry: tuple) -> tuple:
        """One part encoded on its own, after its pack failed: its sums, or its error (named in
        the file's failure line; the job goes on)."""
        i, grid, part, pairs = entry
        try:
            return (i, grid, part, self._summed(grid, pairs, self._encode(grid, pairs)))
        except Exception as exc:  # noqa: BLE001 - this file fails, named; the job goes on
            return (i, grid, part, f"the encoder failed on Ray node {socket.gethostname()}: {one_line(exc, RAY_LIMIT)}")

    def _summed(self, grid: int, pairs: list, outs: list) -> tuple:
        """One part's chunks summed as the local engine sums a file's (`Slot.take`), with the
        seconds of audio they advance the first plan's grid by (for the progress display)."""
        slot = Slot(None, self.plans)
        for (window, _), chunk_outs in zip(pairs, outs):
            for index, chunk in chunk_outs:
                slot.take(index, window, chunk)
        first = self.plans[0].predictor
        hop = first.fe.chunk_hop(first.dims.n_t)
        audio = sum(min(w.length, hop) for w, _ in pairs) / first.fe.sample_rate if grid == first.dims.n_t else 0.0
        return slot.sums, slot.counts, slot.frames, slot.segments, audio

    def _encode(self, grid: int, chunks: list) -> list[list]:
        """Each chunk's outputs for every plan of this grid: full-width chunks batched together,
        short last chunks with each other (as the local batcher does), `batch_size` at a time."""
        outs: list[list] = [[] for _ in chunks]
        for index, plan in enumerate(self.plans):
            p = plan.predictor
            if p.dims.n_t != grid:
                continue
            full = p.fe.chunk_samples(grid)
            layers, needed = plan.resolved_layers(), run_layers(plan)
            for kind in (
                [j for j, (w, _) in enumerate(chunks) if w.length == full],
                [j for j, (w, _) in enumerate(chunks) if w.length != full],
            ):
                for s in range(0, len(kind), self.batch_size):
                    group = kind[s : s + self.batch_size]
                    result = p.launch([chunks[j][1] for j in group], needed, pooled=not plan.frames).result()
                    for b, j in enumerate(group):
                        outs[j].append((index, chunk_output(plan, layers, result, b, chunks[j][0])))
        return outs
