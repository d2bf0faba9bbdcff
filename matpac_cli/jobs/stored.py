"""Every job's encoder pass goes through the library: what it holds for the run's models and
settings is handed on without encoding, the rest runs on the engine and is stored as it comes.

`run` has the engines' shape (`engines.run`) plus the library: a file the library has for every
plan reaches `on_result` at once, marked `found` (how it was known), and is reported to the
events as reused; the others are encoded, each stored when it finishes (committed every few
files, so an interrupted run loses only the files in flight). Plans that keep frames (`--frames`,
not stored) take a file from the library only where its frames file is there already.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matpac_cli import engines
from matpac_cli.config import RunOptions
from matpac_cli.errors import MatpacError, OutputError, one_line
from matpac_cli.events import Ran, RunEvents
from matpac_cli.jobs import tidy
from matpac_cli.pipeline.assemble import EncoderOutput, FileResult, Plan
from matpac_cli.pipeline.discovery import Item


def open_library(library: Path | str | bool | None, retry_failed: bool = False):
    """The run's `Library` (None: the default location; False: none), or None where the
    environment turns it off. A location that cannot be made is one line, before any model loads.
    `retry_failed`: the files it records as given up are tried again (`run`)."""
    from matpac_cli.library.location import resolve_root

    root = resolve_root(library)
    if root is None:
        return None  # and pyarrow, Lance are not imported
    from matpac_cli.library.store import Library

    try:  # made now, so that a place where it cannot be is said before any model loads
        root.mkdir(parents=True, exist_ok=True)
        usable = root.is_dir() and _writable(root)
    except OSError as exc:
        raise OutputError(
            f"library {root}: cannot be made ({one_line(exc)}); give another `library`", settings=("library",)
        ) from None
    if not usable:
        raise OutputError(f"library {root}: not a writable folder; give another `library`", settings=("library",))
    opened = Library(root)
    opened.retry_failed = retry_failed
    return opened


def resume_note(library: Path | str | bool | None) -> str:
    """What an interrupted run leaves to resume from: the library's files, where there is one."""
    from matpac_cli.library.location import resolve_root

    root = resolve_root(library)
    if root is None:
        return ""
    return f"finished files are kept in the library {root}; run the same command to resume"


def _writable(root: Path) -> bool:
    import os

    return os.access(root, os.W_OK | os.X_OK)


def run(
    library,
    options: RunOptions,
    items: list[Item],
    plans: list[Plan],
    events: RunEvents,
    on_result: Callable[[FileResult], None],
    found: Counter | None = None,
    frames_kept: Callable[[Item], bool] | None = None,
    lean: list | None = None,
) -> Ran:
    """`engines.run` over what `library` lacks (all of `items` where `library` is None); `found`
    counts the files taken from the library by how they were known. Frames are not stored: a
    plan that keeps them takes a file from the library only where `frames_kept` says its frames
    file from an earlier run is there (its result then has no frames). A file the library
    records as given up (it killed the worker working on it: `library.failed`) fails again at
    once, named with its reason, unless the library was opened to retry them (`open_library`); a
    file given up in this run is recorded. With `lean` (a list, for plans that keep no frames),
    found files reach `on_result` without their vectors (an `embedding` of None, and their
    `key`), and `lean` receives, per plan, what the library holds (`held.Held`), to take the
    vectors from as they are written."""
    if library is None:
        _encoding(events, items)  # every input: the progress bar sizes them now
        return engines.run(options, items, plans, events, on_result)
    from matpac_cli.library.key import Setting
    from matpac_cli.library.tables import guarded

    found = found if found is not None else Counter()
    settings = [Setting.of(p) for p in plans]
    todo, by_item = _from_library(library, items, plans, settings, (events, on_result, found, frames_kept, lean))
    with guarded(library.root):
        library.commit()  # the paths seen, before any encoding
        failed = _failed_before(library, todo, by_item, settings)
    if not library.retry_failed:
        todo = [item for item in todo if not _skip_failed(item, failed.get(by_item.get(item)), events)]

    keys = {item.name: key for item, key in by_item.items()}
    storing = _storer(library, (plans, settings), by_item, failed, events, on_result)
    sink = _sink(library, options, todo, by_item, plans, lean)
    try:
        ran = engines.run(options, todo, plans, _Recording(events, library, keys, settings, failed), storing, sink)
        if library.adopted:  # the workers wrote the library: they merge its fragments too (`jobs.tidy`)
            tidy.on_cluster(library, events, sink.token.name if sink is not None and sink.token else "")
        return ran
    finally:
        if sink is not None:
            sink.close()


