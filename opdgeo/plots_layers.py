"""Layer x module-type heatmaps (:mod:`opdgeo.plots`), one figure per run, named by run
(``layers_<run>``): bf16 sparsity and mean principal angle; modules in the order q, k, v, o,
gate, up, down, then the rest; each panel's colour scale spans the 2nd-98th percentile of its
cells outside the ``norm`` column (norm weights sit at sparsity 1.0 in RLVR-like runs and would
flatten every other cell), with the colour bar extended where cells fall outside it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from opdgeo.plots_common import DPI, mpl_text, pyplot, run_label
from opdgeo.report import RunResult

MODULE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
"""Heatmap columns come in this order; other module types follow (see :func:`module_order`)."""
_REST_ORDER = ("qkv", "gate_up", "embed", "lm_head", "norm", "other")
SCALE_PERCENTILES = (2.0, 98.0)
"""Heatmap colour scale: these percentiles of a panel's cells (outside ``norm``)."""
SCALE_EXCLUDED = ("norm",)


def module_order(modules: Iterable[str]) -> list[str]:
    """q, k, v, o, gate, up, down first, then qkv, gate_up, embed, lm_head, norm, other, then
    anything else alphabetically."""
    known = (*MODULE_ORDER, *_REST_ORDER)
    present = set(modules)
    return [m for m in known if m in present] + sorted(present - set(known))


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


def layer_heatmap_figure(run: RunResult) -> Any | None:
    """Layer x module-type heatmaps of one run (None when no tensor has a layer index)."""
    plt = pyplot()
    frame = run.tensors[(run.tensors["skipped"] == "") & run.tensors["layer"].notna()]
    if frame.empty:
        return None
    modules = module_order(str(m) for m in frame["module"].unique())
    n_layers = frame["layer"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * n_layers + 2.5), dpi=DPI)
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
    fig.suptitle(mpl_text(run_label(run)))
    return fig
