"""Clustered heatmap of a lineage matrix (optional extra ``opdgeo[plot]``, matplotlib).

Checkpoints are ordered by average-linkage hierarchical clustering (scipy) on the distance
1 - clip(effect, 0, 1), so families sit next to each other; the colour is -log10 p of the
pair (capped), each cell is marked with its verdict (= same weights, D derived,
I independent, ? inconclusive). PNG and SVG, byte-for-byte deterministic like
:mod:`opdgeo.plots`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from opdgeo.lineage.output import lineage_matrix
from opdgeo.lineage.records import LineageResult
from opdgeo.outputs import make_folder, write_output
from opdgeo.plots_common import pyplot

CAP = 50.0
MARK = {"same-weights": "=", "derived": "D", "independent": "I", "inconclusive": "?"}


def _pyplot() -> Any:
    plt = pyplot()
    plt.rcParams["svg.hashsalt"] = "opdgeo"
    return plt


def cluster_order(result: LineageResult) -> list[int]:
    """Leaf order of average-linkage clustering on 1 - clip(effect, 0, 1)."""
    n = len(result.labels)
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    effect = lineage_matrix(result, "effect").to_numpy(dtype=float)
    dist = 1.0 - np.clip(np.nan_to_num(effect, nan=0.0), 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2
    return [int(i) for i in leaves_list(linkage(squareform(dist, checks=False), "average"))]


def lineage_heatmap(result: LineageResult, folder: Path, stem: str = "lineage") -> list[Path]:
    """Write ``folder/<stem>.png`` and ``.svg``; returns the paths."""
    plt = _pyplot()
    order = cluster_order(result)
    labels = [result.labels[i] for i in order]
    strength = lineage_matrix(result).to_numpy(dtype=float)[np.ix_(order, order)]
    verdicts = lineage_matrix(result, "verdict").to_numpy()[np.ix_(order, order)]
    shown = np.clip(np.nan_to_num(strength, nan=0.0, posinf=CAP), 0.0, CAP)
    size = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 2.5, size + 1.5))
    image = ax.imshow(shown, cmap="magma_r", vmin=0.0, vmax=CAP)
    for i in range(len(labels)):
        for j in range(len(labels)):
            mark = "" if i == j else MARK.get(str(verdicts[i, j]), "")
            color = "white" if shown[i, j] > CAP / 2 else "black"
            ax.text(j, i, mark, ha="center", va="center", color=color, fontsize=9)
    short = [Path(x).name or x for x in labels]
    ax.set_xticks(range(len(labels)), short, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), short)
    ax.set_title("opdgeo lineage (clustered)")
    fig.colorbar(image, ax=ax, label=f"-log10 p (capped at {CAP:g})")
    make_folder(folder)
    paths = []
    try:
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=120, metadata=meta, bbox_inches="tight")
            paths.append(write_output(folder / f"{stem}.{ext}", buf.getvalue()))
    finally:
        plt.close(fig)
    return paths
