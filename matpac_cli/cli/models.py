"""`matpac models`: list, download and verify weights; print a head's labels."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from matpac_cli.cli._errors import flagged
from matpac_cli.cli._options import Command, ForceOpt, Group
from matpac_cli.cli._reporter import Reporter

app = typer.Typer(cls=Group, no_args_is_help=True, help="List, download, verify models and heads; print labels.")

MODEL_COLUMNS = ("model", "description", "family", "source", "cached")
HEAD_COLUMNS = ("head", "aliases", "classes", "activation", "encoders", "cached", "label_order")


def catalog() -> dict:
    """Every model and head of the registry, where it comes from, and what is cached (JSON-ready)."""
    import urllib.parse

    from matpac_cli.checkpoints.registry import load_registry
    from matpac_cli.checkpoints.resolve import cached_files, release_base, release_path
    from matpac_cli.errors import WeightsError
    from matpac_cli.inference.probe_zip import zip_tasks

    reg = load_registry()
    models = [
        {
            "name": m.name,
            "description": m.description,
            "family": m.family,
            "hub": m.hub,
            "revision": m.revision,
            "release": m.release and urllib.parse.unquote(m.release),
            "cached": bool(files := cached_files(m)),
            "files": [str(p) for _, p in files],
        }
        for m in reg.models.values()
    ]
    cached = {m["name"]: m["cached"] for m in models}
    zpath = release_path(reg.probes_release)
    tasks = None
    if zpath.is_file():
        try:
            tasks = zip_tasks(zpath)
        except WeightsError:
            tasks = None  # unreadable: say what the registry says; `models verify` names the problem
    heads = []
    for h in reg.heads.values():
        encoders = reg.encoders_for(h)
        if tasks is not None and not h.builtin:
            encoders = [e for e in encoders if (h.task or h.name) in tasks.get(reg.models[e].family, set())]
        heads.append(
            {
                "name": h.name,
                "aliases": list(h.aliases),
                "description": h.description,
                "classes": h.classes,
                "activation": h.activation,
                "kind": "builtin" if h.builtin else "probe",
                "encoders": encoders,
                "cached": cached.get(h.builtin, False) if h.builtin else zpath.is_file(),
                "label_order": "confirmed" if h.confirmed_order else "unconfirmed",
            }
        )
    probes = {
        "release": urllib.parse.unquote(reg.probes_release),
        "url": release_base() + reg.probes_release,
        "cached": zpath.is_file(),
        "path": str(zpath) if zpath.is_file() else None,
    }
    return {"models": models, "heads": heads, "probes": probes}


def _model_row(m: dict) -> list[str]:
    sources = [s for s in (m["hub"] and f"hf:{m['hub']}", m["release"] and f"release:{m['release']}") if s]
    return [m["name"], m["description"], m["family"] or "-", ", ".join(sources), "yes" if m["cached"] else "no"]


def _head_row(h: dict) -> list[str]:
    return [
        h["name"],
        ",".join(h["aliases"]) or "-",
        str(h["classes"]),
        h["activation"],
        ",".join(h["encoders"]) or "-",
        "yes" if h["cached"] else "no",
        h["label_order"],
    ]


def _print_tsv(data: dict) -> None:
    def line(cells) -> str:
        return "\t".join(str(c).replace("\t", " ") for c in cells) + "\n"

    out = [
        line(MODEL_COLUMNS),
        *(line(_model_row(m)) for m in data["models"]),
        "\n",
        line(HEAD_COLUMNS),
        *(line(_head_row(h)) for h in data["heads"]),
    ]
    sys.stdout.write("".join(out))


def _table(title: str, columns: tuple[str, ...], rows: list[list[str]], keep: set[int]):
    """A rich table; the columns in `keep` keep their longest line whole, the others wrap."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col.replace("_", " "), no_wrap=i in keep, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _print_tables(data: dict) -> None:
    from rich.console import Console

    model_rows = [_model_row(m) for m in data["models"]]
    for row in model_rows:
        row[3] = row[3].replace(", ", "\n")
    head_rows = [_head_row(h) for h in data["heads"]]
    for row in head_rows:
        row[1], row[4] = row[1].replace(",", ", "), row[4].replace(",", "\n")
    zip_state = "cached" if data["probes"]["cached"] else "not cached: matpac models download probes"
    models = _table("Models", MODEL_COLUMNS, model_rows, keep={0})
    heads = _table(f"Heads (matpac tag --head NAME); probe zip {zip_state}", HEAD_COLUMNS, head_rows, keep={0, 4})
    console = Console(highlight=False)
    console.print(models)
    console.print(heads)


@app.command("list", cls=Command)
def models_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object with the models, heads and probe zip.")
    ] = False,
) -> int:
    """Models and heads this version knows, where they come from, which encoders each head exists
    for, and whether they are cached. Tab-separated columns when stdout is not a terminal."""
    import json

    data = catalog()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif sys.stdout.isatty():
        _print_tables(data)
    else:
        _print_tsv(data)
    return 0


def download_targets(names: list[str]) -> list[str]:
    """Expand `all`, refuse unknown names (with a near miss), keep the order, drop repeats."""
    from matpac_cli.checkpoints.registry import load_registry, suggest
    from matpac_cli.errors import UsageError

    models = list(load_registry().models)
    known = [*models, "probes", "all"]
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [*models, "probes"]
        elif name in known or name.startswith("hf:"):
            out.append(name)
        else:
            raise UsageError(
                f"unknown name {name!r}{suggest(name, known)}; give model names ({', '.join(models)}), "
                "'probes' (the probe-head zip), 'all', or hf:OWNER/REPO[@REVISION]"
            )
    return list(dict.fromkeys(out))


