"""Write ``zoo/RESULTS.md`` from the trained zoo: accuracies, opdgeo diagnostics, labels.

Every number comes from the run directories: the stage histories (``*.history.json``), the
opdgeo comparisons made here with the library (:func:`opdgeo.compare_checkpoints`) and the
trajectories made with the CLI (``python -m opdgeo trajectory ... --format csv``). The
hand-written analysis lives in ``zoo/ANALYSIS.md`` and is appended verbatim.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from opdgeo import compare_checkpoints
from opdgeo.report import RunResult
from zoo.grid_results import grid_section

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
TRUTH = {"sft": "sft-like", "opd": "opd-like", "rlvr": "rlvr-like"}
FEATURES = ("sparsity_bf16", "lowmag_enrichment", "principal_angle_deg", "nss")


def rel(path: str | Path) -> str:
    """A path relative to the repository when it is inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoint-*`` directories with step > 0, in step order."""
    found = [p for p in run_dir.glob("checkpoint-*") if int(p.name.split("-")[1]) > 0]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def fp32_twin(path: Path) -> Path:
    """``RUN/checkpoint-N`` -> ``RUN-fp32/checkpoint-N``."""
    return path.parent.with_name(path.parent.name + "-fp32") / path.name


def fmt(value: Any, spec: str = ".3g") -> str:
    """A number for a Markdown table (NaN/None as a dash)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{100 * float(value):.1f} %"


def compare_stage(origin: Path, finals: dict[str, Path]) -> dict[str, RunResult]:
    """opdgeo compare of each final checkpoint against ``origin`` (one pass, relative mode)."""
    runs = compare_checkpoints(str(origin), [str(p) for p in finals.values()])
    return dict(zip(finals, runs, strict=True))


