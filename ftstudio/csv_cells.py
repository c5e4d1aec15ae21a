"""The one guard for every CSV cell the Studio writes (dataset export, judgments export).

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula, and a leading tab
or carriage return hides such a start from naive checks (OWASP "CSV injection"). Such a cell is written
with a leading ``'``, which spreadsheets show as text. Cells that start with quotes before one of those
characters get one more quote too, so ``unguard`` (used by the CSV importer) gives back exactly
what was exported: export then import is lossless.

(``defusedcsv`` was considered: it does not guard tab or carriage return and rewrites ``|`` inside cells,
which would break the round trip.)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def guard(value: Any) -> str:
    """The cell as text, prefixed with ``'`` when a spreadsheet would read it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.lstrip("'")[:1] in TRIGGERS else text


def unguard(text: str) -> str:
    """Undo ``guard`` on a cell read back from a CSV the Studio wrote."""
    return text[1:] if text[:1] == "'" and text.lstrip("'")[:1] in TRIGGERS else text


class GuardedWriter:
    """``csv.writer`` whose every cell (header included) goes through ``guard``."""

    def __init__(self, out, **fmtparams):
        self._writer = csv.writer(out, **fmtparams)

    def writerow(self, row: Iterable[Any]):
        return self._writer.writerow([guard(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(out, **fmtparams) -> GuardedWriter:
    return GuardedWriter(out, **fmtparams)
