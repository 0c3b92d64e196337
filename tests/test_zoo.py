"""The regime zoo in miniature: every stage trains, checkpoints are written and comparable."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from opdgeo import compare_checkpoints
from opdgeo.cli import app
from opdgeo.regimes import Regime
from zoo import task
from zoo.grid import STAGE_SEEDS, mini_grid_config, run_name, stage_seed, train_grid_seed
from zoo.grid_explore import Origin, checkpoint_features, half_ulp, matrix_features
from zoo.model import ModelConfig, TinyLlama
from zoo.run import main as zoo_main
from zoo.run import mini_config, train_seed
from zoo.train import (
    completion_texts,
    generate,
    last_checkpoint,
    load_model,
    save_checkpoint,
    token_logprobs,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "seed0"
    train_seed(mini_config(), 0, out, log=lambda _: None)
    return out


def history(zoo_dir: Path, stage: str) -> dict[str, Any]:
    return dict(json.loads((zoo_dir / f"{stage}.history.json").read_text()))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_task_checks_final_answers_exactly() -> None:
    p = task.Problem((7, 5, 9, 3, 8))
    assert p.prompt == "^7+5+9+3+8=" and p.solution == "12,21,24,32$"
    assert task.is_correct(p, p.solution)
    assert task.is_correct(p, "99,1,2,32$")  # only the final answer is checked
    assert not task.is_correct(p, "12,21,24,31$")
    assert not task.is_correct(p, "12,21,24,32")  # no end marker
    assert task.decode(task.encode(p.prompt)) == p.prompt


def test_checkpoints_use_llama_names_and_round_trip(tmp_path: Path) -> None:
    model = TinyLlama(ModelConfig(hidden=16, layers=1, heads=2, intermediate=32))
    save_checkpoint(model, tmp_path / "run", 3)
    names = set(model.state_dict())
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight",
            "model.norm.weight", "lm_head.weight"} <= names  # fmt: skip
    for folder, dtype in (("run", torch.bfloat16), ("run-fp32", torch.float32)):
        with safe_open(str(tmp_path / folder / "checkpoint-3" / "model.safetensors"), "pt") as f:
            assert set(f.keys()) == names
            assert all(f.get_tensor(k).dtype == dtype for k in f.keys())  # noqa: SIM118
    back = load_model(tmp_path / "run-fp32" / "checkpoint-3", model.cfg)
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), back.parameters(), strict=True)
    )


def test_cross_entropy_stages_learn(zoo_dir: Path) -> None:
    for stage in ("pretrain", "sft"):
        losses = history(zoo_dir, stage)["losses"]
        quarter = max(1, len(losses) // 4)
        assert mean(losses[-quarter:]) < 0.8 * mean(losses[:quarter]), stage


def fixed_samples(model: TinyLlama, n_terms: int) -> tuple[list[task.Problem], torch.Tensor]:
    """64 prompts x 8 completions sampled from ``model`` with a fixed generator."""
    gen = torch.Generator().manual_seed(123)
    problems = task.sample_problems(64, n_terms, gen)
    prompts = torch.tensor([task.encode(p.prompt) for p in problems]).repeat_interleave(8, 0)
    comps = generate(model, prompts, task.max_solution_len(n_terms), 1.0, gen)
    return problems, torch.cat((prompts, comps), dim=1)


def completion_logprob(model: TinyLlama, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    with torch.no_grad():
        logp, _ = token_logprobs(model, ids)
    mask = (ids[:, 1:] != task.PAD).float()
    mask[:, : prompt_len - 1] = 0
    return (logp * mask).sum(1)


def test_rlvr_makes_rewarded_completions_likelier(zoo_dir: Path) -> None:
    cfg = mini_config()
    sft = load_model(last_checkpoint(zoo_dir / "sft"), cfg.model)
    rlvr = load_model(last_checkpoint(zoo_dir / "rlvr"), cfg.model)
    problems, ids = fixed_samples(sft, cfg.n_terms)
    plen = len(problems[0].prompt)
    texts = completion_texts(ids[:, plen:])
    reward = torch.tensor([task.is_correct(problems[i // 8], t) for i, t in enumerate(texts)])
    assert 0 < int(reward.sum()) < len(reward)
    gain = completion_logprob(rlvr, ids, plen) - completion_logprob(sft, ids, plen)
    assert float(gain[reward].mean()) > float(gain[~reward].mean())


def test_opd_lowers_the_reverse_kl_to_the_teacher(zoo_dir: Path) -> None:
    cfg = mini_config()
    index = json.loads((zoo_dir / "zoo.json").read_text())
    teacher = load_model(Path(index["runs"]["teacher"]["path"]), cfg.model)

    def reverse_kl(student: TinyLlama) -> float:
        problems, ids = fixed_samples(student, cfg.n_terms)
        mask = (ids[:, 1:] != task.PAD).float()
        mask[:, : len(problems[0].prompt) - 1] = 0
        with torch.no_grad():
            _, s = token_logprobs(student, ids)
            _, t = token_logprobs(teacher, ids)
        return float(((s.exp() * (s - t)).sum(-1) * mask).sum() / mask.sum())

    sft = load_model(last_checkpoint(zoo_dir / "sft"), cfg.model)
    opd = load_model(last_checkpoint(zoo_dir / "opd"), cfg.model)
    assert reverse_kl(opd) < reverse_kl(sft)
    assert mean(history(zoo_dir, "opd")["losses"][-4:]) < mean(
        history(zoo_dir, "opd")["losses"][:4]
    )


def test_every_run_has_bf16_and_fp32_checkpoints_and_accuracies(zoo_dir: Path) -> None:
    cfg = mini_config()
    for stage, options in (("pretrain", cfg.pretrain), ("sft", cfg.sft), ("rlvr", cfg.rlvr),
                           ("opd", cfg.opd)):  # fmt: skip
        steps = sorted(int(p.name.split("-")[1]) for p in (zoo_dir / stage).glob("checkpoint-*"))
        assert steps[0] == 0 and steps[-1] == options.steps, stage
        for step in steps:
            assert (
                zoo_dir / f"{stage}-fp32" / f"checkpoint-{step}" / "model.safetensors"
            ).is_file()
        accuracies = history(zoo_dir, stage)["checkpoints"]
        assert sorted(int(k) for k in accuracies) == steps
        assert all(0.0 <= a <= 1.0 for a in accuracies.values())
    index = json.loads((zoo_dir / "zoo.json").read_text())
    assert index["runs"]["opd"]["origin"] == str(last_checkpoint(zoo_dir / "sft"))


def test_opdgeo_compares_the_zoo(zoo_dir: Path) -> None:
    index = json.loads((zoo_dir / "zoo.json").read_text())
    sft = last_checkpoint(zoo_dir / "sft")
    args = [index["runs"]["base"]["path"], str(sft), "-q", "-f", "json"]
    result = runner.invoke(app, ["compare", *args])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["runs"][0]["summary"]
    assert summary["regime"] in [r.value for r in Regime if r not in ("unchanged", "unrelated")]
    assert summary["dtype_tuned"] == "BF16" and summary["n_params"] > 0
    result = runner.invoke(app, ["trajectory", str(sft), str(zoo_dir / "rlvr"), "-q", "-f", "csv"])
    assert result.exit_code == 0, result.stderr


def test_runs_are_reproducible(tmp_path: Path) -> None:
    cfg = mini_config()
    cfg.pretrain.steps, cfg.sft.steps, cfg.rlvr.steps, cfg.opd.steps = 20, 10, 5, 5
    cfg.base_step = 20
    for name in ("a", "b"):
        train_seed(cfg, 1, tmp_path / name, log=lambda _: None)
    for stage in ("pretrain/checkpoint-20", "rlvr/checkpoint-5", "opd/checkpoint-5"):
        a = (tmp_path / "a" / stage / "model.safetensors").read_bytes()
        assert a == (tmp_path / "b" / stage / "model.safetensors").read_bytes(), stage


# ----------------------------------------------------------------------------- training grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The miniature grid through the CLI: train, opdgeo features, exploration."""
    root = tmp_path_factory.mktemp("grid")
    zoo_main(["grid", "--mini", "--seeds", "0", "--grid-out", str(root / "runs"),
              "--grid-results", str(root / "results")])  # fmt: skip
    return root, json.loads((root / "results" / "runs.json").read_text())