def trajectory(origin: Path, run_dir: Path) -> pd.DataFrame:
    """``opdgeo trajectory ORIGIN CKPT...`` (steps > 0) as a frame, via the CLI."""
    cmd = [sys.executable, "-m", "opdgeo", "trajectory", str(origin),
           *map(str, checkpoints(run_dir)), "-q", "--format", "csv"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return pd.read_csv(io.StringIO(out))


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _history(seed_dir: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((seed_dir / f"{name}.history.json").read_text()))


def accuracy_section(seed_dirs: dict[int, Path]) -> list[str]:
    """Greedy accuracy at every checkpoint of every stage."""
    out = ["## Task accuracy at every checkpoint", "",
           "Greedy decoding on 512 fixed held-out problems (exact final answer). The base is "
           "the pretraining checkpoint at `base_step`; the teacher is seed 0's pretraining run "
           "continued to its last step, shared by every seed (other seeds stop at the base).",
           ""]  # fmt: skip
    for seed, seed_dir in seed_dirs.items():
        index = json.loads((seed_dir / "zoo.json").read_text())
        rows = []
        for stage in ("pretrain", "sft", "rlvr", "opd"):
            h = _history(seed_dir, stage)
            accs = ", ".join(f"{k}: {v:.3f}" for k, v in h["checkpoints"].items())
            rows.append([stage, f"{h['seconds']:.0f}", accs])
        written = _history(seed_dir, "sft")["settings"].get("teacher_solutions_correct", math.nan)
        out += [f"**Seed {seed}** (base = pretrain step {index['config']['base_step']}, "
                f"teacher accuracy {index['teacher_accuracy']:.3f}, teacher-written SFT "
                f"solutions correct: {written:.3f})",
                "", table(["stage", "seconds", "accuracy by step"], rows), ""]  # fmt: skip
    return out


def diagnostics(seed_dirs: dict[int, Path]) -> tuple[list[dict[str, Any]], list[RunResult]]:
    """Compare every run with its origin in bf16 and in fp32; one row per (seed, run, dtype)."""
    rows: list[dict[str, Any]] = []
    plotted: list[RunResult] = []
    for seed, seed_dir in seed_dirs.items():
        index = json.loads((seed_dir / "zoo.json").read_text())
        runs = index["runs"]
        base = Path(runs["base"]["path"])
        sft_final = checkpoints(Path(runs["sft"]["path"]))[-1]
        finals = {n: checkpoints(Path(runs[n]["path"]))[-1] for n in ("opd", "rlvr")}
        for dtype in ("bf16", "fp32"):
            if dtype == "bf16":
                results = compare_stage(base, {"sft": sft_final})
                results |= compare_stage(sft_final, finals)
            else:  # each run from its own fp32 start (its origin's bf16 release, upcast)
                results = {}
                for name, final in (("sft", sft_final), *finals.items()):
                    start = fp32_twin(final.parent / "checkpoint-0")
                    results |= compare_stage(start, {name: fp32_twin(final)})
            for name, result in results.items():
                s = result.summary
                origin = "base" if name == "sft" else "sft"
                rows.append({"seed": seed, "run": name, "dtype": dtype, "origin": origin,
                             "truth": TRUTH[name], "accuracy": _final_acc(seed_dir, name),
                             **{k: s.get(k) for k in (*FEATURES, "rel_norm", "stable_rank",
                                                      "principal_energy", "confidence",
                                                      "regime", "reasons",
                                                      "order_concordance")}})  # fmt: skip
                if dtype == "bf16":
                    result.summary["label"] = f"s{seed} {name}"
                    plotted.append(result)
    return rows, plotted


def _final_acc(seed_dir: Path, name: str) -> float:
    h = _history(seed_dir, name)
    return float(list(h["checkpoints"].values())[-1])


def diagnostics_section(rows: list[dict[str, Any]]) -> list[str]:
    """The classifier's view of every run, and its accuracy."""
    header = ["seed", "run", "from", "accuracy", "sparsity_bf16", "lowmag enr.", "angle (deg)",
              "NSS", "rel_norm", "stable rank", "opdgeo label", "conf", "true label",
              "ok"]  # fmt: skip
    out: list[str] = []
    for dtype in ("bf16", "fp32"):
        chosen = [r for r in rows if r["dtype"] == dtype]
        body = [[str(r["seed"]), r["run"], r["origin"], f"{r['accuracy']:.3f}",
                 pct(r["sparsity_bf16"]), fmt(r["lowmag_enrichment"], ".2f"),
                 fmt(r["principal_angle_deg"], ".3g"), fmt(r["nss"], ".2e"),
                 fmt(r["rel_norm"], ".2e"), fmt(r["stable_rank"], ".3g"), f"**{r['regime']}**",
                 fmt(r["confidence"], ".2f"), r["truth"],
                 "yes" if r["regime"] == r["truth"] else "no"] for r in chosen]  # fmt: skip
        hits = sum(r["regime"] == r["truth"] for r in chosen)
        title = ("## opdgeo on the released (bf16) checkpoints" if dtype == "bf16" else
                 "## The same runs stored in fp32")  # fmt: skip
        note = ("Each run is compared with its own origin, as in OPDG: SFT from the base, OPD "
                "and RLVR from the final SFT checkpoint. Default thresholds "
                "(`configs/default.toml`)." if dtype == "bf16" else
                "The fp32 master weights of the same runs, each against its own fp32 starting "
                "point (`checkpoint-0`: the origin's bf16 release, upcast). `sparsity_bf16` "
                "rounds both sides to bf16, so it repeats the bf16 "
                "table; opdgeo lets it abstain for fp32 checkpoints (RAZOR caveat), so the label "
                "rests on the three geometric features and the confidence drops.")  # fmt: skip
        out += [title, "", note, "", table(header, body), "",
                f"**Classifier accuracy ({dtype}): {hits} / {len(chosen)} runs "
                f"({100 * hits / max(1, len(chosen)):.0f} %).**", ""]  # fmt: skip
        if dtype == "bf16":
            out += ["Reasons (bf16):", ""]
            out += [f"- seed {r['seed']} {r['run']}: {r['reasons']}" for r in chosen]
            out += [""]
    return out


def trajectory_section(seed_dirs: dict[int, Path]) -> list[str]:
    """``opdgeo trajectory`` of every run from its origin."""
    out = ["## Trajectories (`opdgeo trajectory ORIGIN RUN/checkpoint-*`)", "",
           "Cumulative update from the run's origin at every saved checkpoint (bf16). "
           "`stable_rank`, `sim_final` and `update_norm` are over the attention q/k/v/o "
           "matrices; `locking` is opdgeo's verdict on the whole run.", ""]  # fmt: skip
    header = ["seed", "run", "step", "sparsity_bf16", "regime", "stable_rank", "sim_final",
              "update_norm", "locking"]  # fmt: skip
    body: list[list[str]] = []
    for seed, seed_dir in seed_dirs.items():
        runs = json.loads((seed_dir / "zoo.json").read_text())["runs"]
        sft_final = checkpoints(Path(runs["sft"]["path"]))[-1]
        for name, origin in (("sft", Path(runs["base"]["path"])), ("opd", sft_final),
                             ("rlvr", sft_final)):  # fmt: skip
            frame = trajectory(origin, Path(runs[name]["path"]))
            for r in frame.itertuples():
                body.append([str(seed), name, str(r.step), pct(r.sparsity_bf16), str(r.regime),
                             fmt(r.stable_rank), fmt(r.sim_final), fmt(r.update_norm, ".3e"),
                             str(r.locking) if isinstance(r.locking, str) else ""])  # fmt: skip
    return [*out, table(header, body), ""]


def sweep_section(out_dir: Path) -> list[str]:
    """The learning-rate / initialisation experiments, when ``python -m zoo sweep`` ran."""
    path = ROOT / "experiments" / "sweep.json"
    if not path.is_file():
        return ["## Experiments", "", "(not run: `python -m zoo sweep`)", ""]
    data = json.loads(path.read_text())
    header = ["experiment", "run", "lr", "steps", "init", "accuracy (SFT → run)",
              "sparsity_bf16", "lowmag enr.", "angle (deg)", "NSS", "rel_norm",
              "opdgeo label"]  # fmt: skip
    body = [[e["experiment"], e["run"], f"{e['lr']:.0e}", str(e["steps"]), e["init"],
             f"{e['acc_before']:.3f} → {e['acc_after']:.3f}", pct(e["sparsity_bf16"]),
             fmt(e["lowmag_enrichment"], ".2f"), fmt(e["principal_angle_deg"], ".3g"),
             fmt(e["nss"], ".2e"), fmt(e["rel_norm"], ".2e"), e["regime"]]
            for e in data["runs"]]  # fmt: skip
    return ["## Experiments (seed 0, from its final SFT checkpoint)", "", data["note"], "",
            table(header, body), ""]  # fmt: skip


def settings_section(seed_dirs: dict[int, Path]) -> list[str]:
    """Model and stage settings, from the first seed's index."""
    first = next(iter(seed_dirs.values()))
    cfg = json.loads((first / "zoo.json").read_text())["config"]
    m = cfg["model"]
    rows = []
    for stage in ("pretrain", "sft", "rlvr", "opd"):
        o = cfg[stage]
        sched = "constant" if o["cosine_to"] is None else f"cosine → {o['cosine_to']}×"
        rows.append([stage, f"{o['lr']:.0e}", str(o["steps"]), str(o["batch"]),
                     str(o["weight_decay"]), str(tuple(o["betas"])), f"{o['warmup']} + {sched}",
                     str(o["save_every"])])  # fmt: skip
    return ["## Settings", "",
            f"Model: Llama-shaped decoder, hidden {m['hidden']}, {m['layers']} layers, "
            f"{m['heads']} heads, gated MLP {m['intermediate']}, vocabulary {m['vocab_size']} "
            f"characters, init std {m['init_std']}, untied head. Task: {cfg['n_terms']} one-digit "
            f"terms, running sums as the solution. RL: G = {cfg['rl']['group']}, temperature "
            f"{cfg['rl']['temperature']}, clip ({cfg['rl']['clip_low']}, {cfg['rl']['clip_high']}),"
            f" {cfg['rl']['updates_per_batch']} minibatch updates per rollout batch. OPD: "
            f"{cfg['opd_group']} samples per prompt, loss `{cfg['rl']['opd_loss']}`. Stages "
            f"start from the origin's {'fp32' if cfg['init_from_fp32'] else 'bf16'} checkpoint.",
            "", table(["stage", "lr", "steps", "batch (prompts)", "weight decay", "betas",
                       "warm-up + schedule", "save every"], rows), ""]  # fmt: skip


def write_report(out_dir: Path, seeds: list[int], results: Path, figures: Path) -> None:
    """Everything above into ``results``, and the regime map into ``figures``."""
    from opdgeo.plots import regime_map

    seed_dirs = {
        s: out_dir / f"seed{s}" for s in seeds if (out_dir / f"seed{s}" / "zoo.json").is_file()
    }
    rows, plotted = diagnostics(seed_dirs)
    figures.mkdir(parents=True, exist_ok=True)
    regime_map(plotted, figures)
    timing = out_dir / "timings-all.json"
    wall = json.loads(timing.read_text()) if timing.is_file() else {}
    lines = ["# Regime zoo: results", "",
             "Generated by `make zoo` (`python -m zoo all`) from real training runs; do not edit "
             "by hand (the analysis at the end is `zoo/ANALYSIS.md`).", ""]  # fmt: skip
    if wall:
        spent = ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items())
        lines += [f"Wall time of the last full `make zoo` (2 CPU cores): {spent}.", ""]
    stage_time = {
        seed: sum(_history(d, st)["seconds"] for st in ("pretrain", "sft", "rlvr", "opd"))
        for seed, d in seed_dirs.items()
    }
    lines += ["Training time of these runs (sum of the stages' wall clocks): "
              + ", ".join(f"seed {k} {v / 60:.1f} min" for k, v in stage_time.items())
              + ". Wall clocks depend on what else holds the CPUs: per-stage seconds are in the "
              "accuracy tables.", ""]  # fmt: skip
    lines += settings_section(seed_dirs)
    lines += accuracy_section(seed_dirs)
    lines += diagnostics_section(rows)
    lines += [f"![regime map of the zoo]({rel(figures / 'regime_map.png').removeprefix('zoo/')})",
              "", "Regime map: bf16 runs of every seed, OPDG's Qwen3-8B reference points in grey.",
              ""]  # fmt: skip
    lines += trajectory_section(seed_dirs)
    lines += sweep_section(out_dir)
    lines += grid_section(ROOT / "grid")
    analysis = ROOT / "ANALYSIS.md"
    if analysis.is_file():
        lines += [analysis.read_text().rstrip(), ""]
    results.write_text("\n".join(lines))
