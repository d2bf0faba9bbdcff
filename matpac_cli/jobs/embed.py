"""The `embed` job: a folder of audio -> one N x 3840 matrix (+ row index, manifest, frames).

The matrix is `emb.npy` with its row index `emb.csv`, or a Parquet table `emb.parquet` whose `path`
column is the index; one manifest for both. The output is a view of the library: files it holds for
the model and settings are not encoded again (a re-run, a moved or re-tagged file), and each file
encoded is stored as it finishes, so an interrupted run resumes. A re-run writes what changed only:
nothing where the output holds this run's rows already (its manifest's record); new rows after
them (grown in place); else the whole output, a chunk of rows at a time, the vectors taken from
the library as written. Rows of files that are not inputs are kept (`update`), replaced (`force`),
or the run is refused (`outputs.earlier`): never dropped silently.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from matpac_cli.config import RunOptions
from matpac_cli.errors import InputError, OutputError, UsageError
from matpac_cli.events import KeepFailures, NoEvents, RunEvents
from matpac_cli.inference.predictor import Predictor
from matpac_cli.jobs import stored
from matpac_cli.jobs.embed_output import Rows, Stored, record_frames, recorded_frames, write_outputs
from matpac_cli.outputs import earlier, naming, writers
from matpac_cli.pipeline.assemble import FileResult, Plan
from matpac_cli.pipeline.discovery import Item
from matpac_cli.sidefiles import refuse_symlink


@dataclass(frozen=True)
class EmbedConfig:
    out: Path
    layer: str = "last"  # "last", "all" or "1".."12"
    frames_dir: Path | None = None
    force: bool = False
    update: bool = False  # keep the rows `out` holds of files that are not inputs (`outputs.earlier`)
    prune: bool = False  # with update: drop the kept rows of files gone from disk
    options: RunOptions = RunOptions()  # batch size, workers, engine ...: checked when built
    library: Path | bool | None = None  # the library folder; None: the default one; False: none
    retry_failed: bool = False  # try again the files the library records as given up (`jobs.stored`)


@dataclass
class Summary:
    done: int = 0
    reused: int = 0
    failures: list[InputError] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    audio_s: float = 0.0
    truncated: list[str] = field(default_factory=list)  # inputs that ended before their header said
    left: list[Path] = field(default_factory=list)  # earlier outputs left as they were (nothing new to write)
    retries: int = 0  # tries that reran work whose process died (--engine ray)
    received: int = 0  # bytes of results the driver received from a Ray cluster (--engine ray)
    ran_on: str | None = None  # the device the engine ran the encoder on, if not the predictors' own (Ray's actors)
    streamed: bool = False  # rows went to stdout (`tag --out -`)
    found: Counter = field(default_factory=Counter)  # files taken from the library, by how they were known
    library: dict | None = None  # the library used: its path and table versions (the manifest's)

    def count(self, res) -> None:
        """A finished file: encoded in this run (`done`), or taken from the library (`reused`)."""
        if res.found:
            self.reused += 1
        else:
            self.done += 1
        self.audio_s += res.duration_s

    kept: int = 0  # earlier rows of files that were not inputs, kept (`update`)
    pruned: int = 0  # earlier rows of files gone from disk, dropped (`update` with `prune`)


def parse_layers(layer: str, depth: int) -> tuple[int, ...]:
    text = str(layer).strip().lower()
    if text in ("last", ""):
        return (depth,)
    if text == "all":
        return tuple(range(1, depth + 1))
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"layer={layer}: expected 1..{depth}, last or all", settings=("layer",)) from None
    if not 1 <= value <= depth:
        raise UsageError(f"layer={layer}: this model has layers 1..{depth}", settings=("layer",))
    return (value,)


SETTING_NAMES = {
    "model_sha256": "the model (`model`)",
    "layers": "`layer`",
    "precision": "`precision`",
    "job": "the job (embed vs tag)",
}


def check_config(config: EmbedConfig) -> None:
    """Everything about the outputs and options that can be refused before a model loads."""
    earlier.check_settings(config.update, config.prune, config.force)
    paths = naming.embed_outputs(config.out)
    text = str(config.layer).strip().lower()
    if text not in ("last", "all", "") and not (text.isdigit() and int(text) >= 1):
        raise UsageError(f"layer={config.layer}: expected a layer number, last or all", settings=("layer",))
    for path in paths.values():
        writers.ensure_writable(path)
    stored.open_library(config.library)  # a library that cannot be made: one line, before the model
    if config.frames_dir is not None:
        writers.ensure_writable(config.frames_dir, folder_only=True)
        refuse_symlink(naming.frames_record(config.frames_dir))
    earlier.refuse_a_sharer(paths)  # `force` too: replacing its manifest would disown another output
    if not config.force and earlier.vouched(paths["matrix"], paths["manifest"]) is None:
        for path in paths.values():
            if path.exists():
                raise OutputError(writers.not_ours(path), settings=("force",))


def check_inputs(config: EmbedConfig, items: list[Item]) -> list[earlier.Row]:
    """The rows the output holds (none with `force`), before a model loads: never cut to this run's
    files without `update` or `force` (`outputs.earlier`); a name is one file's (as `discover` gives)."""
    if len({item.name for item in items}) < len(items):
        twice = next(n for n, c in Counter(item.name for item in items).items() if c > 1)
        raise UsageError(f"two inputs are named {twice}: give each file once, under a name of its own")
    paths = naming.embed_outputs(config.out)
    earlier.refuse_a_sharer(paths)  # again, under the lock: a run of the other output may have ended since
    man = earlier.owned(paths["matrix"], paths["manifest"], config.force)
    if man is None:
        return []
    rows = earlier.embed_rows(paths["matrix"], man)
    earlier.refuse_dropping(paths["matrix"], rows, items, config.update, config.force)
    return rows


