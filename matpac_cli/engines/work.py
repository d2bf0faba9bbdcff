"""What the Ray engine's driver keeps, with no Ray in it (engines.ray runs the rest on a cluster):
`Collector` merges each file's parts as encoder actors answer (`engines.packs`: a part is one
file's chunks summed where they were encoded; in any order, each part once) and hands finished
files to the job's writer and events; `Recipe` is how an actor loads the driver's encoder.
`Attempts` counts each file's decoding tries, so a file whose decoding process dies on every try
(a crash, an out-of-memory kill) becomes its error after `GIVE_UP` deaths instead of running for
ever (an encoder actor that dies ends its round instead: engines.ray counts those).
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from matpac_cli.config import precision_name
from matpac_cli.errors import InputError, ModelError
from matpac_cli.interrupts import whole
from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan, Slot, deliver, hand_on
from matpac_cli.pipeline.discovery import Item

GIVE_UP = 3  # deaths of the process decoding one file (or of rounds lost encoding it) before it fails
# entries' `part` beyond a part (0 and up) or a file's facts (-1): a file finished on its actor
# (`packs.Encoder.finish`), a file a worker stored in the library, the fragments it wrote, why a
# worker could not (`engines.writes`)
DONE, WRITTEN, FRAGMENTS, UNWRITTEN = -2, -3, -4, -5


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
    once), then the file handed on to the job's `on_result` and its `events`. With a `sink` (the
    workers store files in the library: `engines.writes`), the fragments they wrote go to it,
    and a file they stored is handed on without its vectors (`FileResult.stored`)."""

    def __init__(self, items: list[Item], plans: list[Plan], events, on_result, sink=None) -> None:
        self.items, self.plans = items, plans
        self.on_result, self.events, self.sink = on_result, events, sink
        self.slots: dict[int, Slot] = {}
        self.expected: dict[int, dict[int, int]] = {}  # file -> parts per grid (known once decoded)
        self.seen: dict[int, set] = {}
        self.done: set[int] = set()
        self.heard: dict[int, float] = {}  # file -> the audio its parts advanced (a whole answer adds the rest)
        self.unwritten = False  # a worker could not write the library (said once)
        self.received = 0  # bytes of the cluster's answers (engines.ray's count)
        self.adopting = 0  # the number of the fragments adopted last (`Sink.adopt`)
        self.waiting: deque[tuple[int, FileResult]] = deque()  # stored by workers, till committed (in order)
        self._no_outputs = [EncoderOutput(None) for _ in plans]  # a stored file's: shared by every one
        self._audio = events.audio  # looked up once: a job's events wrap others (`__getattr__` per call)

    def add(self, i: int, grid: int, part: int, payload) -> None:
        """One entry of an actor's answer (`engines.packs`): a part's sums, a file's facts (part
        -1), or the error of the part's encoding; a whole file (`DONE`, `WRITTEN`), or what a
        write task says of its write (`FRAGMENTS`, `UNWRITTEN`)."""
        if part < -1:  # a whole file, or a write's news: the most of a catalogue's entries
            if part in (FRAGMENTS, UNWRITTEN):
                return self._write(part, payload)
            return None if i in self.done else self._whole(i, part, payload)  # else a retried task's copy
        if i in self.done or (grid, part) in self.seen.setdefault(i, set()):
            return None  # a retried task's second answer
        self.seen[i].add((grid, part))
        slot = self.slots.setdefault(i, Slot(self.items[i], self.plans))
        if part < 0:
            self._facts(i, slot, payload)
        elif isinstance(payload, ModelError):
            raise payload  # the encoder cannot run there: no file would get a result
        elif isinstance(payload, str):
            slot.error = slot.error or InputError(slot.item.name, payload)
        else:
            slot.merge(payload[:4])
            if payload[4]:
                self.heard[i] = self.heard.get(i, 0.0) + payload[4]
                self.events.audio(payload[4])
        return self._maybe_done(i, slot)

    def _write(self, part: int, payload) -> None:
        if part == FRAGMENTS:
            fragments, keys, files = payload
            if all(i in self.done for i in files):
                return  # a retried task's second copy: never committed (its data files stay unreferenced)
            self.adopting = self.sink.adopt(fragments, keys)
        elif not self.unwritten:
            self.unwritten = True
            self.events.warning(f"{payload}; the driver stores the files instead")

    def _whole(self, i: int, part: int, payload: dict) -> None:
        """A file finished on its actor: its result, stored by a worker (`WRITTEN`: no vectors
        here) or to be stored by the job (`DONE`)."""
        self.done.add(i)
        audio = payload["audio"]
        if i in self.seen:  # parts of it came before, from a try that did not finish it on its actor
            for held in (self.slots, self.seen, self.expected):
                held.pop(i, None)
            audio -= self.heard.pop(i, 0.0)  # their audio advanced the progress already
        if audio > 0:
            self._audio(audio)
        duration, rate, channels, cut = payload["facts"]
        if part == WRITTEN:  # one list of outputs without vectors, shared by every such result
            res = FileResult(self.items[i], duration, rate, channels, self._no_outputs, cut, None, payload["key"], True)
            self.waiting.append((self.adopting, res))  # handed on once the library has committed it
            return
        outs = [EncoderOutput(embedding, None, segments or []) for _, embedding, segments in payload["outputs"]]
        res = FileResult(self.items[i], duration, rate, channels, outs, cut)
        deliver(self.items[i], res, self.on_result, self.events)

    def release(self, now: bool = False) -> None:
        """The files workers stored, handed on once the library has committed their fragments
        (`now`: committed first), in the order they came: a file is counted only where the
        output can take it from the library. Where the library could not be written, they fail,
        named: their vectors were never here, and the output is written without them."""
        if not self.waiting:
            return
        failed = self.sink.commit() if now else self.sink.library_failed
        through = self.sink.committed()
        on_result, progress = self.on_result, self.events.progress  # looked up once, not per file
        with whole():  # together: a signal swap per file cost more than the file
            while self.waiting and (self.waiting[0][0] <= through or failed is not None):
                number, res = self.waiting.popleft()
                if number <= through:  # `deliver`'s work, less its checks: no vectors here to check
                    on_result(res)
                    progress(res.item, res.duration_s)
                else:
                    why = f"encoded, but not kept: {failed}; run again to encode it"
                    deliver(res.item, InputError(res.item.name, why), self.on_result, self.events)

    def _facts(self, i: int, slot: Slot, facts: dict) -> None:
        self.expected[i] = facts["parts"]
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
        got = len(self.seen[i]) - 1  # the facts
        if got < sum(expected.values()):
            return
        self.done.add(i)
        del self.slots[i], self.seen[i], self.expected[i]
        self.heard.pop(i, None)
        hand_on(slot, self.plans, self.on_result, self.events)

    def finish(self, reason: str = "no result came back from the Ray cluster") -> None:
        """Files the cluster never answered for, or that the job gave up: named, never silently
        lost. Not a `GaveUp` (recorded, skipped by later runs) even where the encoder kept dying:
        any of the files left may be the one that killed it, or none (a model that kills its
        actor as it loads, a node lost again and again). The files workers stored go first."""
        self.release(now=True)
        for i, item in enumerate(self.items):
            if i not in self.done:
                slot = self.slots.pop(i, None) or Slot(item, self.plans)
                slot.error = InputError(item.name, reason)
                hand_on(slot, self.plans, self.on_result, self.events)
