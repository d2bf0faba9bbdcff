"""The `tag` job: heads on top of one encoder pass per encoder, as long-format rows.

Heads are grouped by the encoder they need (`tag_plan`); each group is one Plan, and all plans
run in the same pass over the files (decoded once). Rows (`tag_rows`) are
`path,head,label,score,rank,tag_id,duration_s,truncated` (+ `start_s,end_s` with segments; a
head that kept no label of a file gives it one rank-0 row), as CSV, JSON Lines or a
Parquet table (a file only, written whole at the end, as every file output is). The encoder
runs only on files the library lacks, and stores them as they finish, so a re-run resumes (and
`tag` after `embed` runs no encoder); the files it holds (and those a Ray cluster's workers
store themselves) are scored from its vectors (and segments) a batch at a time (`tag_score`);
every file output gets a manifest (`tags.csv.manifest.json`), stdout one only where
`TagConfig.manifest` names a file. A file output's rows of files that are not inputs of this
run are never dropped silently: kept (`update`), replaced (`force`), or the run is refused
(`outputs.earlier`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from matpac_cli.checkpoints.registry import load_registry
from matpac_cli.config import RunOptions
from matpac_cli.errors import OutputError, UsageError
from matpac_cli.events import KeepFailures, NoEvents, RunEvents
from matpac_cli.inference.heads import Head, audioset_head, has_audioset_head, resolve_head
from matpac_cli.inference.predictor import Predictor
from matpac_cli.jobs import stored, tag_score
from matpac_cli.jobs.embed import Summary
from matpac_cli.jobs.tag_plan import DEFAULT_HEADS, DEFAULT_MODEL, plan_groups  # noqa: F401 - the public names
from matpac_cli.jobs.tag_rows import MIN_SEGMENT_S, check_wide, effective_top_k, file_rows
from matpac_cli.jobs.tag_rows import layout_columns as _columns
from matpac_cli.outputs import earlier, naming, writers
from matpac_cli.outputs.manifest import manifest
from matpac_cli.pipeline.discovery import Item

MANIFEST_FAILURES = 1000  # failed files named in a tag manifest (`counts.failed` has them all)


@dataclass(frozen=True)
class TagConfig:
    top_k: int | None = None  # None: 5, or every label above --threshold when one is given
    threshold: float | None = None
    segments: bool = False
    min_segment: float = MIN_SEGMENT_S  # seconds; a shorter last segment joins the one before it
    fmt: str = "csv"  # csv, jsonl or parquet (parquet: file outputs only)
    force: bool = False
    update: bool = False  # keep the rows `out` holds of files that are not inputs (`outputs.earlier`)
    prune: bool = False  # with update: drop the kept rows of files gone from disk
    options: RunOptions = RunOptions()  # batch size, workers, engine ...: checked when built
    manifest: Path | None = None  # None: beside a file output (`tags.csv.manifest.json`); none for stdout
    library: Path | bool | None = None  # the library folder; None: the default one; False: none
    retry_failed: bool = False  # try again the files the library records as given up (`jobs.stored`)
    wide: bool = False  # one row per file, each head's top label and score (`tag_rows.wide_row`)
    write: object | None = None  # outputs.filetags.WriteSpec: the labels into the files (`tag_write`)


@dataclass
class Group:
    """One encoder and the heads that read its embedding."""

    model: str
    heads: list[Head] = field(default_factory=list)
    predictor: Predictor | None = None


def build_heads(names: list[str], predictor: Predictor, labels_file: Path | None, progress: bool) -> list[Head]:
    registry = load_registry()
    family = predictor.resolved.spec.family if predictor.resolved.spec else None
    heads = []
    for name in names:
        if not Path(name).suffix and registry.head(name).builtin:
            if not has_audioset_head(predictor.heads_state):
                raise UsageError(f"model {predictor.resolved.name} carries no AudioSet head (head_norm + head)")
            head = audioset_head(predictor.heads_state, registry.head(name), predictor.resolved.name)
            if head.weight.shape[1] != predictor.dims.width:
                raise UsageError(f"{predictor.resolved.name}: AudioSet head does not fit the encoder width")
            head.sha256 = predictor.resolved.sha256  # the head's tensors are in the checkpoint
        else:
            head = resolve_head(
                name,
                family,
                predictor.dims.embed_dim,
                progress,
                labels_file,
                (predictor.resolved.name, predictor.resolved.sha256),
            )
        heads.append(head)
    return heads


def tag(
    items: list[Item],
    groups: list[Group],
    config: TagConfig,
    out: Path | None,
    stdout: TextIO,
    events: RunEvents | None = None,
    argv: list[str] | None = None,
) -> Summary:
    """Tag `items` with every group's heads; stream rows to stdout or write them to `out`.

    `events` (default: none) hears of each file done, failed or found in the library, of the
    audio encoded, and of files cut short."""
    earlier.check_settings(config.update, config.prune, config.force)
    check_wide(config.wide, config.segments, config.top_k)
    if config.write is not None:  # into the files' own tags, not rows
        from matpac_cli.jobs.tag_write import write_tags

        return write_tags(items, groups, config, stdout, events)
    heads = [h for g in groups for h in g.heads]
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise UsageError(f"a head was asked for twice: {', '.join(names)}")
    settings = {
        "job": "tag",
        "models": [g.predictor.resolved.sha256 for g in groups],
        "heads": [[h.name, h.source, h.sha256] for h in heads],  # a probe replaced in place is new
        "segments": config.segments,
    }
    if config.segments:
        settings["min_segment"] = config.min_segment
    if config.wide:  # only where given: a long output's settings stay as they were
        settings["wide"] = True
    summary = Summary()
    events = KeepFailures(events if events is not None else NoEvents(), summary.failures)
    man_path = config.manifest or (None if out is None else naming.tags_manifest(out))
    make_manifest = lambda: tag_manifest(groups, settings, config, out, summary, argv)  # noqa: E731
    if out is None:
        if config.fmt in writers.BINARY:
            raise UsageError(
                f"fmt={config.fmt} is binary and is not written to stdout; give out=FILE.{config.fmt}",
                settings=("fmt", "out"),
            )
        library = stored.open_library(config.library, config.retry_failed)
        _stream(items, groups, config, stdout, summary, events, library)
        summary.streamed = True
        if man_path is not None:
            writers.write_json(man_path, make_manifest())
            summary.outputs.append(man_path)
        return summary
    library = stored.open_library(config.library, config.retry_failed)
    with writers.locked(out, man_path):
        writers.clean_stale_temps(out)
        _to_file(items, groups, config, out, settings, summary, events, (man_path, make_manifest), library)
    return summary


def _stream(
    items: list[Item],
    groups: list[Group],
    config: TagConfig,
    stdout: TextIO,
    summary: Summary,
    events: RunEvents,
    library=None,
) -> None:
    """Rows to stdout as files finish; those whose embedding is in the library a batch at a time
    (`tag_score`), in the order they finished."""
    heads = [h for g in groups for h in g.heads]
    writer = writers.RowWriter(stdout, config.fmt, _columns(config, heads))

    def emit(item: Item, meta: dict, scores: dict) -> None:
        cut = bool(meta.get("truncated"))
        for row in file_rows(item.name, heads, scores, config, meta["duration_s"], cut):
            writer.write(row)
        writer.flush()

    tag_score.run(items, groups, config, (summary, events), emit, library, streaming=True)


def _to_file(
    items: list[Item],
    groups: list[Group],
    config: TagConfig,
    out: Path,
    settings: dict,
    summary: Summary,
    events: RunEvents,
    manifest_for: tuple[Path, Callable[[], dict]],
    library=None,
) -> None:
    """Score every file as it finishes (those whose embedding is in the library a batch at a
    time: `tag_score.run`), then write all rows to `out` at once, with its manifest (both replace the old
    ones together). With nothing finished, an earlier output is left as it was and not called
    fresh."""
    man_path, make_manifest = manifest_for
    before = check_inputs(config, out, items, settings, man_path)
    scored: dict[Item, tuple[dict, dict]] = {}

    def emit(item: Item, meta: dict, scores: dict) -> None:
        scored[item] = (meta, scores)

    tag_score.run(items, groups, config, (summary, events), emit, library)
    heads = [h for g in groups for h in g.heads]
    kept = earlier.kept_rows(before, items, config.update, config.prune)
    earlier.count(summary, kept)
    finished = [(item.name, *scored[item]) for item in items if item in scored]
    if not finished and not kept.pruned:
        summary.left = [p for p in (out, man_path) if p.exists()]
        return
    summary.truncated = [name for name, rows in kept.rows if any(r.get("truncated") for r in rows)]
    summary.truncated += [name for name, meta, _ in finished if meta.get("truncated")]
    _write(out, (kept.rows, finished), heads, config, man_path, make_manifest)
    summary.outputs.extend([out, man_path])


SETTING_NAMES = {
    "models": "model (`model`)",
    "heads": "heads (`heads`)",
    "segments": "`segments`",
    "min_segment": "`min_segment`",
    "job": "job (embed vs tag)",
}


def check_inputs(
    config: TagConfig, out: Path | None, items: list[Item], settings: dict | None = None, man_path: Path | None = None
) -> list[earlier.Row]:
    """The rows the file output holds already (none with `force`): an output matpac's manifest
    does not vouch for, or made with other `settings`, is refused without `force`, and one holding
    rows of files that are not inputs of this run is not cut down to this run's files without
    `update` or `force` (`outputs.earlier`): said before a model loads (where `settings` is not
    known yet, it is checked again once the heads are). Rows to stdout are a stream, written anew
    each run."""
    if out is None:
        return []
    man = earlier.owned(out, man_path or config.manifest or naming.tags_manifest(out), config.force)
    if man is None:
        return []
    differ = earlier.settings_differ(man, settings) if settings is not None else []
    if differ:
        raise OutputError(
            f"{out} was made with another {', '.join(SETTING_NAMES.get(k, k) for k in differ)}; "
            "use `force` to replace it or choose another `out`",
            settings=("model", "heads", "segments", "min_segment", "force", "out"),
        )
    earlier.check_layout(out, man, config.wide)
    rows = earlier.tag_rows(out, man)
    earlier.refuse_dropping(out, rows, items, config.update, config.force)
    _same_cut(out, man, config)
    return rows


def _same_cut(out: Path, man: dict, config: TagConfig) -> None:
    """`update` keeps an output's rows as they were cut: the new ones must be cut the same way."""
    was = man.get("output") or {}
    now = {"top_k": effective_top_k(config.top_k, config.threshold), "threshold": config.threshold}
    if config.update and any(k in was and was[k] != v for k, v in now.items()):
        raise OutputError(
            f"{out} was cut with top_k={was.get('top_k')} and threshold={was.get('threshold')}, and "
            "`update` keeps its rows as they are: give the same `top_k` and `threshold`, or `force` to replace it",
            settings=("top_k", "threshold", "update", "force"),
        )


