"""Assemble per-tensor records into run results: summary row, verdict, groups, skipped list.

This is also the library entry point: :func:`compare_checkpoints` runs a whole comparison
without any terminal output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from opdgeo import engine
from opdgeo.aggregate import clean, groups, summarize
from opdgeo.config import Config
from opdgeo.io import Checkpoint, SourceOptions, open_checkpoint
from opdgeo.pairing import Plan, plan_pairs
from opdgeo.regimes import Verdict, classify, relative_order

CONTRACT_COLUMNS = (
    "run",
    "base",
    "regime",
    "confidence",
    "n_tensors",
    "n_params",
    "sparsity_bf16",
    "sparsity_atol",
    "rel_norm",
    "principal_angle_deg",
    "nss",
    "principal_energy",
    "principal_overlap",
    "lowmag_overlap",
    "stable_rank",
)
"""Summary columns fixed by the output contract (v1), in order; more follow them."""


@dataclass
class RunResult:
    """Everything known about one tuned checkpoint compared against its base."""

    summary: dict[str, Any]
    verdict: Verdict
    tensors: pd.DataFrame
    modules: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def skipped(self) -> list[dict[str, str]]:
        rows = self.tensors[self.tensors["skipped"] != ""]
        return [{"tensor": str(r.tensor), "reason": str(r.skipped)} for r in rows.itertuples()]


def build_run(records: Iterable[dict[str, Any]], config: Config) -> RunResult:
    """Summarise and classify one run from its per-tensor records."""
    frame = pd.DataFrame.from_records(list(records), columns=engine.tensor_columns())
    frame["skipped"] = frame["skipped"].fillna("")
    frame["tied"] = frame["tied"].fillna(False).astype(bool)
    summary = summarize(frame)
    verdict = classify(summary, config.thresholds)
    summary.update(
        regime=verdict.regime,
        confidence=verdict.confidence,
        reasons="; ".join(verdict.reasons),
        caveats="; ".join(verdict.caveats),
    )
    return RunResult(summary, verdict, frame, groups(frame, "module"), groups(frame, "layer"))


def add_relative_order(runs: Sequence[RunResult]) -> None:
    """Relative mode: with two or more classified runs sharing a base, rank them per feature."""
    ranked = [r for r in runs if r.verdict.regime not in ("unchanged", "unrelated")]
    if len(ranked) < 2 or len({r.summary["base"] for r in ranked}) != 1:
        return
    for run, order in zip(ranked, relative_order([r.summary for r in ranked]), strict=True):
        run.summary.update(order)


def summary_frame(runs: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: the contract columns first, then every extra column."""
    frame = pd.DataFrame([r.summary for r in runs])
    extra = [c for c in frame.columns if c not in CONTRACT_COLUMNS]
    return frame[[*CONTRACT_COLUMNS, *extra]]


def tensors_frame(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Per-tensor rows of all runs."""
    return pd.concat([r.tensors for r in runs], ignore_index=True)


def groups_frame(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Per-module-type and per-layer rows of all runs."""
    rows = [
        {"run": r.summary["run"], "base": r.summary["base"], **g}
        for r in runs
        for g in (*r.modules, *r.layers)
    ]
    return pd.DataFrame(rows)


def to_json(runs: Sequence[RunResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: metadata plus, per run, summary, verdict, groups and skipped tensors."""

    def cleaned(d: dict[str, Any]) -> dict[str, Any]:
        return {k: clean(v) for k, v in d.items()}

    return {
        **meta,
        "runs": [
            {
                "summary": cleaned(r.summary),
                "verdict": {
                    "regime": r.verdict.regime,
                    "confidence": r.verdict.confidence,
                    "reasons": list(r.verdict.reasons),
                    "caveats": list(r.verdict.caveats),
                    "votes": dict(r.verdict.votes),
                },
                "modules": [cleaned(g) for g in r.modules],
                "layers": [cleaned(g) for g in r.layers],
                "skipped": r.skipped,
            }
            for r in runs
        ],
    }


PlanHook = Callable[[Checkpoint, list[Checkpoint], list[Plan]], None]
Tracker = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def _untracked(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def compare_checkpoints(
    base: str,
    tuned: Sequence[str],
    config: Config | None = None,
    sources: SourceOptions | None = None,
    on_plan: PlanHook | None = None,
    track: Tracker = _untracked,
) -> list[RunResult]:
    """Compare each of ``tuned`` against ``base``: the library API and the CLI's engine.

    Every checkpoint is opened (headers only) and planned before any tensor is read, and
    ``on_plan`` sees the plans then. Local runs share one pass (each base tensor read and
    decomposed once); Hub runs stream one at a time, so each keeps its shard order and its
    two-shard disk bound. ``track(label, parameters)`` wraps each pass and is given the
    parameters of every compared tensor (progress bars).
    """
    config = config or Config()
    opened: list[Checkpoint] = []
    try:
        for spec in (base, *tuned):
            opened.append(open_checkpoint(spec, sources))
        base_ckpt, runs = opened[0], opened[1:]
        plans = [plan_pairs(base_ckpt, t, config.settings) for t in runs]
        if on_plan is not None:
            on_plan(base_ckpt, runs, plans)
        local = all(c.fetcher is None for c in opened)
        groups = [list(range(len(runs)))] if local else [[i] for i in range(len(runs))]
        records: list[list[dict[str, Any]]] = [[] for _ in runs]
        for group in groups:
            total = sum(p.numel for i in group for p in plans[i].pairs)
            label = runs[group[0]].label if len(group) == 1 else "compare"
            with track(label, total) as advance:
                stream = engine.compare_many(
                    base_ckpt, [runs[i] for i in group], [plans[i] for i in group],
                    config.settings,
                )  # fmt: skip
                for j, record in stream:
                    advance(0 if record.get("tied") else int(record.get("numel") or 0))
                    records[group[j]].append(record)
    finally:
        for ckpt in opened:
            ckpt.close()
    results = [build_run(r, config) for r in records]
    add_relative_order(results)
    return results
