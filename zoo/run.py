"""``make zoo``: train the zoo for each seed, then write ``zoo/RESULTS.md``.

    python -m zoo train --seeds 0 1          # zoo/runs/seed<S>/... (checkpoints + histories)
    python -m zoo sweep                      # the learning-rate experiment (seed 0)
    python -m zoo report                     # compare / trajectory with opdgeo -> RESULTS.md
    python -m zoo all                        # train + report (what `make zoo` runs)
    python -m zoo grid --seeds 0 1           # the training grid + grid-report + grid-explore
    python -m zoo grid-report                # opdgeo on every grid run -> zoo/grid/features.csv
    python -m zoo grid-calibrate             # classifier fit on seed 0, scored on seed 1
    python -m zoo grid-explore               # candidate features -> zoo/grid/EXPLORE.md

Run layout (``zoo/runs/seed<S>/``): ``pretrain/checkpoint-<step>`` (the base is one of them,
the teacher is the last), ``sft/``, ``rlvr/``, ``opd/`` with ``checkpoint-<step>``
subdirectories in bf16, a parallel ``<run>-fp32/`` tree, ``<run>.history.json`` with losses and
accuracies, and ``zoo.json`` naming the origin of every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from zoo import task
from zoo.model import ModelConfig, TinyLlama, n_params
from zoo.train import (
    History,
    OptimConfig,
    RLConfig,
    completion_texts,
    cross_entropy_stage,
    evaluate,
    generate,
    last_checkpoint,
    load_model,
    opd_stage,
    rlvr_stage,
)

ROOT = Path(__file__).resolve().parent


@dataclass
class ZooConfig:
    """Every setting of one zoo (model, data, and the five stages)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    n_terms: int = 5
    """Terms per problem of the target task (pretraining mixes 2..n_terms)."""
    eval_size: int = 512
    sft_data: int = 8192
    """Teacher-written solutions for SFT."""
    pretrain: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1e-3, steps=800, batch=128, warmup=20, cosine_to=0.1, save_every=50
        )  # fmt: skip
    )
    base_step: int = 400
    """The pretraining checkpoint that serves as the base (the teacher is the last one)."""
    teacher_seed: int = 0
    """Seeds other than this one reuse its teacher (when present) and stop pretraining at
    ``base_step``: the teacher is one longer-trained model shared by the zoo."""
    sft: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-4, steps=200, batch=128, warmup=10, cosine_to=0.1, save_every=50
        )  # fmt: skip
    )
    rlvr: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-5, steps=100, batch=32, betas=(0.9, 0.98), save_every=25
        )  # fmt: skip
    )
    opd: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=3e-5, steps=100, batch=64, betas=(0.9, 0.98), save_every=25
        )  # fmt: skip
    )
    rl: RLConfig = field(default_factory=RLConfig)
    opd_group: int = 2
    """Samples per prompt for OPD (no group baseline is needed; 2 doubles the tokens)."""
    init_from_fp32: bool = False
    """Start SFT/RLVR/OPD from the origin's fp32 master weights instead of its bf16 release."""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def mini_config() -> ZooConfig:
    """A seconds-long zoo for the test suite: tiny model, few steps, one-step sums."""
    return ZooConfig(
        model=ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, init_std=0.05),
        n_terms=2,
        eval_size=64,
        sft_data=256,
        pretrain=OptimConfig(lr=3e-3, steps=80, batch=32, warmup=5, cosine_to=0.1, save_every=20),
        base_step=40,
        sft=OptimConfig(lr=1e-3, steps=20, batch=32, save_every=10),
        rlvr=OptimConfig(lr=1e-3, steps=16, batch=8, save_every=8),
        opd=OptimConfig(lr=1e-3, steps=16, batch=16, save_every=8),
        rl=RLConfig(group=8, n_terms=2),
    )


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def teacher_solutions(teacher: TinyLlama, problems: list[task.Problem], n_terms: int) -> list[str]:
    """Greedy solutions written by the teacher (kept whether right or wrong, as in SeqKD)."""
    out: list[str] = []
    for i in range(0, len(problems), 512):
        chunk = problems[i : i + 512]
        prompts = torch.tensor([task.encode(p.prompt) for p in chunk])
        out += completion_texts(generate(teacher, prompts, task.max_solution_len(n_terms), 0.0))
    return out


