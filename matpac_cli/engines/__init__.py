"""Execution engines: the same jobs, run here (`local`, threads in this process) or on a Ray
cluster (`ray`, an optional extra). Both take the same plans and call the same callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from matpac_cli.config import RunOptions

if TYPE_CHECKING:  # the CLI checks `--engine` through here before torch is imported
    from matpac_cli.errors import InputError
    from matpac_cli.pipeline.assemble import FileResult, Plan
    from matpac_cli.pipeline.discovery import Item


def check(options: RunOptions) -> None:
    """`ray` only where Ray Data is installed: one line before any model loads (the engine's
    name itself was checked when the options were built)."""
    if options.engine == "ray":
        from matpac_cli.engines.ray.driver import require

        require()


def run(
    options: RunOptions,
    items: Iterable[Item],
    plans: list[Plan],
    on_result: Callable[[FileResult], None] = lambda r: None,
    on_failure: Callable[[InputError], None] = lambda e: None,
    on_progress: Callable[[Item, float], None] = lambda i, s: None,
    on_audio: Callable[[float], None] = lambda s: None,
    on_warning: Callable[[str], None] = lambda text: None,
) -> int:
    """Every item through every plan on `options.engine`; returns how many tries were reruns of
    work whose process died (Ray's). `on_warning` hears of a Ray job stopped for making no
    progress and run again."""
    if options.engine == "ray":
        from matpac_cli.engines.ray.driver import run as run_ray

        return run_ray(
            items,
            plans,
            options.batch_size,
            options.workers,
            on_result,
            on_failure,
            on_progress,
            on_audio,
            address=options.address,
            on_warning=on_warning,
        )
    from matpac_cli.engines.local import run as run_local

    run_local(items, plans, options.batch_size, options.workers, on_result, on_failure, on_progress, on_audio)
    return 0
