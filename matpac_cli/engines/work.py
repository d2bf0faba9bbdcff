"""The units of work an engine ships to other processes, with no Ray in them (engines.ray runs
them on a cluster): `decode_files` cuts files into chunk rows, `Encoder` turns chunk rows into
per-chunk sums with the run's encoders loaded once, and `Collector` sums each file's chunks back
on the driver (in any order, each chunk once) and hands finished files to the job's writer and
events.
`Attempts` counts each file's decoding tries, so a file whose decoding process dies on every try
(a crash, an out-of-memory kill) becomes its error after `GIVE_UP` deaths instead of running for
ever (an encoder actor that dies ends its round instead: engines.ray counts those).

Rows are columns of numpy arrays: `i` (the file's place in the input), `grid` (the encoder
geometry, frames per chunk), `k` (the chunk, -1 for the file's facts) and `data` (pickled: the
chunk, its outputs, the file's facts, or a file's error as text).
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from matpac_cli.config import precision_name
from matpac_cli.encoder import cpu
from matpac_cli.errors import RAY_LIMIT, GaveUp, InputError, MatpacError, ModelError, one_line
from matpac_cli.pipeline.assemble import Plan, Slot, chunk_output, hand_on, run_layers
from matpac_cli.pipeline.discovery import Item

# The feed, and torch with it, load here, in the worker's main thread as it unpickles its task: a
# first `import torch` in two of Ray Data's threads at once fails half-initialised.
from matpac_cli.pipeline.feed import END, Feed
from matpac_cli.pipeline.hooks import hold

GIVE_UP = 3  # deaths of the process decoding one file (or of rounds lost encoding it) before it fails


class Attempts:
    """Each unit of work's tries in flight (engines.ray keeps one in an actor). A try begun and
    never ended died with its process; `begin` says how many did, so the next try can give up
    instead of dying again. A key is dropped when its try ends, so what is held is the tries in
    flight (and the few units given up), not every unit of the job; the retries are a count."""

    def __init__(self) -> None:
        self.open: dict = {}  # key -> tries begun and not ended (all but the latest died)
        self.reruns = 0  # tries begun after a try of the same unit died
        self.enlisted: dict = {}  # round -> the encoder actors that started in it (handles)

    def begin(self, key) -> int:
        died = self.open.get(key, 0)
        self.open[key] = died + 1
        self.reruns += died > 0
        return died

    def end(self, key) -> None:
        self.open.pop(key, None)

    def retries(self) -> int:
        """Tries after each unit's first: reruns of work whose process or node was lost."""
        return self.reruns

    def enlist(self, round_: int, actor) -> None:
        self.enlisted.setdefault(round_, []).append(actor)

    def enlisted_now(self, round_: int) -> list:
        """The round's actors so far (the driver watches them)."""
        return list(self.enlisted.get(round_, []))

    def enlisted_in(self, round_: int) -> list:
        """The round's actors, handed over once (the round is over: its actors are stopped)."""
        return self.enlisted.pop(round_, [])


def died(times: int, what: str) -> str:
    return f"the Ray worker {what} died {times} times (a crash, or killed for memory?); matpac gave up on it"


@dataclass(frozen=True)
class Recipe:
    """How an actor loads the driver's encoder: the same checkpoint (by sha256), settings, device."""

    name: str  # registry name, hf: spec or file, resolved on the actor's node when `path` is not there
    path: str
    sha256: str
    device: str
    precision: str
    threads: int | None
    layers: tuple[int, ...]
    frames: bool
    segments: bool
    linear: str = "plain"  # the driver's linear layers on a CPU (what the manifest records)

    @classmethod
    def of(cls, plan: Plan, device: str, threads: int | None) -> Recipe:
        p = plan.predictor
        name = str(Path(p.resolved.path).absolute()) if p.resolved.source == "file" else p.resolved.name
        return cls(
            name,
            str(Path(p.resolved.path).absolute()),
            p.resolved.sha256,
            device,
            precision_name(p.dtype) or "fp32",
            threads,
            plan.resolved_layers(),
            plan.frames,
            plan.segments,
            p.encoder.linear_kind,
        )

    def load(self) -> Plan:
        from matpac_cli.checkpoints.resolve import resolve
        from matpac_cli.inference.predictor import Predictor

        resolved = resolve(self.path) if Path(self.path).is_file() else resolve(self.name)
        if resolved.sha256 != self.sha256:
            raise ModelError(
                f"the model on Ray node {socket.gethostname()} ({resolved.path}) is not the "
                f"driver's: sha256 {resolved.sha256[:12]} against {self.sha256[:12]}"
            )
        predictor = Predictor.load(resolved, self.device, self.precision, self.threads, linear=self.linear)
        return Plan(predictor, self.layers, self.frames, self.segments)


