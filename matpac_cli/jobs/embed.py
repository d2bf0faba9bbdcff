"""The `embed` job: a folder of audio -> one N x 3840 matrix (+ row index, manifest, frames).

The matrix is `emb.npy` with its row index `emb.csv`, or one Parquet table `emb.parquet` whose
`path` column is the index (`parquet`); the journal, resume and manifest are the same for both.
Resumable: every finished file is journalled next to the output as soon as it is done; re-running
the same command reuses finished files (same real path, size, mtime, inode, model and settings)
and only computes the rest. Once the final matrix is written, the journal keeps only keys and row
numbers (the matrix holds the data), so a finished output does not cost its size twice on disk.
Rows of files that are not inputs of this run are kept (`update`), replaced (`force`), or the run
is refused (`outputs.earlier`): never dropped silently.
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
from matpac_cli.jobs.embed_output import described, finished_rows, previous_matrix, write_matrix
from matpac_cli.outputs import earlier, naming, writers
from matpac_cli.outputs import journal as jr
from matpac_cli.outputs.manifest import manifest
from matpac_cli.pipeline.assemble import FileResult, Plan
from matpac_cli.pipeline.discovery import Item


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
        writers.ensure_writable(config.frames_dir / "probe.npy")
    if not config.force and not paths["journal"].exists():
        for key, path in paths.items():
            if key != "journal" and path.exists():
                raise OutputError(_not_ours(paths, key), settings=("force",))


def check_inputs(config: EmbedConfig, items: list[Item]) -> None:
    """An output holding rows of files that are not inputs of this run is not cut down to this
    run's files without `update` or `force` (`outputs.earlier`): said before a model loads."""
    paths = naming.embed_outputs(config.out)
    earlier.refuse_dropping(paths["matrix"], paths["journal"], items, config.update, config.force)


def _not_ours(paths: dict[str, Path], key: str) -> str:
    """Why an existing file is not replaced; `emb.npy` and `emb.parquet` would share `emb.manifest.json`."""
    path = paths[key]
    owner = next((o for o in naming.manifest_sharers(paths["matrix"]) if key == "manifest" and o.exists()), None)
    if owner is not None:
        return (
            f"{path} is the manifest of {owner}; give {paths['matrix'].name} another name "
            "(or `force` to replace that manifest)"
        )
    return writers.not_ours(path)


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
    library = stored.open_library(config.library)
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
    check_inputs(config, items)
    journal = jr.Journal(paths["journal"], settings, fresh=config.force)
    if journal.damaged:
        events.warning(
            f"{paths['journal']}: {journal.damaged} damaged record(s) dropped; their files are computed again"
        )
    previous = previous_matrix(journal, paths["matrix"])
    summary = Summary()
    shape = (predictor.dims.embed_dim,) if len(layers) == 1 else (len(layers), predictor.dims.embed_dim)
    todo = _reuse(items, journal, config, summary, events, shape)
    _refuse_foreign_frames(todo, journal, config)

    plan = Plan(predictor, layers=layers, frames=config.frames_dir is not None)
    on_result = _recorder(config, len(layers), journal, summary, events)
    try:
        heard = KeepFailures(events, summary.failures)
        ran = stored.run(library, config.options, todo, [plan], heard, on_result, summary.found)
        summary.retries, summary.ran_on = summary.retries + ran.retries, ran.device
    finally:
        journal.close()
        stored.close(library, summary)
    kept = earlier.kept_rows(journal, items, config.update, config.prune)
    earlier.count(summary, kept)
    done = finished_rows(items, journal, previous, kept.rows)
    reused = set(items) - set(todo)  # from the journal: stored in the library too, where it lacks them
    rows = {name: (rec.meta, row) for name, rec, row in done}
    stored.backfill(library, [i for i in items if i in reused], plan, rows)
    if not done or (len(done) == len(kept.rows) and not kept.pruned):
        # nothing new to write: an earlier output stays as it was, and is not called fresh
        journal.discard()  # one this run started, with nothing in it, is not left behind
        summary.left = [p for p in naming.written(paths) if p.exists()]
        return summary
    summary.truncated[:0] = [name for name, rec in kept.rows if rec.meta.get("truncated")]
    _write_outputs(paths, done, shape, config, (predictor, settings, summary, argv))
    return summary