def _fetch(name: str, force: bool) -> str:
    progress = sys.stderr.isatty()
    if name == "probes":
        from matpac_cli.inference.probe_zip import probes_dir

        return f"matpac: probe heads ready in {probes_dir(progress=progress, force=force)}"
    from matpac_cli.checkpoints.resolve import resolve

    res = resolve(name, progress=progress, force=force)
    return f"matpac: {res.name} ready: {res.path} (sha256 {res.sha256}, from {res.source})"


@app.command("download", cls=Command)
def models_download(
    names: Annotated[
        list[str],
        typer.Argument(
            help="Model names, 'probes' (the probe-head zip), or 'all' (every model and the probes).",
            show_default=False,
            metavar="NAME...",
        ),
    ],
    force: ForceOpt = False,
) -> int:
    """Fetch models (and the probe zip) into the cache and record their sha256.

    Example: matpac models download matpac-plus probes
    """
    from matpac_cli.checkpoints.resolve import NoNetwork, offline
    from matpac_cli.errors import ModelError, WeightsError

    targets = download_targets(names)
    if offline():
        raise WeightsError(
            "cannot download while HF_HUB_OFFLINE is set; unset it (or set HF_HUB_OFFLINE=0) "
            "on a machine with network access and run again"
        )
    reporter = Reporter(False)
    failed: list[str] = []
    for name in targets:
        try:
            reporter.info(_fetch(name, force))
        except NoNetwork:
            raise
        except (WeightsError, ModelError) as exc:
            if len(targets) == 1:
                raise
            failed.append(name)
            reporter.info(f"matpac: error: {flagged(exc)}")
    if failed:
        raise WeightsError(f"{len(failed)} of {len(targets)} not downloaded: {', '.join(failed)}")
    return 0


@app.command("labels", cls=Command)
def models_labels(
    head: Annotated[
        str,
        typer.Argument(
            help="Head name or alias, or a head file (from `matpac train`, or a registry head's probe file)."
        ),
    ],
    raw: Annotated[
        bool, typer.Option("--raw", help="The dataset's own tag ids (genre---trance), as the tag_id column has them.")
    ] = False,
) -> int:
    """Print a head's labels as tag outputs name them, one per line, in the index order its weights
    were trained with (--raw: the dataset's tag ids; a trained head's classes are shown as given). On a terminal, control characters in a label (a head
    someone else trained) are shown as escapes; a pipe gets the exact text."""
    from matpac_cli.inference.heads import plain_labels

    tag_ids, dataset = _head_tag_ids(head)
    labels = plain_labels(tag_ids) if dataset and not raw else tag_ids
    sys.stdout.write("".join(_for_stdout(label) + "\n" for label in labels))
    return 0


def _for_stdout(line: str) -> str:
    """`line` as printed on stdout: escaped for a terminal (as `RowWriter`), exact into a pipe."""
    from matpac_cli.outputs.safetext import for_terminal

    return for_terminal(line) if sys.stdout.isatty() else line


def _head_tag_ids(head: str) -> tuple[list[str], bool]:
    """A registry head's label file, or the classes a head file names (read, never run); and
    whether they are a registry dataset's tags (shown by `plain_labels`) rather than a user's."""
    from pathlib import Path

    from matpac_cli.checkpoints.registry import load_registry
    from matpac_cli.checkpoints.trained_head import is_trained_head, load_head
    from matpac_cli.errors import UsageError
    from matpac_cli.inference.heads import spec_for_stem
    from matpac_cli.inference.probe_zip import HEAD_SUFFIXES

    path = Path(head).expanduser()
    if path.suffix in HEAD_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"head file {head} does not exist" if not path.exists() else f"head {head} is not a file")
        if is_trained_head(path):
            return load_head(path).classes, False
        spec = spec_for_stem(path.stem)
        if spec is None:
            raise UsageError(
                f"{head}: not a head `matpac train` wrote, nor a probe file of a registry head; "
                "its labels are what you give with --labels"
            )
    else:
        spec = load_registry().head(head)
    if not spec.confirmed_order:
        Reporter(False).info(
            f"matpac: note: the authors did not publish the {spec.name} label order; this is the likely one"
        )
    return spec.labels(), True


@app.command("verify", cls=Command)
def models_verify() -> None:
    """Re-hash every cached weight file; a mismatch is reported and the file is refused on use."""
    from matpac_cli.checkpoints.resolve import cached_for_verify, recorded_hashes, verify
    from matpac_cli.errors import WeightsError

    reporter = Reporter(False)
    checked = cached_for_verify()
    recorded_hashes()  # damaged records: one line, before any file is called a mismatch
    bad = 0
    for name, key, path, expected in checked:
        try:
            digest = verify(path, key, expected, f"matpac models download {name}", fresh=True)
            sys.stdout.write("\t".join(map(_for_stdout, ("ok", name, digest, str(path)))) + "\n")
        except WeightsError as exc:
            bad += 1
            sys.stdout.write("\t".join(map(_for_stdout, ("MISMATCH", name, "-", str(path)))) + "\n")
            reporter.info(f"matpac: {flagged(exc)}")
    reporter.info(f"matpac: {len(checked)} cached file(s) checked, {bad} mismatched")
    raise typer.Exit(2 if bad else 0)
