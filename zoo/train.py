"""The training stages: pretraining (base and teacher), SFT, RLVR (GRPO) and OPD.

Every stage keeps fp32 master weights in an AdamW optimiser and, every ``save_every`` steps,
writes the weights twice: rounded to bf16 (as released models are) under ``RUN/`` and in fp32
under ``RUN-fp32/``, as ``checkpoint-<step>/model.safetensors``. The greedy accuracy on a
fixed test set is measured at every checkpoint and kept in the returned :class:`History`.

A stage starts from its origin's *released* bf16 checkpoint, upcast to fp32, as post-training
frameworks load a published model; :func:`load_model` with ``fp32=True`` instead starts from
the origin's fp32 master weights (one of the experiments).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from zoo import task
from zoo.model import ModelConfig, TinyLlama


@dataclass
class OptimConfig:
    """AdamW and schedule of one stage (papers.md §6: constant LR for RL/OPD, cosine for SFT)."""

    lr: float
    steps: int
    batch: int
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup: int = 0
    cosine_to: float | None = None
    """Final LR as a fraction of ``lr`` for a cosine decay; None: constant after warm-up."""
    grad_clip: float = 1.0
    save_every: int = 25

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.cosine_to is None:
            return self.lr
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (
            self.cosine_to + (1 - self.cosine_to) * 0.5 * (1 + math.cos(math.pi * progress))
        )


@dataclass
class History:
    """What a stage did: loss (or reward / KL) per step and accuracy per checkpoint."""

    stage: str
    losses: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    checkpoints: dict[int, float] = field(default_factory=dict)
    """step -> greedy task accuracy."""
    seconds: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    updates: int = 0
    """Optimizer updates made (RLVR makes none on a batch without reward variance)."""
    updates_at: dict[int, int] = field(default_factory=dict)
    """step -> optimizer updates made up to that checkpoint."""

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "checkpoints": {str(k): v for k, v in self.checkpoints.items()},
            "updates_at": {str(k): v for k, v in self.updates_at.items()},
        }


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: TinyLlama, run_dir: Path, step: int) -> Path:
    """Write ``RUN/checkpoint-<step>`` in bf16 and ``RUN-fp32/checkpoint-<step>`` in fp32."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    bf16_dir = run_dir / f"checkpoint-{step}"
    fp32_dir = run_dir.with_name(run_dir.name + "-fp32") / f"checkpoint-{step}"
    for folder, dtype in ((bf16_dir, torch.bfloat16), (fp32_dir, torch.float32)):
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(dtype) for k, v in state.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(model.cfg.as_dict(), indent=1) + "\n")
    return bf16_dir


def load_model(path: Path, cfg: ModelConfig) -> TinyLlama:
    """A model with the weights of ``path`` (a checkpoint directory or file), upcast to fp32."""
    file = path / "model.safetensors" if path.is_dir() else path
    model = TinyLlama(cfg)
    state = {k: v.float() for k, v in load_file(str(file)).items()}
    model.load_state_dict(state)
    return model


def last_checkpoint(run_dir: Path) -> Path:
    """The highest-step ``checkpoint-*`` directory of a run."""
    steps = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {run_dir}")
    return steps[-1]


# ----------------------------------------------------------------------------- sampling


