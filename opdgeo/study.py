"""Many runs at once: discovery of checkpoints, study files, resumable batch comparisons.

The batch itself runs in :mod:`opdgeo.api` (each base tensor read and decomposed once
however many runs share it). Per-tensor records are appended to a JSON-lines state file as
they are produced; ``resume=True`` reads it back, and the batch skips every (run, tensor)
already done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from opdgeo.errors import ConfigError, SourceError
from opdgeo.state import StateFile, fingerprint

__all__ = [
    "RunSpec",
    "StateFile",
    "discover",
    "fingerprint",
    "is_checkpoint_dir",
    "load_study",
    "parse_step",
]

_STEP_RE = re.compile(r"(?:checkpoint|ckpt|global_step|iter|step)[-_]?(\d+)", re.IGNORECASE)
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
    """Step number from ``checkpoint-500``, ``ckpt-500``, ``global_step500``,
    ``iter_0005375``, ``step-7`` (the last such number in ``name``)."""
    matches = _STEP_RE.findall(name)
    return int(matches[-1]) if matches else None


def is_checkpoint_dir(path: Path) -> bool:
    return any((path / w).is_file() for w in _WEIGHTS) or any(path.glob("*.safetensors"))


def same_checkpoint(a: str, b: str) -> bool:
    """Whether specs ``a`` and ``b`` name the same local checkpoint (after resolving links;
    a folder and its ``model.safetensors`` count as the same)."""

    def where(spec: str) -> Path | None:
        path = Path(spec).expanduser()
        try:
            if not path.exists():
                return None
            path = path.resolve()
        except OSError:
            return None
        return path.parent if path.is_file() and path.name in _WEIGHTS else path

    left, right = where(a), where(b)
    return left is not None and left == right


def discover(directory: Path) -> list[RunSpec]:
    """Checkpoints under ``directory``: .safetensors files, checkpoint directories, and their
    ``checkpoint-*`` / ``global_step*`` / ``iter_*`` subdirectories (one level down).

    Runs stay together: the checkpoints directly in ``directory`` first, ordered by parsed
    step number, then name; then each run folder's checkpoints (folders by name), ordered by
    step within the folder."""
    try:
        return _discover(directory)
    except PermissionError as exc:
        raise SourceError(f"cannot read {exc.filename or directory}: permission denied") from None


def _discover(directory: Path) -> list[RunSpec]:
    if not directory.is_dir():
        raise SourceError(f"not a directory: {directory}")
    found: list[tuple[str, RunSpec]] = []  # (run folder, "" for the top level; spec)
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix == ".safetensors":
            found.append(("", RunSpec(str(child), child.stem, step=parse_step(child.stem))))
        elif child.is_dir() and is_checkpoint_dir(child):
            found.append(("", RunSpec(str(child), child.name, step=parse_step(child.name))))
        elif child.is_dir():
            for sub in sorted(child.iterdir()):
                if sub.is_dir() and is_checkpoint_dir(sub):
                    label = f"{child.name}/{sub.name}"
                    found.append((child.name, RunSpec(str(sub), label, step=parse_step(sub.name))))
    if not found:
        raise SourceError(f"no checkpoints found under {directory}")
    ordered = sorted(found, key=lambda f: (f[0], f[1].step is None, f[1].step or 0, f[1].label))
    return [spec for _, spec in ordered]


def load_study(path: Path) -> tuple[str, list[RunSpec]]:
    """Read ``[study]`` from a TOML file: ``base`` and ``[[study.runs]]`` with path/label/origin."""
    from opdgeo.config import read_toml

    data = read_toml(path, "study file")
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
