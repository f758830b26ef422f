"""Markdown tables for summaries (Prefect artifacts, benchmark notes); no Prefect import here.

lines = markdown_table(["folder", "objects"], [["`reports/`", 12]], align="lr")
# ['| folder | objects |', '|---|---:|', '| `reports/` | 12 |']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def _row(cells: Sequence[Any]) -> str:
    """'| a | b |'; an empty cell is a single space ('| a | |')."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def markdown_table(
    header: Sequence[Any], rows: Iterable[Sequence[Any]], align: str = ""
) -> list[str]:
    """A GitHub-flavoured markdown table as lines: header, rule, then one line per row.

    Cells are written with `str()` as given (format numbers and escape '|' before). `align`:
    one letter per column, 'l' (default for missing letters), 'r' or 'c'.
    Raises ValueError for a row whose length differs from the header's or a bad letter.
    """
    n = len(header)
    bad = set(align) - set(_RULES)
    if bad or len(align) > n:
        raise ValueError(f"align {align!r}: give at most {n} letters out of 'l', 'r', 'c'")
    rule = "|" + "".join(_RULES[a] + "|" for a in align.ljust(n, "l"))
    lines = [_row(header), rule]
    for row in rows:
        if len(row) != n:
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells, the header {n}")
        lines.append(_row(row))
    return lines
