"""The regime zoo in miniature: every stage trains, checkpoints are written and comparable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from opdgeo.cli import app
from zoo import task
from zoo.model import ModelConfig, TinyLlama
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
    assert summary["regime"] in ("sft-like", "opd-like", "rlvr-like")
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
