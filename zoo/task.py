"""The task: multi-step addition written as text, with a final answer checked exactly.

A prompt lists ``n_terms`` numbers, ``"7+5+9+3+8="``; a solution writes the running sums, each
one step of reasoning, and ends with the final sum: ``"12,21,24,32$"``.
The reward (RLVR) and the accuracy are 1 when the last number before ``$`` equals the true
sum, whatever the intermediate steps say.

Tokens are characters; with one-digit terms every prompt has the same length for a given
``n_terms``, so generation batches need no padding on the prompt side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

VOCAB = "^0123456789+=,$_"
"""``^`` begins a sequence, ``$`` ends a solution, ``_`` pads."""
BOS, EOS, PAD = VOCAB.index("^"), VOCAB.index("$"), VOCAB.index("_")
STOI = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    """Character ids of ``text``."""
    return [STOI[c] for c in text]


def decode(ids: list[int] | torch.Tensor) -> str:
    """Text of character ids (stops at nothing; callers cut at ``$``)."""
    return "".join(VOCAB[int(i)] for i in ids)


@dataclass(frozen=True)
class Problem:
    """One problem: its terms, the prompt text and the reference solution text."""

    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "^" + "+".join(str(t) for t in self.terms) + "="

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def solution(self) -> str:
        """Running sums after the first term, comma-separated, then ``$``."""
        sums, total = [], self.terms[0]
        for t in self.terms[1:]:
            total += t
            sums.append(str(total))
        return ",".join(sums) + "$"


def sample_problems(
    n: int, n_terms: int, gen: torch.Generator, low: int = 0, high: int = 9
) -> list[Problem]:
    """``n`` problems of ``n_terms`` terms drawn uniformly from ``low..high`` with ``gen``."""
    terms = torch.randint(low, high + 1, (n, n_terms), generator=gen)
    return [Problem(tuple(int(x) for x in row)) for row in terms]


def max_solution_len(n_terms: int, high: int = 9) -> int:
    """Longest possible solution text, ``$`` included."""
    return (len(str(n_terms * high)) + 1) * (n_terms - 1)


def extract_answer(completion: str) -> int | None:
    """The final number of a completion (text before the first ``$``), or None if malformed."""
    if "$" not in completion:
        return None
    body = completion.split("$", 1)[0]
    last = body.split(",")[-1]
    return int(last) if last.isdigit() and len(last) <= 4 else None


def is_correct(problem: Problem, completion: str) -> bool:
    """Exact check of the final answer (the verifiable reward)."""
    return extract_answer(completion) == problem.answer


def sequences(problems: list[Problem], solutions: list[str] | None = None) -> torch.Tensor:
    """Token ids of prompt + solution, right-padded with ``_`` to a common length."""
    texts = [
        p.prompt + (s if solutions is not None else p.solution)
        for p, s in zip(problems, solutions or [""] * len(problems), strict=True)
    ]
    width = max(len(t) for t in texts)
    return torch.tensor([encode(t) + [PAD] * (width - len(t)) for t in texts], dtype=torch.long)
