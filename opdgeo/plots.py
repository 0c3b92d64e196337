"""Pictures (optional extra ``opdgeo[plot]``, matplotlib): regime map, layer heatmaps, trajectories.

Every figure is written as PNG and SVG with fixed metadata and a fixed SVG hash salt per
figure, so the same numbers give the same files; :func:`svg_plots` returns the same SVGs as
text for the HTML report (:mod:`opdgeo.html`), without touching the disk.

* ``regime_map``: sparsity_bf16 (x) against lowmag_overlap (y), one point per run coloured
  by its regime, OPDG's published SFT / OPD / RLVR points, the random baseline, and the
  classifier's bands: the x axis is shaded at the sparsity cut points
  (``Thresholds.sparsity_sft_below`` / ``sparsity_rlvr_above``) and the y cut points are the
  low-magnitude enrichment cuts times the baseline (``lowmag_overlap = enrichment x alpha``,
  since ``lowmag_enrichment = lowmag_overlap / overlap_baseline``). Labels are placed by
  :func:`place_labels` so that they never overlap one another or a point.
* ``layers_<run>``: per run, layer x module-type heatmaps of bf16 sparsity and mean principal
  angle; modules in the order q, k, v, o, gate, up, down, then the rest; each panel's colour
  scale spans the 2nd-98th percentile of its cells outside the ``norm`` column (norm weights
  sit at sparsity 1.0 in RLVR-like runs and would flatten every other cell), with the
  colour bar extended where cells fall outside it.
* ``trajectory``: stable rank, Sim_K to the final checkpoint and update norm, points joined
  in step order.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opdgeo.config import Thresholds
from opdgeo.errors import ConfigError
from opdgeo.outputs import make_folder, write_output
from opdgeo.report import RunResult

# OPDG (2606.07082) Qwen3-8B: bf16 sparsity (Table 1), low-magnitude overlap at alpha 0.3 (Fig. 3)
REFERENCE = {"SFT": (0.081, 0.3188), "OPD": (0.516, 0.5359), "RLVR": (0.772, 0.7348)}
COLORS = {"sft-like": "#d62728", "opd-like": "#9467bd", "rlvr-like": "#2ca02c",
          "rl-like (opd or rlvr)": "#17becf", "indeterminate": "#7f7f7f",
          "unchanged": "#1f77b4", "unrelated": "#bcbd22"}  # fmt: skip
MODULE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
"""Heatmap columns come in this order; other module types follow (see :func:`module_order`)."""
_REST_ORDER = ("qkv", "gate_up", "embed", "lm_head", "norm", "other")
SCALE_PERCENTILES = (2.0, 98.0)
"""Heatmap colour scale: these percentiles of a panel's cells (outside ``norm``)."""
SCALE_EXCLUDED = ("norm",)
_DPI = 120
_MAP_SIZE = (8.8, 5.2)  # inches: axes on the left, legend on the right
_MAP_AXES = (0.08, 0.1, 0.56, 0.82)  # left, bottom, width, height (figure fractions)
_LABEL_PT = 8.0
_POINT_PT = 8.0  # run marker diameter in points (scatter s = 64)
_STRIP = (0.985, 1.0)  # x extent (axes fraction) of the low-mag band strip
_LEADER = {"arrowstyle": "-", "color": "0.55", "lw": 0.5, "shrinkA": 1, "shrinkB": 4}


