"""The `embed` job: a folder of audio -> one N x 3840 matrix (+ row index, manifest, frames).

Resumable: every finished file is journalled next to the output; re-running the same command
reuses finished files (same path, size, mtime, model and settings) and only computes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matpac_cli import journal as jr
from matpac_cli import writers
from matpac_cli.discovery import Item
from matpac_cli.errors import InputError, OutputError, UsageError
from matpac_cli.manifest import manifest
from matpac_cli.pipeline import FileResult, Plan, run
from matpac_cli.predictor import Predictor


@dataclass(frozen=True)
class EmbedConfig:
    out: Path
    layer: str = "last"  # "last", "all" or "1".."12"
    frames_dir: Path | None = None
    batch_size: int = 16
    workers: int | None = None
    force: bool = False


@dataclass
class Summary:
    done: int = 0
    reused: int = 0
    failures: list[InputError] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    audio_s: float = 0.0


def parse_layers(layer: str, depth: int) -> tuple[int, ...]:
    text = str(layer).strip().lower()
    if text in ("last", ""):
        return (depth,)
    if text == "all":
        return tuple(range(1, depth + 1))
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--layer {layer}: expected 1..{depth}, last or all") from None
    if not 1 <= value <= depth:
        raise UsageError(f"--layer {layer}: this model has layers 1..{depth}")
    return (value,)


def outputs_for(out: Path) -> dict[str, Path]:
    if out.suffix != ".npy":
        raise UsageError(f"--out {out}: the embedding matrix is written as .npy (e.g. emb.npy)")
    return {
        "npy": out,
        "index": out.with_suffix(".csv"),
        "manifest": out.with_suffix(".manifest.json"),
        "journal": out.with_name(out.name + ".journal"),
    }


def embed(items: list[Item], predictor: Predictor, config: EmbedConfig,
          on_progress: Callable[[Item, float], None] = lambda i, s: None,
          on_failure: Callable[[InputError], None] = lambda e: None,
          argv: list[str] | None = None, on_audio: Callable[[float], None] = lambda s: None) -> Summary:
    """Embed `items`, write the outputs, and say what happened."""
    paths = outputs_for(config.out)
    layers = parse_layers(config.layer, predictor.dims.depth)
    settings = {
        "job": "embed",
        "model_sha256": predictor.resolved.sha256,
        "layers": list(layers),
        "precision": str(predictor.dtype).replace("torch.", ""),
    }
    _refuse_overwrite(paths, settings, config.force)
    journal = jr.Journal(paths["journal"], settings, fresh=config.force)
    summary = Summary()
    todo: list[Item] = []
    for item in items:
        rec = journal.finished(item)
        frames_ok = config.frames_dir is None or writers.mirror_path(config.frames_dir, item.name, ".npy").exists()
        if rec is not None and frames_ok:
            summary.reused += 1
            summary.audio_s += rec.meta["duration_s"]
            on_progress(item, rec.meta["duration_s"])
        else:
            todo.append(item)

    def on_result(res: FileResult) -> None:
        out = res.outputs[0]
        if config.frames_dir is not None:
            frames = out.frames[:, 0] if out.frames.shape[1] == 1 else out.frames
            writers.write_array(writers.mirror_path(config.frames_dir, res.item.name, ".npy"), frames)
        emb = out.embedding[0] if len(layers) == 1 else out.embedding
        meta = {"duration_s": res.duration_s, "sample_rate": res.sample_rate, "channels": res.channels}
        journal.add(res.item, meta, {"embedding": emb})
        summary.done += 1
        summary.audio_s += res.duration_s

    def failed(err: InputError) -> None:
        summary.failures.append(err)
        on_failure(err)

    plan = Plan(predictor, layers=layers, frames=config.frames_dir is not None)
    try:
        run(todo, [plan], config.batch_size, config.workers, on_result, failed, on_progress, on_audio)
    finally:
        journal.close()
    _assemble(items, journal, paths)
    writers.write_json(paths["manifest"], manifest([predictor], settings, summary, argv, heads=[]))
    summary.outputs = [paths["npy"], paths["index"], paths["manifest"]]
    return summary


def _refuse_overwrite(paths: dict[str, Path], settings: dict, force: bool) -> None:
    if force:
        return
    if not paths["journal"].exists():
        for key in ("npy", "index", "manifest"):
            if paths[key].exists():
                raise OutputError(f"{paths[key]} exists and was not written by matpac's journal; use --force to replace it")
        return
    if not paths["npy"].exists():
        return
    if jr.settings_differ(paths["journal"], settings):
        raise OutputError(f"{paths['npy']} was made with another model or settings; use --force to replace it")


def _assemble(items: list[Item], journal: jr.Journal, paths: dict[str, Path]) -> None:
    """Final matrix and index, in input order, from every finished file of this input list."""
    done = [(item, journal.done[item.name]) for item in items if journal.finished(item) is not None]
    rows = [rec.arrays["embedding"] for _, rec in done]
    if not rows:
        return
    writers.write_matrix(paths["npy"], rows)
    writers.write_csv(
        paths["index"],
        ["row", "path", "duration_s", "sample_rate", "channels"],
        [(i, item.name, f"{rec.meta['duration_s']:.3f}", rec.meta["sample_rate"], rec.meta["channels"])
         for i, (item, rec) in enumerate(done)],
    )