def _storer(library, plans: tuple[list, list], by_item: dict, failed: dict, events: RunEvents, on_result) -> Callable:
    """What the engine hands each finished file to: the file stored in the library under its key
    (`by_item`), unless a Ray worker stored it (`FileResult.stored`), then to the job's
    `on_result`. `plans`: the run's plans and their library settings."""
    from matpac_cli.library.tables import guarded

    plans, settings = plans

    def storing(res: FileResult) -> None:
        key = res.key = by_item.get(res.item)
        if key is not None and (not res.stored or key in failed):  # else a Ray worker stored it (`library.shards`)
            with guarded(library.root):
                for plan, setting, out in zip(plans, settings, res.outputs):
                    if not res.stored:
                        library.add(key, setting, plan, res, out)
                if key in failed:  # tried again (`retry_failed`), and it ran through this time
                    _forget_failed(library, key, settings)
            _say_unwritable(library, events)
        on_result(res)

    return storing


def _sink(library, options: RunOptions, todo: list[Item], by_item: dict, plans: list[Plan], lean: list | None):
    """Where a Ray cluster's workers store the files they finish (`library.shards`): for a job
    that takes results without their vectors (`lean`: no frames), else None."""
    if options.engine != "ray" or lean is None:
        return None
    from matpac_cli.library.shards import sink
    from matpac_cli.library.tables import guarded

    with guarded(library.root):
        return sink(library, todo, by_item, plans)


def _from_library(library, items: list[Item], plans: list[Plan], settings: list, hearing) -> tuple[list, dict]:
    """The files the library holds for every plan handed on (`hearing`: the events, `on_result`,
    the `found` counter, `frames_kept` and `lean`); the others to encode, and their keys (by item).
    With `lean`, where `on_result` takes found files together (its `found_many`: `_hand_on`),
    they reach it in one call, as columns: no `FileResult` per file. The events then hear, where
    they listen (`RunEvents.encoding`), which files the run encodes."""
    from matpac_cli.library.tables import guarded

    events, on_result, found, frames_kept, lean = hearing
    with guarded(library.root):
        known = library.identify(items)
        held = _held(library, known.audio_keys, plans, settings, frames_kept, lean)
    many = getattr(on_result, "found_many", None) if lean is not None and len(held) == 1 else None
    if many is None:
        todo, by_item = _one_by_one(items, plans, known, held, hearing)
    else:  # as columns, no Python call per file: a re-run holds 100,000 of them
        row = np.full(len(items), -2, np.int64)  # per item, its row in the facts; -1: known, not held; -2: not known
        row[known.index] = held[0].rows(known.audio_keys)
        at = np.full(len(items), -1, np.int64)  # per item, its place in `known`
        at[known.index] = np.arange(len(known))
        every, keys, hows = (_objects(c) for c in (items, known.audio_keys, known.hows))
        hit, lacking = np.flatnonzero(row >= 0), np.flatnonzero(row == -1)
        todo = every[row < 0].tolist()
        by_item = dict(zip(every[lacking].tolist(), keys[at[lacking]].tolist()))
        hits = (every[hit].tolist(), keys[at[hit]].tolist(), hows[at[hit]].tolist(), row[hit].tolist())
        _hand_on(hits, held[0], many, events, found)
    _encoding(events, todo)
    return todo, by_item


