"""Figures: written as PNG and SVG, non-empty, labelled, deterministic."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.config import Thresholds
from opdgeo.regimes import Verdict
from opdgeo.report import RunResult
from opdgeo.synthetic import write_family

pytest.importorskip("matplotlib")
from opdgeo import plots  # noqa: E402  (after the skip: plots needs matplotlib at draw time)

runner = CliRunner()


def test_batch_plots_are_labelled_and_deterministic(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    args = ["batch", str(paths["base"]), str(paths["base"].parent), "-q", "-f", "csv"]
    first = runner.invoke(app, [*args, "--plot", str(tmp_path / "p1")])
    second = runner.invoke(app, [*args, "--plot", str(tmp_path / "p2")])
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr
    names = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert "regime_map.png" in names and "regime_map.svg" in names
    # one heatmap per run, named by the run's label (the folder names here)
    assert {"layers_opd.png", "layers_rlvr.svg", "layers_sft.png"} <= set(names)
    assert len(names) == 2 + 2 * 3  # the base, found among the runs, is skipped
    for name in names:
        one, two = (tmp_path / "p1" / name).read_bytes(), (tmp_path / "p2" / name).read_bytes()
        assert len(one) > 1000
        assert one == two, f"{name} is not deterministic"
    png = (tmp_path / "p1" / "regime_map.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    svg = (tmp_path / "p1" / "regime_map.svg").read_text()
    assert "update sparsity" in svg and "low-magnitude overlap" in svg and "OPDG" in svg
    assert "RLVR band" in svg and "random baseline" in svg  # the legend
    heat = (tmp_path / "p1" / "layers_rlvr.svg").read_text()
    assert "module type" in heat and "layer" in heat


def test_trajectory_plot(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    result = runner.invoke(app, ["trajectory", str(paths["base"]), str(paths["rlvr"]),
                                 str(paths["opd"]), str(paths["sft"]), "-q", "-f", "csv",
                                 "--plot", str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "t" / "trajectory.svg").read_text()
    assert "stable rank of cumulative update" in svg and "Sim_K" in svg and "step" in svg
    assert (tmp_path / "t" / "trajectory.png").stat().st_size > 1000


def test_plot_refuses_checkpoint_dir(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    result = runner.invoke(app, ["compare", str(paths["base"]), str(paths["sft"]), "-q",
                                 "--plot", str(paths["sft"] / "figs")])  # fmt: skip
    assert result.exit_code == 1 and "refusing to write" in result.stderr


# ---- figure contents, on hand-made summaries (the pipeline itself is tested above) ----------


def fake_run(
    label: str,
    x: float = 0.5,
    y: float = 0.5,
    regime: str = "opd-like",
    extra: dict[str, Any] | None = None,
    tensors: pd.DataFrame | None = None,
) -> RunResult:
    """A RunResult holding just what the figures read."""
    summary = {"run": f"/ckpt/{label}", "base": "/ckpt/base", "label": label, "regime": regime,
               "sparsity_bf16": x, "lowmag_overlap": y, "overlap_baseline": 0.3,
               **(extra or {})}  # fmt: skip
    frame = tensors if tensors is not None else pd.DataFrame(
        {"skipped": [], "layer": [], "module": [], "sparsity_bf16": [], "angle_left_mean_deg": []}
    )  # fmt: skip
    return RunResult(summary, Verdict(regime, 0.5, ("test",)), frame)


def layer_frame(modules: list[str], layers: int = 3) -> pd.DataFrame:
    """Per-tensor rows: sparsity 0.80 + 0.01 * layer (norm: 1.0), angle 1 + layer (norm: NaN)."""
    rows = [
        {
            "skipped": "",
            "layer": float(layer),
            "module": module,
            "sparsity_bf16": 1.0 if module == "norm" else 0.80 + 0.01 * layer,
            "angle_left_mean_deg": math.nan if module == "norm" else 1.0 + layer,
        }
        for layer in range(layers)
        for module in modules
    ]
    return pd.DataFrame(rows)


def text_boxes(fig: Any) -> list[Any]:
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]


def test_regime_map_has_a_legend_and_the_classifiers_bands() -> None:
    t = Thresholds(sparsity_sft_below=0.2, sparsity_rlvr_above=0.7, lowmag_sft_below=1.5,
                   lowmag_rlvr_above=2.5)  # fmt: skip
    runs = [fake_run("a", 0.1, 0.3, "sft-like"), fake_run("b", 0.8, 0.8, "rlvr-like")]
    fig = plots.regime_map_figure(runs, t)
    ax = fig.axes[0]
    legend = [x.get_text() for x in ax.get_legend().get_texts()]
    for entry in ("SFT band", "OPD band", "RLVR band", "OPDG Qwen3-8B (published)",
                  "random baseline (alpha=0.3)", "run: sft-like", "run: rlvr-like"):  # fmt: skip
        assert entry in legend, (entry, legend)
    assert any("0.2 / 0.7" in x and "1.5x / 2.5x" in x and "0.45 / 0.75" in x for x in legend)
    inverse = ax.transData.inverted()
    spans = []
    for patch in ax.patches:
        (x0, y0), (x1, y1) = inverse.transform(patch.get_window_extent().get_points())
        spans.append((round(x0, 6), round(x1, 6), round(y0, 6), round(y1, 6)))
    full = sorted((x0, x1) for x0, x1, y0, y1 in spans if y0 <= 0 and y1 >= 1.02)
    assert full == [(-0.02, 0.2), (0.2, 0.7), (0.7, 1.02)]  # sparsity bands
    strips = sorted((y0, y1) for x0, x1, y0, y1 in spans if x0 > 0.9)
    assert strips == [(0.0, 0.45), (0.45, 0.75), (0.75, 1.02)]  # low-mag bands (x baseline)
    plots._close(fig)


def test_crowded_run_labels_do_not_overlap() -> None:
    runs = [fake_run(f"checkpoint-{50 * i}", 0.5 + 0.002 * (i % 7), 0.5 + 0.003 * (i % 3))
            for i in range(30)]  # fmt: skip
    runs.append(fake_run("<script>$x$ [bold] \x07", 0.5, 0.5))
    fig = plots.regime_map_figure(runs)
    boxes = text_boxes(fig)
    assert len(boxes) == 3 + 31  # OPDG references and every run
    clashes = [(i, j) for i, j in itertools.combinations(range(len(boxes)), 2)
               if boxes[i].overlaps(boxes[j])]  # fmt: skip
    assert not clashes
    frame = fig.axes[0].bbox
    assert all(b.x0 >= frame.x0 and b.x1 <= frame.x1 and b.y0 >= frame.y0 and b.y1 <= frame.y1
               for b in boxes)  # fmt: skip
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "<script>\\$x\\$ [bold] \\x07" in texts  # drawn literally, no mathtext
    plots._close(fig)


def test_place_labels_is_deterministic_and_separates_labels() -> None:
    bounds = plots.Box(0, 0, 400, 300)
    anchors = [(200.0, 150.0)] * 25
    sizes = [(60.0 + i, 10.0) for i in range(25)]
    obstacles = [plots.Box(195, 145, 205, 155)]
    first = plots.place_labels(anchors, sizes, bounds, obstacles, radii=[5.0] * 25)
    assert first == plots.place_labels(anchors, sizes, bounds, obstacles, radii=[5.0] * 25)
    boxes = [p.box for p in first]
    assert all(a.overlap(b) == 0 for a, b in itertools.combinations(boxes, 2))
    assert all(b.inside(bounds) and b.overlap(obstacles[0]) == 0 for b in boxes)
    assert [round(b.x1 - b.x0) for b in boxes] == [60 + i for i in range(25)]
    assert not first[0].leader and first[-1].leader  # only labels off the first ring get lines
    lone = plots.place_labels([(10.0, 10.0)], [(30.0, 8.0)], bounds)[0].box
    assert lone.x0 > 10 and lone.inside(bounds)  # to the right of its point when there is room


def test_trajectory_points_are_joined_in_step_order() -> None:
    runs = [fake_run(f"ckpt-{s}", extra={"step": s, "stable_rank": r, "sim_final": m,
                                          "update_norm": n, "locking": lock})
            for s, r, m, n, lock in ((300, 3.0, 1.0, 0.3, "drifting"), (100, 1.0, 0.5, 0.1, ""),
                                     (200, 2.0, 0.7, 0.2, ""))]  # fmt: skip
    fig = plots.trajectory_figure(runs)
    for ax, expected in zip(fig.axes, ([1.0, 2.0, 3.0], [0.5, 0.7, 1.0], [0.1, 0.2, 0.3]),
                            strict=True):  # fmt: skip
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [100.0, 200.0, 300.0]
        assert list(line.get_ydata()) == expected
    assert fig._suptitle.get_text() == "trajectory: drifting"
    plots._close(fig)


def test_layer_files_are_named_by_run(tmp_path: Path) -> None:
    frame = layer_frame(["q", "k"])
    labels = ["sft", "SFT", "runs/a b", "<x>", "Ünïcode:ckpt", "", "x" * 50 + "/checkpoint-9"]
    runs = [fake_run(label, tensors=frame) for label in labels]
    runs[5].summary["label"] = ""  # falls back to the run spec
    paths = plots.write_plots(runs, tmp_path)
    stems = sorted({p.stem for p in paths} - {"regime_map"})
    assert stems == sorted(["layers_sft", "layers_sft-2", "layers_runs-a-b", "layers_x",
                            "layers_unicode-ckpt", "layers_ckpt",
                            "layers_" + "x" * 47 + "-checkpoint-9"])  # fmt: skip
    assert plots.slug("///") == "run" and plots.slug("a..b") == "a..b"


def test_heatmap_module_order_and_colour_scale() -> None:
    assert plots.module_order(["norm", "down", "zeta", "o", "qkv", "q", "up", "k", "gate",
                               "v", "embed"]) == [
        "q", "k", "v", "o", "gate", "up", "down", "qkv", "embed", "norm", "zeta"]  # fmt: skip
    run = fake_run("r", tensors=layer_frame(["down", "norm", "q", "up", "k", "gate", "v", "o"]))
    fig = plots.layer_heatmap_figure(run)
    fig.canvas.draw()
    sparsity, angle = (ax for ax in fig.axes if ax.get_label() != "<colorbar>")
    assert len(fig.axes) == 4  # and two colour bars
    for ax in (sparsity, angle):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["q", "k", "v", "o", "gate", "up", "down", "norm"]
    low, high = sparsity.get_images()[0].get_clim()
    # norms sit at 1.0; the scale spans the other cells' 2nd-98th percentile (0.80 .. 0.82)
    assert (low, high) == pytest.approx((0.80, 0.82))
    low, high = angle.get_images()[0].get_clim()
    assert (low, high) == pytest.approx((1.0, 3.0))
    plots._close(fig)
    values = np.array([[0.8, 1.0], [0.8, 1.0]])
    assert plots.color_limits(values, ["q", "norm"]) == pytest.approx((0.792, 0.808, "max"))
    assert plots.color_limits(np.array([[0.5]]), ["q"])[:2] == (0.495, 0.505)


def test_svg_plots_match_the_files_and_are_deterministic(tmp_path: Path) -> None:
    runs = [fake_run("a", 0.1, 0.3, "sft-like", tensors=layer_frame(["q", "norm"])),
            fake_run("b", 0.8, 0.8, "rlvr-like", tensors=layer_frame(["q", "norm"]))]  # fmt: skip
    first, second = plots.svg_plots(runs), plots.svg_plots(runs)
    assert first == second
    assert [p.stem for p in first] == ["regime_map", "layers_a", "layers_b"]
    for plot in first:
        assert plot.svg.startswith("<svg") and plot.svg.rstrip().endswith("</svg>")
        assert "<?xml" not in plot.svg and "DOCTYPE" not in plot.svg
        assert f'id="{plot.stem}-' in plot.svg
    written = {p.name for p in plots.write_plots(runs, tmp_path)}
    assert written == {f"{p.stem}.{ext}" for p in first for ext in ("png", "svg")}
