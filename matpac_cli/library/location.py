"""Where the library lives: `library=DIR` (`--library`), else $MATPAC_LIBRARY, else
$XDG_CACHE_HOME/matpac/library (~/.cache/matpac/library), beside the Hugging Face cache's
downloads. `MATPAC_LIBRARY=off` (or `library=False`, `--no-library`) runs without one."""

from __future__ import annotations

import os
from pathlib import Path

from matpac_cli.config import cache_home

ENV = "MATPAC_LIBRARY"
OFF = {"off", "none", "0", "no"}


def default_root() -> Path | None:
    """The library of this environment, or None where $MATPAC_LIBRARY turns it off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    return cache_home() / "library"


def resolve_root(library: Path | str | bool | None) -> Path | None:
    """`library` as a caller gives it: a folder, None for the default, False for none."""
    if library is False:
        return None
    if library is None or library is True:
        return default_root()
    return Path(library).expanduser()
