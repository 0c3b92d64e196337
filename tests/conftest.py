"""Shared fixtures: tiny checkpoints written with safetensors in tmp directories. No network."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub
# The base cache goes to a fresh directory per test session, never the user's ~/.cache.
os.environ["OPDGEO_CACHE_DIR"] = tempfile.mkdtemp(prefix="opdgeo-test-cache-")

import pytest
import torch
from safetensors.torch import save_file

atexit.register(shutil.rmtree, os.environ["OPDGEO_CACHE_DIR"], True)

Tensors = dict[str, torch.Tensor]

HANG_S = 120
"""The hostile batteries' time bound: a test that blocks longer fails instead of hanging."""


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail (not hang) a test that blocks for more than ``HANG_S`` seconds (SIGALRM)."""

    def hang(*_: object) -> None:
        raise TimeoutError(f"hung for more than {HANG_S} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def write_checkpoint(
    path: Path, tensors: Tensors, shards: int = 1, config: dict | None = None
) -> Path:
    """Write ``tensors`` as ``path/model.safetensors`` or as ``shards`` shards plus an index."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    if shards <= 1:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    else:
        weight_map = {}
        per = -(-len(names) // shards)
        for i in range(shards):
            chunk = names[i * per : (i + 1) * per]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k].contiguous() for k in chunk}, str(path / fname))
            weight_map.update(dict.fromkeys(chunk, fname))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def tiny_model(
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    vocab: int = 64,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensors:
    """A Qwen-shaped toy state dict (q/k/v/o, gate/up/down, norms, embed, lm_head)."""
    gen = torch.Generator().manual_seed(seed)
    out: Tensors = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen) * 0.02}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
        for proj, shape in (
            ("q", (hidden, hidden)),
            ("k", (hidden // 2, hidden)),
            ("v", (hidden // 2, hidden)),
            ("o", (hidden, hidden)),
        ):
            out[p + f"self_attn.{proj}_proj.weight"] = torch.randn(*shape, generator=gen) * 0.02
        out[p + "mlp.gate_proj.weight"] = torch.randn(2 * hidden, hidden, generator=gen) * 0.02
        out[p + "mlp.up_proj.weight"] = torch.randn(2 * hidden, hidden, generator=gen) * 0.02
        out[p + "mlp.down_proj.weight"] = torch.randn(hidden, 2 * hidden, generator=gen) * 0.02
    out["model.norm.weight"] = torch.ones(hidden)
    out["lm_head.weight"] = torch.randn(vocab, hidden, generator=gen) * 0.02
    return {k: v.to(dtype) for k, v in out.items()}


def perturb(tensors: Tensors, scale: float = 1e-3, seed: int = 1) -> Tensors:
    """Add relative Gaussian noise of size ``scale`` to every tensor (stored back in its dtype)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (v.float() + scale * v.float().abs().mean() * torch.randn(v.shape, generator=gen)).to(
            v.dtype
        )
        for k, v in tensors.items()
    }


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """``make_checkpoint(name, tensors, shards=1, config=None) -> Path`` under tmp_path."""

    def make(name: str, tensors: Tensors, shards: int = 1, config: dict | None = None) -> Path:
        return write_checkpoint(tmp_path / name, tensors, shards, config)

    return make
