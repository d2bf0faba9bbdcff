"""`matpac search`: nearest neighbours in an embedding index, and near-duplicate pairs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from matpac_cli.cli._errors import with_flags
from matpac_cli.cli._options import (
    DeviceOpt,
    ExtOpt,
    FailuresOpt,
    LibraryOpt,
    NoLibraryOpt,
    NullOpt,
    PrecisionOpt,
    QuietOpt,
    RowsOutOpt,
    ThreadsOpt,
    WorkersOpt,
    library_of,
)
from matpac_cli.cli._preflight import check_outputs, load_predictor, run_options
from matpac_cli.cli._reporter import Reporter
from matpac_cli.cli._stdout import SafeStdout
from matpac_cli.errors import OutputError, UsageError

QueriesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Paths already in the index, audio files or folders (embedded with the index's model); '-' reads them from stdin.",
        show_default=False,
    ),
]
IndexOpt = Annotated[
    Path,
    typer.Option(
        "--index",
        "-i",
        help="The .npy (its .csv and manifest beside it) or .parquet (a file or a folder of shards) that `matpac embed --out` wrote, or a library folder (its files on disk; queries found by their audio, so a moved file is found; --model picks one of several models).",
    ),
]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Neighbours per query (0: every row).")]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        help=(
            "Cosine, -1 to 1. With --duplicates: pairs scoring at least this (default 0.98). "
            "Otherwise: only neighbours scoring at least this."
        )
    ),
]
DuplicatesOpt = Annotated[
    bool,
    typer.Option(
        "--duplicates", help="List pairs of near-identical files in the index (path_a,path_b,score), each pair once."
    ),
]
GroupsOpt = Annotated[
    bool,
    typer.Option(
        "--groups",
        help=(
            "With --duplicates: join the pairs into groups, one row per member (group,keep,path,match,score and "
            "the facts of the keep hint: lossless first, then higher sample rate, longer, larger bit depth; "
            "keep 1 is the copy to keep). Nothing is deleted."
        ),
    ),
]
ExactOpt = Annotated[
    bool,
    typer.Option(
        "--exact",
        help=(
            "Neighbours: compare each query with every row, never a vector index (built from 200,000 rows, "
            "kept in the library or ~/.cache/matpac; its answers are re-ranked by exact cosine, recall@10 at "
            "least 0.95). With --duplicates: compare every pair (quadratic: minutes at 100,000 rows); by default "
            "only the pairs that k-means cells and their bisector bound cannot rule out: the same pairs and scores."
        ),
    ),
]
SelfOpt = Annotated[
    bool, typer.Option("--include-self", help="Keep a query that is in the index among its own neighbours.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="csv, jsonl or parquet (a file only; default: from the --out extension, else csv)."
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=(
            "The checkpoint to embed audio queries with, where the manifest's cannot be found from here; "
            "it must have the sha256 the manifest records."
        ),
    ),
]
QueryBatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", "-b", help="Encoder chunks (6 s each) per batch, across the audio-file queries."),
]
LayerOpt = Annotated[
    str | None, typer.Option(help="The layer to search in an `--layer all` index (1-12 or last; default last).")
]


def search(
    queries: QueriesArg = None,
    index: IndexOpt = ...,
    top_k: TopKOpt = 10,
    threshold: ThresholdOpt = None,
    duplicates: DuplicatesOpt = False,
    groups: GroupsOpt = False,
    exact: ExactOpt = False,
    include_self: SelfOpt = False,
    out: RowsOutOpt = None,
    fmt: FormatOpt = None,
    force: ForceOpt = False,
    model: ModelOpt = None,
    layer: LayerOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    batch_size: QueryBatchOpt = 16,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    ext: ExtOpt = None,
    null: NullOpt = False,
    quiet: QuietOpt = False,
    failures: FailuresOpt = None,
    library: LibraryOpt = None,
    no_library: NoLibraryOpt = False,
) -> None:
    """Find the files of an index most like each query (cosine similarity), or --duplicates.

    Rows: query,rank,path,score (best first; a query in the index is not its own neighbour).

    Examples: matpac search song.flac --index emb.npy --top-k 5
              matpac search --index emb.npy --duplicates --threshold 0.98 --out dups.csv
              matpac search --index emb.npy --duplicates --groups --out groups.csv
    """
    from matpac_cli.jobs import search as S
    from matpac_cli.outputs.writers import locked, output_format

    started = time.monotonic()
    if groups and not duplicates:
        raise UsageError("--groups joins the pairs of --duplicates into groups: give --duplicates with it")
    options = _check_options(queries, top_k, threshold, duplicates, batch_size, workers, threads, device, precision)
    fmt = output_format(out, fmt)
    target = None if out in (None, "-") else Path(out)
    queries = _listed(queries or [], null)
    written = _check_outputs(target, failures, force, index, queries, ext)
    with locked(*written):  # held until the summary: every file this run writes
        emb = S.open_index(index, model, layer)
        matrix, held = S.index_layer(emb, layer)
        reporter = Reporter(quiet, failures=failures)
        for note in getattr(emb.library, "notes", ()):  # a library's files not in the index, said
            reporter.warning(with_flags(note, ("layer",)))
        try:
            if duplicates and groups:
                _groups(emb, matrix, (threshold, exact), fmt, target, reporter, started)
            if duplicates:
                _duplicates(S, emb, matrix, (threshold, exact), fmt, target, reporter, started)
            plan, failed = S.plan_queries(emb, queries, _extensions(ext))
            for err in failed:
                reporter.failure(err)
            keep = library_of(library, no_library)
            if keep is None and emb.library is not None:
                keep = emb.path  # an index that is a library keeps its queries too
            embedded_now = _embedded(S, emb, plan, (model, held, keep), options, quiet, reporter)
            vectors = {**S.library_vectors(emb, plan), **embedded_now}
            finder = _finder(emb, matrix, held, exact, reporter)
            rows = S.neighbour_rows(emb.paths, matrix, plan, vectors, top_k, include_self, threshold, finder)
            _write(rows, S.NEIGHBOUR_COLUMNS, fmt, target)
        finally:
            reporter.close()
        answered = sum(1 for q in plan if q.row is not None or q.name in vectors)
        embedded = sum(1 for q in plan if q.path is not None and q.name in vectors)
        asked = answered + reporter.failed
        reporter.info(
            f"matpac: {asked} quer{'y' if asked == 1 else 'ies'}: {answered} searched ({embedded} embedded, "
            f"{answered - embedded} found in the index), {reporter.failed} failed; against "
            f"{matrix.shape[0]} x {matrix.shape[1]} in {time.monotonic() - started:.1f} s{_wrote(target)}"
        )
        raise typer.Exit(1 if reporter.failed else 0)


def _duplicates(
    S, emb, matrix, asked: tuple, fmt: str, target: Path | None, reporter: Reporter, started: float
) -> None:
    """`--duplicates`: every pair scoring at least the threshold (0.98 by default), streamed
    (`asked`: the threshold given or None, and --exact)."""
    threshold, exact = asked
    cut = 0.98 if threshold is None else threshold
    count = _write(S.duplicate_rows(emb.paths, matrix, cut, exact), S.DUPLICATE_COLUMNS, fmt, target)
    reporter.info(
        f"matpac: {count} pair(s) scoring >= {cut:g} among {len(emb.paths)} files "
        f"in {time.monotonic() - started:.1f} s{_wrote(target)}"
    )
    raise typer.Exit(0)


def _groups(emb, matrix, asked: tuple, fmt: str, target: Path | None, reporter: Reporter, started: float):
    """`--duplicates --groups`: the pairs joined into groups, each member's row in keep order."""
    from matpac_cli.jobs.dup_groups import GROUP_COLUMNS, duplicate_groups, group_rows

    threshold, exact = asked
    cut = 0.98 if threshold is None else threshold
    cwd = (emb.manifest or {}).get("cwd") if emb.library is None else None
    found = duplicate_groups(emb.paths, matrix, cut, emb.index, cwd if isinstance(cwd, str) else None, exact)
    _write(group_rows(emb.paths, found), GROUP_COLUMNS, fmt, target)
    reporter.info(
        f"matpac: {len(found.members)} group(s) of {found.files} files ({found.pairs} pair(s) scoring >= {cut:g}) "
        f"among {len(emb.paths)} files in {time.monotonic() - started:.1f} s; nothing deleted{_wrote(target)}"
    )
    raise typer.Exit(0)


