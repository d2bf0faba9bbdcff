"""The `tag` job: heads on top of one encoder pass per encoder, as long-format rows.

Heads are grouped by the encoder they need; each group is one Plan, and all plans run in the
same pass over the files (decoded once). Rows are `path,head,label,score,rank` (+ `start_s,end_s`
with segments). With an output file, per-file scores are journalled so a re-run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TextIO

import numpy as np

from matpac_cli import journal as jr
from matpac_cli import writers
from matpac_cli.discovery import Item
from matpac_cli.embedding import Summary
from matpac_cli.errors import InputError, OutputError, UsageError
from matpac_cli.heads import Head, audioset_head, has_audioset_head, resolve_head
from matpac_cli.manifest import manifest
from matpac_cli.pipeline import FileResult, Plan, run
from matpac_cli.predictor import Predictor
from matpac_cli.registry import load_registry

DEFAULT_MODEL = "matpac-plus-music"
DEFAULT_HEADS = ("genre", "mood", "instrument")


@dataclass(frozen=True)
class TagConfig:
    top_k: int | None = 5  # None: 5, or every label above --threshold when one is given
    threshold: float | None = None
    segments: bool = False
    fmt: str = "csv"
    batch_size: int = 16
    workers: int | None = None
    force: bool = False


@dataclass
class Group:
    """One encoder and the heads that read its embedding."""

    model: str
    heads: list[Head] = field(default_factory=list)
    predictor: Predictor | None = None


def plan_groups(head_args: Iterable[str], model: str) -> list[tuple[str, list[str]]]:
    """Which encoder each requested head needs: [(model, [head args])], first-seen order."""
    registry = load_registry()
    groups: dict[str, list[str]] = {}
    for arg in head_args:
        target, name = model, arg
        if ":" in arg and not Path(arg).exists():
            target, name = arg.rsplit(":", 1)
        if not Path(name).suffix:
            spec = registry.head(name)
            if spec.builtin and target == model and not _carries_audioset(model):
                target = spec.builtin
        groups.setdefault(target, []).append(name)
    return list(groups.items())


def _carries_audioset(model: str) -> bool:
    """Registry models say so by name; a file or hf: model is checked after loading."""
    registry = load_registry()
    if model in registry.models:
        return any(h.builtin == model for h in registry.heads.values())
    return True


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
        else:
            head = resolve_head(name, family, predictor.dims.embed_dim, progress, labels_file)
        heads.append(head)
    return heads


def select(head: Head, scores: np.ndarray, top_k: int | None, threshold: float | None) -> list[tuple[int, int]]:
    """(rank, label index) pairs kept for one score vector."""
    order = np.argsort(-scores, kind="stable")
    thresholded = threshold is not None and head.activation == "sigmoid"  # softmax heads: top-k only
    if thresholded:
        order = order[scores[order] >= threshold]
    k = (0 if thresholded else 5) if top_k is None else top_k
    if k > 0:
        order = order[:k]
    return [(rank, int(i)) for rank, i in enumerate(order, start=1)]


def columns(segments: bool) -> list[str]:
    return ["path", "head", "label", "score", "rank"] + (["start_s", "end_s"] if segments else [])


def rows_for(name: str, heads: list[Head], rec_arrays: dict, config: TagConfig) -> Iterable[dict]:
    for head in heads:
        scores = rec_arrays[f"clip:{head.name}"]
        for rank, i in select(head, scores, config.top_k, config.threshold):
            row = {"path": name, "head": head.name, "label": head.labels[i], "score": float(scores[i]), "rank": rank}
            if config.segments:
                row.update(start_s=None, end_s=None)
            yield row
        if config.segments:
            seg_scores, times = rec_arrays[f"seg:{head.name}"], rec_arrays[f"times:{head.name}"]
            for s in range(len(seg_scores)):
                for rank, i in select(head, seg_scores[s], config.top_k, config.threshold):
                    yield {"path": name, "head": head.name, "label": head.labels[i],
                           "score": float(seg_scores[s][i]), "rank": rank,
                           "start_s": round(float(times[s][0]), 3), "end_s": round(float(times[s][1]), 3)}


def score(result: FileResult, groups: list[Group], segments: bool) -> dict[str, np.ndarray]:
    """Every head's clip scores (and per-segment scores) for one file."""
    arrays: dict[str, np.ndarray] = {}
    for group, out in zip(groups, result.outputs):
        clip = out.embedding[-1][None]
        seg = np.stack([s.embedding for s in out.segments]) if segments else None
        times = np.array([[s.start_s, s.end_s] for s in out.segments], dtype=np.float32).reshape(-1, 2)
        for head in group.heads:  # each encoder cuts its own chunks (608 or 992 frames)
            arrays[f"clip:{head.name}"] = head.scores(clip)[0].astype(np.float32)
            if segments:
                arrays[f"seg:{head.name}"] = head.scores(seg).astype(np.float32)
                arrays[f"times:{head.name}"] = times
    return arrays


