"""A small synthetic checkpoint family for the demo and the tests.

The base is a 4-layer Qwen-shaped model (GQA attention, gated MLP, untied lm_head) whose
matrices are eight spikes over a Marchenko-Pastur bulk, like trained weights. Three
"fine-tunes" are planted with the update geometry the papers describe, applied in float32
and stored in bf16 like released models (so bf16 rounding decides which entries visibly
change):

* ``sft``: a large dense update: the spikes grow and dense noise touches every weight
  (norms included).
* ``opd``: a moderate rank-16 update that avoids the spikes but moves the leading bulk
  directions (a "relaxed off-principal" update).
* ``rlvr``: a small full-rank update orthogonal to the spikes; norms frozen.

These are planted patterns, not trained models: they show what each regime looks like to
opdgeo, they do not prove that training produces it.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import torch
from safetensors.torch import save

from opdgeo.errors import OpdgeoError, OutputError
from opdgeo.outputs import write_output
from opdgeo.threads import threads_for

HIDDEN, KV, INTER, VOCAB, LAYERS = 128, 64, 352, 512, 4
SPIKES = 8


def _shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (HIDDEN,),
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (KV, HIDDEN),
                p + "self_attn.v_proj.weight": (KV, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "post_attention_layernorm.weight": (HIDDEN,),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN),
                p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER),
            }
        )
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    return shapes


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    q: torch.Tensor = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[
        0
    ]
    return q


def base_matrix(m: int, n: int, gen: torch.Generator, scale: float = 0.02) -> torch.Tensor:
    """Eight spikes (2-6x the bulk edge) over a Gaussian (Marchenko-Pastur) bulk, RMS ``scale``."""
    edge = 1 + math.sqrt(min(m, n) / max(m, n))
    spikes = edge * torch.tensor([6, 5, 4, 3.5, 3, 2.5, 2, 1.6], dtype=torch.float64)
    bulk = torch.randn(m, n, generator=gen, dtype=torch.float64) / math.sqrt(max(m, n))
    w = (_orthonormal(m, SPIKES, gen) * spikes) @ _orthonormal(n, SPIKES, gen).T + bulk
    out: torch.Tensor = w * (scale / w.pow(2).mean().sqrt())
    return out


def make_base(seed: int = 0) -> dict[str, torch.Tensor]:
    """The base checkpoint in float64 (callers store it as bf16)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in _shapes().items():
        if len(shape) == 1:
            out[name] = 1.0 + 0.05 * torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            out[name] = base_matrix(shape[0], shape[1], gen)
    return out


Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _svd(w: torch.Tensor, svd: Svd | None) -> Svd:
    """``svd`` when the caller already has ``w``'s thin SVD (one per matrix, not four)."""
    if svd is not None:
        return svd
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u, s, vh


def _off_spikes(w: torch.Tensor, g: torch.Tensor, svd: Svd | None = None) -> torch.Tensor:
    """Project ``g`` off the top-SPIKES left and right singular directions of ``w``."""
    u, _, vh = _svd(w, svd)
    uk, vk = u[:, :SPIKES], vh[:SPIKES].T
    g = g - uk @ (uk.T @ g)
    out: torch.Tensor = g - (g @ vk) @ vk.T
    return out


def _scaled(g: torch.Tensor, w: torch.Tensor, rel: float) -> torch.Tensor:
    out: torch.Tensor = g * (rel * w.norm() / g.norm())
    return out


def sft_update(w: torch.Tensor, gen: torch.Generator, svd: Svd | None = None) -> torch.Tensor:
    """Dense and principal: grow the spikes by 8 % and add dense noise (8 % of the entry RMS)."""
    u, s, vh = _svd(w, svd)
    principal = (u[:, :SPIKES] * (0.08 * s[:SPIKES])) @ vh[:SPIKES]
    noise = torch.randn(w.shape, generator=gen, dtype=w.dtype) * 0.08 * w.std()
    out: torch.Tensor = principal + noise
    return out


def opd_update(w: torch.Tensor, gen: torch.Generator, svd: Svd | None = None) -> torch.Tensor:
    """Rank-16, off the spikes, mostly inside the bulk's leading directions; ‖ΔW‖ = 0.3 % ‖W‖."""
    m, n = w.shape
    svd = _svd(w, svd)
    u, _, vh = svd
    band = slice(SPIKES, SPIKES + 32)
    inner = (u[:, band] @ torch.randn(32, 16, generator=gen, dtype=w.dtype)) @ (
        vh[band].T @ torch.randn(32, 16, generator=gen, dtype=w.dtype)
    ).T
    a = torch.randn(m, 16, generator=gen, dtype=w.dtype)
    b = torch.randn(n, 16, generator=gen, dtype=w.dtype)
    outer = _off_spikes(w, a @ b.T, svd)
    return _scaled(0.8 * inner / inner.norm() + 0.2 * outer / outer.norm(), w, 0.003)


