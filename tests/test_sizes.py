"""Modules and functions stay a size a person can read (issue 21), read from the source with `ast`.

A module holds at most MAX_MODULE lines: past that it is two things, and splits along its seam
(jobs/probe.py's training vs probe_eval.py's splits and figures, search.py's job vs
similarity.py's maths, heads.py vs probe_zip.py, readers.py vs tag_readers.py). A function's
body, from its first statement after the docstring, holds at most MAX_FUNCTION lines; the
signature is not counted, so a Typer command's long list of options is not held against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "matpac_cli"
MAX_MODULE = 350
MAX_FUNCTION = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's end."""
    body = node.body
    first = body[0]
    if len(body) > 1 and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        first = body[1]
    return node.end_lineno - first.lineno + 1


def test_every_module_is_at_most_350_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert not long, f"split these along a seam: {long}"


def test_every_function_body_is_at_most_60_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_FUNCTION:
                long[f"{path.relative_to(PACKAGE)}:{node.name}"] = body_lines(node)
    assert not long, f"split these into steps: {long}"


def test_body_lines_skips_the_signature_and_docstring_only():
    source = 'def f(\n    a,\n    b,\n):\n    """Doc."""\n    x = a\n    return x\n\n\ndef g():\n    return 1\n'
    f, g = ast.parse(source).body
    assert (body_lines(f), body_lines(g)) == (2, 1)
