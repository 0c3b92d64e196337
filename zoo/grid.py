"""The training grid: SFT, RLVR and OPD each at several learning rates, for two seeds.

``python -m zoo grid`` (``make zoo-grid``) trains, per seed, under ``zoo/runs/grid/seed<S>/``:

* ``base``: the student architecture pretrained on 2..n-term sums (the SFT origin);
* ``teacher``: an independently initialised model pretrained much longer on the same task
  (its own data stream), so it is clearly more accurate than the student anchor;
* ``anchor``: the student's SFT anchor, a short SFT of the base on few teacher-written
  solutions, so there is something left to distil (the RLVR and OPD origin);
* for every learning rate in ``lrs``: ``sft-lr<lr>`` from the base (cross-entropy on the
  teacher-written solutions), ``rlvr-lr<lr>`` and ``opd-lr<lr>`` from the anchor, each for
  the same number of optimizer updates (``updates``) with a constant learning rate.

Each seed is independent of the other: initialisations, pretraining data, teacher, SFT data
and rollouts all come from generators seeded with ``1000 * seed + stage`` (no generator seed
is shared between seeds). The evaluation set is one fixed set of problems for every run.

Every stage starts from its origin's bf16 release (as post-training frameworks load a
published model) and writes bf16 checkpoints; the fp32 master weights are kept for step 0 and
the final step only (the update-size analysis reads them). ``zoo/grid/runs.json`` is the
committed manifest: per stage and run the seed, algorithm, learning rate, steps, optimizer
updates, origin, accuracy before and after, objective, CPU and wall seconds and the load.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from zoo import task
from zoo.model import ModelConfig, TinyLlama, n_params
from zoo.train import (
    History,
    OptimConfig,
    RLConfig,
    cross_entropy_stage,
    last_checkpoint,
    load_model,
    opd_stage,
    rlvr_stage,
)

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
GRID_DIR = ROOT / "grid"
"""Committed results: ``runs.json``, ``features.csv``, ``explore.csv``, ``EXPLORE.md``."""
RUNS_DIR = ROOT / "runs" / "grid"
"""Checkpoints (gitignored; ``make zoo-grid`` regenerates them from the same seeds and
settings, not bit for bit: CPU training drifts between runs, e.g. seed 0's base reached
accuracy 0.419 in one run and 0.466 in another, identical until step 100)."""
ALGORITHMS = ("opd", "rlvr", "sft")
ORDER = {"sft": 0, "rlvr": 1, "opd": 2}
STAGE_SEEDS = {"base": 1, "teacher": 2, "data": 3, "anchor": 4, "sft": 5, "rlvr": 6, "opd": 7}
"""Offsets of the per-stage generator seeds ``1000 * seed + offset``."""


@dataclass
class GridConfig:
    """Every setting of the grid (model, data, the three fixed stages and the grid runs)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher_model: ModelConfig = field(default_factory=ModelConfig)
    n_terms: int = 5
    """Terms per problem of the target task (pretraining mixes 2..n_terms)."""
    eval_size: int = 1024
    base: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-3, steps=400, batch=128, warmup=20, cosine_to=0.1, save_every=100
        )
    )
    teacher: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-3, steps=1600, batch=128, warmup=20, cosine_to=0.1, save_every=200
        )
    )
    sft_data: int = 8192
    """Teacher-written solutions for the SFT grid runs."""
    anchor_data: int = 1024
    """The first ``anchor_data`` of them train the anchor (less data: something left)."""
    anchor: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-4, steps=40, batch=128, warmup=5, cosine_to=0.1, save_every=40
        )
    )
    lrs: tuple[float, ...] = (1e-6, 3e-6, 1e-5, 3e-5)
    updates: int = 100
    """Optimizer updates of every grid run (RLVR: two per rollout batch)."""
    checkpoints: int = 4
    """Saved checkpoints per grid run after step 0 (every ``updates / checkpoints`` updates)."""
    sft: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.0, steps=0, batch=128))
    rlvr: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.0, steps=0, batch=32, betas=(0.9, 0.98))
    )
    opd: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.0, steps=0, batch=64, betas=(0.9, 0.98))
    )
    rl: RLConfig = field(default_factory=RLConfig)
    opd_group: int = 2
    """Samples per prompt for OPD (128 sequences per update, as SFT and each RLVR minibatch)."""
    threads: int = 2

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def run_options(self, algorithm: str, lr: float) -> OptimConfig:
        """The optimiser settings of one grid run: constant ``lr`` for ``updates`` updates."""
        per_step = self.rl.updates_per_batch if algorithm == "rlvr" else 1
        steps = self.updates // per_step
        template = {"sft": self.sft, "rlvr": self.rlvr, "opd": self.opd}[algorithm]
        return replace(
            template,
            lr=lr,
            steps=steps,
            warmup=0,
            cosine_to=None,
            save_every=max(1, steps // self.checkpoints),
        )


def mini_grid_config() -> GridConfig:
    """A seconds-long grid for the test suite: tiny models, few steps, one-step sums.

    The teacher is wider and trained longer than the base, and the anchor sees a handful of
    solutions, so the miniature keeps the real grid's teacher > anchor ordering.
    """
    tiny = ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, init_std=0.05)
    return GridConfig(
        model=tiny,
        teacher_model=replace(tiny, hidden=48, intermediate=96),
        n_terms=2,
        eval_size=64,
        base=OptimConfig(lr=3e-3, steps=40, batch=32, warmup=2, cosine_to=0.1, save_every=40),
        teacher=OptimConfig(lr=3e-3, steps=80, batch=32, warmup=5, cosine_to=0.1, save_every=80),
        sft_data=128,
        anchor_data=32,
        anchor=OptimConfig(lr=1e-3, steps=4, batch=16, save_every=4),
        lrs=(1e-4, 1e-3),
        updates=4,
        checkpoints=2,
        sft=OptimConfig(lr=0.0, steps=0, batch=16),
        rlvr=OptimConfig(lr=0.0, steps=0, batch=4, betas=(0.9, 0.98)),
        opd=OptimConfig(lr=0.0, steps=0, batch=8, betas=(0.9, 0.98)),
        rl=RLConfig(group=8, n_terms=2),
    )


