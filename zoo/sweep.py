"""Experiments on why the small scale does or does not reproduce the papers' ordering.

From seed 0's final SFT checkpoint, RLVR and OPD are rerun with other learning rates, for
more steps, and from the fp32 master weights instead of the bf16 release; each run is
compared with the SFT checkpoint by opdgeo. Results go to ``zoo/experiments/sweep.json``
(kept in the repository, so ``make zoo`` can report them without rerunning; ``make
zoo-sweep`` reruns them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from opdgeo import compare_checkpoints
from zoo import task
from zoo.run import ZooConfig
from zoo.train import History, last_checkpoint, load_model, opd_stage, rlvr_stage

ROOT = Path(__file__).resolve().parent
SWEEP_FILE = ROOT / "experiments" / "sweep.json"
NOTE = (
    "Each row is one extra run from seed 0's final SFT checkpoint, compared with that "
    "checkpoint in bf16 by opdgeo (default thresholds). `init` says whether the run started "
    "from the SFT checkpoint's bf16 release (as the main runs do) or its fp32 master weights."
)


@dataclass(frozen=True)
class Experiment:
    """One extra run: which stage, its learning rate and steps, and where it starts."""

    experiment: str
    run: str
    lr: float
    steps: int
    init: str = "bf16"


EXPERIMENTS = (
    *(Experiment("lr", "rlvr", lr, 25) for lr in (1e-6, 3e-6, 1e-5)),
    *(Experiment("lr", "opd", lr, 25) for lr in (1e-6, 1e-5)),
    Experiment("steps", "rlvr", 1e-6, 100),
    Experiment("init", "rlvr", 3e-5, 25, "fp32"),
)
"""Mostly 25 rollout steps: the main runs' checkpoint-25 is the reference at the main LR."""


def run_one(cfg: ZooConfig, seed_dir: Path, exp: Experiment, out: Path) -> dict[str, Any]:
    """Train one experiment and compare it with the SFT checkpoint."""
    torch.set_num_threads(2)
    index = json.loads((seed_dir / "zoo.json").read_text())
    sft_final = last_checkpoint(Path(index["runs"]["sft"]["path"]))
    start = sft_final if exp.init == "bf16" else (
        sft_final.parent.with_name(sft_final.parent.name + "-fp32") / sft_final.name
    )  # fmt: skip
    eval_set = task.sample_problems(
        cfg.eval_size, cfg.n_terms, torch.Generator().manual_seed(10_000)
    )
    name = f"{exp.run}-lr{exp.lr:.0e}-{exp.steps}-{exp.init}"
    torch.manual_seed(index["seed"] + 2)
    model = load_model(start, cfg.model)
    history: History
    if exp.run == "rlvr":
        oc = replace(cfg.rlvr, lr=exp.lr, steps=exp.steps, save_every=exp.steps)
        history = rlvr_stage(model, oc, cfg.rl, out / name, eval_set, index["seed"] + 2)
    else:
        oc = replace(cfg.opd, lr=exp.lr, steps=exp.steps, save_every=exp.steps)
        teacher = load_model(Path(index["runs"]["teacher"]["path"]), cfg.model)
        rc = replace(cfg.rl, group=cfg.opd_group)
        history = opd_stage(model, teacher, oc, rc, out / name, eval_set, index["seed"] + 3)
    result = compare_checkpoints(str(sft_final), [str(last_checkpoint(out / name))])[0]
    s = result.summary
    accs = list(history.checkpoints.values())
    keys = ("sparsity_bf16", "lowmag_enrichment", "principal_angle_deg", "nss", "rel_norm",
            "stable_rank", "regime", "confidence", "reasons")  # fmt: skip
    return {**exp.__dict__, "acc_before": accs[0], "acc_after": accs[-1],
            "seconds": history.seconds, **{k: s.get(k) for k in keys}}  # fmt: skip


def run_sweep(cfg: ZooConfig, out: Path, path: Path = SWEEP_FILE) -> list[dict[str, Any]]:
    """Every experiment of :data:`EXPERIMENTS` into ``path``."""
    rows = []
    for exp in EXPERIMENTS:
        rows.append(run_one(cfg, out / "seed0", exp, out / "sweep"))
        print(f"sweep {exp}: acc {rows[-1]['acc_before']:.3f} -> {rows[-1]['acc_after']:.3f}, "
              f"sparsity {rows[-1]['sparsity_bf16']:.3f}, {rows[-1]['regime']}")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
             for r in rows]  # fmt: skip
    path.write_text(json.dumps({"note": NOTE, "runs": clean}, indent=1) + "\n")
    return rows
