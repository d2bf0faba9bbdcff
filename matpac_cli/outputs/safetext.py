"""Text that leaves matpac for a person: spreadsheet cells and terminal lines, one rule each.

CSV cells (OWASP's CSV Injection guidance): a text cell that begins with `=`, `+`, `-`, `@`, a
tab, a carriage return or a line feed is a formula to LibreOffice and Excel (`=HYPERLINK(...)` in a
file name or a label someone else trained would be live). matpac writes such a cell with a `'` in
front, quoted, which spreadsheets take as text. A text cell that already begins with `'` gets one
more, so the rule is undone exactly: matpac's own readers remove a leading `'` only where one of
those characters follows it (`'=x` reads back as `=x`, `''x` as `'x`, and `'x`, which matpac never
writes, as itself: a CSV written before this rule, or by hand, keeps its names). Numbers are written as numbers (a score of
-0.5 stays -0.5). Parquet and JSON Lines keep the exact text, always. `CsvWriter` writes every CSV
matpac makes (row index, tag and search rows, --failures) by this rule.

Terminals: control characters (C0, DEL and C1) in anything printed for a person (stderr, and stdout
when it is a terminal) are shown as escapes (`\\x1b`, `\\r`, `\\n`, `\\t`, `\\u009b`), and bytes of
a file name that are not UTF-8 as `\\xff`, so a name cannot set the window title, move the cursor
or clear the screen. Data files and stdout into a pipe keep the exact bytes.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from typing import IO

FORMULA_START = frozenset("=+-@\t\r\n'")  # OWASP's list, the line feed, and the escape itself
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")  # C0, DEL, C1, undecodable bytes
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def to_spreadsheet(text: str) -> str:
    """A text cell as matpac writes it in CSV: `'` in front when a spreadsheet would read a formula."""
    return "'" + text if text[:1] in FORMULA_START else text


def from_spreadsheet(cell):
    """A cell of matpac's CSV as it was before `to_spreadsheet` (anything not text is returned as
    is): the `'` comes off only where `to_spreadsheet` could have put it."""
    return cell[1:] if isinstance(cell, str) and cell[:1] == "'" and cell[1:2] in FORMULA_START else cell


def for_terminal(text: object) -> str:
    """`text` with every control character shown as a visible escape, for a person's terminal."""
    return _CONTROL.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code >= 0xDC80:  # a byte that is not UTF-8, held as a surrogate (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


class CsvWriter:
    """matpac's CSV rows: RFC 4180, one `write` per row. Unlike the csv module with a `\\n` line
    end, a cell holding a lone carriage return is quoted (a bare one splits the row for pandas and
    for readers opened with newline=""); a cell holding `;` or a tab too, for spreadsheets that
    split on those; a text cell a spreadsheet would run as a formula is written `'`-prefixed and
    quoted (`to_spreadsheet`). None is an empty cell, a float has 6 significant digits."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def writerow(self, values: Iterable) -> None:
        self.stream.write(",".join(map(_field, values)) + "\n")

    def writerows(self, rows: Iterable[Iterable]) -> None:
        for row in rows:
            self.writerow(row)


_QUOTED = re.compile('[,"\r\n;\t]')


def _field(value: object) -> str:
    kind = type(value)  # the exact types first: this runs for every cell of millions of rows
    if kind is str:
        if value[:1] in FORMULA_START:
            value = to_spreadsheet(value)
        elif not _QUOTED.search(value):
            return value
        return '"' + value.replace('"', '""') + '"'
    if kind is float:
        return f"{value:.6g}"
    if kind is int or value is None:
        return "" if value is None else str(value)
    if isinstance(value, str):
        return _field(str(value))
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.6g}"
    return str(value)
