"""The lint and format gate stays wired in: CI (`.ci/run`) runs line 2 of the README's first bash
block verbatim, so that line must run ruff's linter and formatter check before the tests, and
the `test` extra it installs must bring ruff."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO


def _ci_test_command() -> str:
    """Line 2 of the README's first bash block, taken the way `.ci/run` takes it (awk + sed)."""
    script = "awk '/^```bash$/{f=1;next} f&&/^```$/{exit} f' README.md | sed -n 2p"
    return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def test_the_ci_command_runs_the_gate_before_the_tests():
    command = _ci_test_command()
    steps = [step.strip() for step in command.split("&&")]
    assert "pip install '.[test]'" in steps
    gate = [steps.index("ruff check ."), steps.index("ruff format --check ."), steps.index("python -m pytest")]
    assert gate == sorted(gate), command  # linter, formatter, then the tests; `&&` stops at the first failure
    assert "pytest" in command  # what .ci/run itself insists on


def test_the_test_extra_installs_ruff():
    text = (REPO / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*)\]$", text, re.M).group(1)
    assert re.search(r'"ruff>=[0-9.]+"', test_extra), test_extra


def test_ruff_is_configured_in_pyproject():
    """One configuration, in pyproject.toml: no ruff.toml or .ruff.toml beside it to override it."""
    text = (REPO / "pyproject.toml").read_text()
    assert "[tool.ruff]" in text and "[tool.ruff.lint]" in text
    assert not (REPO / "ruff.toml").exists() and not (REPO / ".ruff.toml").exists()
