"""Pictures (optional extra ``opdgeo[plot]``, matplotlib): regime map, layer heatmaps, trajectories.

Every figure is written as PNG and SVG with fixed metadata and SVG hash salt, so the same
numbers give the same files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opdgeo.errors import ConfigError
from opdgeo.outputs import make_folder, write_output
from opdgeo.report import RunResult

# OPDG (2606.07082) Qwen3-8B: bf16 sparsity (Table 1), low-magnitude overlap at alpha 0.3 (Fig. 3)
REFERENCE = {"SFT": (0.081, 0.3188), "OPD": (0.516, 0.5359), "RLVR": (0.772, 0.7348)}
COLORS = {"sft-like": "#d62728", "opd-like": "#9467bd", "rlvr-like": "#2ca02c",
          "unchanged": "#1f77b4", "unrelated": "#bcbd22"}  # fmt: skip


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'opdgeo[plot]' (or pip install matplotlib)"
        ) from None
    plt.rcParams["svg.hashsalt"] = "opdgeo"
    return plt


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and .svg into ``folder`` (created if its parent exists) through
    :func:`opdgeo.outputs.write_output` (atomic, umask-respecting, one-line errors)."""
    make_folder(folder)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=120, metadata=meta, bbox_inches="tight")
        paths.append(write_output(folder / f"{stem}.{ext}", buf.getvalue()))
    fig.clf()
    return paths


def regime_map(runs: Sequence[RunResult], folder: Path) -> list[Path]:
    """sparsity_bf16 (x) vs lowmag_overlap (y), one point per run, OPDG references drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (x, y) in REFERENCE.items():
        ax.scatter([x], [y], marker="s", s=70, facecolors="none", edgecolors="gray")
        ax.annotate(f"{label} (OPDG)", (x, y), textcoords="offset points", xytext=(6, -10),
                    color="gray", fontsize=8)  # fmt: skip
    for run in runs:
        s = run.summary
        x, y = float(s["sparsity_bf16"]), float(s.get("lowmag_overlap") or math.nan)
        ax.scatter([x], [y], s=60, color=COLORS.get(s["regime"], "black"), zorder=3)
        ax.annotate(str(s.get("label") or s["run"]), (x, y), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)  # fmt: skip
    baseline = next((float(r.summary["overlap_baseline"]) for r in runs
                     if r.summary.get("overlap_baseline")), 0.3)  # fmt: skip
    ax.axhline(baseline, color="gray", lw=0.8, ls="--", label=f"random baseline (alpha={baseline})")
    ax.set_xlabel("update sparsity (bf16 bit-identical fraction)")
    ax.set_ylabel("low-magnitude overlap of visible updates")
    ax.set_title("opdgeo regime map")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, folder, "regime_map")


def layer_heatmaps(run: RunResult, folder: Path, stem: str) -> list[Path]:
    """Per layer x module type: sparsity_bf16 and mean principal angle of one run."""
    plt = _pyplot()
    frame = run.tensors[(run.tensors["skipped"] == "") & run.tensors["layer"].notna()]
    if frame.empty:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * frame["layer"].nunique() + 2.5))
    for ax, column, title in (
        (axes[0], "sparsity_bf16", "bf16 update sparsity"),
        (axes[1], "angle_left_mean_deg", "mean principal angle (deg)"),
    ):
        table = frame.pivot_table(index="layer", columns="module", values=column, aggfunc="mean")
        image = ax.imshow(table.to_numpy(dtype=float), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns], rotation=45)
        ax.set_yticks(range(len(table.index)), [str(int(i)) for i in table.index])
        ax.set_xlabel("module type")
        ax.set_ylabel("layer")
        ax.set_title(title)
        fig.colorbar(image, ax=ax)
    fig.suptitle(str(run.summary.get("label") or run.summary["run"]))
    return _save(fig, folder, stem)


def trajectory_curves(runs: Sequence[RunResult], folder: Path) -> list[Path]:
    """stable rank, Sim_K to final and update norm against step."""
    plt = _pyplot()
    steps = [float(r.summary["step"]) for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, column, label in (
        (axes[0], "stable_rank", "stable rank of cumulative update"),
        (axes[1], "sim_final", "Sim_K(t, final)"),
        (axes[2], "update_norm", "mean update norm"),
    ):
        ax.plot(steps, [float(r.summary[column]) for r in runs], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[1].set_ylim(0, 1.05)
    axes[2].set_yscale("log")
    verdict = runs[-1].summary.get("locking") or ""
    fig.suptitle(f"trajectory: {verdict}")
    return _save(fig, folder, "trajectory")


def write_plots(runs: Sequence[RunResult], folder: Path, trajectory: bool = False) -> list[Path]:
    """All figures for these runs into ``folder``."""
    paths = regime_map(runs, folder)
    for i, run in enumerate(runs):
        paths += layer_heatmaps(run, folder, f"layers_{i:02d}")
    if trajectory:
        paths += trajectory_curves(runs, folder)
    return paths