def _finder(emb, matrix, layer, exact: bool, reporter: Reporter):
    """Neighbour search over `matrix`: from a vector index where it pays (one line when one is
    built), else exact (`jobs.search_index.NeighbourSearch`)."""
    from matpac_cli.events import Listeners
    from matpac_cli.jobs.search_index import NeighbourSearch

    return NeighbourSearch(
        emb,
        matrix,
        layer,
        exact,
        events=Listeners(warning=reporter.warning),
        note=lambda text: reporter.info(f"matpac: {with_flags(text, ('exact',))}"),
    )


def _check_options(queries, top_k, threshold, duplicates, batch_size, workers, threads, device, precision):
    """The arguments alone, refused before the index is read; the run's options."""
    options = run_options(device, precision, threads, batch_size, workers)
    if top_k < 0:
        raise UsageError(f"--top-k {top_k}: give 0 (every row) or a positive count")
    if threshold is not None and not -1.0 <= threshold <= 1.0:  # NaN fails both
        raise UsageError(f"--threshold {threshold}: give a cosine similarity between -1 and 1")
    if duplicates and queries:
        raise UsageError("--duplicates compares the index with itself; give no QUERY with it")
    if not duplicates and not queries:
        raise UsageError("give at least one QUERY (a path in the index or an audio file), or --duplicates")
    return options


