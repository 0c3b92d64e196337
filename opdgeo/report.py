"""Results: per-run records become a summary row, a verdict, groups and tables, and the JSON
documents of ``compare`` / ``batch`` / ``trajectory`` (``inspect``'s are in
:mod:`opdgeo.inspection`, which imports no torch).

Everything here is pure data assembly (no terminal output, no file writes), so the library
API (:mod:`opdgeo.api`) and the CLI share it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from opdgeo.aggregate import SCHEMA_VERSION, clean, frame_of, groups, summarize
from opdgeo.config import Config
from opdgeo.experts import expert_summary
from opdgeo.quantized import quantization_verdict
from opdgeo.records import TensorRecord, merge_methods
from opdgeo.regimes import Locking, Regime, Verdict, classify, relative_order
from opdgeo.version import __version__

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
    experts: list[dict[str, Any]] = field(default_factory=list)
    """One row per MoE layer x expert (empty for dense models)."""

    @property
    def skipped(self) -> list[dict[str, str]]:
        rows = self.tensors[self.tensors["skipped"] != ""]
        return [{"tensor": str(r.tensor), "reason": str(r.skipped)} for r in rows.itertuples()]


@dataclass
class TrajectoryResult:
    """One run's checkpoints from one origin, in step order, and the locking verdict."""

    runs: list[RunResult]
    locking: Locking
    facts: list[str]


def build_run(records: Sequence[TensorRecord], config: Config) -> RunResult:
    """Summarise and classify one run from its per-tensor records."""
    frame = frame_of(records)
    summary = summarize(records, frame)
    experts = groups(frame, "expert")
    summary.update(expert_summary(experts))
    counted = [r.methods for r in records if not r.skipped and not r.tied]
    formats = merge_methods(counted).get("decoding", set())
    verdict = quantization_verdict(summary, frame, formats) or classify(
        summary, config.thresholds, config.calibration
    )
    summary.update(
        regime=verdict.regime,
        confidence=verdict.confidence,
        reasons="; ".join(verdict.reasons),
        caveats="; ".join(verdict.caveats),
        regime_papers=verdict.regime_papers,
        confidence_rule=verdict.rule,
    )
    return RunResult(summary, verdict, frame, groups(frame, "module"), groups(frame, "layer"),
                     experts)  # fmt: skip


def add_relative_order(runs: Sequence[RunResult]) -> None:
    """Relative mode: with two or more classified runs sharing a base, rank them per feature."""
    unranked = (Regime.UNCHANGED, Regime.UNRELATED, Regime.QUANTIZED)
    ranked = [r for r in runs if r.verdict.regime not in unranked]
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
    """Per-module-type, per-layer and per-expert rows of all runs."""
    rows = [
        {"run": r.summary["run"], "base": r.summary["base"], **g}
        for r in runs
        for g in (*r.modules, *r.layers, *r.experts)
    ]
    return pd.DataFrame(rows)


def settings_dict(config: Config) -> dict[str, Any]:
    """The settings as reported (JSON ``settings``), derived ``spectral_method`` included."""
    out = {f.name: getattr(config.settings, f.name) for f in dataclasses.fields(config.settings)}
    out["spectral_method"] = config.settings.spectral_method
    return out


def document(
    runs: Sequence[RunResult], config: Config, command: str | None = None
) -> dict[str, Any]:
    """The JSON document: metadata plus, per run, summary, verdict, groups and skipped tensors."""

    def cleaned(d: dict[str, Any]) -> dict[str, Any]:
        return {k: clean(v) for k, v in d.items()}

    meta: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "opdgeo_version": __version__}
    if command is not None:
        meta["command"] = command
    meta.update(
        settings=settings_dict(config),
        thresholds={f.name: getattr(config.thresholds, f.name)
                    for f in dataclasses.fields(config.thresholds)},
        calibration={"source": config.calibration.source,
                     "rules": {k: list(v) for k, v in config.calibration.rules.items()}},
    )  # fmt: skip
    return {
        **meta,
        "runs": [
            {
                "summary": cleaned(r.summary),
                "verdict": {
                    "regime": r.verdict.regime,
                    "confidence": clean(r.verdict.confidence),
                    "reasons": list(r.verdict.reasons),
                    "caveats": list(r.verdict.caveats),
                    "votes": dict(r.verdict.votes),
                    "regime_papers": r.verdict.regime_papers,
                    "rule": r.verdict.rule,
                },
                "modules": [cleaned(g) for g in r.modules],
                "layers": [cleaned(g) for g in r.layers],
                "experts": [cleaned(g) for g in r.experts],
                "skipped": r.skipped,
            }
            for r in runs
        ],
    }
