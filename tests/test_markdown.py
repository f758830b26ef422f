"""The one markdown-table helper every summary artifact uses."""

from __future__ import annotations

import pytest

from diffenhance.markdown import markdown_table


def test_table_lines_alignment_and_empty_cells() -> None:
    rows = [["`reports/`", 12, 3.5], ["**total**", "", 0]]
    assert markdown_table(["folder", "objects", ""], rows, align="lr") == [
        "| folder | objects | |",
        "|---|---:|---|",
        "| `reports/` | 12 | 3.5 |",
        "| **total** | | 0 |",
    ]
    assert markdown_table(["a", "b"], [], align="cr") == ["| a | b |", "|:---:|---:|"]


def test_bad_rows_and_alignment_are_refused() -> None:
    with pytest.raises(ValueError, match="has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="align 'lx'"):
        markdown_table(["a", "b"], [], align="lx")
    with pytest.raises(ValueError, match="at most 1 letters"):
        markdown_table(["a"], [], align="ll")