def _listed(queries: list[str], null: bool) -> list[str]:
    """The queries with `-` replaced by the names stdin lists, read before the output checks, so
    a query named there is an input like any other: never replaced, even with --force."""
    from matpac_cli.pipeline.discovery import read_path_list

    names: list[str] = []
    for query in queries:
        names += read_path_list(sys.stdin, null) if query == "-" else [query]
    return names


def _check_outputs(
    target: Path | None, failures: Path | None, force: bool, index: Path, queries: list[str], ext: str | None
) -> list[Path]:
    """--out's rules for --out and --failures (the index and the queries are this run's inputs);
    the files to lock."""
    from matpac_cli.outputs.readers import embeddings_inputs
    from matpac_cli.outputs.writers import ensure_writable
    from matpac_cli.pipeline.discovery import Item, discover

    for path in (target, failures):
        if path is not None:
            ensure_writable(path)
    if target is not None and target.exists() and not force:
        raise OutputError(f"{target} exists; use --force to replace it")
    inputs = [Item(str(p), p) for p in embeddings_inputs(Path(index))]
    inputs += [Item(q, Path(q)) for q in queries]
    folders = [q for q in queries if Path(q).is_dir()]
    inputs += discover(folders, _extensions(ext)) if folders else []
    return check_outputs({"--out": target}, inputs, force, failures)


def _extensions(ext: str | None):
    from matpac_cli.pipeline.discovery import parse_extensions

    return parse_extensions(ext)


def _embedded(S, emb, plan, asked, options, quiet, reporter) -> dict:
    """Vectors of the audio-file queries, embedded with the index's own (verified) model
    (`asked`: the model, the layer and the library to read and keep them in)."""
    model, layer, library = asked
    if not any(q.path is not None for q in plan):
        return {}
    resolved = S.query_model(emb, model)
    predictor = load_predictor(resolved, options, quiet)
    from matpac_cli.events import Listeners

    return S.embed_queries(plan, predictor, layer, options, Listeners(failure=reporter.failure), library)


def _write(rows: Iterable[dict], columns: list[str], fmt: str, target: Path | None) -> int:
    """Stream rows to stdout, or to `target` (atomically: the file appears whole or not at all)."""
    from matpac_cli.outputs.writers import RowWriter, Unit, row_file

    count = 0
    if target is None:
        writer = RowWriter(SafeStdout(sys.stdout), fmt, columns)
        for row in rows:
            writer.write(row)
            count += 1
        writer.flush()
        return count
    with Unit() as unit, row_file(unit, target, fmt, columns) as writer:
        for row in rows:
            writer.write(row)
            count += 1
    return count


def _wrote(target: Path | None) -> str:
    return f"; wrote {target}" if target is not None else ""
