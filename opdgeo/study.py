"""Many runs at once: discovery of checkpoints, study files, resumable batch comparisons.

A batch compares every run against its origin with :func:`opdgeo.engine.compare_many`, so
each base tensor is read once and decomposed once however many runs share it. Per-tensor
records are appended to a JSON-lines state file as they are produced; ``resume=True`` reads
it back and skips every (run, tensor) already done.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opdgeo import engine, report
from opdgeo.config import Config
from opdgeo.errors import ConfigError, SourceError
from opdgeo.io import Checkpoint, SourceOptions, open_checkpoint
from opdgeo.pairing import plan_pairs

_STEP_RE = re.compile(r"(?:checkpoint|global_step|iter|step)[-_]?(\d+)", re.IGNORECASE)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: where it is, what to call it, and what it is measured from."""

    path: str
    label: str
    origin: str | None = None
    """The run's own stage initialisation (None: the study's base)."""
    step: int | None = None


def parse_step(name: str) -> int | None:
    """Step number from ``checkpoint-500``, ``global_step500``, ``iter_0005375``, ``step-7``."""
    matches = _STEP_RE.findall(name)
    return int(matches[-1]) if matches else None


def is_checkpoint_dir(path: Path) -> bool:
    return any((path / w).is_file() for w in _WEIGHTS) or any(path.glob("*.safetensors"))


def discover(directory: Path) -> list[RunSpec]:
    """Checkpoints under ``directory``: .safetensors files, checkpoint directories, and their
    ``checkpoint-*`` / ``global_step*`` / ``iter_*`` subdirectories (one level down), ordered
    by parsed step number, then name."""
    if not directory.is_dir():
        raise SourceError(f"not a directory: {directory}")
    found: list[RunSpec] = []
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix == ".safetensors":
            found.append(RunSpec(str(child), child.stem, step=parse_step(child.stem)))
        elif child.is_dir() and is_checkpoint_dir(child):
            found.append(RunSpec(str(child), child.name, step=parse_step(child.name)))
        elif child.is_dir():
            for sub in sorted(child.iterdir()):
                if sub.is_dir() and is_checkpoint_dir(sub):
                    label = f"{child.name}/{sub.name}"
                    found.append(RunSpec(str(sub), label, step=parse_step(sub.name)))
    if not found:
        raise SourceError(f"no checkpoints found under {directory}")
    return sorted(found, key=lambda r: (r.step is None, r.step or 0, r.label))


def load_study(path: Path) -> tuple[str, list[RunSpec]]:
    """Read ``[study]`` from a TOML file: ``base`` and ``[[study.runs]]`` with path/label/origin."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read study file {path}: {exc}") from None
    study = data.get("study")
    if not isinstance(study, dict) or not isinstance(study.get("base"), str):
        raise ConfigError(f'{path}: needs a [study] table with base = "..."')
    runs = study.get("runs", [])
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: needs at least one [[study.runs]] entry with a path")
    specs = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("path"), str):
            raise ConfigError(f'{path}: study.runs[{i}] needs path = "..."')
        unknown = sorted(set(run) - {"path", "label", "origin"})
        if unknown:
            raise ConfigError(f"{path}: study.runs[{i}] has unknown key(s) {', '.join(unknown)}")
        label = str(run.get("label") or Path(run["path"]).name)
        origin = run.get("origin")
        specs.append(RunSpec(run["path"], label, origin, parse_step(label)))
    return study["base"], specs


class StateFile:
    """Append-only JSON-lines log of per-tensor records, keyed by (origin label, run label)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.done: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if resume:
            if not path.is_file():
                raise ConfigError(f"--resume: no state file at {path}")
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines, 1):
                try:
                    entry = json.loads(line)
                    key = (str(entry["base"]), str(entry["label"]))
                    self.done.setdefault(key, []).append(dict(entry["record"]))
                except (ValueError, KeyError, TypeError):
                    if n == len(lines):
                        break  # the last line, cut by the interruption
                    raise ConfigError(f"{path}:{n}: not an opdgeo state record") from None
        else:
            path.write_text("", encoding="utf-8")
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, base: str, label: str, record: dict[str, Any]) -> None:
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()
        }
        self._fh.write(json.dumps({"base": base, "label": label, "record": clean}) + "\n")
        self._fh.flush()

    def close(self, finished: bool) -> None:
        self._fh.close()
        if finished:
            self.path.unlink(missing_ok=True)


def run_batch(
    base: str,
    runs: list[RunSpec],
    config: Config,
    sources: SourceOptions,
    state: StateFile | None = None,
    progress: Any = None,
    observer: engine.Observer | None = None,
) -> list[report.RunResult]:
    """Compare every run against its origin (default ``base``); one RunResult per run, in order.

    Runs that share an origin are compared in one pass (:func:`engine.compare_many`).
    """
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        groups.setdefault(run.origin or base, []).append(run)
    results: dict[str, report.RunResult] = {}
    for origin, members in groups.items():
        results.update(_run_group(origin, members, config, sources, state, progress, observer))
    for members in groups.values():
        report.add_relative_order([results[r.label] for r in members])
    return [results[r.label] for r in runs]


def _run_group(
    origin: str,
    members: list[RunSpec],
    config: Config,
    sources: SourceOptions,
    state: StateFile | None,
    progress: Any,
    observer: engine.Observer | None = None,
) -> Iterator[tuple[str, report.RunResult]]:
    opened: list[Checkpoint] = []
    try:
        base = open_checkpoint(origin, sources)
        opened.append(base)
        ckpts = []
        for spec in members:
            ckpts.append(open_checkpoint(spec.path, sources))
            opened.append(ckpts[-1])
        plans = [plan_pairs(base, c, config.settings) for c in ckpts]
        records: list[list[dict[str, Any]]] = [[] for _ in members]
        done: set[tuple[int, str]] = set()
        if state is not None:
            for i, spec in enumerate(members):
                old = state.done.get((base.label, spec.label), [])
                records[i].extend(old)
                done.update((i, str(r["tensor"])) for r in old)
        stream = engine.compare_many(base, ckpts, plans, config.settings, observer, done)
        for i, record in stream:
            record["label"], record["step"] = members[i].label, members[i].step
            records[i].append(record)
            if state is not None:
                state.append(base.label, members[i].label, record)
            if progress is not None:
                progress(int(record.get("numel") or 0))
        for spec, recs in zip(members, records, strict=True):
            result = report.build_run(recs, config)
            result.summary.update(label=spec.label, step=spec.step)
            yield spec.label, result
    finally:
        for ckpt in opened:
            ckpt.close()
