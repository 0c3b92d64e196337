"""Pictures (optional extra ``opdgeo[plot]``, matplotlib): regime map, layer heatmaps, trajectories.

Every figure is written as PNG and SVG with fixed metadata and a fixed SVG hash salt per
figure, so the same numbers give the same files; :func:`svg_plots` returns the same SVGs as
text for the HTML report (:mod:`opdgeo.html`), without touching the disk.

* ``regime_map`` (:mod:`opdgeo.plots_map`): sparsity_bf16 against lowmag_overlap, one point per
  run coloured by its regime, OPDG's published points, the random baseline and the classifier's
  bands, labels placed by :mod:`opdgeo.plots_labels` so that none overlap.
* ``layers_<run>`` (:mod:`opdgeo.plots_layers`): per run, layer x module-type heatmaps of bf16
  sparsity and mean principal angle, modules q, k, v, o, gate, up, down first, one colour scale
  per panel from the percentiles of its non-``norm`` cells.
* ``trajectory``: stable rank, Sim_K to the final checkpoint and update norm, points joined
  in step order.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opdgeo.config import Thresholds
from opdgeo.outputs import make_folder, write_output
from opdgeo.plots_common import COLORS, DPI, Plot, finite, mpl_text, pyplot, run_label
from opdgeo.plots_labels import Box, Placement, place_labels
from opdgeo.plots_layers import (
    MODULE_ORDER,
    SCALE_EXCLUDED,
    SCALE_PERCENTILES,
    color_limits,
    layer_heatmap_figure,
    layer_stems,
    module_order,
    slug,
)
from opdgeo.plots_map import REFERENCE, regime_map_figure
from opdgeo.report import RunResult

__all__ = [
    "COLORS", "MODULE_ORDER", "REFERENCE", "SCALE_EXCLUDED", "SCALE_PERCENTILES", "Box",
    "Placement", "Plot", "color_limits", "layer_heatmap_figure", "layer_heatmaps", "layer_stems",
    "module_order", "place_labels", "regime_map", "regime_map_figure", "run_label", "slug",
    "svg_plots", "trajectory_curves", "trajectory_figure", "write_plots",
]  # fmt: skip


def trajectory_figure(runs: Sequence[RunResult]) -> Any:
    """Stable rank, Sim_K to final and update norm against step; points joined in step order."""
    plt = pyplot()
    order = sorted(range(len(runs)), key=lambda i: (finite(runs[i].summary.get("step")), i))
    ordered = [runs[i] for i in order]
    steps = [finite(r.summary.get("step")) for r in ordered]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=DPI)
    for ax, column, label in (
        (axes[0], "stable_rank", "stable rank of cumulative update"),
        (axes[1], "sim_final", "Sim_K(t, final)"),
        (axes[2], "update_norm", "mean update norm"),
    ):
        ax.plot(steps, [finite(r.summary.get(column)) for r in ordered], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[1].set_ylim(0, 1.05)
    axes[2].set_yscale("log")
    verdict = next((str(r.summary["locking"]) for r in runs if r.summary.get("locking")), "")
    fig.suptitle(mpl_text(f"trajectory: {verdict}" if verdict else "trajectory"))
    return fig


def _figures(
    runs: Sequence[RunResult], thresholds: Thresholds | None, trajectory: bool
) -> Iterator[tuple[str, str, Any]]:
    """(stem, caption, figure) of every figure, built one at a time."""
    yield "regime_map", "Regime map", regime_map_figure(runs, thresholds)
    for run, stem in zip(runs, layer_stems(runs), strict=True):
        fig = layer_heatmap_figure(run)
        if fig is not None:
            yield stem, f"Layer x module heatmaps: {run_label(run)}", fig
    if trajectory:
        yield "trajectory", "Trajectory", trajectory_figure(runs)


def _salted(stem: str) -> Any:
    """rc context for saving: a fixed SVG hash salt per figure, so ids are deterministic and
    distinct when several SVGs share one HTML page."""
    import matplotlib

    return matplotlib.rc_context({"svg.hashsalt": f"opdgeo-{stem}", "svg.fonttype": "path"})


def _close(fig: Any) -> None:
    pyplot().close(fig)


def _write(fig: Any, folder: Path, stem: str) -> list[Path]:
    """``stem``.png and .svg in ``folder`` (created if its parent exists), each written
    through :func:`opdgeo.outputs.write_output` (atomic, umask, one-line errors)."""
    make_folder(folder)
    paths = []
    try:
        with _salted(stem):
            for ext, meta in (
                ("png", {"Software": None}),
                ("svg", {"Date": None, "Creator": None}),
            ):
                buf = io.BytesIO()
                fig.savefig(buf, format=ext, dpi=DPI, metadata=meta, bbox_inches="tight")
                paths.append(write_output(folder / f"{stem}.{ext}", buf.getvalue()))
    finally:
        _close(fig)
    return paths


_SVG_START = re.compile(r"<svg[\s>]")
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_ID_REF = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


def _prefix_ids(svg: str, prefix: str) -> str:
    """Prefix every id (and each reference to one) so that SVGs inlined in one page never
    share an id (matplotlib names glyphs by font and character, the same in every figure),
    and number repeated ids (matplotlib gives both colour bars of a figure one image id);
    references keep pointing at the first, as a browser resolves them."""
    seen: dict[str, int] = {}

    def rename(m: re.Match[str]) -> str:
        kind, name = m.group(1), m.group(2)
        if kind != 'id="':
            return f"{kind}{prefix}-{name}"
        seen[name] = seen.get(name, 0) + 1
        suffix = f"-{seen[name]}" if seen[name] > 1 else ""
        return f"{kind}{prefix}-{name}{suffix}"

    return _ID_REF.sub(rename, svg)


def _svg_text(fig: Any, stem: str) -> str:
    """The figure as SVG markup to inline in HTML: no XML prolog, doctype or metadata."""
    buf = io.BytesIO()
    try:
        with _salted(stem):
            fig.savefig(buf, format="svg", dpi=DPI, metadata={"Date": None, "Creator": None},
                        bbox_inches="tight")  # fmt: skip
    finally:
        _close(fig)
    text = buf.getvalue().decode("utf-8")
    start = _SVG_START.search(text)
    text = text[start.start() :] if start else text
    return _prefix_ids(_METADATA.sub("", text, count=1).strip(), stem) + "\n"


def regime_map(
    runs: Sequence[RunResult], folder: Path, thresholds: Thresholds | None = None
) -> list[Path]:
    """Write ``regime_map.png`` and ``.svg`` into ``folder``."""
    return _write(regime_map_figure(runs, thresholds), folder, "regime_map")


def layer_heatmaps(run: RunResult, folder: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` and ``.svg`` (layer heatmaps of one run) into ``folder``."""
    fig = layer_heatmap_figure(run)
    return [] if fig is None else _write(fig, folder, stem)


def trajectory_curves(runs: Sequence[RunResult], folder: Path) -> list[Path]:
    """Write ``trajectory.png`` and ``.svg`` into ``folder``."""
    return _write(trajectory_figure(runs), folder, "trajectory")


def write_plots(
    runs: Sequence[RunResult],
    folder: Path,
    trajectory: bool = False,
    thresholds: Thresholds | None = None,
) -> list[Path]:
    """All figures for these runs into ``folder``: ``regime_map``, ``layers_<run>`` per run,
    and ``trajectory`` for trajectories (PNG + SVG each)."""
    paths: list[Path] = []
    for stem, _, fig in _figures(runs, thresholds, trajectory):
        paths += _write(fig, folder, stem)
    return paths


def svg_plots(
    runs: Sequence[RunResult],
    *,
    thresholds: Thresholds | None = None,
    trajectory: bool = False,
) -> list[Plot]:
    """The figures of :func:`write_plots` as inline SVG text (raises ConfigError without
    matplotlib)."""
    return [Plot(stem, title, _svg_text(fig, stem)) for stem, title, fig in
            _figures(runs, thresholds, trajectory)]  # fmt: skip