@dataclass(frozen=True)
class Plot:
    """One figure for the HTML report: its file stem, a caption and the inline SVG text."""

    stem: str
    title: str
    svg: str


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in display units (x right, y up)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlap(self, other: Box) -> float:
        """Area shared with ``other`` (0 when they only touch)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def inside(self, bounds: Box) -> bool:
        return (
            self.x0 >= bounds.x0
            and self.y0 >= bounds.y0
            and self.x1 <= bounds.x1
            and self.y1 <= bounds.y1
        )

    def grown(self, pad: float) -> Box:
        return Box(self.x0 - pad, self.y0 - pad, self.x1 + pad, self.y1 + pad)


@dataclass(frozen=True)
class Placement:
    """Where a label goes, and whether it needs a leader line back to its point."""

    box: Box
    leader: bool


def _crosses(p: tuple[float, float], q: tuple[float, float], box: Box) -> bool:
    """Whether the segment p-q meets ``box`` (Liang-Barsky clipping)."""
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for edge_p, edge_q in (
        (-dx, p[0] - box.x0),
        (dx, box.x1 - p[0]),
        (-dy, p[1] - box.y0),
        (dy, box.y1 - p[1]),
    ):
        if edge_p == 0:
            if edge_q < 0:
                return False
            continue
        t = edge_q / edge_p
        if edge_p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    bounds: Box,
    obstacles: Sequence[Box] = (),
    radii: Sequence[float] | None = None,
    gap: float = 3.0,
    pad: float = 1.5,
) -> list[Placement]:
    """Deterministic label placement: each label in turn takes the first free spot.

    Label ``i`` (width, height ``sizes[i]``) belongs to the point ``anchors[i]``, drawn with
    radius ``radii[i]`` (default 0). Candidate spots lie on rings around the anchor (radius
    ``radii[i] + gap + ring * height``; 8 directions on
    the first rings, 16 further out, starting to the right and turning counter-clockwise).
    A spot is free when the label, grown by ``pad``, lies inside ``bounds`` and overlaps
    neither an obstacle nor a label placed before it, and - beyond the first ring, where a
    leader line joins label and point - when that line crosses no placed label and the label
    crosses no placed leader line. When no ring up to the size of ``bounds`` has a free spot,
    the spot with the least overlap is used (the only case in which labels can overlap).
    Returns one placement per label, in input order.
    """
    placed: list[Placement] = []
    leaders: list[tuple[tuple[float, float], tuple[float, float]]] = []
    reach = math.hypot(bounds.x1 - bounds.x0, bounds.y1 - bounds.y0)
    radii = radii if radii is not None else [0.0] * len(anchors)
    for (ax, ay), (w, h), own in zip(anchors, sizes, radii, strict=True):
        step = max(h, 1.0)
        best: tuple[float, Box] | None = None
        chosen: Placement | None = None
        ring = 0
        while chosen is None and gap + ring * step <= reach:
            radius = own + gap + ring * step
            directions = 8 if ring < 3 else 16
            for j in range(directions):
                theta = 2 * math.pi * j / directions
                cx = ax + math.cos(theta) * (radius + w / 2)
                cy = ay + math.sin(theta) * (radius + h / 2)
                box = Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                padded = box.grown(pad)
                others = (*obstacles, *(p.box for p in placed))
                clash = sum(padded.overlap(o) for o in others)
                free = padded.inside(bounds) and clash == 0
                if free and ring > 0:
                    segment = ((ax, ay), (cx, cy))
                    free = not any(_crosses(*segment, p.box.grown(pad)) for p in placed)
                    free = free and not any(_crosses(a, b, padded) for a, b in leaders)
                if free:
                    chosen = Placement(box, ring > 0)
                    break
                outside = (w + 2 * pad) * (h + 2 * pad) - padded.overlap(bounds)
                cost = clash + max(outside, 0.0)
                if best is None or cost < best[0]:
                    best = (cost, box)
            ring += 1
        if chosen is None:
            assert best is not None
            chosen = Placement(best[1], True)
        if chosen.leader:
            b = chosen.box
            leaders.append(((ax, ay), ((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2)))
        placed.append(chosen)
    return placed


def module_order(modules: Iterable[str]) -> list[str]:
    """q, k, v, o, gate, up, down first, then qkv, gate_up, embed, lm_head, norm, other, then
    anything else alphabetically."""
    known = (*MODULE_ORDER, *_REST_ORDER)
    present = set(modules)
    return [m for m in known if m in present] + sorted(present - set(known))


def run_label(run: RunResult) -> str:
    """The name a run is shown under: its ``label`` when it has one, else its ``run`` spec."""
    return str(run.summary.get("label") or run.summary["run"])


def slug(text: str, max_len: int = 60) -> str:
    """A file-name-safe form of ``text``: ASCII letters, digits, ``.``, ``_`` and ``-`` only,
    lower case (case-insensitive file systems), at most ``max_len`` characters (the end of a
    long name is kept: it is where checkpoint names differ), never empty."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = re.sub(r"[^a-z0-9._]+", "-", ascii_text.lower()).strip("-._")
    out = out[-max_len:].strip("-._")
    return out or "run"


def layer_stems(runs: Sequence[RunResult]) -> list[str]:
    """``layers_<slug of the run label>`` per run, made unique with ``-2``, ``-3``... in order."""
    stems: list[str] = []
    for run in runs:
        base = f"layers_{slug(run_label(run))}"
        stem, n = base, 2
        while stem in stems:
            stem, n = f"{base}-{n}", n + 1
        stems.append(stem)
    return stems


def color_limits(
    values: np.ndarray, columns: Sequence[str], excluded: Sequence[str] = SCALE_EXCLUDED
) -> tuple[float, float, str]:
    """(vmin, vmax, colour-bar extension) of one heatmap panel.

    ``values`` is layers x ``columns``. The limits are the :data:`SCALE_PERCENTILES` of the
    finite cells outside the ``excluded`` columns (all cells when nothing else is finite),
    linear interpolation (numpy's default); a constant panel gets +-1 % (or +-1e-12) around its
    value. The extension (``neither``/``min``/``max``/``both``) says which side has cells
    beyond the limits.
    """
    keep = [i for i, c in enumerate(columns) if c not in excluded]
    scaled = values[:, keep] if keep else values
    finite = scaled[np.isfinite(scaled)]
    if finite.size == 0:
        finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0, "neither"
    low, high = (float(v) for v in np.percentile(finite, SCALE_PERCENTILES))
    if high <= low:
        delta = max(abs(low) * 0.01, 1e-12)
        low, high = low - delta, high + delta
    everything = values[np.isfinite(values)]
    below, above = bool((everything < low).any()), bool((everything > high).any())
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}
    return low, high, extend.get((below, above), "both")


