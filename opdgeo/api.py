"""The Python API and the one orchestrator behind every command.

    import opdgeo
    runs = opdgeo.compare("base/", ["sft/", "rlvr/"], tier="standard")
    runs[0].summary["regime"], runs[0].verdict.reasons
    runs = opdgeo.batch("base/", "runs/")                     # every checkpoint in a folder
    traj = opdgeo.trajectory("base/", ["ckpt-50", "ckpt-100"])  # traj.locking, traj.runs
    info = opdgeo.inspect("org/name@main")                    # headers only

Options are keywords: any setting of :class:`opdgeo.config.Settings` (``tier=``, ``scope=``,
``alpha=``, ``cache=`` ...; ``k=`` is ``angle_k``) and of
:class:`opdgeo.io.SourceOptions` (``token=``, ``offline=``, ``keep=``, ``allow_pickle=``),
over an optional ``config=`` (:func:`opdgeo.config.load_config`). Nothing here prints:
``on_plan`` sees the plans before any tensor is read and ``track(label, total)`` wraps each
pass (progress bars); warnings go through :mod:`warnings` (:class:`opdgeo.errors.OpdgeoWarning`).

Every command runs :func:`_execute`: runs are grouped by origin; each group opens its
checkpoints (headers only), plans the pairs, and streams :func:`opdgeo.engine.compare_many`,
so each base tensor is read and decomposed once for all local runs that share it (Hub runs
stream one at a time, keeping their shard order and disk bound).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opdgeo.config import Config, Settings, metric_settings
from opdgeo.errors import ConfigError, OpdgeoWarning
from opdgeo.inspection import inspect_document, inspect_frame
from opdgeo.io import Checkpoint, SourceOptions, open_base, open_checkpoint, open_run
from opdgeo.io.experts import split_experts
from opdgeo.pairing import Plan, plan_pairs
from opdgeo.records import TensorRecord
from opdgeo.regimes import locking_verdict
from opdgeo.study import (
    RunSpec,
    StateFile,
    discover,
    is_checkpoint_dir,
    parse_step,
    same_checkpoint,
)

if TYPE_CHECKING:  # imported where used: `inspect` reads headers and never loads torch
    from opdgeo import engine
    from opdgeo.report import RunResult, TrajectoryResult

PlanHook = Callable[[Checkpoint, list[Checkpoint], list[Plan]], None]
"""``on_plan(base, runs, plans)``: called once per origin before any tensor is read."""
Tracker = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""``track(label, parameters)`` wraps one pass and yields ``advance(parameters done)``."""

ALIASES = {"k": "angle_k"}
"""Keyword spellings of settings (the CLI's option names)."""


