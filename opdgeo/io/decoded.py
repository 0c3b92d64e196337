"""What a decoder knows about the tensor it built, carried on the tensor to the metrics.

A dequantised weight or a LoRA-merged matrix is a plain float32 tensor; the facts that only
the decoder has (the quantization step of each entry, the low-rank factors of ΔW, the
adapter's rank and scale) ride along as :class:`Decoded`, attached with :func:`annotate`
and read by :class:`opdgeo.pair.TensorPair` (:func:`annotation`). Nothing else sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_ATTRIBUTE = "_opdgeo_decoded"


@dataclass(frozen=True)
class Decoded:
    """Facts about a decoded tensor (see the module docstring)."""

    method: str
    """How it was built (the ``method`` column): ``fp8-e4m3-block128x128``, ``mxfp4``,
    ``lora``, ..."""
    half_step: Callable[[], torch.Tensor] | None = None
    """Half the quantization step at each entry (float32, the tensor's shape): a value
    rounded to the grid from x differs from x by at most this much."""
    half_step_at: Callable[[int], torch.Tensor] | None = None
    """The half step of ``tensor[index]`` alone (a fused expert tensor's expert ``index``),
    computed from that expert's codes only."""
    lowrank: tuple[torch.Tensor, torch.Tensor] | None = None
    """(B', A) with ΔW = B' A exactly (B' = s·B): LoRA's update, for exact σ₁ and rank."""
    rank: int | None = None
    """LoRA rank r of the module."""
    scale: float | None = None
    """LoRA scale s (lora_alpha / r, or lora_alpha / √r with rsLoRA)."""


def annotate(tensor: torch.Tensor, decoded: Decoded) -> torch.Tensor:
    """Attach ``decoded`` to ``tensor`` (returned for chaining)."""
    setattr(tensor, _ATTRIBUTE, decoded)
    return tensor


def annotation(tensor: torch.Tensor) -> Decoded | None:
    """The :class:`Decoded` attached to ``tensor``, or None for a stored float tensor."""
    found = getattr(tensor, _ATTRIBUTE, None)
    return found if isinstance(found, Decoded) else None


def cut_slice(
    piece: torch.Tensor,
    parent: torch.Tensor,
    index: int,
    cut: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Annotate ``piece`` = ``cut(parent[index])`` (one expert of a decoded fused tensor)
    with the parent's method and the half step of that expert alone, cut the same way (LoRA
    factors do not apply to a slice); ``piece`` is returned unchanged when ``parent``
    carries nothing."""
    found = annotation(parent)
    if found is None:
        return piece
    at = found.half_step_at
    full = found.half_step
    if at is not None:
        half: Callable[[], torch.Tensor] | None = lambda: cut(at(index))  # noqa: E731
    elif full is not None:  # no per-expert decoder: the whole grid, then this expert's part
        half = lambda: cut(full()[index])  # noqa: E731
    else:
        half = None
    return annotate(piece, replace(found, half_step=half, half_step_at=None, lowrank=None))
