"""Terminal tables that fit the terminal (:mod:`opdgeo.render`): numbers are never cut.

rich squeezes a table that is wider than the console and cuts long cells (``3.11e-…``). Here
each value column is exactly as wide as its longest cell (or its header's longest line), does
not wrap, and the value columns that do not fit beside the label column go into a further
table below, which repeats the label column ("wrapping rows"). Titles and captions are printed
as lines of their own, wrapped at spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

LABEL_MIN = 12
"""The label column gets at least this many characters (longer labels fold)."""
HEADER_MAX = 20
"""A value column's header wider than this and than its cells is folded."""
_OVERHEAD = 3  # a column's padding (2) and its right border (1)


@dataclass(frozen=True)
class Column:
    """One value column: its header (may contain spaces and newlines) and its cells."""

    header: str
    cells: Sequence[str | Text]

    def width(self) -> int:
        """The cells' width, or the header's longest line when wider (a long header, such
        as a checkpoint path, is folded at :data:`HEADER_MAX` or the cells' width)."""
        cells = max((len(str(c)) for c in self.cells), default=0)
        head = max(len(line) for line in self.header.split("\n"))
        return max(cells, min(head, max(cells, HEADER_MAX)))

    def header_text(self, width: int) -> Text:
        lines = [line[i : i + width] for line in self.header.split("\n")
                 for i in range(0, max(len(line), 1), width)]  # fmt: skip
        return Text("\n".join(lines))


def chunks(widths: Sequence[int], room: int) -> list[list[int]]:
    """Indices of the value columns, grouped so that each group fits in ``room`` characters
    (a column takes its width plus padding and border; a group has at least one column)."""
    groups: list[list[int]] = []
    used = room + 1  # start a new group at once
    for i, w in enumerate(widths):
        if used + w + _OVERHEAD > room and (not groups or groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += w + _OVERHEAD
    return [g for g in groups if g]


def print_fitted(
    console: Console,
    label_header: str,
    labels: Sequence[str | Text],
    columns: Sequence[Column],
    title: str | None = None,
    caption: str | None = None,
) -> None:
    """``labels`` as the first column and ``columns`` beside it, in as many tables as the
    console's width needs (see the module docstring)."""
    if title:
        console.print(Text(title))
    longest = max([len(label_header), *(len(str(x)) for x in labels)])
    label_w = min(longest, max(LABEL_MIN, console.width // 3))
    room = console.width - 1 - (label_w + _OVERHEAD)
    widths = [c.width() for c in columns]
    for group in chunks(widths, room) or [[]]:
        table = Table()
        table.add_column(label_header, overflow="fold", min_width=label_w, max_width=label_w)
        for i in group:
            table.add_column(columns[i].header_text(widths[i]), justify="right", no_wrap=True,
                             min_width=widths[i], max_width=widths[i])  # fmt: skip
        for row, label in enumerate(labels):
            table.add_row(label, *(columns[i].cells[row] for i in group))
        console.print(table)
    if caption:
        console.print(Text(caption))
