"""``python -m zoo grid-report``: opdgeo on every grid run against its origin -> features.csv.

One row per grid run (its final checkpoint against its stage origin: SFT runs against the
base, RLVR and OPD runs against the anchor): the run's identity (seed, algorithm, learning
rate, steps, optimizer updates, accuracy before and after, the true regime) and then every
summary column opdgeo produces, in opdgeo's order. Each run is compared on its own (one
tuned checkpoint per call), so no row depends on which other runs exist (opdgeo's relative
``order_*`` columns only appear when several runs share a call, so they are absent here).

opdgeo is called in exactly one place, :func:`opdgeo_summary`, so an API rename touches one
function.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from zoo.grid import REPO, RUNS_DIR, rel

TRUE_REGIME = {"sft": "sft-like", "rlvr": "rlvr-like", "opd": "opd-like"}
IDENTITY = (
    "seed",
    "algorithm",
    "true_regime",
    "lr",
    "steps",
    "updates",
    "updates_per_step",
    "origin_name",
    "acc_before",
    "acc_after",
    "acc_gain",
)


def opdgeo_summary(origin: Path, tuned: Path, cache_dir: Path) -> dict[str, Any]:
    """opdgeo's summary row of ``tuned`` against ``origin`` (default settings, 2 threads,
    the base cache kept under ``cache_dir``). The only call into opdgeo in the grid code."""
    from opdgeo import compare_checkpoints
    from opdgeo.config import Config, Settings

    config = Config(settings=Settings(threads=2, cache_dir=str(cache_dir)))
    return dict(compare_checkpoints(str(origin), [str(tuned)], config)[0].summary)


def _path(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else REPO / p


def feature_rows(manifest: dict[str, Any], cache_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``features.csv`` (see the module docstring)."""
    rows = []
    for run in manifest["runs"]:
        summary = opdgeo_summary(_path(run["origin"]), _path(run["final"]), cache_dir)
        summary["run"], summary["base"] = rel(_path(run["final"])), rel(_path(run["origin"]))
        identity = {k: run.get(k) for k in IDENTITY}
        identity["true_regime"] = TRUE_REGIME[run["algorithm"]]
        identity["acc_gain"] = run["acc_after"] - run["acc_before"]
        rows.append({**identity, **summary})
    return rows


def write_features(
    manifest_path: Path, out: Path, cache_dir: Path = RUNS_DIR / "opdgeo-cache"
) -> pd.DataFrame:
    """Compare every run of ``manifest_path`` (runs.json) and write ``out`` (CSV)."""
    manifest = json.loads(manifest_path.read_text())
    frame = pd.DataFrame(feature_rows(manifest, cache_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return frame
