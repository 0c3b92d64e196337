"""Cells of the HTML report (:mod:`opdgeo.html`): escaping and number formatting.

Every string that comes from outside is HTML-escaped, with control characters and unpaired
surrogates shown as ``\\xNN`` / ``\\udcNN``. Numbers show 4 significant digits (percentages with
as many decimals as it takes not to round to 0 % or 100 %), with the full value as the cell's
tooltip."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from opdgeo.plots_common import COLORS

PERCENT_COLUMNS = frozenset({"sparsity_bf16", "sparsity_atol", "sparsity_atol_strict",
                             "sparsity_exact", "energy_share", "principal_energy",
                             "principal_overlap", "lowmag_overlap"})  # fmt: skip
"""Fractions shown as percentages."""
MAX_SKIPPED_SHOWN = 200
_TEXT_COLOURS = {"unrelated": "#1a1a1a"}

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def escape(value: Any) -> str:
    """``str(value)`` safe inside HTML text and quoted attributes: ``& < > " '`` escaped,
    control characters (bar tab and newline) and unpaired surrogates written as ``\\xNN`` /
    ``\\udcNN``."""

    def visible(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"

    return html.escape(_UNPRINTABLE.sub(visible, str(value)), quote=True)


def plain(value: Any) -> Any:
    """numpy scalars as the Python numbers they hold (so ``repr`` is the plain float)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


def breakable(value: Any) -> str:
    """Escaped text with a line-break opportunity after each ``/`` (paths wrap at folders)."""
    return escape(value).replace("/", "/<wbr>")


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)


def percent(x: float) -> str:
    """Percent with 2 decimals, more (up to 8) when 2 would round a non-0/1 value to 0 or 100."""
    for digits in range(2, 9):
        text = f"{100 * x:.{digits}f}"
        if (float(text) == 100 and x < 1) or (float(text) == 0 and x > 0):
            continue
        break
    return f"{text} %"


def number(value: Any, column: str = "") -> str:
    """Display text of a number: integers with thousands separators, fractions of
    :data:`PERCENT_COLUMNS` as percentages, other floats with 4 significant digits."""
    if missing(value):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) or column.startswith("n_"):
        return f"{int(value):,}"
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if column in PERCENT_COLUMNS:
        return percent(x)
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}" if column in ("step",) or abs(x) >= 1e4 else f"{x:g}"
    return f"{x:.4g}"


def cell(value: Any, column: str = "", text: bool = False) -> str:
    """One ``<td>``: numbers right-aligned with the full value as tooltip, text left-aligned."""
    value = plain(value)
    if is_number(value) and not text:
        shown = number(value, column)
        exact = "" if missing(value) else f' title="{escape(repr(value))}"'
        return f"<td{exact}>{escape(shown)}</td>"
    shown = "-" if missing(value) or value == "" else value
    return f'<td class="text">{escape(shown)}</td>'


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", left: int = 1
) -> str:
    """A table wrapped so that a wide one scrolls instead of being cut; ``rows`` are cells.
    The first ``left`` headers are left-aligned (over text), the rest right-aligned."""
    head = "".join(
        f'<th class="text">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def badge(regime: Any) -> str:
    name = str(regime or "")
    colour = COLORS.get(name, "#666666")
    fg = _TEXT_COLOURS.get(name, "#ffffff")
    return (
        f'<span class="regime" style="background:{colour};color:{fg}">{escape(name or "-")}</span>'
    )


def value_text(value: Any) -> str:
    """Settings and appendix values: JSON spelling (exact floats, ``null``, ``true``)."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return str(value)


def anchor(i: int) -> str:
    return f"run-{i + 1}"
