"""Tables that fit the terminal: at 80 columns a table keeps its key columns whole instead of folding every cell.

Each column says how important it is. The least important columns are left out until the rest fit the width at
their natural size; what is left keeps words whole: names and paths (no spaces) are cut with an ellipsis at the end
rather than broken over lines, free text wraps between words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.table import Table
from rich.text import Text

ESSENTIAL = 0  # never left out


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    rank: int = ESSENTIAL  # higher: left out first when the table does not fit
    words: bool = False  # free text that may wrap between words; else one unbroken value (a name, a number)


def cell_width(value: str, words: bool) -> int:
    """The width a cell needs: its longest word when it may wrap, else all of it."""
    text = Text.from_markup(value).plain
    return max((len(word) for word in text.split()), default=0) if words else len(text)


def needed_widths(columns: list[Column], rows: list[list[str]]) -> list[int]:
    return [max([cell_width(column.header, False)] + [cell_width(row[index], column.words) for row in rows])
            for index, column in enumerate(columns)]


def framed_width(widths: list[int]) -> int:
    return sum(width + 3 for width in widths) + 1  # a space of padding each side of a cell, and a border


def compact_width(widths: list[int]) -> int:
    return sum(widths) + len(widths) - 1  # one space between columns, no borders


def kept_columns(columns: list[Column], widths: list[int], width: int) -> list[int]:
    """Indices of the columns shown in a compact table at `width`: without the least important until they fit."""
    kept = list(range(len(columns)))
    while compact_width([widths[index] for index in kept]) > width:
        droppable = [index for index in kept if columns[index].rank != ESSENTIAL]
        if not droppable:
            break
        kept.remove(max(droppable, key=lambda index: (columns[index].rank, index)))
    return kept


def fitted_table(title: str, columns: list[Column], rows: list[list[str]], width: int) -> Table:
    """A framed table of every column when it fits `width`, else a compact one (a line under the header, a space
    between columns) of the columns that fit, most important first."""
    widths = needed_widths(columns, rows)
    if framed_width(widths) <= width:
        kept, table = list(range(len(columns))), Table(title=title)
    else:
        kept = kept_columns(columns, widths, width)
        table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0), collapse_padding=True)
    for index in kept:
        column = columns[index]
        table.add_column(column.header, justify=column.justify, no_wrap=not column.words,
                         overflow="fold" if column.words else "ellipsis")
    for row in rows:
        table.add_row(*(row[index] for index in kept))
    left_out = [columns[index].header for index in range(len(columns)) if index not in kept]
    if left_out:
        table.caption = f"not shown at this width: {', '.join(left_out)}"
    return table
