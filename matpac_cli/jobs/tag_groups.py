"""The encoders and heads of a tag run, loaded for a caller of the library.

`matpac tag` loads them in cli/ (with its progress and notes); a program that uses matpac as a
library (the beets plugin, `beetsplug/matpac.py`) has no command line, so it loads them here
and hands the groups to `tag`, the same run the command makes.
"""

from __future__ import annotations

from collections.abc import Iterable

from matpac_cli.config import RunOptions
from matpac_cli.jobs.tag import Group, build_heads
from matpac_cli.jobs.tag_plan import DEFAULT_HEADS, plan_groups


def load_groups(
    heads: Iterable[str] | None = None,
    model: str | None = None,
    options: RunOptions | None = None,
    progress: bool = False,
) -> list[Group]:
    """Each encoder the heads need (`tag_plan.plan_groups`), loaded once on `options`' device
    and precision with its heads (`heads`: names, aliases or probe files; None: genre, mood,
    instrument; `model`: every head's encoder, None: each head's own)."""
    from matpac_cli.inference.predictor import Predictor

    options = options or RunOptions()
    groups = []
    for name, head_names in plan_groups(heads or DEFAULT_HEADS, model):
        predictor = Predictor.load(name, options.device, options.precision, options.threads, progress=progress)
        groups.append(Group(name, build_heads(head_names, predictor, None, progress), predictor))
    return groups
