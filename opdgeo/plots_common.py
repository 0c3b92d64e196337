"""Shared pieces of the figures (:mod:`opdgeo.plots`): colours, the optional matplotlib import,
the name a run is shown under, and text matplotlib draws literally."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from opdgeo.errors import ConfigError
from opdgeo.report import RunResult

COLORS = {"sft-like": "#d62728", "opd-like": "#9467bd", "rlvr-like": "#2ca02c",
          "rl-like (opd or rlvr)": "#17becf", "indeterminate": "#7f7f7f",
          "unchanged": "#1f77b4", "unrelated": "#bcbd22"}  # fmt: skip
DPI = 120


@dataclass(frozen=True)
class Plot:
    """One figure for the HTML report: its file stem, a caption and the inline SVG text."""

    stem: str
    title: str
    svg: str


def run_label(run: RunResult) -> str:
    """The name a run is shown under: its ``label`` when it has one, else its ``run`` spec."""
    return str(run.summary.get("label") or run.summary["run"])


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a ConfigError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'opdgeo[plot]' (or pip install matplotlib)"
        ) from None
    return plt


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _visible(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"


def mpl_text(text: str) -> str:
    """Text matplotlib draws literally: control characters and unpaired surrogates as
    ``\\xNN`` / ``\\udcNN``, ``$`` escaped so that it never starts mathtext."""
    return _UNPRINTABLE.sub(_visible, text).replace("$", r"\$")


def finite(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan
