"""`matpac tag`'s encoders: every model of the run checked before the first loads, then each
loaded once with its heads (cli/tag.py runs them)."""

from __future__ import annotations

import sys
from pathlib import Path

from matpac_cli.cli._preflight import check_model, load_on
from matpac_cli.cli._reporter import Reporter


def load_groups(plan: list, runner, labels: Path | None, quiet: bool) -> list:
    """Each encoder of the plan loaded once, with its heads; what will run is said once."""
    from matpac_cli.jobs.tag import Group, build_heads
    from matpac_cli.jobs.tag_plan import describe

    reporter = Reporter(quiet)
    groups = []
    for model_name, spec, head_names in plan:
        predictor = load_on(runner, spec, quiet)
        groups.append(
            Group(model_name, build_heads(head_names, predictor, labels, not quiet and sys.stderr.isatty()), predictor)
        )
    reporter.info(f"matpac: {describe(groups)}")
    for g in groups:
        for h in g.heads:
            if h.standardised and h.kind == "probe":
                reporter.info(f"matpac: head {h.name}: standardising features with the statistics in its file")
    return groups


def check_models(plan: list) -> list:
    """Every model of the plan is checked before the first one loads (a typo in the second
    costs no download of the first): [(name, what to load, heads)]. A local file is hashed here."""
    from matpac_cli.jobs.tag_plan import check_encoders

    check_encoders(plan)
    return [(name, check_model(name), heads) for name, heads in plan]


def check_device(options) -> None:
    """This machine has the device (and it the precision) before any encoder loads."""
    from matpac_cli.inference.predictor import pick_device, pick_dtype

    pick_dtype(options.precision, pick_device(options.device))