def _write_outputs(paths: dict[str, Path], done: list, shape: tuple[int, ...], config: EmbedConfig, about) -> None:
    """The matrix, its index and manifest, replacing the old ones together; then the journal
    compacted to point into the new matrix (`about`: predictor, settings, summary, argv)."""
    predictor, settings, summary, argv = about
    with writers.Unit() as unit:
        write_matrix(unit, paths, done, shape, config.frames_dir is not None)
        unit.json(
            paths["manifest"],
            manifest(
                [predictor],
                settings,
                summary,
                argv,
                heads=[],
                extra={
                    "truncated": summary.truncated,
                    "output": described(paths, config.frames_dir),
                    "library": summary.library,
                },
            ),
        )
    stamp = jr.compact_stamp(paths["matrix"])
    if stamp is not None:
        jr.compact(paths["journal"], settings, stamp, [(rec, i, name) for i, (name, rec, _) in enumerate(done)])
    summary.outputs = naming.written(paths)
    if config.frames_dir is not None:
        summary.outputs.append(config.frames_dir)


def _recorder(config, n_layers: int, journal: jr.Journal, summary: Summary, events: RunEvents):
    """The callback the engine hands each embedded file to: its frames written (with
    `frames_dir`), its clip embedding journalled at once (so an interrupted run resumes from
    it), and the summary counted; a file read short is recorded and warned of."""

    def on_result(res: FileResult) -> None:
        out = res.outputs[0]
        if config.frames_dir is not None:
            frames = out.frames[:, 0] if out.frames.shape[1] == 1 else out.frames
            writers.write_array(naming.frames_file(config.frames_dir, res.item.name), frames)
        emb = out.embedding[0] if n_layers == 1 else out.embedding
        meta = {"duration_s": res.duration_s, "sample_rate": res.sample_rate, "channels": res.channels}
        if res.truncated:
            meta["truncated"] = list(res.truncated)
            summary.truncated.append(res.item.name)
            events.warning(
                f"{res.item.name}: the header promises {res.truncated[0]} frames but only "
                f"{res.truncated[1]} could be read (file cut short?); embedded what was read"
            )
        journal.add(res.item, meta, {"embedding": emb})
        summary.count(res)

    return on_result


def _reuse(
    items: list[Item],
    journal: jr.Journal,
    config: EmbedConfig,
    summary: Summary,
    events: RunEvents,
    shape: tuple[int, ...],
) -> list[Item]:
    """Count the files an earlier run finished; return the ones still to compute."""
    todo: list[Item] = []
    for item in items:
        rec = journal.finished(item)
        frames_ok = config.frames_dir is None or _exists(naming.frames_file(config.frames_dir, item.name))
        usable = rec is not None and ("embedding" not in rec.arrays or rec.arrays["embedding"].shape == shape)
        if usable and frames_ok:
            summary.reused += 1
            summary.audio_s += rec.meta["duration_s"]
            if rec.meta.get("truncated"):
                summary.truncated.append(item.name)
            events.reused(item, rec.meta["duration_s"])
        else:
            todo.append(item)
    return todo


def _refuse_foreign_frames(todo: list[Item], journal: jr.Journal, config: EmbedConfig) -> None:
    """A frames file already there is replaced, without --force, only when this output's journal
    has a record of its input (an earlier run of this --out wrote it): a file of someone else's in
    the --frames folder is never overwritten. Said before any file is computed."""
    if config.frames_dir is None or config.force:
        return
    for item in todo:
        path = naming.frames_file(config.frames_dir, item.name)
        if os.path.lexists(path) and jr.real_path(item) not in journal.done:
            raise OutputError(
                f"`frames_dir`: {path} exists and was not written by this output's runs "
                f"({journal.path}); use `force` to replace it, or choose another `frames_dir` folder",
                settings=("frames_dir", "force"),
            )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name the system cannot look up is not there
        return False


def _refuse_overwrite(paths: dict[str, Path], settings: dict, force: bool) -> None:
    if force or not paths["matrix"].exists():
        return
    differ = jr.settings_differ(paths["journal"], settings)
    if differ:
        what = ", ".join(SETTING_NAMES.get(k, k) for k in differ)
        raise OutputError(
            f"{paths['matrix']} was made with another {what}; use `force` to replace it or choose another `out`",
            settings=("model", "layer", "precision", "force", "out"),
        )
