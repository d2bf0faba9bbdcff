"""`tag`'s scores of files whose clip embedding (and segments) stay in the library, in batches.

`tag` with a library runs `stored.run` with `lean`: a file the library holds reaches the job
without its vectors (`embedding` None, its `key` set), and so does a file a Ray worker stored
itself (`FileResult.stored`: its vectors never cross to the driver). Such files wait here and are
scored together (`BATCH_FILES` at a time): their vectors taken from the library (`held.Held.vectors`
for the files it held as the run began, `Library.lookup` for those the workers stored since), and
each head applied once to the stacked matrix, which gives each file the scores `tag_rows.score`
gives it alone. A file encoded by this process (its embedding at hand) is scored at once, after
the files waiting before it, so rows leave in the order files finished.

With `segments`, such files wait `SEGMENT_FILES` at a time (a file's segments are its chunks'
vectors), and one `Library.lookup` per plan reads the batch's clip embeddings and segments; each
file is then scored as `tag_rows.score` scores one encoded here (a short tail merged,
`min_segment`), so its rows are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from matpac_cli.errors import OutputError
from matpac_cli.events import RunEvents
from matpac_cli.interrupts import whole
from matpac_cli.jobs import stored
from matpac_cli.pipeline.assemble import FileResult, Plan
from matpac_cli.pipeline.discovery import Item

BATCH_FILES = 512  # files scored together: their vectors read in one take (15 KB a file at 3840 values)
SEGMENT_FILES = 64  # ... with segments: 37 MB read at once for 3.5-minute tracks (571 KB a file)


def scores_of(groups: list, clips: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per file, every head's clip scores (`clip:<head>`, float32, as `tag_rows.score`), from
    `clips`: per group, the files' (N, D) clip embeddings."""
    n = len(clips[0]) if clips else 0
    out: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for group, clip in zip(groups, clips):
        for head in group.heads:
            scores = head.scores(clip).astype(np.float32)
            name = f"clip:{head.name}"
            for row, file_scores in zip(scores, out):
                file_scores[name] = row
    return out


class Waiting:
    """Files whose embedding is in the library, scored `BATCH_FILES` at a time and handed to
    `emit(item, meta, scores)` in the order they came. `held`: per plan, what the library held
    as the run began (`stored.run`'s `lean`); other keys are read from `library` (stored since).
    `min_segment`: None for clip scores alone; else segments are scored too, a shorter tail merged
    (`SEGMENT_FILES` at a time, every key read from `library`: `segmented`)."""

    def __init__(self, library, plans: list[Plan], groups: list, held: list, emit: Callable, min_segment=None) -> None:
        self.library, self.plans, self.groups, self.held, self.emit = library, plans, groups, held, emit
        self.min_segment = min_segment
        self.files: list[tuple[Item, str, dict]] = []
        if library.homes is None:  # files the workers stored are read back from the fragments they landed in
            from matpac_cli.library.shards import Homes

            library.homes = Homes()

    def add(self, item: Item, key: str, meta: dict) -> None:
        self.files.append((item, key, meta))
        if len(self.files) >= (BATCH_FILES if self.min_segment is None else SEGMENT_FILES):
            self.flush()

    def flush(self) -> None:
        """Every waiting file scored and handed on."""
        if not self.files:
            return
        files, self.files = self.files, []
        keys = [key for _, key, _ in files]
        if self.min_segment is not None:
            self.segmented(files, keys)
        else:
            clips = [self._clips(i, keys) for i in range(len(self.plans))]
            for (item, _, meta), scores in zip(files, scores_of(self.groups, clips)):
                self.emit(item, meta, scores)
        self.library.homes.forget(keys)  # read back: where they landed is let go

    def _clips(self, i: int, keys: list[str]) -> np.ndarray:
        """Plan `i`'s clip embedding (the last layer asked) of each of `keys`, as (N, D) float32."""
        held = self.held[i]
        inside = [k for k in keys if k in held]
        if len(inside) == len(keys):
            return held.vectors(keys)[:, -1]
        got = dict(zip(inside, held.vectors(inside)[:, -1])) if inside else {}
        got.update(self._stored(i, [k for k in keys if k not in held]))
        return np.stack([got[k] for k in keys])

    def segmented(self, files: list[tuple[Item, str, dict]], keys: list[str]) -> None:
        """`files` (their `keys`) scored with their segments, each as `tag_rows.score` scores a
        file encoded here, from one `Library.lookup` per plan for them all."""
        from matpac_cli.jobs.tag_rows import score

        found = [self._lookup(i, keys, True) for i in range(len(self.plans))]
        for item, key, meta in files:
            res = stored.stored_result(item, self.plans, [got[key] for got in found])
            self.emit(item, meta, score(res, self.groups, True, self.min_segment))

    def _stored(self, i: int, keys: list[str]) -> dict[str, np.ndarray]:
        """The clip embeddings of files stored during the run (by a Ray worker: committed before
        they were handed on), read by key."""
        last = self.plans[i].resolved_layers()[-1]
        found = self._lookup(i, keys, False)
        return {k: np.asarray(found[k].layers[last], np.float32) for k in keys}

    def _lookup(self, i: int, keys: list[str], segments: bool) -> dict:
        """What the library holds of `keys` for plan `i` (`Library.lookup`): every key, or one line."""
        from matpac_cli.library.key import Setting
        from matpac_cli.library.tables import guarded

        plan = self.plans[i]
        with guarded(self.library.root):
            found = self.library.lookup(keys, Setting.of(plan), plan.resolved_layers(), segments)
        missing = [k for k in keys if k not in found]
        if missing:
            raise OutputError(f"the library no longer holds {missing[0]}; run the command again")
        return found