def _objects(values: list):
    """`values` as a numpy array of objects, to pick from by index arrays: one array per column, not
    a Python step per file."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


def _encoding(events: RunEvents, items: list[Item]) -> None:
    """The events told which files the run encodes, where they listen (`RunEvents.encoding`: an
    events object of the caller's own may not have it)."""
    tell = getattr(events, "encoding", None)
    if tell is not None:
        tell(items)


def _one_by_one(items: list[Item], plans: list[Plan], known: dict, held: list, hearing) -> tuple[list, dict]:
    """`_from_library` for a job that takes each found file as a `FileResult`."""
    events, on_result, found, frames_kept, lean = hearing
    framed = any(p.frames for p in plans)
    todo, by_item, nothing = [], {}, _no_outputs(len(plans))
    for i, item in enumerate(items):
        k = known.get(i)
        if k is not None and all(k.key in h for h in held) and (not framed or frames_kept(item)):
            got = [h[k.key] for h in held]
            res = _found(item, nothing, got[0], k) if lean is not None else stored_result(item, plans, got)
            res.found, res.key = k.how, k.key
            found[k.how] += 1
            on_result(res)
            events.reused(item, res.duration_s)
            continue
        todo.append(item)
        if k is not None:
            by_item[item] = k.key
    return todo, by_item


def _failed_before(library, todo: list[Item], by_item: dict, settings: list) -> dict[str, str]:
    from matpac_cli.library.failed import failed_before

    return failed_before(library.root, [by_item[i] for i in todo if i in by_item], settings)


def _skip_failed(item: Item, reason: str | None, events: RunEvents) -> bool:
    """A file given up in an earlier run: failed again at once, in one line with the reason."""
    if reason is None:
        return False
    from matpac_cli.errors import InputError

    events.failure(
        InputError(item.name, f"failed before: {reason}; `retry_failed` tries it again", settings=("retry_failed",))
    )
    events.progress(item, 0.0)
    return True


def _forget_failed(library, key: str, settings: list) -> None:
    from matpac_cli.library.failed import clear

    with contextlib.suppress(MatpacError):  # a library that cannot be written now: said by the run
        clear(library.root, key, settings)


class _Recording:
    """The run's events, with each file the engine gave up because it killed its worker
    (`errors.GaveUp`) recorded in the library as failed, by its audio key: for any model where
    its decoding died, for the run's models where the encoder did."""

    def __init__(self, events: RunEvents, library, keys: dict[str, str], settings: list, failed: dict) -> None:
        self.events, self.library, self.keys, self.settings = events, library, keys, settings
        self.failed = failed  # recorded before this run (tried again: `retry_failed`)

    def failure(self, err) -> None:
        from matpac_cli.errors import GaveUp
        from matpac_cli.library.failed import ANY, record
        from matpac_cli.library.tables import guarded

        key = self.keys.get(getattr(err, "path", None))
        if isinstance(err, GaveUp) and key is not None:
            with contextlib.suppress(MatpacError), guarded(self.library.root):
                record(self.library.root, key, [ANY] if err.stage == "decode" else self.settings, err.reason)
        elif key in self.failed:  # tried again, and it failed as a file that kills nothing: no longer poison
            _forget_failed(self.library, key, self.settings)
        self.events.failure(err)

    def __getattr__(self, name: str):
        return getattr(self.events, name)


def _held(library, keys: list[str], plans: list[Plan], settings: list, frames_kept, lean: list | None) -> list:
    """Per plan, what the library holds of `keys`: their results (`Library.lookup`), or with
    `lean` their facts alone (`held.held`, with segments where kept; handed on in `lean`)."""
    if lean is None:
        return [
            {} if p.frames and frames_kept is None else library.lookup(keys, s, p.resolved_layers(), p.segments)
            for p, s in zip(plans, settings)
        ]
    from matpac_cli.library.held import held

    if any(p.frames for p in plans):
        raise ValueError("lean lookups are for plans that keep no frames")
    lean[:] = [held(library.root, keys, s, p.resolved_layers(), p.segments) for p, s in zip(plans, settings)]
    return [h.facts for h in lean]


def _no_outputs(n_plans: int) -> list:
    """The outputs of a found file without its vectors (`lean`): one list, shared by every such
    result (nothing writes to it), not two objects per file."""
    from matpac_cli.pipeline.assemble import EncoderOutput

    return [EncoderOutput(None) for _ in range(n_plans)]


def _found(item: Item, outs: list, facts: dict, known) -> FileResult:
    """A found file's result without its vectors (`lean`): its facts, and no embedding."""
    d, rate, channels, cut = facts["duration_s"], facts["sample_rate"], facts["channels"], facts["truncated"]
    return FileResult(item, d, rate, channels, outs, cut, known.how, known.key)


def _hand_on(hits: tuple[list, list, list, list], facts, many: Callable, events: RunEvents, found: Counter) -> None:
    """The found files (`hits`: their items, keys, how each was known and rows in `facts`, a
    `held.Facts`) handed on together: `many(items, keys, columns)` with their facts as columns
    (duration_s, sample_rate, channels, truncated), then each heard of as reused, in the inputs'
    order."""
    items, keys, hows, rows = hits
    columns = facts.columns(rows)
    found.update(hows)
    many(items, keys, columns)
    reused = events.reused  # looked up once (a wrapper's `__getattr__` per file costs)
    for item, seconds in zip(items, columns["duration_s"]):
        reused(item, seconds)


def close(library, summary, events: RunEvents | None = None) -> None:
    """The library's last commit and tidy; `summary.library` says which library, at which version."""
    if library is None:
        return
    from matpac_cli.library.tables import guarded

    with guarded(library.root):
        library.close()
        summary.library = {"path": str(library.root), "version": library.version()}
    if events is not None:
        _say_unwritable(library, events)


def _say_unwritable(library, events: RunEvents) -> None:
    """A library that could not be written (a full disk) is said once; the run goes on."""
    if library.unwritable is not None and not library.told:
        library.told = True
        events.warning(
            f"{library.unwritable}; the run goes on without it: its output is whole, but the files "
            "it encodes from now on are not kept (free some space, or give another library folder)"
        )


def stored_result(item: Item, plans: list[Plan], found: list) -> FileResult:
    """A file's `FileResult` from what the library holds for each plan, as the engine would
    have handed it on (float32, the same layers, the same segments)."""
    outs = []
    for plan, stored in zip(plans, found):
        emb = np.stack([stored.layers[layer] for layer in plan.resolved_layers()])
        outs.append(EncoderOutput(emb, None, list(stored.segments or []) if plan.segments else []))
    facts = found[0].facts
    return FileResult(item, facts["duration_s"], facts["sample_rate"], facts["channels"], outs, facts["truncated"])