def rlvr_update(w: torch.Tensor, gen: torch.Generator, svd: Svd | None = None) -> torch.Tensor:
    """Small, full-rank, off the spikes; ‖ΔW‖ = 0.05 % ‖W‖."""
    g = torch.randn(w.shape, generator=gen, dtype=w.dtype)
    return _scaled(_off_spikes(w, g, svd), w, 0.0005)


@threads_for(0.0)
def make_family(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Base plus sft/opd/rlvr variants, all as bf16 tensors (on one thread: every matrix is
    small, and an OpenMP team per operation made this 24x slower with another job on the
    second core: 16.7 s against 0.70 s on this VM)."""
    base = make_base(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    family: dict[str, dict[str, torch.Tensor]] = {"base": {}, "sft": {}, "opd": {}, "rlvr": {}}
    for name, w in base.items():
        w0 = w.to(torch.bfloat16).double()
        family["base"][name] = w0.to(torch.bfloat16)
        if w.dim() == 1:
            noise = torch.randn(w.shape, generator=gen, dtype=w.dtype)
            family["sft"][name] = (w0 + 0.01 * noise).to(torch.bfloat16)
            family["opd"][name] = (w0 + 0.0005 * noise).to(torch.bfloat16)
            family["rlvr"][name] = family["base"][name].clone()
            continue
        svd = _svd(w0, None)  # one decomposition serves the three updates
        family["sft"][name] = (w0 + sft_update(w0, gen, svd)).to(torch.bfloat16)
        family["opd"][name] = (w0 + opd_update(w0, gen, svd)).to(torch.bfloat16)
        family["rlvr"][name] = (w0 + rlvr_update(w0, gen, svd)).to(torch.bfloat16)
    return family


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """One safetensors file through :func:`opdgeo.outputs.write_output` (atomic, mode
    ``0666 & ~umask``; safetensors' ``save_file`` leaves 0600)."""
    write_output(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))


FAMILY = ("base", "sft", "opd", "rlvr")
CONFIG_TEXT = '{"model_type": "qwen2", "tie_word_embeddings": false}\n'
"""The ``config.json`` of every synthetic checkpoint."""


def _written_by_demo(path: Path, label: str) -> bool:
    """Whether ``path`` (an existing file) is what :func:`write_family` writes for ``label``:
    a regular file, the config text byte for byte, or weights whose header says so."""
    from opdgeo.io.safetensors import read_header

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        if path.name == "config.json":
            return path.stat().st_size < 4096 and path.read_text("utf-8") == CONFIG_TEXT
        return read_header(path)[1].get("opdgeo_synthetic") == label
    except (OSError, OpdgeoError, UnicodeDecodeError):
        return False


def write_family(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``base/``, ``sft/``, ``opd/``, ``rlvr/`` checkpoint directories under ``directory``.

    Only files an earlier demo wrote are replaced: a ``model.safetensors`` or ``config.json``
    already there that it did not write (a real model in ``demo/base``) is an
    :class:`~opdgeo.errors.OutputError`, before anything is written."""
    directory = Path(directory)
    for label in FAMILY:
        for name in ("model.safetensors", "config.json"):
            path = directory / label / name
            if (path.exists() or path.is_symlink()) and not _written_by_demo(path, label):
                raise OutputError(
                    f"refusing to write {path}: it is not a file an opdgeo demo wrote "
                    "(give the demo an empty or new folder)"
                )
    paths = {}
    for label, tensors in make_family(seed).items():
        folder = directory / label
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(
            folder / "model.safetensors", tensors, {"format": "pt", "opdgeo_synthetic": label}
        )
        write_output(folder / "config.json", CONFIG_TEXT)
        paths[label] = folder
    return paths


@threads_for(0.0)  # small matrices: one thread (make_family)
def write_trajectory(directory: Path, seed: int = 0, steps: int = 4) -> list[Path]:
    """``checkpoint-100 ... checkpoint-{100*steps}`` along one OPD-like direction from the base.

    Checkpoint t holds W0 + (t/steps)·ΔW_opd plus fresh noise of 10 % of that step's update,
    stored in bf16: a run that stays in one low-rank channel (the locked pattern of OPDG §4).
    The base is ``directory/base``.
    """
    directory = Path(directory)
    base = {k: v.to(torch.bfloat16).double() for k, v in make_base(seed).items()}
    gen = torch.Generator().manual_seed(seed + 2)
    updates = {k: opd_update(w, gen) for k, w in base.items() if w.dim() == 2}
    folders = []
    for name, tensors in [("base", base)] + [
        (f"checkpoint-{100 * t}", {
            k: w + (t / steps) * updates[k] * (1 + 0.1 * torch.randn(w.shape, generator=gen))
            if k in updates else w
            for k, w in base.items()
        })
        for t in range(1, steps + 1)
    ]:  # fmt: skip
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        stored = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
        write_safetensors(folder / "model.safetensors", stored, {"format": "pt"})
        folders.append(folder)
    return folders
