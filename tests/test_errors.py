"""errors.one_line: the one way an exception's message becomes one line of an error."""

from __future__ import annotations

import re

import pytest
from conftest import REPO


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("bad header\nTraceback (most recent call last):\n  ..."), "bad header"),
        (OSError("\n\n   cut short  \nmore"), "cut short"),  # blank lines skipped, the line stripped
        (RuntimeError(""), "RuntimeError"),  # no message: the type's name
        (KeyError(), "KeyError"),
        (EOFError("   \n  "), "EOFError"),  # only blanks: the type's name
        (ValueError("one line"), "one line"),
    ],
)
def test_one_line(exc, expected):
    from matpac_cli.errors import one_line

    assert one_line(exc) == expected


def test_one_line_cuts_at_the_limit():
    from matpac_cli.errors import one_line

    exc = ValueError("x" * 500 + "\nsecond")
    assert one_line(exc) == "x" * 200
    assert one_line(exc, 300) == "x" * 300
    assert one_line(exc, None) == "x" * 500


def test_every_first_line_goes_through_one_line():
    """No module below the CLI takes an exception's first line by hand any more."""
    pattern = re.compile(r"splitlines\(\)\[0\]|splitlines\(\) or \[|split\(\"\\n\"\)\[0\]|partition\(\"\\n\"\)")
    found = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "matpac_cli").rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert found == [], found
