"""`matpac train`: a linear probe of your own labels on the clip embeddings (the papers' protocol)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from matpac_cli.cli._options import (
    BatchOpt,
    DeviceOpt,
    ExtOpt,
    FailuresOpt,
    ForceOpt,
    LibraryOpt,
    ModelOpt,
    NoLibraryOpt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
    WorkersOpt,
    library_of,
)
from matpac_cli.cli._preflight import check_model, check_outputs, load_predictor, named_inputs, run_options
from matpac_cli.cli._reporter import Reporter, finish
from matpac_cli.cli._startup import argv, startup_done

LabelsArg = Annotated[
    Path,
    typer.Argument(
        help="A folder with one subfolder per class, or a CSV with columns path,label (a path on several rows has several labels).",
        show_default=False,
    ),
]
HeadOutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="The head to write (.safetensors); HEAD.report.json goes beside it.")
]
TaskOpt = Annotated[
    str, typer.Option(help="auto (multi-label when any file has two labels), single (softmax) or multi (sigmoid).")
]
ValOpt = Annotated[
    float, typer.Option(help="Fraction of the files held out (stratified) to pick the learning rate and epoch.")
]
FoldsOpt = Annotated[
    int | None, typer.Option(help="K-fold cross-validation instead of --val; the head is then trained on every file.")
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split, the initial weights and the batch order.")]
LrOpt = Annotated[
    str | None, typer.Option("--lr", help="Learning rates to try, comma-separated (default 1e-4,3e-4,1e-3,3e-3).")
]
EmbeddingsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Use the clip embeddings of an earlier `matpac embed --out emb.npy` or `emb.parquet` (matched by path), or of a library folder (matched by path, else by the file's audio, so moved files are found; --model picks or names its model), instead of computing them."
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--embeddings-out",
        help="Where the computed embeddings go (default HEAD.emb.npy beside the head); a re-run reuses them.",
    ),
]


def train(
    labels: LabelsArg,
    out: HeadOutOpt,
    task: TaskOpt = "auto",
    val: ValOpt = 0.1,
    folds: FoldsOpt = None,
    seed: SeedOpt = 0,
    lr: LrOpt = None,
    embeddings: EmbeddingsOpt = None,
    embeddings_out: CacheOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    force: ForceOpt = False,
    library: LibraryOpt = None,
    no_library: NoLibraryOpt = False,
) -> None:
    """Train a head on your own labels: a linear probe on the clip embeddings, as the papers evaluate.

    Example: matpac train ./labelled --out mine.safetensors, then matpac tag ./new --head ./mine.safetensors
    """
    from matpac_cli.errors import UsageError
    from matpac_cli.jobs.probe import LR_GRID, TrainConfig
    from matpac_cli.jobs.train import check_outputs as check_head
    from matpac_cli.jobs.train import check_trainable
    from matpac_cli.jobs.train_data import check_counts, from_index, read_labels
    from matpac_cli.outputs.writers import locked
    from matpac_cli.pipeline.discovery import parse_extensions

    started = time.monotonic()
    options = run_options(device, precision, threads, batch_size, workers)
    config = TrainConfig(task=task, val=val, folds=folds, seed=seed, lrs=_rates(lr) if lr else LR_GRID)
    config.check()
    check_head(out, force)
    from matpac_cli.library.views import is_library

    lib = embeddings is not None and is_library(embeddings)  # --model picks (or names) its model there
    if embeddings is not None and ((model is not None and not lib) or embeddings_out is not None):
        raise UsageError(
            f"--embeddings {embeddings}: the embeddings are read, not computed, so "
            f"{'--model' if model is not None else '--embeddings-out'} does not apply"
        )
    labelled = read_labels(labels, task, parse_extensions(ext))
    check_counts(labelled)
    written = _check_written(
        out, labels, embeddings, embeddings_out, failures, labelled.items + named_inputs(model), force
    )
    with locked(*written):  # every file this run writes, until it ends
        reporter = Reporter(quiet)
        if labelled.ignored:
            reporter.warning(
                f"{labels}: {labelled.ignored} audio file(s) directly in the folder, in no class folder, are left out"
            )
        code = 0
        if embeddings is not None:
            features = from_index(labelled, embeddings, model if lib else None)
            startup_done()  # no model loads: the start-up is over
        else:
            keep = library_of(library, no_library)
            features, code = _embed(
                labelled, out, embeddings_out, model, (options, keep), quiet, failures, force, started
            )
        check_trainable(features, config)
        _fit(features, config, out, reporter)
        raise typer.Exit(code)


def _fit(features, config, out: Path, reporter: Reporter) -> None:
    """Train the head and say what was trained, how well it did, and what was written."""
    from matpac_cli.jobs.train import train as run_train

    reporter.info(
        f"matpac: training a {features.labelled.task}-label head on {len(features.x)} files "
        f"({features.x.shape[1]}-d embeddings of {features.encoder.get('name')})"
    )
    result = run_train(features, config, out, argv(), reporter)
    for line in render(result.report):
        reporter.info(line)
    reporter.info(f"matpac: wrote {', '.join(str(p) for p in result.outputs)}")


def _check_written(
    out: Path,
    labels: Path,
    embeddings: Path | None,
    cache: Path | None,
    failures: Path | None,
    items: list,
    force: bool,
) -> list[Path]:
    """--out's rules for every file the run writes (the head, its report, the embeddings it
    computes, --failures); the labels, the audio and --embeddings are inputs. The files to lock."""
    from matpac_cli.outputs import naming
    from matpac_cli.outputs.readers import embeddings_inputs
    from matpac_cli.pipeline.discovery import Item

    outputs = {"--out": Path(out), "the report of --out": naming.head_report(out)}
    inputs = list(items) + [Item(str(labels), Path(labels))]
    if embeddings is not None:
        inputs += [Item(str(p), p) for p in embeddings_inputs(Path(embeddings))]
    else:
        paths = naming.embed_outputs(Path(cache) if cache is not None else naming.head_embeddings(out))
        outputs.update(
            {
                "--embeddings-out": paths["matrix"],
                "its row index": paths.get("index"),
                "its manifest": paths["manifest"],
            }
        )
    return check_outputs(outputs, inputs, force, failures)


def _embed(labelled, out, cache, model, run, quiet, failures, force, started):
    """The labelled files embedded into `cache` (`run`: the options and the library)."""
    options, library = run
    from matpac_cli.jobs.embed import EmbedConfig, check_config
    from matpac_cli.jobs.stored import resume_note
    from matpac_cli.jobs.train_data import embed_labelled
    from matpac_cli.outputs import naming

    cache = cache or naming.head_embeddings(out)
    # the embeddings it keeps are a cache: rows of files no longer labelled stay (`update`), never refused
    # the files named are tried whatever the library recorded of them (only embed and tag skip)
    config = EmbedConfig(out=cache, force=force, update=not force, options=options, library=library, retry_failed=True)
    check_config(config)
    if failures is not None:
        from matpac_cli.outputs.writers import ensure_writable

        ensure_writable(failures)
    predictor = load_predictor(check_model(model or "matpac-plus"), options, quiet)
    reporter = Reporter(quiet, labelled.items, started, failures=failures, keeps=resume_note(library))
    try:
        features, summary = embed_labelled(labelled, predictor, config, reporter, argv())
    finally:
        reporter.close()
    return features, finish(summary, reporter, "embedded", [predictor])


def _rates(text: str) -> tuple[float, ...]:
    from matpac_cli.errors import UsageError

    try:
        rates = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--lr {text}: expected numbers such as 1e-4,1e-3") from None
    return rates


def render(report: dict) -> list[str]:
    """The report as the person at the terminal reads it (the JSON beside the head has it all)."""
    metric = report["metric"]
    name, value = ("macro mAP" if metric["name"] == "mAP" else metric["name"]), metric["value"]
    v = report["validation"]
    how = (
        f"{v['folds']}-fold cross-validation (out-of-fold scores of all {report['files']} files pooled)"
        if v["method"] == "folds"
        else f"{v['validation_files']} held-out files ({v['fraction']:g} stratified split)"
    )
    lines = ["matpac: classes (files): " + ", ".join(f"{c['name']} ({c['files']})" for c in report["classes"])]
    for s in report["search"]:
        lines.append(
            f"matpac:   lr {s['lr']:g}: validation {name} {_fmt(s['metric'])}"
            + (f", best epoch {s['best_epoch']} of {s['epochs_run']}" if "best_epoch" in s else "")
        )
    chosen = report["chosen"]
    what = f" (the mean of the {metric['classes_averaged']} per-class APs)" if "classes_averaged" in metric else ""
    lines.append(
        f"matpac: validation {name}{what} {_fmt(value)} on {how}; chosen lr {chosen['lr']:g}, epoch {chosen['epoch']}"
    )
    if "confusion_matrix" in report:
        cm = report["confusion_matrix"]
        names = cm["classes"]
        first, cell = max(len(c) for c in names) + 1, max(4, min(10, max(len(c) for c in names)))
        lines.append("matpac: confusion matrix (rows: true class, columns: predicted)")
        lines.append(" " * first + " ".join(f"{c[:cell]:>{cell}}" for c in names))
        lines.extend(f"{c:<{first}}" + " ".join(f"{n:>{cell}}" for n in row) for c, row in zip(names, cm["counts"]))
    else:
        lines.append(
            "matpac: per-class AP: " + ", ".join(f"{c['name']} {_fmt(c['ap'])}" for c in report["per_class_ap"])
        )
    return lines


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
