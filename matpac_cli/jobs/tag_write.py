"""`tag --write` and `tag --undo`: the labels into each file's own tags, and back out.

Files are tagged as they finish (from the library where it holds them), so a long run leaves
every finished file written. Per file: the labels each head kept (the same selection as the
rows: `top_k`, `threshold`), mapped onto the fields of `outputs.filetags`. Each change is printed
once written (`path: changed FIELD: 'old' -> 'new'`), or with `dry_run` what would change, and
nothing is written; a file that holds those values already is not written (a re-run writes nothing). Before a file's first write its previous
values go into the library's undo journal (`outputs.filesafe`), then the copy-verify-rename
write. A file that fails is named in one line and left as it was; the run goes on (exit 1). An
input that is a symlink is written in the file it points to (journalled by that file's path).

The library's key is the audio packets, so a file whose tags matpac (or anyone) rewrote is found
again by its key and never encoded twice. Writing needs the library: the journal lives there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from matpac_cli import __version__
from matpac_cli.errors import InputError, UsageError
from matpac_cli.events import KeepFailures, NoEvents, RunEvents
from matpac_cli.jobs import stored
from matpac_cli.jobs.embed import Summary
from matpac_cli.jobs.tag_rows import score, select
from matpac_cli.outputs import filesafe, filetags
from matpac_cli.outputs.safetext import for_terminal
from matpac_cli.pipeline.assemble import FileResult, Plan
from matpac_cli.pipeline.discovery import Item


def check_library(library_setting) -> Path:
    """The library folder the undo journal lives in; without one, `write` is refused (said
    before any model loads)."""
    from matpac_cli.library.location import resolve_root

    root = resolve_root(library_setting)
    if root is None:
        raise UsageError(
            "`write` and `undo` keep the previous tags in the library, for undo: run them with a library",
            settings=("write", "undo", "library"),
        )
    return root


def _journal(library_setting) -> filesafe.Journal:
    root = check_library(library_setting)
    root.mkdir(parents=True, exist_ok=True)
    return filesafe.Journal(root)


def source_of(groups: list) -> str:
    """MATPAC_SOURCE: which matpac, encoders and heads wrote the fields (a re-run compares it)."""
    models = ", ".join(g.model for g in groups)
    heads = ", ".join(h.name for g in groups for h in g.heads)
    return f"matpac {__version__}; model {models}; heads {heads}"


def labels_of(res: FileResult, groups: list, config) -> dict[str, list[str]]:
    """kind -> the labels its heads kept for this file, best first (heads of no kind: none)."""
    scores = score(res, groups, False, config.min_segment)
    out: dict[str, list[str]] = {}
    for g in groups:
        for head in g.heads:
            kind = filetags.kind_of(head.name)
            if kind is None:
                continue
            kept = select(scores[f"clip:{head.name}"], config.top_k, config.threshold)
            names = out.setdefault(kind, [])
            names += [head.labels[i] for _, i in kept if head.labels[i] not in names]
    return out


def write_tags(items: list[Item], groups: list, config, stdout: TextIO, events: RunEvents | None = None) -> Summary:
    """Tag `items` and write the labels into them (see the module docstring)."""
    spec = config.write
    filetags.check_spec(spec)
    if not any(filetags.kind_of(h.name) for g in groups for h in g.heads):
        raise UsageError(
            "none of these heads feeds a tag field (genre, mood or instruments heads do)", settings=("heads", "write")
        )
    journal = _journal(config.library)
    summary = Summary()
    summary.tagged = 0  # files whose tags were written (the summary line says how many)
    events = KeepFailures(events if events is not None else NoEvents(), summary.failures)
    source = source_of(groups)
    library = stored.open_library(config.library, config.retry_failed)

    def on_result(res: FileResult) -> None:
        summary.count(res)
        if res.item.linked:  # never a symlink planted in a folder: only the files named or walked
            events.failure(
                InputError(
                    res.item.name, "tags not written (reached through a symlink in the folder; name the file itself)"
                )
            )
            return
        try:
            path = Path(res.item.path).resolve(strict=True)  # a symlink named on the command line: its file
            current = filetags.read_fields(filetags.open_tags(path))
            todo = filetags.changes(current, filetags.wanted(labels_of(res, groups, config), source, current, spec))
        except Exception as exc:  # noqa: BLE001 - a file mutagen cannot read: named, the run goes on
            events.failure(InputError(res.item.name, f"tags not read ({_why(exc)}); the file is as it was"))
            return
        if not todo or spec.dry_run:
            _say(stdout, res.item.name, todo, spec.dry_run)  # a closed stdout ends the run, as for rows
            return
        from matpac_cli.library.key import audio_key

        try:
            journal.record(path, audio_key(path), {k: current.get(k) for k in todo})
            filesafe.replace_tags(path, {k: new for k, (_, new) in todo.items()}, audio_key, spec.touch)
        except Exception as exc:  # noqa: BLE001 - any file's failure: named, left as it was, the run goes on
            events.failure(InputError(res.item.name, f"tags not written ({_why(exc)}); the file is as it was"))
            return
        _say(stdout, res.item.name, todo, False)
        summary.tagged += 1

    plans = [Plan(g.predictor, layers=(-1,), segments=False) for g in groups]
    try:
        ran = stored.run(library, config.options, items, plans, events, on_result, summary.found)
        summary.retries, summary.ran_on = summary.retries + ran.retries, ran.device
    finally:
        stored.close(library, summary)
    return summary


def undo(items: list[Item], library_setting, dry_run: bool, stdout: TextIO, events: RunEvents | None = None) -> Summary:
    """Put back the values the journal holds for each of `items` (files it has none of: left)."""
    from matpac_cli.library.key import audio_key

    journal = filesafe.Journal(check_library(library_setting))  # none there: nothing to restore, nothing made
    summary = Summary()
    events = KeepFailures(events if events is not None else NoEvents(), summary.failures)
    for item in items:
        if item.problem or not Path(item.path).is_file():
            events.failure(InputError(item.name, item.problem or "not a file"))
            continue
        path = Path(item.path).resolve()
        rec = journal.find(path)
        if rec is None:
            continue
        try:
            if audio_key(path) != rec["key"]:
                raise filesafe.TagWriteError("its audio changed since matpac wrote its tags; not restored")
            todo = filetags.changes(filetags.read_fields(filetags.open_tags(path)), rec["fields"])
        except Exception as exc:  # noqa: BLE001 - as in write_tags
            events.failure(InputError(item.name, f"tags not restored ({_why(exc)}); the file is as it was"))
            continue
        try:
            if not dry_run and todo:
                filesafe.replace_tags(path, rec["fields"], audio_key)
        except Exception as exc:  # noqa: BLE001 - as in write_tags
            events.failure(InputError(item.name, f"tags not restored ({_why(exc)}); the file is as it was"))
            continue
        _say(stdout, item.name, todo, dry_run)
        if not dry_run:
            journal.restored(path)
        summary.done += 1
    return summary


def _say(stdout: TextIO, name: str, todo: dict, dry_run: bool) -> None:
    """One line per field that changes (or would, with `dry_run`)."""
    verb = "would change" if dry_run else "changed"
    for field, (old, new) in todo.items():
        old_s = "; ".join(old) if old else ""
        new_s = "; ".join(new) if new else ""
        stdout.write(for_terminal(f"{name}: {verb} {field}: {old_s!r} -> {new_s!r}") + "\n")
    stdout.flush()


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return for_terminal(text[0] if text else type(exc).__name__)