def make_optimizer(model: TinyLlama, oc: OptimConfig) -> torch.optim.AdamW:
    """AdamW over fp32 master weights; no decay on norms (1-D gains), as usual."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": oc.weight_decay},
              {"params": other, "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=oc.lr, betas=oc.betas, eps=oc.eps)


@torch.no_grad()
def generate(
    model: TinyLlama,
    prompts: torch.Tensor,
    max_new: int,
    temperature: float,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Completions (B, max_new) after equal-length ``prompts``; ``_`` after each row's ``$``.

    ``temperature`` 0 is greedy decoding.
    """
    model.eval()
    logits, cache = model(prompts)
    start = prompts.shape[1]
    out = torch.full((prompts.shape[0], max_new), task.PAD, dtype=torch.long)
    done = torch.zeros(prompts.shape[0], dtype=torch.bool)
    for i in range(max_new):
        last = logits[:, -1].float()
        if temperature > 0:
            probs = torch.softmax(last / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            token = last.argmax(-1)
        token = torch.where(done, torch.full_like(token, task.PAD), token)
        out[:, i] = token
        done |= token == task.EOS
        if bool(done.all()):
            break
        logits, cache = model(token[:, None], cache, start + i)
    model.train()
    return out


def completion_texts(completions: torch.Tensor) -> list[str]:
    """Text of each completion up to and including its ``$`` (or all of it)."""
    texts = []
    for row in completions.tolist():
        text = task.decode(row).replace("_", "")
        texts.append(text.split("$", 1)[0] + "$" if "$" in text else text)
    return texts


def completion_mask(completions: torch.Tensor) -> torch.Tensor:
    """1 for generated tokens up to and including ``$``, 0 for the padding after it."""
    return (completions != task.PAD).float()


@torch.no_grad()
def evaluate(model: TinyLlama, problems: list[task.Problem], batch: int = 512) -> float:
    """Greedy accuracy on ``problems`` (all with the same number of terms)."""
    correct = 0
    n_terms = len(problems[0].terms)
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        prompts = torch.tensor([task.encode(p.prompt) for p in chunk])
        outs = completion_texts(generate(model, prompts, task.max_solution_len(n_terms), 0.0))
        correct += sum(task.is_correct(p, o) for p, o in zip(chunk, outs, strict=True))
    return correct / len(problems)


def solution_mask(ids: torch.Tensor) -> torch.Tensor:
    """Loss mask over next-token targets: the tokens after ``=`` up to and including ``$``."""
    targets = ids[:, 1:]
    after_eq = (ids == task.STOI["="]).long().cumsum(1)[:, :-1] > 0
    not_pad = targets != task.PAD
    return (after_eq & not_pad).float()


def token_logprobs(model: TinyLlama, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every next token (B, T-1) and the full log-softmax (B, T-1, V)."""
    logp = F.log_softmax(model.logits(ids[:, :-1]).float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1), logp


# ----------------------------------------------------------------------------- stages

Checkpointer = Callable[[TinyLlama, int], None]


class _Stage:
    """Shared loop plumbing: optimiser, LR schedule, clipping, checkpoints with accuracy."""

    def __init__(
        self, name: str, model: TinyLlama, oc: OptimConfig, run_dir: Path,
        eval_set: list[task.Problem], log: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.model, self.oc, self.run_dir, self.eval_set, self.log = (
            model,
            oc,
            run_dir,
            eval_set,
            log,
        )
        self.opt = make_optimizer(model, oc)
        self.history = History(name, settings=dict(asdict(oc)))
        self.t0 = time.perf_counter()

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.model, self.run_dir, step)
        acc = evaluate(self.model, self.eval_set)
        self.history.checkpoints[step] = acc
        self.history.updates_at[step] = self.history.updates
        tail = self.history.losses[-self.oc.save_every :] or [math.nan]
        mean = sum(tail) / len(tail)
        elapsed = time.perf_counter() - self.t0
        self.log(
            f"{self.history.stage} step {step}: accuracy {acc:.3f} loss {mean:.4f} ({elapsed:.0f}s)"
        )

    def update(self, step: int, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.oc.lr_at(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.oc.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.oc.grad_clip)
        self.opt.step()
        self.history.updates += 1

    def after(self, step: int) -> None:
        if (step + 1) % self.oc.save_every == 0 or step + 1 == self.oc.steps:
            self.checkpoint(step + 1)

    def finish(self) -> History:
        self.history.seconds = time.perf_counter() - self.t0
        (self.run_dir.parent / f"{self.run_dir.name}.history.json").write_text(
            json.dumps(self.history.to_json(), indent=1) + "\n"
        )
        return self.history


def cross_entropy_stage(
    name: str,
    model: TinyLlama,
    oc: OptimConfig,
    run_dir: Path,
    data: Callable[[int], torch.Tensor],
    eval_set: list[task.Problem],
    log: Callable[[str], None] = print,
    save_at: tuple[int, ...] = (),
    stop_at: int | None = None,
) -> History:
    """Next-token cross-entropy on the solution tokens of ``data(step)`` (pretraining, SFT).

    Checkpoints every ``save_every`` steps and at the extra steps ``save_at``; ``stop_at``
    ends the run early on the schedule of ``oc.steps`` (a base taken from a longer run).
    """
    stage = _Stage(name, model, oc, run_dir, eval_set, log)
    stage.checkpoint(0)
    for step in range(oc.steps if stop_at is None else stop_at):
        ids = data(step)
        logp, _ = token_logprobs(model, ids)
        mask = solution_mask(ids)
        loss = -(logp * mask).sum() / mask.sum()
        stage.update(step, loss)
        stage.history.losses.append(float(loss.detach()))
        if (step + 1 in save_at or step + 1 == stop_at) and (step + 1) % oc.save_every:
            stage.checkpoint(step + 1)
        stage.after(step)
    return stage.finish()


@dataclass
class RLConfig:
    """GRPO / OPD rollout settings."""

    group: int = 8
    """Completions per prompt (G)."""
    temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.28
    """Asymmetric clip (DAPO's ε_high, as OPDG's RLVR run)."""
    updates_per_batch: int = 2
    """Minibatch updates per rollout batch (so the ratio leaves 1 and the clip can act)."""
    n_terms: int = 5
    opd_loss: str = "sampled"
    """``sampled``: per-token log-ratio log π_T − log π_θ of the sampled token as advantage;
    ``full``: exact full-vocabulary reverse KL(π_θ ‖ π_T) per position."""


def _rollout(
    model: TinyLlama, problems: list[task.Problem], rc: RLConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Sample G completions per prompt: full ids (B·G, P+L), completion mask, texts."""
    prompts = torch.tensor([task.encode(p.prompt) for p in problems])
    prompts = prompts.repeat_interleave(rc.group, dim=0)
    comps = generate(model, prompts, task.max_solution_len(rc.n_terms), rc.temperature, gen)
    ids = torch.cat((prompts, comps), dim=1)
    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    mask[:, prompts.shape[1] - 1 :] = completion_mask(comps)
    return ids, mask, completion_texts(comps)


def rlvr_stage(
    model: TinyLlama, oc: OptimConfig, rc: RLConfig, run_dir: Path, eval_set: list[task.Problem],
    seed: int, log: Callable[[str], None] = print,
) -> History:  # fmt: skip
    """GRPO: G samples per prompt, reward 1 for an exact final answer, group-normalised
    advantages, clipped token-level policy-gradient loss; no teacher, no KL term. Groups with
    zero reward variance carry no signal and are dropped (DAPO's dynamic filter)."""
    gen = torch.Generator().manual_seed(seed)
    stage = _Stage("rlvr", model, oc, run_dir, eval_set, log)
    stage.history.settings.update(asdict(rc))
    stage.checkpoint(0)
    for step in range(oc.steps):
        problems = task.sample_problems(oc.batch, rc.n_terms, gen)
        ids, mask, texts = _rollout(model, problems, rc, gen)
        reward = torch.tensor(
            [float(task.is_correct(problems[i // rc.group], t)) for i, t in enumerate(texts)]
        )
        grouped = reward.view(-1, rc.group)
        adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
        keep = (grouped.std(1) > 0).repeat_interleave(rc.group)
        adv = adv.flatten()
        stage.history.rewards.append(float(reward.mean()))
        if not bool(keep.any()):
            stage.history.losses.append(0.0)
            stage.after(step)
            continue
        ids, mask, adv = ids[keep], mask[keep], adv[keep]
        with torch.no_grad():
            old, _ = token_logprobs(model, ids)
        loss_value = 0.0
        for chunk in torch.arange(len(ids)).chunk(rc.updates_per_batch):
            new, _ = token_logprobs(model, ids[chunk])
            ratio = torch.exp(new - old[chunk])
            a = adv[chunk, None]
            clipped = torch.clamp(ratio, 1 - rc.clip_low, 1 + rc.clip_high)
            per_token = -torch.minimum(ratio * a, clipped * a)
            m = mask[chunk]
            loss = (per_token * m).sum() / m.sum()
            stage.update(step, loss)
            loss_value += float(loss.detach()) / rc.updates_per_batch
        stage.history.losses.append(loss_value)
        stage.after(step)
    return stage.finish()


def opd_stage(
    model: TinyLlama, teacher: TinyLlama, oc: OptimConfig, rc: RLConfig, run_dir: Path,
    eval_set: list[task.Problem], seed: int, log: Callable[[str], None] = print,
) -> History:  # fmt: skip
    """On-policy distillation: the student samples, the loss is the per-token reverse KL to
    the teacher on those samples; no reward. ``rc.opd_loss`` picks the estimator (see
    :class:`RLConfig`). ``losses`` records the mean per-token reverse KL of the samples."""
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    stage = _Stage("opd", model, oc, run_dir, eval_set, log)
    stage.history.settings.update(asdict(rc))
    stage.checkpoint(0)
    for step in range(oc.steps):
        problems = task.sample_problems(oc.batch, rc.n_terms, gen)
        ids, mask, texts = _rollout(model, problems, rc, gen)
        stage.history.rewards.append(
            sum(task.is_correct(problems[i // rc.group], t) for i, t in enumerate(texts))
            / len(texts)
        )
        with torch.no_grad():
            t_tok, t_full = token_logprobs(teacher, ids)
        s_tok, s_full = token_logprobs(model, ids)
        if rc.opd_loss == "full":
            kl = (s_full.exp() * (s_full - t_full)).sum(-1)
            loss = (kl * mask).sum() / mask.sum()
            kl_value = float(loss.detach())
        else:
            log_ratio = (s_tok - t_tok).detach()
            loss = (log_ratio * s_tok * mask).sum() / mask.sum()
            kl_value = float((log_ratio * mask).sum() / mask.sum())
        stage.update(step, loss)
        stage.history.losses.append(kl_value)
        stage.after(step)
    return stage.finish()