def stage_seed(seed: int, stage: str) -> int:
    """The generator / initialisation seed of one stage of one grid seed."""
    return 1000 * seed + STAGE_SEEDS[stage]


def run_name(algorithm: str, lr: float) -> str:
    """Directory name of a grid run, e.g. ``rlvr-lr3e-06``."""
    return f"{algorithm}-lr{lr:.0e}"


def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (the manifest is portable)."""
    p = path.resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def eval_problems(cfg: GridConfig) -> list[task.Problem]:
    """The fixed held-out problems every checkpoint is scored on (greedy, exact answer)."""
    return task.sample_problems(cfg.eval_size, cfg.n_terms, torch.Generator().manual_seed(10_000))


def teacher_solutions(teacher: TinyLlama, problems: list[task.Problem], n_terms: int) -> list[str]:
    """Greedy solutions written by the teacher (kept whether right or wrong, as in SeqKD)."""
    from zoo.run import teacher_solutions as written

    return written(teacher, problems, n_terms)


def _fp32_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-fp32")


def prune_fp32(run_dir: Path) -> None:
    """Keep the fp32 master weights of step 0 and the final step only (disk)."""
    keep = {"checkpoint-0", last_checkpoint(run_dir).name}
    for folder in _fp32_dir(run_dir).glob("checkpoint-*"):
        if folder.name not in keep:
            shutil.rmtree(folder)


@dataclass
class Timer:
    """Wall and CPU seconds of a stage and the 1-minute load average around it."""

    wall: float = 0.0
    cpu: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0

    def measure(self, fn: Callable[[], History]) -> History:
        self.load_start = os.getloadavg()[0]
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.wall, self.cpu = time.perf_counter() - w, time.process_time() - c
        self.load_end = os.getloadavg()[0]
        return out

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 2),
            "cpu_s": round(self.cpu, 2),
            "load_start": round(self.load_start, 2),
            "load_end": round(self.load_end, 2),
        }


def _objective(history: History, algorithm: str) -> dict[str, Any]:
    """The run's own objective at its start and end (means over the first / last tenth)."""
    name, values = {
        "sft": ("cross_entropy", history.losses),
        "pretrain": ("cross_entropy", history.losses),
        "rlvr": ("reward", history.rewards),
        "opd": ("reverse_kl_to_teacher", history.losses),
    }[algorithm]
    if not values:
        return {"objective": name, "objective_start": None, "objective_end": None}
    n = max(1, len(values) // 10)
    return {
        "objective": name,
        "objective_start": sum(values[:n]) / n,
        "objective_end": sum(values[-n:]) / n,
    }


def _stage_record(history: History, timer: Timer, run_dir: Path, algorithm: str) -> dict[str, Any]:
    accs = history.checkpoints
    steps = sorted(accs)
    return {
        "path": rel(run_dir),
        "final": rel(run_dir / f"checkpoint-{steps[-1]}"),
        "steps": steps[-1],
        "updates": history.updates,
        "acc_before": accs[steps[0]],
        "acc_after": accs[steps[-1]],
        "accuracy": {str(s): accs[s] for s in steps},
        "updates_at": {str(s): history.updates_at.get(s) for s in steps},
        **_objective(history, algorithm),
        **timer.as_dict(),
    }


FIXED_KEYS = (
    "model",
    "teacher_model",
    "n_terms",
    "eval_size",
    "base",
    "teacher",
    "sft_data",
    "anchor_data",
    "anchor",
    "threads",
)
"""Settings the fixed stages (base, teacher, anchor) depend on."""


def stage_key(cfg: GridConfig, seed: int, name: str, options: OptimConfig | None) -> str:
    """What a stage's result depends on, as JSON: a resumed stage must have the same key."""
    full = cfg.to_json()
    kept = (
        {k: full[k] for k in FIXED_KEYS}
        if options is None
        else {k: v for k, v in full.items() if k != "lrs"}
    )
    extra = None if options is None else asdict(options)
    return json.dumps(
        {"seed": seed, "stage": name, "config": kept, "options": extra}, sort_keys=True
    )


def _load_history(run_dir: Path, key: str) -> History | None:
    """A finished stage's history (same key, final checkpoint present), else None."""
    file = run_dir.parent / f"{run_dir.name}.history.json"
    key_file = run_dir.parent / f"{run_dir.name}.key.json"
    if not file.is_file() or not key_file.is_file() or key_file.read_text() != key:
        return None
    data = json.loads(file.read_text())
    h = History(
        data["stage"],
        data["losses"],
        data["rewards"],
        {int(k): v for k, v in data["checkpoints"].items()},
        data["seconds"],
        data["settings"],
        data.get("updates", 0),
        {int(k): v for k, v in data.get("updates_at", {}).items()},
    )
    final = max(h.checkpoints) if h.checkpoints else None
    if final is None or not (run_dir / f"checkpoint-{final}" / "model.safetensors").is_file():
        return None
    return h


def train_grid_seed(
    cfg: GridConfig,
    seed: int,
    out: Path,
    log: Callable[[str], None] = print,
    algorithms: tuple[str, ...] = ALGORITHMS,
    resume: bool = True,
) -> dict[str, Any]:
    """Train every stage and grid run of one seed under ``out``; return its manifest part.

    With ``resume``, a stage whose history and final checkpoint exist is not retrained (every
    stage seeds itself, so a resumed grid equals an uninterrupted one).
    """
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    eval_set = eval_problems(cfg)
    timing_file = out / "timings.json"
    timings: dict[str, dict[str, float]] = (
        json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    )

    def stage(
        name: str,
        algorithm: str,
        run_dir: Path,
        fn: Callable[[], History],
        options: OptimConfig | None = None,
    ) -> History:
        key = stage_key(cfg, seed, name, options)
        old = _load_history(run_dir, key) if resume else None
        timer = Timer()
        if old is not None:
            log(f"seed {seed}: {name} already trained, kept")
            if name in timings:
                timer = Timer(
                    *(timings[name][k] for k in ("wall_s", "cpu_s", "load_start", "load_end"))
                )
            history = old
        else:
            for stale in (run_dir, _fp32_dir(run_dir)):
                if stale.is_dir():
                    shutil.rmtree(stale)
            history = timer.measure(fn)
            prune_fp32(run_dir)
            (run_dir.parent / f"{run_dir.name}.key.json").write_text(key)
        timings[name] = timer.as_dict()
        records[name] = {
            "seed": seed,
            "algorithm": algorithm,
            **_stage_record(history, timer, run_dir, algorithm),
        }
        timing_file.write_text(json.dumps(timings, indent=1) + "\n")
        return history

    records: dict[str, dict[str, Any]] = {}

    def pretrain(name: str, model_cfg: ModelConfig, oc: OptimConfig) -> History:
        _seed_all(stage_seed(seed, name))
        model = TinyLlama(model_cfg)
        log(f"seed {seed}: {name} {n_params(model):,} parameters")
        gen = torch.Generator().manual_seed(stage_seed(seed, name))

        def data(step: int) -> torch.Tensor:
            n = 2 + step % (cfg.n_terms - 1)
            return task.sequences(task.sample_problems(oc.batch, n, gen))

        return cross_entropy_stage(name, model, oc, out / name, data, eval_set, log)

    stage("base", "pretrain", out / "base", lambda: pretrain("base", cfg.model, cfg.base))
    stage(
        "teacher",
        "pretrain",
        out / "teacher",
        lambda: pretrain("teacher", cfg.teacher_model, cfg.teacher),
    )
    base = last_checkpoint(out / "base")
    teacher_path = last_checkpoint(out / "teacher")

    # Teacher-written solutions (greedy), for the anchor (the first anchor_data) and SFT runs.
    torch.set_num_threads(cfg.threads)
    teacher = load_model(teacher_path, cfg.teacher_model)
    problems = task.sample_problems(
        cfg.sft_data, cfg.n_terms, torch.Generator().manual_seed(stage_seed(seed, "data"))
    )
    solutions = teacher_solutions(teacher, problems, cfg.n_terms)
    written = sum(task.is_correct(p, s) for p, s in zip(problems, solutions, strict=True))
    log(f"seed {seed}: teacher-written solutions {written / len(problems):.3f} correct")

    def sft_run(name: str, oc: OptimConfig, n_data: int, stage_key: str) -> History:
        _seed_all(stage_seed(seed, stage_key))
        gen = torch.Generator().manual_seed(stage_seed(seed, stage_key))

        def data(step: int) -> torch.Tensor:
            idx = torch.randint(0, n_data, (oc.batch,), generator=gen).tolist()
            return task.sequences([problems[i] for i in idx], [solutions[i] for i in idx])

        return cross_entropy_stage(
            name, load_model(base, cfg.model), oc, out / name, data, eval_set, log
        )

    stage(
        "anchor",
        "sft",
        out / "anchor",
        lambda: sft_run("anchor", cfg.anchor, cfg.anchor_data, "anchor"),
    )
    anchor = last_checkpoint(out / "anchor")

    runs: list[dict[str, Any]] = []
    # Largest learning rate first (the runs that move most are the first to report); the order
    # does not change any result, since every run seeds itself.
    for lr in sorted(cfg.lrs, reverse=True):
        for algorithm in algorithms:
            name = run_name(algorithm, lr)
            oc = cfg.run_options(algorithm, lr)
            run_dir = out / name
            if algorithm == "sft":
                stage(
                    name,
                    "sft",
                    run_dir,
                    lambda n=name, o=oc: sft_run(n, o, len(problems), "sft"),
                    oc,
                )
            elif algorithm == "rlvr":
                s = stage_seed(seed, "rlvr")

                def rlvr(o: OptimConfig = oc, d: Path = run_dir, s: int = s) -> History:
                    _seed_all(s)
                    return rlvr_stage(load_model(anchor, cfg.model), o, cfg.rl, d, eval_set, s, log)

                stage(name, "rlvr", run_dir, rlvr, oc)
            else:
                s = stage_seed(seed, "opd")

                def opd(o: OptimConfig = oc, d: Path = run_dir, s: int = s) -> History:
                    _seed_all(s)
                    t = load_model(teacher_path, cfg.teacher_model)
                    rc = replace(cfg.rl, group=cfg.opd_group)
                    return opd_stage(load_model(anchor, cfg.model), t, o, rc, d, eval_set, s, log)

                stage(name, "opd", run_dir, opd, oc)
            origin = base if algorithm == "sft" else anchor
            runs.append(
                {
                    **records[name],
                    "run": name,
                    "lr": lr,
                    "origin": rel(origin),
                    "origin_name": "base" if algorithm == "sft" else "anchor",
                    "batch": oc.batch,
                    "updates_per_step": cfg.rl.updates_per_batch if algorithm == "rlvr" else 1,
                }
            )
    fixed = {k: records[k] for k in ("base", "teacher", "anchor")}
    fixed["teacher"]["written_solutions_correct"] = written / len(problems)
    fixed["teacher"]["params"] = n_params(teacher)
    fixed["base"]["params"] = n_params(TinyLlama(cfg.model))
    done = {"base", "teacher", "anchor", *(r["run"] for r in runs)}
    return {
        "seed": seed,
        "stages": fixed,
        "runs": runs,
        "timings": {k: v for k, v in timings.items() if k in done},
    }


def write_manifest(parts: list[dict[str, Any]], cfg: GridConfig, path: Path) -> dict[str, Any]:
    """``runs.json``: the grid's settings, the fixed stages and every run, per seed."""
    doc = {
        "note": "Generated by `python -m zoo grid` (make zoo-grid); read by `python -m zoo "
        "grid-report` and `python -m zoo grid-explore`. Accuracy: greedy decoding on "
        f"{cfg.eval_size} fixed held-out problems, exact final answer. Seconds are the stage's "
        "own wall clock and CPU time (process_time, all threads) with the 1-minute load "
        "average before and after it.",
        "config": cfg.to_json(),
        "seeds": {str(p["seed"]): p["stages"] for p in parts},
        "timings": {str(p["seed"]): p["timings"] for p in parts},
        "runs": sorted(
            (r for p in parts for r in p["runs"]),
            key=lambda r: (r["seed"], ORDER[r["algorithm"]], r["lr"]),
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def run_grid(
    cfg: GridConfig,
    seeds: list[int],
    out: Path = RUNS_DIR,
    results: Path = GRID_DIR,
    log: Callable[[str], None] = print,
    resume: bool = True,
) -> dict[str, Any]:
    """Train the grid for ``seeds`` and write ``results/runs.json``."""
    parts = [train_grid_seed(cfg, s, out / f"seed{s}", log, resume=resume) for s in seeds]
    return write_manifest(parts, cfg, results / "runs.json")