def train_seed(
    cfg: ZooConfig, seed: int, out: Path, log: Callable[[str], None] = print,
    stages: tuple[str, ...] = ("pretrain", "sft", "rlvr", "opd"),
) -> dict[str, object]:  # fmt: skip
    """Train every stage of one seed under ``out`` and return the zoo index (also zoo.json)."""
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    eval_set = task.sample_problems(
        cfg.eval_size, cfg.n_terms, torch.Generator().manual_seed(10_000)
    )
    histories: dict[str, History] = {}

    def load(path: Path) -> TinyLlama:
        """A stage's starting point: the origin's bf16 release, or its fp32 master weights."""
        if cfg.init_from_fp32:
            return load_model(path.with_name(path.parent.name + "-fp32") / path.name, cfg.model)
        return load_model(path, cfg.model)

    pre_dir = out / "pretrain"
    base = pre_dir / f"checkpoint-{cfg.base_step}"
    shared = out.parent / f"seed{cfg.teacher_seed}" / "pretrain"
    share = seed != cfg.teacher_seed and (shared / f"checkpoint-{cfg.pretrain.steps}").is_dir()
    if "pretrain" in stages:
        _seed_all(seed)
        model = TinyLlama(cfg.model)
        log(f"seed {seed}: model {n_params(model):,} parameters")
        gen = torch.Generator().manual_seed(seed)

        def pretrain_data(step: int) -> torch.Tensor:
            n = 2 + step % (cfg.n_terms - 1)
            return task.sequences(task.sample_problems(cfg.pretrain.batch, n, gen))

        histories["pretrain"] = cross_entropy_stage(
            "pretrain", model, cfg.pretrain, pre_dir, pretrain_data, eval_set, log,
            save_at=(cfg.base_step,), stop_at=cfg.base_step if share else None,
        )  # fmt: skip
    teacher_path = last_checkpoint(shared if share else pre_dir)
    if "sft" in stages:
        _seed_all(seed + 1)
        teacher = load_model(teacher_path, cfg.model)
        gen = torch.Generator().manual_seed(seed + 1)
        problems = task.sample_problems(cfg.sft_data, cfg.n_terms, gen)
        solutions = teacher_solutions(teacher, problems, cfg.n_terms)
        written = sum(task.is_correct(p, s) for p, s in zip(problems, solutions, strict=True))
        log(f"seed {seed}: teacher solutions {written / len(problems):.3f} correct")

        def sft_data(step: int) -> torch.Tensor:
            idx = torch.randint(0, len(problems), (cfg.sft.batch,), generator=gen).tolist()
            return task.sequences([problems[i] for i in idx], [solutions[i] for i in idx])

        histories["sft"] = cross_entropy_stage(
            "sft", load(base), cfg.sft, out / "sft", sft_data, eval_set, log
        )
        histories["sft"].settings["teacher_solutions_correct"] = written / len(problems)
        (out / "sft.history.json").write_text(
            json.dumps(histories["sft"].to_json(), indent=1) + "\n"
        )
    sft_final = last_checkpoint(out / "sft")
    if "rlvr" in stages:
        _seed_all(seed + 2)
        histories["rlvr"] = rlvr_stage(
            load(sft_final), cfg.rlvr, cfg.rl, out / "rlvr", eval_set, seed + 2, log
        )
    if "opd" in stages:
        _seed_all(seed + 3)
        teacher = load_model(teacher_path, cfg.model)
        rc = replace(cfg.rl, group=cfg.opd_group)
        histories["opd"] = opd_stage(
            load(sft_final), teacher, cfg.opd, rc, out / "opd", eval_set, seed + 3, log
        )
    index = {
        "seed": seed,
        "config": cfg.to_json(),
        "teacher_accuracy": evaluate(load_model(teacher_path, cfg.model), eval_set),
        "runs": {
            "base": {"path": str(base), "origin": None, "truth": "base"},
            "teacher": {"path": str(teacher_path), "origin": None, "truth": "teacher"},
            "sft": {"path": str(out / "sft"), "origin": str(base), "truth": "sft-like"},
            "rlvr": {"path": str(out / "rlvr"), "origin": str(sft_final), "truth": "rlvr-like"},
            "opd": {"path": str(out / "opd"), "origin": str(sft_final), "truth": "opd-like"},
        },
    }
    (out / "zoo.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def publish(seed_dir: Path, dest: Path) -> None:
    """Copy the bf16 base and final SFT / OPD / RLVR checkpoints to ``dest`` (the demo set)."""
    index = json.loads((seed_dir / "zoo.json").read_text())
    for name in ("base", "sft", "opd", "rlvr"):
        src = Path(index["runs"][name]["path"])
        src = src if name == "base" else last_checkpoint(src)
        (dest / name).mkdir(parents=True, exist_ok=True)
        for file in ("model.safetensors", "config.json"):
            shutil.copyfile(src / file, dest / name / file)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (``python -m zoo``)."""
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", choices=["train", "sweep", "report", "all", "grid", "grid-report",
                            "grid-explore", "grid-calibrate"],
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=ROOT / "runs")
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--mini", action="store_true", help="the test suite's tiny configuration")
    parser.add_argument("--grid-out", type=Path, default=None,
                        help="grid checkpoints (default zoo/runs/grid)")  # fmt: skip
    parser.add_argument("--grid-results", type=Path, default=None,
                        help="grid results folder (default zoo/grid)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "grid-calibrate":
        import pandas as pd

        from zoo.grid import GRID_DIR
        from zoo.grid_calibrate import toml_snippet, write_section

        results = args.grid_results or GRID_DIR
        features = pd.read_csv(results / "features.csv")
        write_section(args.results, features)
        print(toml_snippet(features))
        return
    if args.command.startswith("grid"):
        from zoo.grid_cli import grid_main

        grid_main(args.command, args.seeds, args.mini, args.grid_out, args.grid_results)
        return
    cfg = mini_config() if args.mini else ZooConfig()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if args.command in ("train", "all"):
        for seed in args.seeds:
            start = time.perf_counter()
            train_seed(cfg, seed, args.out / f"seed{seed}")
            timings[f"train seed {seed}"] = time.perf_counter() - start
        if not args.mini and 0 in args.seeds:
            publish(args.out / "seed0", ROOT / "checkpoints" / "seed0")
    if args.command == "sweep":
        from zoo.sweep import run_sweep

        start = time.perf_counter()
        run_sweep(cfg, args.out)
        timings["sweep"] = time.perf_counter() - start
    if args.command in ("report", "all"):
        from zoo.report import write_report

        start = time.perf_counter()
        write_report(args.out, args.seeds, args.results, ROOT / "figures")
        timings["report"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - t0
    timing_file = args.out / f"timings-{args.command}.json"
    timing_file.write_text(json.dumps(timings, indent=1) + "\n")
    print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