class Collector:
    """The driver's side: each file's chunks summed as they come back (in any order, each chunk
    once), then the file handed on to the job's `on_result` and its `events`."""

    def __init__(self, items: list[Item], plans: list[Plan], events, on_result) -> None:
        self.items, self.plans = items, plans
        self.on_result, self.events = on_result, events
        self.slots: dict[int, Slot] = {}
        self.expected: dict[int, dict[int, int]] = {}  # file -> chunks per grid (known once decoded)
        self.seen: dict[int, set] = {}
        self.done: set[int] = set()
        first = plans[0].predictor
        self.first_grid, self.hop, self.sr = first.dims.n_t, first.fe.chunk_hop(first.dims.n_t), first.fe.sample_rate

    def add(self, i: int, grid: int, k: int, data: bytes) -> None:
        if i in self.done or (grid, k) in self.seen.setdefault(i, set()):
            return  # a retried task's second answer
        self.seen[i].add((grid, k))
        slot = self.slots.setdefault(i, Slot(self.items[i], self.plans))
        payload = pickle.loads(data)
        if k < 0:
            self._facts(i, slot, payload)
        elif isinstance(payload, ModelError):
            raise payload  # the encoder cannot run there: no file would get a result
        elif isinstance(payload, str):
            slot.error = slot.error or InputError(slot.item.name, payload)
        else:
            window, outputs = payload
            for index, out in outputs:
                slot.take(index, window, out)
            if grid == self.first_grid:
                self.events.audio(min(window.length, self.hop) / self.sr)
        self._maybe_done(i, slot)

    def _facts(self, i: int, slot: Slot, facts: dict) -> None:
        self.expected[i] = facts["chunks"]
        slot.added = sum(facts["chunks"].values())
        if facts["error"] is not None:
            slot.error = facts["error"]
            slot.ended = True
        else:
            slot.facts(SimpleNamespace(**{k: facts[k] for k in ("duration_s", "sample_rate", "channels", "truncated")}))

    def _maybe_done(self, i: int, slot: Slot) -> None:
        expected = self.expected.get(i)
        if expected is None:
            return
        got = len(self.seen[i]) - 1  # the facts row
        if got < sum(expected.values()):
            return
        self.done.add(i)
        del self.slots[i], self.seen[i], self.expected[i]
        hand_on(slot, self.plans, self.on_result, self.events)

    def finish(self, reason: str = "no result came back from the Ray cluster") -> None:
        """Files the cluster never answered for, or that the job gave up: named, never silently
        lost. Not a `GaveUp` (recorded, skipped by later runs) even where the encoder kept dying:
        any of the files left may be the one that killed it, or none (a model that kills its
        actor as it loads, a node lost again and again)."""
        for i, item in enumerate(self.items):
            if i not in self.done:
                slot = self.slots.pop(i, None) or Slot(item, self.plans)
                slot.error = InputError(item.name, reason)
                hand_on(slot, self.plans, self.on_result, self.events)


def _rows(i: int, entries: list[tuple[int, int, object]]) -> dict[str, np.ndarray]:
    data = np.empty(len(entries), dtype=object)
    data[:] = [pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) for _, _, obj in entries]
    return {
        "i": np.full(len(entries), i, dtype=np.int64),
        "grid": np.array([g for g, _, _ in entries], dtype=np.int64),
        "k": np.array([k for _, k, _ in entries], dtype=np.int64),
        "data": data,
    }


