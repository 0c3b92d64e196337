"""opdgeo lineage between the zoo's two independently pretrained seeds.

    python bench/lineage_zoo_seeds.py                    # trains seed 1's pretraining (~12 min)
    python bench/lineage_zoo_seeds.py --seed1 zoo/runs/seed1/pretrain   # after `make zoo`

Seed 0's base / SFT / OPD / RLVR are committed (zoo/checkpoints/seed0); seed 1's pretraining
run is not, so it is trained here with the zoo's own settings (zoo/run.py, stopped at the base
step 400 as `make zoo` does for seeds other than 0) unless ``--seed1`` points at one. Every
seed-1 checkpoint given is compared with every seed-0 checkpoint (all should be
``independent``), and seed 1's first checkpoint with its last (``derived``). Writes
``bench/LINEAGE_ZOO.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo.lineage import lineage_pair  # noqa: E402

SEED0 = ROOT / "zoo" / "checkpoints" / "seed0"


def train_seed1(out: Path) -> Path:
    """Seed 1's pretraining to the base step (a stand-in teacher folder makes it stop there)."""
    from zoo.run import ZooConfig, train_seed

    (out / "seed0" / "pretrain" / "checkpoint-800").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    setter = torch.set_num_threads
    torch.set_num_threads = lambda n: None  # type: ignore[assignment]  # keep one thread
    try:
        train_seed(ZooConfig(), 1, out / "seed1", stages=("pretrain",))
    finally:
        torch.set_num_threads = setter  # type: ignore[assignment]
    return out / "seed1" / "pretrain"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed1", type=Path, help="seed 1's pretrain folder (checkpoint-*)")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 400])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "LINEAGE_ZOO.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    seed1 = args.seed1 or train_seed1(Path(tempfile.mkdtemp(prefix="lineage-zoo-")))
    lines = [
        "# opdgeo lineage: the zoo's two pretraining seeds",
        "",
        f"Written by `python bench/lineage_zoo_seeds.py` (load average at start {load}; one "
        "torch thread). Seed 0: the committed checkpoints; seed 1: its pretraining run "
        f"(`{seed1}` checkpoints {', '.join(map(str, args.steps))}).",
        "",
        "| A (seed 0) | B (seed 1) | verdict | combined p | Bonferroni p | effect "
        "| MLP agreements per block |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for step in args.steps:
        for name in ("base", "sft", "opd", "rlvr"):
            r = lineage_pair(str(SEED0 / name), str(seed1 / f"checkpoint-{step}"))
            hits = [f"{t.hits}/{t.units_a}" for t in r.tests if t.kind == "mlp"]
            lines.append(
                f"| {name} | step {step} | {r.verdict} | {10**r.log10_p:.3g} | "
                f"{10**r.log10_p_bonferroni:.3g} | {r.effect:+.3f} | {', '.join(hits)} |"
            )
    first, last = min(args.steps), max(args.steps)
    r = lineage_pair(str(seed1 / f"checkpoint-{first}"), str(seed1 / f"checkpoint-{last}"))
    lines += [
        "",
        f"Seed 1 step {first} vs its own step {last}: `{r.verdict}`, p = 1e{r.log10_p:.0f}, "
        f"effect {r.effect:.2f}. Total {time.perf_counter() - t0:.0f} s.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