def _write(
    out: Path,
    rows: tuple[list, list],
    heads: list,
    config: TagConfig,
    man_path: Path,
    make_manifest: Callable[[], dict],
) -> None:
    """Every row to `out` and the manifest beside it, replaced together: the rows `update` kept
    (as they were written), then every finished file's, cut from its scores."""
    kept, finished = rows
    with writers.Unit() as unit:
        with writers.row_file(unit, out, config.fmt, _columns(config, heads)) as writer:
            for _, old in kept:
                for row in old:
                    writer.write(row)
            for name, meta, scores in finished:
                for row in file_rows(name, heads, scores, config, meta["duration_s"], bool(meta.get("truncated"))):
                    writer.write(row)
        unit.json(man_path, make_manifest())


def tag_manifest(
    groups: list[Group], settings: dict, config: TagConfig, out: Path | None, summary: Summary, argv: list[str] | None
) -> dict:
    """Provenance of a tag output: models (with the device and precision they ran at), every
    head's source file and sha256, and the selection that cut the rows."""
    head_info = [
        {
            "name": h.name,
            "encoder": g.model,
            "source": h.source,
            "sha256": h.sha256,
            "activation": h.activation,
            "classes": len(h.labels),
            "standardised": h.standardised,
            "label_order_confirmed": h.confirmed_order,
        }
        for g in groups
        for h in g.heads
    ]
    man = manifest(
        [g.predictor for g in groups],
        settings,
        summary,
        argv,
        head_info,
        extra={"truncated": summary.truncated, "library": summary.library},
    )
    for entry, g in zip(man["models"], groups):
        entry["device"] = summary.ran_on or g.predictor.device
        entry["precision"] = str(g.predictor.dtype).replace("torch.", "")
    man["output"] = {
        "path": str(out) if out is not None else "-",
        "format": config.fmt,
        "columns": _columns(config, [h for g in groups for h in g.heads]),
        "top_k": effective_top_k(config.top_k, config.threshold),
        "threshold": config.threshold,
    }
    # the files that failed have no rows: named here (the first MANIFEST_FAILURES), so a report can list them
    man["failures"] = [{"path": e.path, "reason": e.reason} for e in summary.failures[:MANIFEST_FAILURES]]
    return man