def decode_files(
    batch: dict[str, np.ndarray],
    n_ts: tuple[int, ...],
    defer: bool,
    attempts=None,
    crash_on: str | None = None,
    hold_on: tuple[str, str] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """A Ray task: each file's chunks as they are cut, then its facts row (k = -1). A file whose
    decoding killed the process `GIVE_UP` times is not decoded again: its facts row says so.
    `attempts` has `Attempts`' methods (a Ray actor's, through engines.ray; else this process's)."""
    attempts = attempts if attempts is not None else Attempts()
    for i, blob in zip(batch["i"], batch["item"]):
        item = pickle.loads(blob)
        deaths = attempts.begin(("decode", int(i)))
        if deaths >= GIVE_UP:
            yield _facts_row(int(i), dict.fromkeys(n_ts, 0), GaveUp(item.name, died(deaths, "decoding it")), None)
            continue
        if crash_on and item.name.endswith(crash_on):
            os.kill(os.getpid(), signal.SIGKILL)  # the test's stand-in for a decoder that segfaults
        if hold_on and item.name.endswith(hold_on[0]):
            hold(hold_on[1])  # the test's stand-in for a slow disk
        yield from _decode_one(int(i), item, n_ts, defer, partial(attempts.end, ("decode", int(i))))


def _decode_one(i: int, item: Item, n_ts: tuple[int, ...], defer: bool, ended) -> Iterator[dict[str, np.ndarray]]:
    messages: queue.Queue = queue.Queue(maxsize=8)  # memory bounded by a few chunks, as locally
    feed = Feed(item, messages, n_ts, defer)
    worker = threading.Thread(target=feed.produce, daemon=True, name="matpac-decode")
    worker.start()
    counts = dict.fromkeys(n_ts, 0)
    error = None
    try:
        while True:
            try:
                _, msg = messages.get(timeout=1.0)
            except queue.Empty:
                if worker.is_alive():
                    continue
                error = InputError(item.name, "the decoder stopped without a word")
                break
            if msg is END:
                break
            if isinstance(msg, InputError):
                error = msg
                break
            entries = [(n_t, w.index, (w, samples)) for n_t, pairs in msg.items() for w, samples in pairs]
            for n_t, _, _ in entries:
                counts[n_t] += 1
            yield _rows(i, entries)
    finally:
        feed.cancelled = True
    ended()
    yield _facts_row(i, counts, error, feed.source)


def _facts_row(i: int, counts: dict, error: InputError | None, source) -> dict[str, np.ndarray]:
    facts = {
        "chunks": counts,
        "error": error,
        "duration_s": source.duration_s if source else 0.0,
        "sample_rate": source.sample_rate if source else 0,
        "channels": source.channels if source else 0,
        "truncated": source.truncated if source else None,
    }
    return _rows(i, [(0, -1, facts)])


class Encoder:
    """An actor: the run's encoders, loaded once; batches of chunk rows in, per-chunk sums out."""

    recipes: list[Recipe] = []  # set on the subclass `_run` makes for the job
    attempts = None  # likewise: `Attempts`' methods (the actor enlists, so the driver can stop it)

    def __init__(self) -> None:
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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        data = list(batch["data"])
        todo = [j for j, k in enumerate(batch["k"]) if k >= 0]
        for grid in sorted({int(batch["grid"][j]) for j in todo}):
            idx = [j for j in todo if batch["grid"][j] == grid]
            chunks = [pickle.loads(data[j]) for j in idx]
            if self.error is not None:
                outs: list = [self.error] * len(idx)
            else:
                try:
                    outs = self._encode(grid, chunks)
                except Exception as exc:  # noqa: BLE001 - this batch's files fail, named; the job goes on
                    why = one_line(exc, RAY_LIMIT)
                    outs = [f"the encoder failed on Ray node {socket.gethostname()}: {why}"] * len(idx)
            for j, (chunk, out) in zip(idx, zip(chunks, outs)):
                data[j] = pickle.dumps(
                    out if isinstance(out, (str, ModelError)) else (chunk[0], out), protocol=pickle.HIGHEST_PROTOCOL
                )
        column = np.empty(len(data), dtype=object)
        column[:] = data
        return {"i": batch["i"], "grid": batch["grid"], "k": batch["k"], "data": column}

    def _encode(self, grid: int, chunks: list) -> list[list]:
        """Each chunk's outputs for every plan of this grid: full-width chunks batched together,
        short last chunks with each other (as the local batcher does)."""
        outs: list[list] = [[] for _ in chunks]
        for index, plan in enumerate(self.plans):
            p = plan.predictor
            if p.dims.n_t != grid:
                continue
            full = p.fe.chunk_samples(grid)
            layers, needed = plan.resolved_layers(), run_layers(plan)
            for group in (
                [j for j, (w, _) in enumerate(chunks) if w.length == full],
                [j for j, (w, _) in enumerate(chunks) if w.length != full],
            ):
                if not group:
                    continue
                result = p.launch([chunks[j][1] for j in group], needed, pooled=not plan.frames).result()
                for b, j in enumerate(group):
                    outs[j].append((index, chunk_output(plan, layers, result, b, chunks[j][0])))
        return outs