def embed(
    items: list[Item],
    predictor: Predictor,
    config: EmbedConfig,
    events: RunEvents | None = None,
    argv: list[str] | None = None,
) -> Summary:
    """Embed `items`, write the outputs, and say what happened.

    `events` (default: none) hears of each file done, failed or reused from an earlier run, of
    the audio encoded, and of files that decoded but not as their header promised (embedded as
    read, marked truncated)."""
    check_config(config)
    paths = naming.embed_outputs(config.out)
    frames = [naming.frames_lock(config.frames_dir)] if config.frames_dir is not None else []
    library = stored.open_library(config.library, config.retry_failed)
    with writers.locked(*naming.written(paths), *frames):
        writers.clean_stale_temps(paths["matrix"])
        return _embed(items, predictor, config, paths, events if events is not None else NoEvents(), argv, library)


def _embed(items, predictor, config, paths, events: RunEvents, argv, library) -> Summary:
    layers = parse_layers(config.layer, predictor.dims.depth)
    settings = {
        "job": "embed",
        "model_sha256": predictor.resolved.sha256,
        "layers": list(layers),
        "precision": str(predictor.dtype).replace("torch.", ""),
    }
    _refuse_overwrite(paths, settings, config.force)
    before = check_inputs(config, items)
    man = earlier.vouched(paths["matrix"], paths["manifest"])
    before_record = (man or {}).get("rows") if before else None  # what the output holds, as its manifest says
    ours = _frames_ours(before, man, config)
    _refuse_foreign_frames(items, ours, config)
    summary = Summary()
    shape = (predictor.dims.embed_dim,) if len(layers) == 1 else (len(layers), predictor.dims.embed_dim)
    plan = Plan(predictor, layers=layers, frames=config.frames_dir is not None)
    results: dict[str, tuple[dict, object, str | None]] = {}  # by name: a str keeps its hash, an Item's is a call
    lean = [] if config.frames_dir is None else None  # found files' vectors stay in the library till written
    shed = _Shedder(library, plan, results) if library is not None and lean is not None else None
    on_result = _recorder(config, len(layers), results, summary, events, shed)
    try:
        heard = KeepFailures(events, summary.failures)
        kept_frames = _frames_kept(ours, config)
        ran = stored.run(library, config.options, items, [plan], heard, on_result, summary.found, kept_frames, lean)
        summary.retries, summary.ran_on = summary.retries + ran.retries, ran.device
        summary.received += ran.received
    finally:
        stored.close(library, summary, events)
    kept = earlier.kept_rows(before, items, config.update, config.prune)
    earlier.count(summary, kept)
    done = [(name, facts, row) for name, (facts, row) in kept.rows]
    keys: list[str | None] = [""] * len(done)  # a kept row is the output's own: "" is its key in the digest
    for item in items:
        got = results.get(item.name)  # one look-up per file (100,000 at a re-run)
        if got is not None:
            facts, row, key = got
            done.append((item.name, facts, Stored(key) if row is None else row))
            keys.append(key)
    if not done or (len(done) == len(kept.rows) and not kept.pruned):
        # nothing new to write: an earlier output stays as it was, and is not called fresh
        summary.left = [p for p in naming.written(paths) if p.exists()]
        return summary
    summary.truncated[:0] = [name for name, (facts, _) in kept.rows if facts.get("truncated")]
    rows = Rows(done, keys, shape, shed.held(done, keys) if shed and shed.shed else lean[0] if lean else None)
    write_outputs(paths, rows, config.frames_dir, before_record, (predictor, settings, summary, argv))
    return summary