def tag(items: list[Item], groups: list[Group], config: TagConfig, out: Path | None, stdout: TextIO,
        on_progress: Callable[[Item, float], None] = lambda i, s: None,
        on_failure: Callable[[InputError], None] = lambda e: None,
        argv: list[str] | None = None, on_audio: Callable[[float], None] = lambda s: None) -> Summary:
    """Tag `items` with every group's heads; stream rows to stdout or journal them for `out`."""
    heads = [h for g in groups for h in g.heads]
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise UsageError(f"a head was asked for twice: {', '.join(names)}")
    settings = {
        "job": "tag",
        "models": [g.predictor.resolved.sha256 for g in groups],
        "heads": [[h.name, h.source] for h in heads],
        "segments": config.segments,
    }
    summary = Summary()
    plans = [Plan(g.predictor, layers=(-1,), segments=config.segments) for g in groups]
    cols = columns(config.segments)
    if out is None:
        writer = writers.RowWriter(stdout, config.fmt, cols)

        def on_result(res: FileResult) -> None:
            for row in rows_for(res.item.name, heads, score(res, groups, config.segments), config):
                writer.write(row)
            writer.flush()
            summary.done += 1
            summary.audio_s += res.duration_s

        run(items, plans, config.batch_size, config.workers, on_result, _collect(summary, on_failure), on_progress, on_audio)
        return summary

    journal_path = out.with_name(out.name + ".journal")
    if out.exists() and not config.force:
        if not journal_path.exists():
            raise OutputError(f"{out} exists and was not written by this tool's journal; use --force to replace it")
        if jr.settings_differ(journal_path, settings):
            raise OutputError(f"{out} was made with other models, heads or settings; use --force to replace it")
    journal = jr.Journal(journal_path, settings, fresh=config.force)
    todo = []
    for item in items:
        rec = journal.finished(item)
        if rec is None:
            todo.append(item)
        else:
            summary.reused += 1
            summary.audio_s += rec.meta["duration_s"]
            on_progress(item, rec.meta["duration_s"])

    def on_journal(res: FileResult) -> None:
        journal.add(res.item, {"duration_s": res.duration_s}, score(res, groups, config.segments))
        summary.done += 1
        summary.audio_s += res.duration_s

    try:
        run(todo, plans, config.batch_size, config.workers, on_journal, _collect(summary, on_failure), on_progress, on_audio)
    finally:
        journal.close()
    with writers.atomic(out) as fh:
        writer = writers.RowWriter(fh, config.fmt, cols)
        for item in items:
            rec = journal.finished(item)
            if rec is not None:
                for row in rows_for(item.name, heads, rec.arrays, config):
                    writer.write(row)
    head_info = [{"name": h.name, "source": h.source, "activation": h.activation,
                  "classes": len(h.labels), "standardised": h.standardised,
                  "label_order_confirmed": h.confirmed_order} for h in heads]
    man = manifest([g.predictor for g in groups], settings, summary, argv, head_info)
    writers.write_json(out.with_name(out.stem + ".manifest.json"), man)
    summary.outputs = [out, out.with_name(out.stem + ".manifest.json")]
    return summary


def _collect(summary: Summary, on_failure: Callable[[InputError], None]) -> Callable[[InputError], None]:
    def failed(err: InputError) -> None:
        summary.failures.append(err)
        on_failure(err)

    return failed
