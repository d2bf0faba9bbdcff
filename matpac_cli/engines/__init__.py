"""Execution engines: the same jobs, run here (`local`, threads in this process) or on a Ray
cluster (`ray`, an optional extra). Both take the same plans and call the same callbacks."""

from __future__ import annotations

from matpac_cli.errors import UsageError

ENGINES = ("local", "ray")


def check(engine: str) -> str:
    """`--engine`: refused in one line unless known, and `ray` only where Ray Data is installed."""
    name = (engine or "local").lower()
    if name not in ENGINES:
        raise UsageError(f"engine={engine}: expected {' or '.join(ENGINES)}", settings=("engine",))
    if name == "ray":
        from matpac_cli.engines.ray.driver import require

        require()
    return name


def run(engine: str, *args, address: str | None = None, on_warning=None, **kwargs) -> int:
    """`pipeline.run(items, plans, batch_size, workers, on_result, on_failure, on_progress, on_audio)`
    on the chosen engine; returns how many tries were reruns of work whose process died (Ray's).
    `on_warning` hears of a Ray job stopped for making no progress and run again."""
    if engine == "ray":
        from matpac_cli.engines.ray.driver import run as run_ray

        return run_ray(*args, address=address, on_warning=on_warning or (lambda text: None), **kwargs)
    from matpac_cli.engines.local import run as run_local

    run_local(*args, **kwargs)
    return 0