def _recorder(config, n_layers: int, results: dict, summary: Summary, events: RunEvents, shed=None):
    """The callback the engine hands each embedded file to: its frames written (with
    `frames_dir`), its clip embedding kept for the output (`results`: name -> (facts, vector);
    the library has stored it already, and once it has committed it `shed` lets the vector go),
    and the summary counted; a file read short is recorded and warned of. Its `found_many` takes
    the files the library holds together (`stored.run` with `lean`)."""

    def on_result(res: FileResult) -> None:
        out = res.outputs[0]
        if config.frames_dir is not None and out.frames is not None:  # None: taken from the library
            frames = out.frames[:, 0] if out.frames.shape[1] == 1 else out.frames
            writers.write_array(naming.frames_file(config.frames_dir, res.item.name), frames)
            record_frames(config.frames_dir, config.out, naming.frames_name(res.item.name))
        emb = out.embedding if out.embedding is None or n_layers > 1 else out.embedding[0]  # None: in the library
        meta = {"duration_s": res.duration_s, "sample_rate": res.sample_rate, "channels": res.channels}
        if res.truncated:
            meta["truncated"] = list(res.truncated)
            summary.truncated.append(res.item.name)
            if res.found is None:  # said when it is read; a file from the library was said then
                events.warning(
                    f"{res.item.name}: the header promises {res.truncated[0]} frames but only "
                    f"{res.truncated[1]} could be read (file cut short?); embedded what was read"
                )
        results[res.item.name] = (meta, emb, res.key)
        summary.count(res)
        if shed is not None and emb is not None:
            shed(res.item)
        elif shed is not None and res.stored:
            shed.shed += 1  # stored by a Ray worker: its vector is the library's already

    def found_many(items: list[Item], keys: list[str], facts: dict[str, list]) -> None:
        """Files the library holds, without their vectors, as `on_result` takes each one found
        (its facts kept, counted as reused), in one call: no `FileResult` per file."""
        audio, cuts = summary.audio_s, summary.truncated
        columns = zip(items, keys, facts["duration_s"], facts["sample_rate"], facts["channels"], facts["truncated"])
        for item, key, seconds, rate, channels, cut in columns:
            meta = {"duration_s": seconds, "sample_rate": rate, "channels": channels}
            if cut:
                meta["truncated"] = list(cut)
                cuts.append(item.name)
            results[item.name] = (meta, None, key)
            audio += seconds  # in the files' order, as `Summary.count` adds them
        summary.audio_s, summary.reused = audio, summary.reused + len(items)

    on_result.found_many = found_many
    return on_result


SHED_FILES = 512  # vectors let go together, once the library has committed them