def test_grid_trains_every_run_from_its_stage_origin(grid: tuple[Path, dict[str, Any]]) -> None:
    root, doc = grid
    cfg = mini_grid_config()
    stages = doc["seeds"]["0"]
    runs = {(r["algorithm"], r["lr"]): r for r in doc["runs"]}
    assert set(runs) == {(a, lr) for a in ("sft", "rlvr", "opd") for lr in cfg.lrs}
    for (algorithm, _), r in runs.items():
        origin = stages["base" if algorithm == "sft" else "anchor"]["final"]
        assert r["origin"] == origin and r["acc_before"] == r["accuracy"]["0"]
        per_step = cfg.rl.updates_per_batch if algorithm == "rlvr" else 1
        assert r["steps"] == cfg.updates // per_step
        # RLVR makes no update on a batch without reward variance; the count is the real one
        assert 0 < r["updates"] <= cfg.updates if algorithm == "rlvr" else r["updates"] == 4
        assert r["updates_at"][str(r["steps"])] == r["updates"]
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and 0 <= r["acc_after"] <= 1
        run_dir = root / "runs" / "seed0" / run_name(algorithm, r["lr"])
        steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
        assert steps == [0, r["steps"] // 2, r["steps"]]
        fp32 = {p.name for p in run_dir.with_name(run_dir.name + "-fp32").iterdir()}
        assert fp32 == {"checkpoint-0", f"checkpoint-{r['steps']}"}  # master weights pruned
    assert doc["runs"] == sorted(
        doc["runs"], key=lambda r: (r["seed"], ("sft", "rlvr", "opd").index(r["algorithm"]),
                                    r["lr"]))  # fmt: skip


def test_grid_teacher_is_stronger_than_the_student_anchor(
    grid: tuple[Path, dict[str, Any]],
) -> None:
    stages = grid[1]["seeds"]["0"]
    assert stages["teacher"]["params"] > stages["base"]["params"]
    assert stages["teacher"]["acc_after"] > stages["anchor"]["acc_after"] + 0.3


def test_grid_features_carry_every_opdgeo_summary_column(
    grid: tuple[Path, dict[str, Any]],
) -> None:
    root, doc = grid
    frame = pd.read_csv(root / "results" / "features.csv")
    assert len(frame) == len(doc["runs"])
    run = doc["runs"][0]
    direct = compare_checkpoints(run["origin"], [run["final"]])[0].summary  # tmp: absolute
    assert set(direct) <= set(frame.columns)
    assert frame.loc[0, "sparsity_bf16"] == pytest.approx(direct["sparsity_bf16"], rel=1e-12)
    assert list(frame["true_regime"]) == [f"{r['algorithm']}-like" for r in doc["runs"]]
    assert list(frame["acc_after"]) == [r["acc_after"] for r in doc["runs"]]


def test_grid_explore_writes_a_row_per_checkpoint(grid: tuple[Path, dict[str, Any]]) -> None:
    root, doc = grid
    frame = pd.read_csv(root / "results" / "explore.csv")
    assert len(frame) == 2 * len(doc["runs"])  # two saved checkpoints after step 0
    finals = frame[frame["final"]]
    moved = finals[finals["rel_norm"] > 0]
    assert (moved["update_size_fp32"] > 0).all() and (moved["fp32_visible"] <= 1).all()
    text = (root / "results" / "EXPLORE.md").read_text()
    assert "## Separation at matched update size" in text and "### Seed 0" in text
    timings = json.loads((root / "results" / "timings.json").read_text())
    assert set(timings) == {"train", "report", "explore"}


def test_grid_is_bit_reproducible_in_any_order_and_resumes(
    grid: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = grid
    cfg = replace(mini_grid_config(), lrs=(1e-3,))
    logs: list[str] = []
    part = train_grid_seed(cfg, 0, tmp_path / "seed0", logs.append, algorithms=("opd",))
    for name in ("base/checkpoint-40", "teacher/checkpoint-80", "anchor/checkpoint-4",
                 "opd-lr1e-03/checkpoint-4", "opd-lr1e-03-fp32/checkpoint-4"):  # fmt: skip
        a = (tmp_path / "seed0" / name / "model.safetensors").read_bytes()
        assert a == (root / "runs" / "seed0" / name / "model.safetensors").read_bytes(), name
    logs.clear()
    again = train_grid_seed(cfg, 0, tmp_path / "seed0", logs.append, algorithms=("opd",))
    assert again["runs"] == part["runs"] and sum("kept" in line for line in logs) == 4
    # a changed setting retrains what depends on it, and only that
    logs.clear()
    train_grid_seed(replace(cfg, updates=2), 0, tmp_path / "seed0", logs.append, ("opd",))
    assert sum("kept" in line for line in logs) == 3


def test_grid_seeds_share_no_generator() -> None:
    seeds = [{stage_seed(s, k) for k in STAGE_SEEDS} for s in (0, 1)]
    assert not seeds[0] & seeds[1] and all(len(s) == len(STAGE_SEEDS) for s in seeds)


def test_half_ulp_is_half_the_bf16_spacing() -> None:
    w = torch.tensor([1.0, 1.5, 0.75, -0.01, 3e-5]).bfloat16().double()
    half = half_ulp(w)
    assert half[:4].tolist() == [2**-8, 2**-8, 2**-9, 2**-15]
    a = w.abs()
    up = a + 2 * half
    assert torch.equal(up.bfloat16().double(), up)  # one spacing up is the next bf16 value
    assert torch.equal((a + 0.99 * half).bfloat16().double(), a)  # below half: rounds back
    assert torch.equal((a + 1.01 * half).bfloat16().double(), up)  # beyond half: changes


def test_explore_features_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    m, n = 40, 32
    w0 = torch.randn(m, n, generator=gen, dtype=torch.float64)
    w0 = w0.bfloat16().double()
    o = Origin.of(w0)
    scaled = matrix_features(o, w0 * 1.25)
    assert scaled is not None
    # pure rescaling: the spectrum carries the whole update, no rotation, W0's sign
    assert scaled["spectral_drift"] == pytest.approx(1.0, abs=1e-9)
    assert scaled["angle_per_rel"] == pytest.approx(0.0, abs=1e-5)
    assert scaled["cos_w0"] == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    rotated = matrix_features(o, q @ w0)
    assert rotated is not None and rotated["spectral_drift"] == pytest.approx(0.0, abs=1e-9)
    assert rotated["intruders"] > 0
    # an update inside W0's top-k singular subspaces: all its energy is principal
    ke = int(0.1 * n)
    inside = o.u[:, :ke] @ torch.randn(ke, ke, generator=gen, dtype=torch.float64) @ o.vh[:ke]
    f = matrix_features(o, w0 + 1e-3 * inside)
    assert f is not None and f["energy_ratio"] == pytest.approx(m * n / ke**2)
    assert f["intruders"] == 0 and f["intruder_sim"] > 0.99
    one_row = torch.zeros(m, n, dtype=torch.float64)
    one_row[3] = 1e-3
    f = matrix_features(o, w0 + one_row)
    assert f is not None and f["row_share"] == pytest.approx(1.0)
    assert f["stable_rank"] == pytest.approx(1.0)
    assert matrix_features(o, w0.clone()) is None


def test_explore_update_size_counts_bf16_steps() -> None:
    w0 = torch.full((16, 16), 1.0, dtype=torch.float64)  # bf16 spacing at 1.0 is 2^-7
    w1 = w0.clone()
    w1[0, :4] += 2**-7  # one bf16 step: twice half an ulp
    w1[1, :4] += 3 * 2**-7
    fp32 = w0 + 2**-9  # a quarter ulp everywhere: invisible after rounding
    name = "model.layers.0.self_attn.q_proj.weight"
    f = checkpoint_features({name: Origin.of(w0)}, {name: w1}, {name: fp32})
    assert f["sparsity"] == 1 - 8 / 256
    assert f["update_size"] == 2.0  # median of (2, 2, 2, 2, 6, 6, 6, 6): torch takes the lower
    assert f["update_size_mean"] == pytest.approx((4 * 2 + 4 * 6) / 256)
    assert f["update_size_fp32"] == 0.5 and f["fp32_visible"] == 0.0
    assert f["sign_agree"] == 1.0
