"""The regime map (:mod:`opdgeo.plots`): sparsity_bf16 (x) against lowmag_overlap (y), one point
per run coloured by its regime, OPDG's published SFT / OPD / RLVR points, the random baseline,
and the classifier's bands: the x axis is shaded at the sparsity cut points
(``Thresholds.sparsity_sft_below`` / ``sparsity_rlvr_above``) and the y cut points are the
low-magnitude enrichment cuts times the baseline (``lowmag_overlap = enrichment x alpha``,
since ``lowmag_enrichment = lowmag_overlap / overlap_baseline``). Labels are placed by
:func:`opdgeo.plots_labels.place_labels` so that they never overlap one another or a point."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from opdgeo.config import Thresholds
from opdgeo.plots_common import COLORS, DPI, finite, mpl_text, pyplot, run_label
from opdgeo.plots_labels import Box, place_labels
from opdgeo.report import RunResult

# OPDG (2606.07082) Qwen3-8B: bf16 sparsity (Table 1), low-magnitude overlap at alpha 0.3 (Fig. 3)
REFERENCE = {"SFT": (0.081, 0.3188), "OPD": (0.516, 0.5359), "RLVR": (0.772, 0.7348)}
_MAP_SIZE = (8.8, 5.2)  # inches: axes on the left, legend on the right
_MAP_AXES = (0.08, 0.1, 0.56, 0.82)  # left, bottom, width, height (figure fractions)
_LABEL_PT = 8.0
_POINT_PT = 8.0  # run marker diameter in points (scatter s = 64)
_STRIP = (0.985, 1.0)  # x extent (axes fraction) of the low-mag band strip
_LEADER = {"arrowstyle": "-", "color": "0.55", "lw": 0.5, "shrinkA": 1, "shrinkB": 4}


def regime_map_figure(runs: Sequence[RunResult], thresholds: Thresholds | None = None) -> Any:
    """The regime map as a matplotlib figure (see the module docstring)."""
    plt = pyplot()
    from matplotlib.font_manager import FontProperties
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t = thresholds or Thresholds()
    fig = plt.figure(figsize=_MAP_SIZE, dpi=DPI)
    ax = fig.add_axes(_MAP_AXES)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    baseline = next(
        (b for r in runs if not math.isnan(b := finite(r.summary.get("overlap_baseline")))),
        0.3,
    )
    # the classifier's bands: sparsity shaded across the axes, low-mag cuts as lines + edge strip
    x_cuts = (-0.02, t.sparsity_sft_below, t.sparsity_rlvr_above, 1.02)
    y_cuts = (0.0, t.lowmag_sft_below * baseline, t.lowmag_rlvr_above * baseline, 1.02)
    handles: list[Any] = []
    for i, regime in enumerate(("sft-like", "opd-like", "rlvr-like")):
        ax.axvspan(x_cuts[i], x_cuts[i + 1], color=COLORS[regime], alpha=0.07, lw=0, zorder=0)
        ax.axhspan(y_cuts[i], min(y_cuts[i + 1], 1.02), xmin=_STRIP[0], xmax=_STRIP[1],
                   color=COLORS[regime], alpha=0.5, lw=0, zorder=1)  # fmt: skip
        handles.append(Patch(color=COLORS[regime], alpha=0.25, lw=0,
                             label=f"{regime.split('-')[0].upper()} band"))  # fmt: skip
    for cut in x_cuts[1:3]:
        ax.axvline(cut, color="0.6", lw=0.6, ls=":", zorder=1)
    for cut in y_cuts[1:3]:
        ax.axhline(cut, color="0.6", lw=0.6, ls=":", zorder=1)
    handles.append(Line2D([], [], color="0.6", lw=0.6, ls=":",
                          label=f"cuts: sparsity {t.sparsity_sft_below:g} / "
                                f"{t.sparsity_rlvr_above:g};\nlow-mag {t.lowmag_sft_below:g}x / "
                                f"{t.lowmag_rlvr_above:g}x baseline = {y_cuts[1]:.3g} / "
                                f"{y_cuts[2]:.3g}"))  # fmt: skip
    ax.axhline(baseline, color="gray", lw=0.8, ls="--", zorder=1)
    handles.append(Line2D([], [], color="gray", lw=0.8, ls="--",
                          label=f"random baseline (alpha={baseline:g})"))  # fmt: skip

    anchors: list[tuple[float, float]] = []
    texts: list[tuple[str, str]] = []  # (text, colour)
    for name, (x, y) in REFERENCE.items():
        ax.scatter([x], [y], marker="s", s=70, facecolors="none", edgecolors="gray", zorder=2)
        anchors.append((x, y))
        texts.append((f"{name} (OPDG)", "gray"))
    handles.append(Line2D([], [], marker="s", ls="none", markerfacecolor="none",
                          markeredgecolor="gray", label="OPDG Qwen3-8B (published)"))  # fmt: skip
    regimes_seen: list[str] = []
    missing = 0
    for run in runs:
        s = run.summary
        x, y = finite(s.get("sparsity_bf16")), finite(s.get("lowmag_overlap"))
        if math.isnan(x) or math.isnan(y):
            missing += 1
            continue
        regime = str(s.get("regime", ""))
        ax.scatter([x], [y], s=_POINT_PT**2, color=COLORS.get(regime, "black"), zorder=3)
        anchors.append((x, y))
        texts.append((mpl_text(run_label(run)), "black"))
        if regime not in regimes_seen:
            regimes_seen.append(regime)
    for regime in regimes_seen:
        handles.append(Line2D([], [], marker="o", ls="none", color=COLORS.get(regime, "black"),
                              label=f"run: {regime}"))  # fmt: skip
    if missing:
        handles.append(Line2D([], [], ls="none",
                              label=f"{missing} run(s) without sparsity_bf16 /\n"
                                    "lowmag_overlap not drawn"))  # fmt: skip

    renderer = fig.canvas.get_renderer()
    prop = FontProperties(size=_LABEL_PT)
    to_px = fig.dpi / 72.0
    points = [tuple(ax.transData.transform((x, y))) for x, y in anchors]
    sizes = []
    for text, _ in texts:
        w, h, _d = renderer.get_text_width_height_descent(text, prop, ismath=False)
        sizes.append((w, h))
    r = _POINT_PT * to_px / 2 + 1
    obstacles = [Box(px - r, py - r, px + r, py + r) for px, py in points]
    bbox = ax.bbox  # labels stay left of the low-mag band strip on the right edge
    inner = Box(bbox.x0, bbox.y0, bbox.x0 + _STRIP[0] * bbox.width - 1, bbox.y1)
    spots = place_labels(points, sizes, inner, obstacles,
                         radii=[r] * len(points))  # fmt: skip
    for (x, y), (px, py), spot, (text, colour) in zip(anchors, points, spots, texts, strict=True):
        box = spot.box
        ax.annotate(
            text,
            (x, y),
            xytext=((box.x0 - px) / to_px, (box.y0 - py) / to_px),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=_LABEL_PT,
            color=colour,
            zorder=4,
            arrowprops=_LEADER if spot.leader else None,
        )
    ax.set_xlabel("update sparsity (bf16 bit-identical fraction)")
    ax.set_ylabel("low-magnitude overlap of visible updates")
    ax.set_title("opdgeo regime map")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
              frameon=False, title="legend", title_fontsize=8, alignment="left")  # fmt: skip
    return fig
