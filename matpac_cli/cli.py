"""The `matpac` command: options -> config -> library call -> messages and exit codes.

Only this module imports typer and rich; torch loads inside the commands, so `matpac --help`
stays instant. Exit codes: 0 all done, 1 some inputs failed, 2 usage/model/weights/output error,
130 interrupted. Set MATPAC_DEBUG=1 for tracebacks.

Examples:
  matpac embed ./clips --out emb.npy
  matpac tag ./music --top-k 3 --out tags.csv
  find . -name '*.flac' -print0 | matpac tag - --null --out - | grep -i jazz
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from matpac_cli.errors import MatpacError, UsageError

app = typer.Typer(
    name="matpac",
    no_args_is_help=True,
    add_completion=False,
    help="Tag and embed audio with the MATPAC / MATPAC++ self-supervised audio encoders.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(no_args_is_help=True, help="List, download, verify models and heads; print labels.")
app.add_typer(models_app, name="models")

Inputs = Annotated[list[str], typer.Argument(help="Audio files and/or folders (recursive); '-' reads paths from stdin.", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Registry name, checkpoint file, or hf:OWNER/REPO\\[@REV].")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (fp32 on CPU, bf16 on CUDA), fp32, bf16 or fp16.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Encoder chunks (6 s each) per batch, across files.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    help="Decoding threads (default: up to 4 when the CPU runs the encoder, all cores but two with a GPU).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    help="torch CPU threads (default: torch's choice; 1 per decoding thread when a GPU runs the encoder).")]
ExtOpt = Annotated[Optional[str], typer.Option("--ext", help="Extensions to pick up in folders, comma-separated.")]
NullOpt = Annotated[bool, typer.Option("--null", "-0", help="Paths on stdin are NUL-separated (find -print0).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary; errors still go to stderr.")]
FailuresOpt = Annotated[Optional[Path], typer.Option("--failures", help="Write the inputs that failed, with reasons, to this CSV.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute everything and replace existing outputs.")]


class Reporter:
    """stderr messages and a progress bar (rich, only on a TTY and without --quiet)."""

    def __init__(self, quiet: bool, total: int = 0) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.progress = None
        if not quiet and sys.stderr.isatty() and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[audio]}"), TimeRemainingColumn(),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task("files", total=total, audio="")
            self.seconds = 0.0
            self.progress.start()

    def advance(self, item: object, seconds: float) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def audio(self, seconds: float) -> None:
        """Audio encoded so far, so the display moves inside long files."""
        if self.progress is not None:
            self.seconds += seconds
            minutes = self.seconds / 60
            self.progress.update(self.task, audio=f"{minutes:.1f} min of audio" if minutes < 120 else f"{minutes / 60:.1f} h of audio")

    def failure(self, err: MatpacError) -> None:
        self.console.print(f"matpac: skipped {err}", markup=False, style="yellow", soft_wrap=True)

    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _items(inputs: list[str], ext: Optional[str], null: bool):
    from matpac_cli.discovery import discover, parse_extensions

    items = discover(inputs, parse_extensions(ext), sys.stdin, null)
    if not items:
        raise MatpacError(f"no audio files found in {' '.join(inputs)}")
    return items


def _load(model: str, device: str, precision: str, threads: Optional[int], quiet: bool):
    from matpac_cli.predictor import Predictor

    predictor = Predictor.load(model, device, precision, threads, progress=not quiet and sys.stderr.isatty())
    _warn_unused_cuda(predictor.device, quiet)
    return predictor


def _warn_unused_cuda(device: str, quiet: bool) -> None:
    import torch

    if device == "cpu" and torch.cuda.is_available() and not quiet:
        Reporter(quiet).info("matpac: note: a CUDA GPU is available but --device cpu was asked for")


def _finish(summary, reporter: Reporter, failures: Optional[Path], verb: str) -> int:
    from matpac_cli.writers import write_failures

    if failures is not None:
        write_failures(failures, summary.failures)
    parts = [f"{verb} {summary.done + summary.reused} file(s)"]
    if summary.reused:
        parts.append(f"{summary.reused} reused from an earlier run")
    if summary.failures:
        parts.append(f"{len(summary.failures)} failed")
    written = ", ".join(str(p) for p in summary.outputs if Path(p).exists())
    reporter.info("matpac: " + "; ".join(parts) + (f"; wrote {written}" if written else ""))
    return 1 if summary.failures else 0


@app.command()
def embed(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npy (N x 3840); FILE.csv indexes its rows.")],
    model: ModelOpt = None,
    layer: Annotated[str, typer.Option(help="Encoder layer 1-12, 'last' (12) or 'all' (N x 12 x 3840).")] = "last",
    frames: Annotated[Optional[Path], typer.Option("--frames", help="Also write one 3840-d vector per 160 ms per file, as .npy under this folder (mirrors the input tree).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    force: ForceOpt = False,
) -> None:
    """Embed audio files into one N x 3840 matrix (clip mean of the encoder's time columns).

    Example: matpac embed ./clips --out emb.npy
    """
    from matpac_cli.embedding import EmbedConfig, embed as run_embed

    items = _items(inputs, ext, null)
    predictor = _load(model or "matpac-plus", device, precision, threads, quiet)
    reporter = Reporter(quiet, len(items))
    try:
        config = EmbedConfig(out=out, layer=layer, frames_dir=frames, batch_size=batch_size, workers=workers, force=force)
        summary = run_embed(items, predictor, config, reporter.advance, reporter.failure, argv=_argv(),
                            on_audio=reporter.audio)
    finally:
        reporter.close()
    raise typer.Exit(_finish(summary, reporter, failures, "embedded"))


@app.command()
def tag(
    inputs: Inputs,
    model: ModelOpt = None,
    head: Annotated[Optional[list[str]], typer.Option("--head", "-H", help="Head name or alias (genre, mood, instrument, instruments, tags, events, sounds, esc50 ...), MODEL:HEAD, or a probe file. Repeatable.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", "-k", help="Labels kept per head (0: all). Default 5, or all above --threshold.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Keep labels scoring at least this (multi-label heads).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output file, or '-' for stdout (the default).")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="csv or jsonl (default: from the --out extension, else csv).")] = None,
    segments: Annotated[bool, typer.Option(help="Add one row set per encoder chunk (start_s, end_s).")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="Label file (one per line) for a probe file of an unknown head.")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: BatchOpt = 16,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    force: ForceOpt = False,
) -> None:
    """Label audio with the released heads: genre, mood, instrument by default (music encoder).

    Example: matpac tag ./music --top-k 3 --out tags.csv
    """
    from matpac_cli.tagging import DEFAULT_HEADS, DEFAULT_MODEL, Group, TagConfig, build_heads, plan_groups
    from matpac_cli.tagging import tag as run_tag

    if fmt is None:
        fmt = "jsonl" if out and out.lower().endswith((".jsonl", ".ndjson")) else "csv"
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"--format {fmt}: expected csv or jsonl")
    if top_k is not None and top_k < 0:
        raise UsageError(f"--top-k {top_k}: give 0 (every label) or a positive count")
    items = _items(inputs, ext, null)
    reporter = Reporter(quiet)
    groups = []
    for model_name, head_names in plan_groups(head or DEFAULT_HEADS, model or DEFAULT_MODEL):
        predictor = _load(model_name, device, precision, threads, quiet)
        groups.append(Group(model_name, build_heads(head_names, predictor, labels, not quiet and sys.stderr.isatty()), predictor))
    if len(groups) > 1:
        plan = "; ".join(f"{g.model} for {', '.join(h.name for h in g.heads)}" for g in groups)
        reporter.info(f"matpac: these heads need {len(groups)} encoders, each run once per file: {plan}")
    for g in groups:
        for h in g.heads:
            if h.standardised and h.kind == "probe":
                reporter.info(f"matpac: head {h.name}: standardising features with the statistics in its file")
    reporter = Reporter(quiet, len(items))
    config = TagConfig(top_k=top_k, threshold=threshold, segments=segments, fmt=fmt,
                       batch_size=batch_size, workers=workers, force=force)
    target = None if out in (None, "-") else Path(out)
    try:
        summary = run_tag(items, groups, config, target, sys.stdout, reporter.advance, reporter.failure,
                          argv=_argv(), on_audio=reporter.audio)
    finally:
        reporter.close()
    raise typer.Exit(_finish(summary, reporter, failures, "tagged"))


@models_app.command("list")
def models_list() -> int:
    """Models and heads this version knows, where they come from, and whether they are cached."""
    from rich.console import Console
    from rich.table import Table

    import urllib.parse

    from matpac_cli.registry import load_registry
    from matpac_cli.weights import cached_files, release_path

    reg = load_registry()
    table = Table(title="Models", title_justify="left")
    for col in ("name", "description", "source", "cached"):
        table.add_column(col)
    for m in reg.models.values():
        release = m.release and "release:" + urllib.parse.unquote(m.release)
        source = "\n".join(s for s in (m.hub and f"hf:{m.hub}", release) if s)
        table.add_row(m.name, m.description, source, "yes" if cached_files(m) else "no")
    zip_cached = release_path(reg.probes_release).is_file()
    zip_state = "cached" if zip_cached else "not cached: matpac models download probes"
    heads = Table(title=f"Heads (matpac tag --head NAME); probe zip {zip_state}", title_justify="left")
    for col in ("name", "aliases", "classes", "activation", "for", "label order"):
        heads.add_column(col)
    for h in reg.heads.values():
        where = h.builtin or "MATPAC++ probes"
        order = "confirmed" if h.confirmed_order else "unconfirmed"
        heads.add_row(h.name, ", ".join(h.aliases), str(h.classes), h.activation, where, order)
    console = Console()
    console.print(table)
    console.print(heads)
    return 0


@models_app.command("download")
def models_download(
    name: Annotated[str, typer.Argument(help="A model name, or 'probes' for the probe-head zip.")],
    force: ForceOpt = False,
) -> int:
    """Fetch a model (or the probe zip) into the cache and record its sha256."""
    reporter = Reporter(False)
    if name == "probes":
        from matpac_cli.heads import probes_dir

        path = probes_dir(progress=sys.stderr.isatty())
        reporter.info(f"matpac: probe heads ready in {path}")
        return 0
    from matpac_cli.weights import resolve

    res = resolve(name, progress=sys.stderr.isatty(), force=force)
    reporter.info(f"matpac: {res.name} ready: {res.path} (sha256 {res.sha256}, from {res.source})")
    return 0


@models_app.command("labels")
def models_labels(head: Annotated[str, typer.Argument(help="Head name or alias.")]) -> int:
    """Print a head's labels, one per line, in the index order its weights were trained with."""
    from matpac_cli.registry import load_registry

    spec = load_registry().head(head)
    if not spec.confirmed_order:
        Reporter(False).info(f"matpac: note: the authors did not publish the {spec.name} label order; this is the likely one")
    sys.stdout.write("".join(label + "\n" for label in spec.labels()))
    return 0


@models_app.command("verify")
def models_verify() -> None:
    """Re-hash every cached weight file; a mismatch is reported and the file is refused on use."""
    from matpac_cli.errors import WeightsError
    from matpac_cli.weights import cached_for_verify, verify

    reporter = Reporter(False)
    checked = cached_for_verify()
    bad = 0
    for name, key, path, expected in checked:
        try:
            digest = verify(path, key, expected, f"matpac models download {name}")
            sys.stdout.write(f"ok\t{name}\t{digest}\t{path}\n")
        except WeightsError as exc:
            bad += 1
            sys.stdout.write(f"MISMATCH\t{name}\t-\t{path}\n")
            reporter.info(f"matpac: {exc}")
    reporter.info(f"matpac: {len(checked)} cached file(s) checked, {bad} mismatched")
    raise typer.Exit(2 if bad else 0)


def _argv() -> list[str]:
    return ["matpac", *sys.argv[1:]]


def main(argv: list[str] | None = None) -> int:
    """Run the app and turn every known error into one line and an exit code.

    Typer reports usage errors itself (exit 2); matpac's own errors are caught here, so the user
    sees one line, not a traceback.
    """
    try:
        app(args=argv, prog_name="matpac")
        return 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if code == 130:
            sys.stderr.write(INTERRUPTED)
        return code
    except MatpacError as exc:
        _debug()
        sys.stderr.write(f"matpac: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


INTERRUPTED = "matpac: interrupted; finished files are kept, run the same command to resume\n"


def _debug() -> None:
    if os.environ.get("MATPAC_DEBUG"):
        import traceback

        traceback.print_exc()
