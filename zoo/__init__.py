"""Regime zoo: real SFT, RLVR and OPD training runs on a small model, to validate opdgeo.

Everything is pure PyTorch on the CPU with fixed seeds: a few-million-parameter Llama-shaped
decoder (:mod:`zoo.model`) learns multi-step addition written as text (:mod:`zoo.task`), and
:mod:`zoo.train` runs the stages (base pretraining, a longer-trained teacher, SFT on
teacher-written solutions, GRPO-style RLVR, on-policy distillation). :mod:`zoo.run` is the
``make zoo`` entry point and :mod:`zoo.report` writes ``zoo/RESULTS.md``.
"""

__all__ = ["model", "task", "train"]