class _Shedder:
    """The vectors of a run's new files, let go once the library has committed them: the output
    takes them from the library as it is written (as it takes the files the library had), so a
    run's memory grows by a file's name and facts, not its vector (15 KB at 3840 values)."""

    def __init__(self, library, plan: Plan, results: dict) -> None:
        from matpac_cli.library.key import Setting

        self.library, self.results, self.waiting, self.shed = library, results, [], 0
        self.setting, self.layers = Setting.of(plan), plan.resolved_layers()
        self.check_at = SHED_FILES  # waiting files at the next look (not each file: a look is O(waiting))

    def __call__(self, item: Item) -> None:
        if self.results[item.name][2] is None or self.library.unwritable is not None:
            return  # not keyed, or never to be stored: kept in memory
        self.waiting.append(item.name)
        if len(self.waiting) < self.check_at:
            return
        holds = self.library.holds([self.results[i][2] for i in self.waiting], self.setting, self.layers)
        kept = []
        for waiting in self.waiting:
            meta, _, key = self.results[waiting]
            if key in holds:
                self.results[waiting] = (meta, None, key)
                self.shed += 1
            else:
                kept.append(waiting)  # held for the next commit
        self.waiting, self.check_at = kept, len(kept) + SHED_FILES

    def held(self, done: list, keys: list):
        """What the library holds of the rows' keys, read once the run has committed: where the
        output takes the vectors let go (and those of the files the library had)."""
        from matpac_cli.library.held import held
        from matpac_cli.library.tables import guarded

        stored = [key for (_, _, row), key in zip(done, keys) if isinstance(row, Stored)]
        with guarded(self.library.root):
            return held(self.library.root, stored, self.setting, self.layers)


def _frames_ours(before: list[earlier.Row], man: dict | None, config: EmbedConfig):
    """Whether an input's frames file in the frames folder was written for this output: recorded
    there as a run wrote it (`embed_output.recorded_frames`, an interrupted run's too), or named
    by this output where its manifest's frames folder is this one (made before the record)."""
    if config.frames_dir is None:
        return None
    recorded = recorded_frames(config.frames_dir, config.out)
    described = ((man or {}).get("output") or {}).get("frames")
    folder = described.get("folder") if isinstance(described, dict) else None
    here = os.path.realpath(config.frames_dir)
    same = isinstance(folder, str) and earlier.resolved(folder, earlier.cwd_of(man)) == here
    named = {row.real for row in before} if same else set()
    return lambda item: naming.frames_name(item.name) in recorded or earlier.real_path(item) in named


def _frames_kept(ours, config: EmbedConfig):
    """Which inputs' frames files an earlier run wrote and left in place: those files are taken
    from the library (their frames are the same audio's), the others encoded again."""
    if ours is None:
        return None
    return lambda item: ours(item) and naming.frames_file(config.frames_dir, item.name).is_file()


def _refuse_foreign_frames(items: list[Item], ours, config: EmbedConfig) -> None:
    """A frames file already there is replaced, without `force`, only where an earlier run wrote
    it (`_frames_ours`): never someone else's file in the frames folder. Said before any encoding."""
    if ours is None or config.force:
        return
    for item in items:
        path = naming.frames_file(config.frames_dir, item.name)
        if os.path.lexists(path) and not ours(item):
            raise OutputError(
                f"`frames_dir`: {path} exists and is not a frames file of {config.out}; "
                "use `force` to replace it, or choose another `frames_dir` folder",
                settings=("frames_dir", "force"),
            )


def _refuse_overwrite(paths: dict[str, Path], settings: dict, force: bool) -> None:
    if force or not paths["matrix"].exists():
        return
    differ = earlier.settings_differ(earlier.vouched(paths["matrix"], paths["manifest"]), settings)
    if differ:
        what = ", ".join(SETTING_NAMES.get(k, k) for k in differ)
        raise OutputError(
            f"{paths['matrix']} was made with another {what}; use `force` to replace it or choose another `out`",
            settings=("model", "layer", "precision", "force", "out"),
        )
