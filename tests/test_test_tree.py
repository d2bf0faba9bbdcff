"""The test tree keeps its shape: folders that mirror matpac_cli's packages, shared fixtures and
helpers in one home (conftest.py, probes.py), no test module importing another, no helper copied.

These read the test sources, so a second copy of the tiny checkpoint or of the in-process runner
fails here before it drifts from the first; the last test holds the two ways of running the
command (in-process `cli`, subprocess `run_matpac`) to the same answer.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO, cli, run_matpac

TESTS = REPO / "tests"
HOMES = (TESTS / "conftest.py", TESTS / "probes.py")
# Local fixtures of the same name that are not copies: each builds something else for its module.
LOCAL_VARIANTS = {
    ("test_cli_errors.py", "clips"),  # two WAVs per test, not the numerics clips
    ("test_ray.py", "clips"),  # the Ray cluster's inputs
    ("test_numerics.py", "ref608"),  # per-layer frames of the numerics clips, not music_dir's clip embeddings
    ("test_fakeserver.py", "hub"),  # a bare Hub with two files, no release URL
    ("test_fakeserver.py", "REPO"),  # a Hub repository id
}


def _test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_test_folders_mirror_the_packages_and_basenames_are_unique():
    """pytest's default import mode names a test module by its basename: two alike would clash."""
    packages = {p.name for p in (REPO / "matpac_cli").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))}
    assert folders <= packages, folders - packages
    names = [p.name for p in _test_modules()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_no_test_module_imports_another():
    """Shared code lives in conftest.py or probes.py, never in a test module others import."""
    for path in _test_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            assert not [m for m in modules if m.split(".")[0].startswith("test_")], f"{path.name}: {modules}"


def test_shared_fixtures_and_helpers_have_one_home():
    shared = {n for home in HOMES for n in _top_level_names(home) if not n.startswith("_")}
    for path in _test_modules():
        again = {n for n in _top_level_names(path) & shared if (path.name, n) not in LOCAL_VARIANTS}
        assert not again, f"{path.relative_to(TESTS)} defines {sorted(again)} again: import it from its home"


def test_no_helper_is_copied_between_test_files():
    """The same body (docstring aside, two statements or more) under any name, in any two files."""
    seen: dict[str, str] = {}
    for path in [*HOMES, *_test_modules()]:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("test_"):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if len(body) < 2:
                continue
            key = ast.dump(ast.Module(body=body, type_ignores=[]))
            where = f"{path.relative_to(TESTS)}::{node.name}"
            assert key not in seen, f"{where} copies {seen[key]}"
            seen[key] = where


def test_no_test_skips_when_the_code_it_tests_is_missing():
    """A renamed or deleted class must fail its tests, not skip them: no `getattr(module, NAME,
    None)` followed by a skip, no skip that says the code is not "in this version"."""
    import re

    guard = re.compile(r"getattr\([^)]*,\s*None\)\s*\n\s*if [^\n]*is None:\s*\n\s*pytest\.skip|in this version of")
    here = Path(__file__).name
    found = [p.name for p in _test_modules() if p.name != here and guard.search(p.read_text(encoding="utf-8"))]
    assert found == []


def test_in_process_and_subprocess_runs_agree(capsys):
    args = ["models", "labels", "genre", "--raw"]
    rc, out, _ = cli(capsys, *args)
    proc = run_matpac(args, timeout=60)
    assert (rc, out) == (proc.returncode, proc.stdout.decode()) and rc == 0 and out