@contextmanager
def _untracked(label: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` reads from a checkpoint's headers."""

    label: str
    frame: Any
    """pandas DataFrame, one row per tensor (:data:`opdgeo.report.INSPECT_COLUMNS`)."""
    document: dict[str, Any]
    """The JSON document (also the totals a table shows)."""


def configure(
    config: Config | None = None, sources: SourceOptions | None = None, **options: Any
) -> tuple[Config, SourceOptions]:
    """Apply keyword options (settings and source options) over ``config`` and ``sources``."""
    config = config or Config()
    sources = sources or SourceOptions()
    setting_names = {f.name for f in dataclasses.fields(Settings)}
    source_names = {f.name for f in dataclasses.fields(SourceOptions)}
    settings: dict[str, Any] = {}
    source: dict[str, Any] = {}
    metric: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        name = ALIASES.get(key, key)
        if name in setting_names:
            settings[name] = value
        elif name in source_names:
            source[name] = value
        else:
            metric[name] = value
    if metric:  # registered metrics' settings (opdgeo.metrics.Param), validated; else a mistake
        given = metric_settings(metric, "options")
        if metric:
            raise ConfigError(f"unknown option {next(iter(metric))!r}")
        merged = dict(config.settings.metric_params) | dict(given)
        settings["metric_params"] = tuple(sorted(merged.items()))
    if settings:
        config = dataclasses.replace(
            config, settings=dataclasses.replace(config.settings, **settings)
        )
    if source:
        sources = dataclasses.replace(sources, **source)
    return config, sources


def _specs(paths: str | Sequence[str]) -> list[str]:
    """Checkpoint specs from one string or a sequence (a string is one checkpoint)."""
    if isinstance(paths, str):
        return [paths]
    out = list(paths)
    if not all(isinstance(p, str) for p in out):
        raise ConfigError("checkpoints must be given as strings (paths or Hub ids)")
    return out


def compare(
    base: str,
    tuned: str | Sequence[str],
    *,
    config: Config | None = None,
    sources: SourceOptions | None = None,
    on_plan: PlanHook | None = None,
    track: Tracker = _untracked,
    labels: Mapping[str, str] | None = None,
    **options: Any,
) -> list[RunResult]:
    """Compare each of ``tuned`` (one spec or several) against ``base``; one result each.
    ``labels`` maps a tuned spec to the name it is shown under (the ``label`` column)."""
    config, sources = configure(config, sources, **options)
    names = dict(labels or {})
    specs = [RunSpec(path, names.get(path, path)) for path in _specs(tuned)]
    if not specs:
        raise ConfigError("give at least one tuned checkpoint")
    return _execute(base, specs, config, sources, on_plan, track, labelled=bool(names))


def batch(
    base: str | None,
    runs: str | Sequence[RunSpec | str],
    *,
    config: Config | None = None,
    sources: SourceOptions | None = None,
    state: StateFile | None = None,
    on_plan: PlanHook | None = None,
    track: Tracker = _untracked,
    **options: Any,
) -> list[RunResult]:
    """Compare many runs: every checkpoint found in folder ``runs``, or the given list of
    :class:`~opdgeo.study.RunSpec` (each against its ``origin``, default ``base``) or of
    checkpoint specs (strings: each its own label, measured from ``base``).

    ``state`` (a :class:`~opdgeo.study.StateFile`) records every (run, tensor) as it is done
    and supplies the ones a resumed batch already has."""
    config, sources = configure(config, sources, **options)
    from pathlib import Path

    specs = discover(Path(runs)) if isinstance(runs, str) else _run_specs(runs)
    specs = without_base(base, specs)
    if len({r.label for r in specs}) != len(specs):
        raise ConfigError("run labels must be unique")
    if base is None and any(r.origin is None for r in specs):
        raise ConfigError("give a base, or an origin for every run")
    return _execute(base, specs, config, sources, on_plan, track, state=state)


def _run_specs(runs: Sequence[RunSpec | str]) -> list[RunSpec]:
    if not all(isinstance(r, RunSpec | str) for r in runs):
        raise ConfigError("runs must be a folder, or RunSpecs or strings (paths or Hub ids)")
    return [RunSpec(r, r, step=parse_step(r)) if isinstance(r, str) else r for r in runs]


def without_base(base: str | None, specs: Sequence[RunSpec]) -> list[RunSpec]:
    """``specs`` less the runs that are ``base`` itself (a base inside the runs folder),
    each skipped with a warning; :func:`batch` applies it, and the CLI before it counts."""
    kept = list(specs)
    if base is None:
        return kept
    for spec in [s for s in kept if s.origin is None and same_checkpoint(s.path, base)]:
        warnings.warn(f"batch: skipping {spec.label}: it is the base {base} itself",
                      OpdgeoWarning, stacklevel=3)  # fmt: skip
        kept.remove(spec)
    if not kept:
        raise ConfigError(f"no run to compare: the only checkpoint found is the base {base}")
    return kept


def trajectory(
    base: str,
    checkpoints: str | Sequence[str],
    *,
    matrices: str | None = None,
    sim_k: int = 16,
    hill_k: int = 10,
    config: Config | None = None,
    sources: SourceOptions | None = None,
    on_plan: PlanHook | None = None,
    track: Tracker = _untracked,
    **options: Any,
) -> TrajectoryResult:
    """Follow one run's checkpoints from ``base`` (cumulative updates, subspace locking).

    ``checkpoints`` are in training order, or one folder of step checkpoints. Each result's
    summary gains the trajectory columns, ``step`` and (in the last) ``locking``."""
    from pathlib import Path

    from opdgeo import locking as traj
    from opdgeo.report import TrajectoryResult

    config, sources = configure(config, sources, **options)
    given = _specs(checkpoints)
    only = Path(given[0])
    if len(given) == 1 and only.is_dir() and not is_checkpoint_dir(only):
        specs = discover(only)
    else:
        specs = _by_step([RunSpec(c, c, step=parse_step(c)) for c in given])
    observer = traj.TrajectoryObserver(
        len(specs), matrices or traj.DEFAULT_MATRICES, sim_k, hill_k,
        config.settings.spectral_method,
    )  # fmt: skip
    runs = _execute(base, specs, config, sources, on_plan, track, observer=observer)
    rows = observer.rows()
    verdict, facts = locking_verdict(rows, config.thresholds)
    last = len(runs) - 1
    for i, (run, row, spec) in enumerate(zip(runs, rows, specs, strict=True)):
        run.summary.update(row)
        run.summary["step"] = spec.step if spec.step is not None else i
        run.summary["locking"] = verdict if i == last else ""
        run.summary["locking_reasons"] = "; ".join(facts) if i == last else ""
    return TrajectoryResult(runs, verdict, facts)


def _by_step(specs: list[RunSpec]) -> list[RunSpec]:
    """Trajectory checkpoints in the order of their parsed steps when every name has one and
    the given order disagrees (with a warning saying so); otherwise as given."""
    steps = [s.step for s in specs]
    if any(step is None for step in steps) or steps == sorted(steps):  # type: ignore[type-var]
        return specs
    if len(set(steps)) != len(steps):
        raise ConfigError(
            "trajectory: checkpoints repeat a step number ("
            + ", ".join(f"{s.label}={s.step}" for s in specs) + "); give each step once"
        )  # fmt: skip
    ordered = sorted(specs, key=lambda s: s.step or 0)
    warnings.warn(
        "trajectory: checkpoints ordered by their parsed step, not the order given: "
        + ", ".join(s.label for s in ordered), OpdgeoWarning, stacklevel=3,
    )  # fmt: skip
    return ordered


def _same_weights(base: str, spec: RunSpec, result: RunResult) -> None:
    """Warn when a run is the base itself (same path) or holds the same weights."""
    if same_checkpoint(spec.path, base):
        why = "is the base checkpoint itself (same path)"
    elif result.summary.get("rel_norm") == 0.0 and result.summary.get("n_tensors"):
        why = "has the same weights as the base (every compared tensor is identical)"
    else:
        return
    warnings.warn(f"{spec.label} {why}: the comparison measures nothing", OpdgeoWarning,
                  stacklevel=4)  # fmt: skip


def inspect(source: str, *, sources: SourceOptions | None = None, **options: Any) -> Inspection:
    """Tensors, dtypes, shapes and bytes of a checkpoint, from its headers only."""
    _, sources = configure(None, sources, **options)
    ckpt = open_checkpoint(source, sources)
    try:
        frame = inspect_frame(ckpt)
        return Inspection(ckpt.label, frame, inspect_document(ckpt, frame))
    finally:
        ckpt.close()


def compare_checkpoints(
    base: str,
    tuned: str | Sequence[str],
    config: Config | None = None,
    sources: SourceOptions | None = None,
    on_plan: PlanHook | None = None,
    track: Tracker = _untracked,
) -> list[RunResult]:
    """:func:`compare` with positional configuration (the 0.1 spelling, kept for scripts)."""
    return compare(base, tuned, config=config, sources=sources, on_plan=on_plan, track=track)


def _execute(
    base: str | None,
    specs: list[RunSpec],
    config: Config,
    sources: SourceOptions,
    on_plan: PlanHook | None,
    track: Tracker,
    state: StateFile | None = None,
    observer: engine.Observer | None = None,
    labelled: bool = True,
) -> list[RunResult]:
    """The orchestrator: one :class:`RunResult` per spec, in order (see module docstring)."""
    from opdgeo import report

    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        origin = spec.origin or base
        assert origin is not None  # batch() checked
        groups.setdefault(origin, []).append(i)
    results: dict[int, RunResult] = {}
    for origin, members in groups.items():
        records = _group(origin, [specs[i] for i in members], config, sources, on_plan, track,
                         state, observer)  # fmt: skip
        built = []
        for i, recs in zip(members, records, strict=True):
            result = report.build_run(recs, config)
            _same_weights(origin, specs[i], result)
            if labelled:
                result.summary.update(label=specs[i].label, step=specs[i].step)
            results[i] = result
            built.append(result)
        report.add_relative_order(built)
    return [results[i] for i in range(len(specs))]


def _group(
    origin: str,
    members: list[RunSpec],
    config: Config,
    sources: SourceOptions,
    on_plan: PlanHook | None,
    track: Tracker,
    state: StateFile | None,
    observer: engine.Observer | None,
) -> list[list[TensorRecord]]:
    """Every record of every member run against ``origin`` (resumed ones included)."""
    from opdgeo import engine

    opened: list[Checkpoint] = []
    try:
        base_ckpt = open_base(origin, sources)  # quantized weights decoded, adapters refused
        opened.append(base_ckpt)
        ckpts = []
        for spec in members:
            ckpts.append(open_run(spec.path, base_ckpt, sources))  # adapters, quantized weights
            opened.append(ckpts[-1])
        for ckpt in opened:  # fused MoE experts become per-expert matrices
            split_experts(ckpt)
        plans = [plan_pairs(base_ckpt, c, config.settings) for c in ckpts]
        if on_plan is not None:
            on_plan(base_ckpt, ckpts, plans)
        records: list[list[TensorRecord]] = [[] for _ in members]
        done: set[tuple[int, str]] = set()
        if state is not None:
            for i, spec in enumerate(members):
                old = state.records(base_ckpt.label, spec.label)
                records[i].extend(old)
                done.update((i, r.tensor) for r in old)
        local = all(c.fetcher is None for c in opened)
        passes = [list(range(len(members)))] if local else [[i] for i in range(len(members))]
        for indices in passes:
            total = sum(p.numel for i in indices for p in plans[i].pairs if (i, p.name) not in done)
            label = ckpts[indices[0]].label if len(indices) == 1 else "compare"
            with track(label, total) as advance:
                stream = engine.compare_many(
                    base_ckpt, [ckpts[i] for i in indices], [plans[i] for i in indices],
                    config.settings, observer, {(indices.index(i), t) for i, t in done
                                                if i in indices},
                )  # fmt: skip
                for j, record in stream:
                    i = indices[j]
                    records[i].append(record)
                    if state is not None:
                        state.append(base_ckpt.label, members[i].label, record)
                    advance(0 if record.skipped else record.numel)
        return records
    finally:
        for ckpt in opened:
            ckpt.close()
