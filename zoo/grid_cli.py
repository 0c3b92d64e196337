"""``python -m zoo grid | grid-report | grid-explore``: train the grid, dump features, explore.

``grid`` runs all three in turn (what ``make zoo-grid`` runs) and records each part's wall
and CPU seconds and the load in ``<results>/timings.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from zoo.grid import GRID_DIR, RUNS_DIR, GridConfig, mini_grid_config, run_grid


def grid_main(
    command: str, seeds: list[int], mini: bool, out: Path | None, results: Path | None
) -> None:
    """Dispatch one grid command; ``mini`` uses the test suite's tiny configuration."""
    cfg = mini_grid_config() if mini else GridConfig()
    out = out or RUNS_DIR
    results = results or GRID_DIR
    results.mkdir(parents=True, exist_ok=True)
    timing_file = results / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    parts = {
        "grid": ("train", "report", "explore"),
        "grid-report": ("report",),
        "grid-explore": ("explore",),
    }[command]
    for part in parts:
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        if part == "train":
            run_grid(cfg, seeds, out, results)
        elif part == "report":
            from zoo.grid_features import write_features
            from zoo.grid_results import refresh_results

            write_features(results / "runs.json", results / "features.csv", out / "opdgeo-cache")
            if results == GRID_DIR:
                refresh_results(GRID_DIR.parent / "RESULTS.md", results)
        else:
            from zoo.grid_explore import explore

            explore(results / "runs.json", results)
        timings[part] = {
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "load_start": round(load, 2),
            "load_end": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        }
        timing_file.write_text(json.dumps(timings, indent=1) + "\n")
        print(
            f"grid {part}: {timings[part]['wall_s']:.0f} s wall, "
            f"{timings[part]['cpu_s']:.0f} s CPU, load {load:.1f}"
        )
