"""Every job's encoder pass goes through the library: what it holds for the run's models and
settings is handed on without encoding, the rest runs on the engine and is stored as it comes.

`run` has the engines' shape (`engines.run`) plus the library: a file the library has for every
plan reaches `on_result` at once, marked `found` (how it was known), and is reported to the
events as reused; the others are encoded, each stored when it finishes (committed every few
files, so an interrupted run loses only the files in flight). Plans that keep frames (`--frames`,
not stored) take a file from the library only where its frames file is there already.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from matpac_cli import engines
from matpac_cli.config import RunOptions
from matpac_cli.errors import OutputError, one_line
from matpac_cli.events import Ran, RunEvents
from matpac_cli.pipeline.assemble import FileResult, Plan
from matpac_cli.pipeline.discovery import Item


def open_library(library: Path | str | bool | None):
    """The run's `Library` (None: the default location; False: none), or None where the
    environment turns it off. A location that cannot be made is one line, before any model loads."""
    from matpac_cli.library.location import resolve_root

    root = resolve_root(library)
    if root is None:
        return None  # and pyarrow, Lance are not imported
    from matpac_cli.library.store import Library

    try:  # made now, so that a place where it cannot be is said before any model loads
        root.mkdir(parents=True, exist_ok=True)
        usable = root.is_dir() and _writable(root)
    except OSError as exc:
        raise OutputError(
            f"library {root}: cannot be made ({one_line(exc)}); give another `library`", settings=("library",)
        ) from None
    if not usable:
        raise OutputError(f"library {root}: not a writable folder; give another `library`", settings=("library",))
    return Library(root)


def resume_note(library: Path | str | bool | None) -> str:
    """What an interrupted run leaves to resume from: the library's files, where there is one."""
    from matpac_cli.library.location import resolve_root

    root = resolve_root(library)
    if root is None:
        return ""
    return f"finished files are kept in the library {root}; run the same command to resume"


def _writable(root: Path) -> bool:
    import os

    return os.access(root, os.W_OK | os.X_OK)


def run(
    library,
    options: RunOptions,
    items: list[Item],
    plans: list[Plan],
    events: RunEvents,
    on_result: Callable[[FileResult], None],
    found: Counter | None = None,
    frames_kept: Callable[[Item], bool] | None = None,
) -> Ran:
    """`engines.run` over what `library` lacks (all of `items` where `library` is None); `found`
    counts the files taken from the library by how they were known. Frames are not stored: a
    plan that keeps them takes a file from the library only where `frames_kept` says its frames
    file from an earlier run is there (its result then has no frames)."""
    if library is None:
        return engines.run(options, items, plans, events, on_result)
    from matpac_cli.library.key import Setting
    from matpac_cli.library.store import stored_result
    from matpac_cli.library.tables import guarded

    found = found if found is not None else Counter()
    settings = [Setting.of(p) for p in plans]
    with guarded(library.root):
        known = library.identify(items)
        keys = [k.key for k in known.values()]
        held = [
            {} if p.frames and frames_kept is None else library.lookup(keys, s, p.resolved_layers(), p.segments)
            for p, s in zip(plans, settings)
        ]
    framed = any(p.frames for p in plans)
    todo, by_item = [], {}
    for i, item in enumerate(items):
        k = known.get(i)
        if k is not None and all(k.key in h for h in held) and (not framed or frames_kept(item)):
            res = stored_result(item, plans, [h[k.key] for h in held])
            res.found = k.how
            found[k.how] += 1
            on_result(res)
            events.reused(item, res.duration_s)
            continue
        todo.append(item)
        if k is not None:
            by_item[item] = k.key
    with guarded(library.root):
        library.commit()  # the paths seen, before any encoding

    def storing(res: FileResult) -> None:
        key = by_item.get(res.item)
        if key is not None:
            with guarded(library.root):
                for plan, setting, out in zip(plans, settings, res.outputs):
                    library.add(key, setting, plan, res, out)
            _say_unwritable(library, events)
        on_result(res)

    return engines.run(options, todo, plans, events, storing)


def close(library, summary, events: RunEvents | None = None) -> None:
    """The library's last commit and tidy; `summary.library` says which library, at which version."""
    if library is None:
        return
    from matpac_cli.library.tables import guarded

    with guarded(library.root):
        library.close()
        summary.library = {"path": str(library.root), "version": library.version()}
    if events is not None:
        _say_unwritable(library, events)


def _say_unwritable(library, events: RunEvents) -> None:
    """A library that could not be written (a full disk) is said once; the run goes on."""
    if library.unwritable is not None and not library.told:
        library.told = True
        events.warning(
            f"{library.unwritable}; the run goes on without it: its output is whole, but the files "
            "it encodes from now on are not kept (free some space, or give another library folder)"
        )