def truncated(res: FileResult, summary, events: RunEvents) -> bool:
    """A file that decoded but ended before its header said is tagged as read, said, and marked
    (as `embed` does: the same words, a `truncated` column, the manifest's list)."""
    if not res.truncated:
        return False
    summary.truncated.append(res.item.name)
    if res.found is not None:  # said when it was read; a file from the library was said then
        return True
    events.warning(
        f"{res.item.name}: the header promises {res.truncated[0]} frames but only "
        f"{res.truncated[1]} could be read (file cut short?); tagged what was read"
    )
    return True


def recorder(job: tuple, summary, events: RunEvents, waiting: Waiting | None, emit: Callable):
    """The callback `stored.run` hands each finished file to: scored at once where its embedding
    is at hand (`tag_rows.score`; the files waiting before it first), else left `waiting` for its
    batch. `job`: (groups, segments, min_segment). Its `found_many` takes the files the library
    holds together (`stored.run` with `lean` and one plan): no `FileResult` per file."""
    from matpac_cli.jobs.tag_rows import score

    groups, segments, min_segment = job

    def on_result(res: FileResult) -> None:
        meta = {"duration_s": res.duration_s}
        if truncated(res, summary, events):
            meta["truncated"] = list(res.truncated)
        summary.count(res)
        if waiting is not None and res.outputs[0].embedding is None:  # in the library (`lean`)
            waiting.add(res.item, res.key, meta)
            return
        if waiting is not None:
            waiting.flush()  # the files that finished before it leave first
        emit(res.item, meta, score(res, groups, segments, min_segment))

    def found_many(items: list[Item], keys: list[str], facts: dict[str, list]) -> None:
        """Files the library holds, as `on_result` takes each one found, in one call."""
        audio, cuts = summary.audio_s, summary.truncated
        for item, key, seconds, cut in zip(items, keys, facts["duration_s"], facts["truncated"]):
            meta = {"duration_s": seconds}
            if cut:
                meta["truncated"] = list(cut)
                cuts.append(item.name)
            audio += seconds  # in the files' order, as `Summary.count` adds them
            waiting.add(item, key, meta)
        summary.audio_s, summary.reused = audio, summary.reused + len(items)
        waiting.flush()  # the library's files leave now, not behind the first file encoded

    if waiting is not None:
        on_result.found_many = found_many
    return on_result


def run(
    items: list[Item], groups: list, config, heard: tuple, emit: Callable, library, streaming: bool = False
) -> None:
    """`tag`'s encoder pass (`stored.run`; `config` a `TagConfig`), each file's scores handed to
    `emit(item, meta, scores)`. Files the library holds (or a Ray worker stored) come without
    their vectors (`lean`) and are scored a batch at a time (`Waiting`), with their segments
    where asked; files encoded here are scored as they come. A `streaming` run that stops
    (Ctrl-C, an error) still hands on the files waiting: they are counted as finished, so their
    rows are written."""
    summary, events = heard
    plans = [Plan(g.predictor, layers=(-1,), segments=config.segments) for g in groups]
    lean = None if library is None else []
    cut = config.min_segment if config.segments else None
    waiting = None if lean is None else Waiting(library, plans, groups, lean, emit, cut)
    on_result = recorder((groups, config.segments, config.min_segment), summary, events, waiting, emit)
    try:
        try:
            ran = stored.run(library, config.options, items, plans, events, on_result, summary.found, lean=lean)
        except BaseException:
            if streaming and waiting is not None:
                with whole(), contextlib.suppress(Exception):  # the stop's own error goes on, not the flush's
                    waiting.flush()
            raise
        if waiting is not None:
            waiting.flush()
        summary.retries, summary.ran_on = summary.retries + ran.retries, ran.device
        summary.received += ran.received
    finally:
        stored.close(library, summary, events)