def _pyplot() -> Any:
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


def _mpl_text(text: str) -> str:
    """Text matplotlib draws literally: control characters and unpaired surrogates as
    ``\\xNN`` / ``\\udcNN``, ``$`` escaped so that it never starts mathtext."""
    return _UNPRINTABLE.sub(_visible, text).replace("$", r"\$")


def _finite(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def regime_map_figure(runs: Sequence[RunResult], thresholds: Thresholds | None = None) -> Any:
    """The regime map as a matplotlib figure (see the module docstring)."""
    plt = _pyplot()
    from matplotlib.font_manager import FontProperties
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t = thresholds or Thresholds()
    fig = plt.figure(figsize=_MAP_SIZE, dpi=_DPI)
    ax = fig.add_axes(_MAP_AXES)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    baseline = next(
        (b for r in runs if not math.isnan(b := _finite(r.summary.get("overlap_baseline")))),
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
        x, y = _finite(s.get("sparsity_bf16")), _finite(s.get("lowmag_overlap"))
        if math.isnan(x) or math.isnan(y):
            missing += 1
            continue
        regime = str(s.get("regime", ""))
        ax.scatter([x], [y], s=_POINT_PT**2, color=COLORS.get(regime, "black"), zorder=3)
        anchors.append((x, y))
        texts.append((_mpl_text(run_label(run)), "black"))
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


def layer_heatmap_figure(run: RunResult) -> Any | None:
    """Layer x module-type heatmaps of one run (None when no tensor has a layer index)."""
    plt = _pyplot()
    frame = run.tensors[(run.tensors["skipped"] == "") & run.tensors["layer"].notna()]
    if frame.empty:
        return None
    modules = module_order(str(m) for m in frame["module"].unique())
    n_layers = frame["layer"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * n_layers + 2.5), dpi=_DPI)
    for ax, column, title in (
        (axes[0], "sparsity_bf16", "bf16 update sparsity"),
        (axes[1], "angle_left_mean_deg", "mean principal angle (deg)"),
    ):
        table = frame.pivot_table(index="layer", columns="module", values=column, aggfunc="mean")
        table = table.reindex(columns=modules)
        values = table.to_numpy(dtype=float)
        vmin, vmax, extend = color_limits(values, modules)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap,
                          vmin=vmin, vmax=vmax, interpolation="nearest")  # fmt: skip
        ax.set_xticks(range(len(modules)), modules, rotation=45)
        ax.set_yticks(range(len(table.index)), [str(int(i)) for i in table.index])
        ax.set_xlabel("module type")
        ax.set_ylabel("layer")
        ax.set_title(title)
        bar = fig.colorbar(image, ax=ax, extend=extend)
        low, high = SCALE_PERCENTILES
        bar.set_label(f"scale: {low:g}-{high:g}th percentile of non-norm cells; grey = none",
                      fontsize=7)  # fmt: skip
    fig.suptitle(_mpl_text(run_label(run)))
    return fig


def trajectory_figure(runs: Sequence[RunResult]) -> Any:
    """Stable rank, Sim_K to final and update norm against step; points joined in step order."""
    plt = _pyplot()
    order = sorted(range(len(runs)), key=lambda i: (_finite(runs[i].summary.get("step")), i))
    ordered = [runs[i] for i in order]
    steps = [_finite(r.summary.get("step")) for r in ordered]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=_DPI)
    for ax, column, label in (
        (axes[0], "stable_rank", "stable rank of cumulative update"),
        (axes[1], "sim_final", "Sim_K(t, final)"),
        (axes[2], "update_norm", "mean update norm"),
    ):
        ax.plot(steps, [_finite(r.summary.get(column)) for r in ordered], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[1].set_ylim(0, 1.05)
    axes[2].set_yscale("log")
    verdict = next((str(r.summary["locking"]) for r in runs if r.summary.get("locking")), "")
    fig.suptitle(_mpl_text(f"trajectory: {verdict}" if verdict else "trajectory"))
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
    _pyplot().close(fig)


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
                fig.savefig(buf, format=ext, dpi=_DPI, metadata=meta, bbox_inches="tight")
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
            fig.savefig(buf, format="svg", dpi=_DPI, metadata={"Date": None, "Creator": None},
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
