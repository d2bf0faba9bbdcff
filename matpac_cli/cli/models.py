"""`matpac models`: list, download and verify weights; print a head's labels."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from matpac_cli.cli._common import Reporter
from matpac_cli.cli._options import ForceOpt

app = typer.Typer(no_args_is_help=True, help="List, download, verify models and heads; print labels.")


@app.command("list")
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


@app.command("download")
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


@app.command("labels")
def models_labels(head: Annotated[str, typer.Argument(help="Head name or alias.")]) -> int:
    """Print a head's labels, one per line, in the index order its weights were trained with."""
    from matpac_cli.registry import load_registry

    spec = load_registry().head(head)
    if not spec.confirmed_order:
        Reporter(False).info(f"matpac: note: the authors did not publish the {spec.name} label order; this is the likely one")
    sys.stdout.write("".join(label + "\n" for label in spec.labels()))
    return 0


@app.command("verify")
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
