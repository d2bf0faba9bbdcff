"""Files given up because working on them killed the process (a decoder that segfaults, an
out-of-memory kill), recorded in the library's `failed` table by audio key, with the reason.

Such a file costs a run `GIVE_UP` dead workers and their retries each time it is met, so a later
run skips it (one line naming it) until asked to try it again; an error a decoder merely raises
(a corrupt file) costs little to meet again and is not recorded. A file that failed in decoding
failed whatever the model (its row's model is ""); one that killed the encoder failed for that
model and front-end setting only. Such files are rare: each record is written at once (no
buffer to lose), and the table is read whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from matpac_cli.library import tables
from matpac_cli.library.key import Setting

ANY = Setting("", "")  # a decoding failure: the file fails before any model runs


def record(root: Path, key: str, settings: Iterable[Setting], reason: str) -> None:
    """`key` failed, for each of `settings` (`ANY` for its decoding), because of `reason`."""
    now = time.time()
    rows: dict[str, list] = {name: [] for name in tables.FAILED.names}
    for setting in settings:
        for name, value in zip(tables.FAILED.names, (key, setting.model, setting.frontend, reason, now)):
            rows[name].append(value)
    tables.append(root, "failed", rows)


def failed_before(root: Path, keys: Iterable[str], settings: Iterable[Setting]) -> dict[str, str]:
    """key -> the latest reason, for the `keys` that failed in decoding or for one of `settings`
    (a library from before the table: none)."""
    ds = tables.open_table(root, "failed")
    wanted = set(keys)
    if ds is None or not wanted:
        return {}
    relevant = {(s.model, s.frontend) for s in settings} | {(ANY.model, ANY.frontend)}
    t = ds.to_table(columns=["key", "model", "frontend", "reason", "added"]).to_pydict()
    latest: dict[str, tuple[float, str]] = {}
    for key, model, frontend, reason, added in zip(t["key"], t["model"], t["frontend"], t["reason"], t["added"]):
        if key in wanted and (model, frontend) in relevant and added >= latest.get(key, (-1.0, ""))[0]:
            latest[key] = (added, reason)
    return {key: reason for key, (_, reason) in latest.items()}


def clear(root: Path, key: str, settings: Iterable[Setting]) -> None:
    """`key` ran through: its records for `settings` and for its decoding are dropped (a record
    of another model's encoder stays)."""
    if tables.open_table(root, "failed") is None:
        return
    pairs = [
        f"({tables.equals('model', s.model)} AND {tables.equals('frontend', s.frontend)})" for s in (ANY, *settings)
    ]
    tables.delete(root, "failed", f"{tables.equals('key', key)} AND ({' OR '.join(pairs)})")
