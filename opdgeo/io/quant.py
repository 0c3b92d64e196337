"""Quantized weights, dequantized on the fly to float32 (each method named in ``method``).

Decoded layouts (the weight keeps its name; its scale tensors are consumed, never compared):

* **FP8 with block scales** (DeepSeek-V3/R1, Qwen3-FP8; ``quant_method = "fp8"``):
  ``x.weight`` ``F8_E4M3`` [m, n] and ``x.weight_scale_inv`` F32 [⌈m/128⌉, ⌈n/128⌉];
  ``W = fp8 · scale_inv[i // 128, j // 128]``, partial edge blocks included. This is
  DeepSeek-V3's ``inference/kernel.py`` ``weight_dequant`` (used by ``fp8_cast_bf16.py``:
  a grid of ⌈M/128⌉ × ⌈N/128⌉ programs, ``y = x * s`` with s the block's ``scale_inv``) and
  transformers' ``integrations/finegrained_fp8.py`` ``Fp8Dequantize`` (which multiplies each
  block by its ``weight_scale_inv``). The block size comes from ``weight_block_size`` in
  ``config.json``'s ``quantization_config`` (default 128 × 128). Leading dimensions (fused
  experts ``[E, m, n]`` with scales ``[E, ⌈m/b⌉, ⌈n/b⌉]``) are kept.
* **compressed-tensors** ``float-quantized`` / ``int-quantized`` (``weight_scale``):
  ``W = (q − zero_point) · scale`` as ``compressed_tensors/quantization/lifecycle/forward.py``
  ``_dequantize`` does, with ``weight_scale`` per tensor (``[]``/``[1]``), per channel
  (``[m, 1]``), per group (``[m, n / g]``) or per block (``[⌈m/b⌉, ⌈n/b⌉]``,
  ``block_structure``); a fused expert tensor ``x`` [E, m, n] takes ``x_scale`` [E, ...]
  likewise. ``input_scale`` (activations) is consumed too.
* **MXFP4** (gpt-oss, ``quant_method = "mxfp4"``): ``x_blocks`` U8 ``[E, R, G, 16]`` (two
  e2m1 values per byte: the low nibble is the even entry, the high nibble the odd one) and
  ``x_scales`` U8 ``[E, R, G]`` (e8m0 exponents with bias 127), groups of 32 along the last
  axis; decoded as transformers' ``integrations/mxfp4.py`` ``convert_moe_packed_tensors``:
  ``ldexp(lut[nibble], scale − 127)`` reshaped to ``[E, R, G·32]`` and transposed to
  ``[E, G·32, R]``, the layout of the bf16 ``x`` of ``GptOssExperts`` (``gate_up_proj``
  ``[E, H, 2I]``, ``down_proj`` ``[E, I, H]``). The decoded tensor is named ``x``.

Named but not decoded (the skip reason says which): GPTQ / AWQ (``qweight``, ``qzeros``,
``scales``, ``g_idx``), bitsandbytes 4-bit (``weight.absmax``, ``quant_map``, ``quant_state``)
and int8 (``SCB``), compressed-tensors ``pack-quantized`` (``weight_packed``). A float tensor
is compared whatever siblings it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opdgeo.errors import QuantizationError
from opdgeo.io.checkpoint import Checkpoint, TensorInfo
from opdgeo.io.decoded import Decoded, annotate
from opdgeo.io.dtypes import FLOAT_DTYPES, TORCH_DTYPES

if TYPE_CHECKING:
    import torch

FP8_FORMATS = {"F8_E4M3": (3, -6, "e4m3"), "F8_E5M2": (2, -14, "e5m2")}
"""safetensors dtype -> (mantissa bits, smallest normal exponent, name); the torch dtype is
:data:`~opdgeo.io.dtypes.TORCH_DTYPES`'s."""
FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)
"""e2m1 code -> value (sign bit 3), as transformers' ``FP4_VALUES``."""
FP4_HALF_STEPS = (0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0) * 2
"""Half the e2m1 spacing at each code: 0.5 below 2, 1 in [2, 4), 2 from 4, halved."""
MXFP4_GROUP = 32
MXFP4_BIAS = 127
KNOWN_METHODS = {
    "fp8", "mxfp4", "compressed-tensors", "gptq", "awq", "bitsandbytes", "fbgemm_fp8",
}  # fmt: skip
"""``quantization_config.quant_method`` values this module decodes or names."""

_UNDECODED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (".qweight", "GPTQ/AWQ packed int4 (qweight/qzeros/scales)", (".qzeros", ".scales", ".g_idx")),
    (".weight_packed", "compressed-tensors pack-quantized int4",
     (".weight_scale", ".weight_shape", ".weight_zero_point", ".weight_g_idx")),
    (".weight.absmax", "bitsandbytes 4-bit (nf4/fp4)",
     (".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map",
      ".weight.quant_state.bitsandbytes__nf4", ".weight.quant_state.bitsandbytes__fp4")),
    (".SCB", "bitsandbytes int8 (LLM.int8)", (".weight_format",)),
)  # fmt: skip
"""(marker suffix, format, sibling suffixes): the marker's stem names the module; the
module's ``weight`` (when not float) and the siblings are skipped naming the format."""


def stored(info: TensorInfo, raw: torch.Tensor) -> torch.Tensor:
    """The stored tensor ``raw`` (what the reader returned: typed floats or bytes) as its
    own dtype and shape."""
    if info.dtype in FLOAT_DTYPES:
        return raw
    return raw.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)


def _expand(scale: torch.Tensor, block: tuple[int, int], shape: tuple[int, ...]) -> torch.Tensor:
    """A scale grid repeated to ``shape`` (the last two axes; edge blocks cut)."""
    if scale.numel() == 1:  # per tensor, whatever the leading (expert) axes
        return scale.float().reshape([1] * len(shape)).expand(shape)
    m, n = shape[-2], shape[-1]
    grid = scale.float().reshape(*shape[:-2], -(-m // block[0]), -(-n // block[1]))
    if grid.shape[-2:] == (1, 1):
        return grid.expand(shape)
    return grid.repeat_interleave(block[0], dim=-2)[..., :m, :].repeat_interleave(block[1], dim=-1)[
        ..., :n
    ]


def _fp8_half_step(q: torch.Tensor, fmt: str) -> torch.Tensor:
    """Half the spacing of the fp8 grid at each stored value (at scale 1)."""
    import torch  # as every decoder: only when weights are read

    mantissa, emin, _ = FP8_FORMATS[fmt]
    exponent = torch.floor(torch.log2(q.float().abs())).clamp(min=emin)
    return torch.exp2(exponent - mantissa - 1)


def _half_step(
    codes: torch.Tensor, dtype: str, scale: torch.Tensor, block: tuple[int, int], shape: Any
) -> torch.Tensor:
    """Half the step at each entry of ``codes`` under ``scale``: fp8 spacing, or 1 (integers)."""
    grid = _expand(scale, block, shape).abs()
    if dtype in FP8_FORMATS:
        return grid * _fp8_half_step(codes, dtype).reshape(shape)
    return grid * 0.5


@dataclass(frozen=True)
class ScaledGrid:
    """``W = (q − zero) · scale`` with one scale per ``block`` of the last two axes."""

    parts: tuple[TensorInfo, ...]
    """(weight[, scale[, zero point]]); no scale means a scale of 1."""
    method: str
    block: tuple[int, int]

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        import torch

        weight = stored(self.parts[0], parts[0])
        scale = stored(self.parts[1], parts[1]) if len(parts) > 1 else torch.ones(1)
        shape = self.parts[0].shape
        grid_shape = shape if len(shape) >= 2 else (1, math.prod(shape))
        out = weight.float().reshape(grid_shape)  # one float32 buffer, scaled in place
        if len(parts) > 2:
            out -= _expand(stored(self.parts[2], parts[2]), self.block, grid_shape)
        out *= _expand(scale, self.block, grid_shape)
        dtype, block = self.parts[0].dtype, self.block

        def half_step() -> torch.Tensor:  # recomputed from the 1-byte codes and small scales
            return _half_step(weight, dtype, scale, block, grid_shape).reshape(shape)

        def half_step_at(index: int) -> torch.Tensor:  # expert ``index`` of [E, m, n] alone
            own = scale if scale.numel() == 1 else scale.reshape(shape[0], -1)[index]
            return _half_step(weight.reshape(shape)[index], dtype, own, block, shape[1:])

        at = half_step_at if len(shape) == 3 else None
        return annotate(out.reshape(shape), Decoded(self.method, half_step, at))


@dataclass(frozen=True)
class Mxfp4:
    """gpt-oss MXFP4 blocks and e8m0 scales (see the module docstring)."""

    parts: tuple[TensorInfo, ...]
    method: str = "mxfp4"

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        import torch

        blocks, scales = (stored(i, t) for i, t in zip(self.parts, parts, strict=True))
        lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
        out = _mx_layout(_mx_values(blocks, scales, lut))

        def half_step() -> torch.Tensor:  # recomputed from the packed codes
            return _mx_layout(_mx_values(blocks, scales, torch.tensor(FP4_HALF_STEPS)))

        def half_step_at(index: int) -> torch.Tensor:  # one expert's codes only
            one = slice(index, index + 1)
            return _mx_layout(_mx_values(blocks[one], scales[one], torch.tensor(FP4_HALF_STEPS)))[0]

        at = half_step_at if blocks.dim() == 4 else None
        return annotate(out, Decoded(self.method, half_step, at))


def _mx_values(blocks: torch.Tensor, scales: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``table[code] · 2^(scale − 127)`` per entry, [..., G, 32]: the low nibble of each byte
    is the even entry, the high nibble the odd one (convert_moe_packed_tensors)."""
    import torch

    values = torch.empty(*blocks.shape[:-1], 32, dtype=torch.float32)
    values[..., 0::2] = table[(blocks & 0x0F).long()]
    values[..., 1::2] = table[(blocks >> 4).long()]
    exponent = scales.to(torch.int32) - MXFP4_BIAS
    return torch.ldexp(values, exponent.unsqueeze(-1), out=values)


def _mx_layout(values: torch.Tensor) -> torch.Tensor:
    """[*prefix, R, G, 32] -> [*prefix, R, G·32], transposed to [E, G·32, R] when there is an
    expert axis (convert_moe_packed_tensors ends with ``out.transpose(1, 2)``)."""
    out = values.flatten(-2)
    return out.transpose(1, 2).contiguous() if out.dim() == 3 else out


def _block_hint(config: dict[str, Any]) -> tuple[int, int] | None:
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    size = qc.get("weight_block_size")
    if size is None:
        groups = qc.get("config_groups")
        if isinstance(groups, dict):
            for group in groups.values():
                weights = group.get("weights") if isinstance(group, dict) else None
                if isinstance(weights, dict) and weights.get("block_structure"):
                    size = weights["block_structure"]
    if (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and v > 0 for v in size)
    ):
        return size[0], size[1]
    return None


def _grid_block(
    where: str, weight: TensorInfo, scale: TensorInfo, hint: tuple[int, int] | None
) -> tuple[int, int]:
    """Rows x columns of the weight that one scale entry covers (QuantizationError if the
    scale's shape fits no layout)."""
    shape = weight.shape
    m, n = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, math.prod(shape))
    if math.prod(scale.shape) == 1:
        return m, n  # per tensor
    lead = shape[:-2]
    grid = scale.shape[len(lead) :] if scale.shape[: len(lead)] == lead else None
    if grid is not None and len(grid) == 1:
        grid = (grid[0], 1)
    if grid is not None and len(grid) == 2:
        sm, sn = grid
        candidates = [hint or (128, 128)]
        if sm == m and sn and n % sn == 0:
            candidates.insert(0, (1, n // sn))  # per channel (sn = 1) or per group
        for bm, bn in candidates:
            if sm == -(-m // bm) and sn == -(-n // bn):
                return bm, bn
    raise QuantizationError(
        f"{where}: scale {scale.name!r} has shape {list(scale.shape)}, which fits no "
        f"quantization layout of weight {weight.name!r} {list(shape)} (per tensor, per "
        f"channel [{m}, 1], per group [{m}, n/g], or blocks of {hint or (128, 128)})"
    )


def _method(config: dict[str, Any]) -> str | None:
    qc = config.get("quantization_config")
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    return str(method) if method is not None else None


@dataclass
class Found:
    """What :func:`find` reads from a checkpoint's names, dtypes and shapes."""

    decoders: dict[str, ScaledGrid | Mxfp4]
    consumed: dict[str, str]
    """Stored tensors not compared, with the reason."""


def find(ckpt: Checkpoint) -> Found:
    """The quantized tensors of ``ckpt`` and their decoders (headers only)."""
    tensors, where = ckpt.tensors, ckpt.label
    decoders: dict[str, ScaledGrid | Mxfp4] = {}
    consumed: dict[str, str] = {}
    hint = _block_hint(ckpt.config)
    for name in tensors:  # first the formats that are named but not decoded
        for marker, fmt, siblings in _UNDECODED:
            if name.endswith(marker):
                stem = name.removesuffix(marker)
                reason = f"{fmt} is not decoded"
                for other in (marker, *siblings, ".weight"):
                    part = tensors.get(stem + other)
                    if part is not None and not (other == ".weight" and part.is_float):
                        consumed[part.name] = reason
    for name, info in tensors.items():
        if name in consumed:
            continue
        if name.endswith("_blocks") and (scales := tensors.get(name[:-7] + "_scales")):
            if (
                info.dtype != "U8"
                or scales.dtype != "U8"
                or info.shape[-1:] != (16,)
                or (scales.shape != info.shape[:-1])
            ):
                raise QuantizationError(
                    f"{where}: MXFP4 {name!r} {info.dtype} {list(info.shape)} with scales "
                    f"{scales.dtype} {list(scales.shape)}: expected U8 [..., G, 16] blocks and "
                    "U8 [..., G] scales"
                )
            decoders[name[:-7]] = Mxfp4((info, scales))
            consumed[name] = consumed[scales.name] = f"MXFP4 part of {name[:-7]} (decoded)"
        elif info.dtype in FP8_FORMATS or (
            info.dtype == "I8" and (name.endswith(".weight") or name + "_scale" in tensors)
        ):
            # x.weight -> x.weight_scale_inv / x.weight_scale; a fused x -> x_scale_inv / x_scale
            # (transformers Fp8Dequantize._scale_pattern_for)
            stem, sep = (name[:-7], ".weight_") if name.endswith(".weight") else (name, "_")
            scale = tensors.get(stem + sep + "scale_inv") or tensors.get(stem + sep + "scale")
            fmt = FP8_FORMATS[info.dtype][2] if info.dtype in FP8_FORMATS else "int8"
            if scale is None:
                if info.dtype == "I8":
                    continue  # an int8 weight without a known scale: skipped as non-float
                block = (
                    (info.shape[-2], info.shape[-1]) if len(info.shape) >= 2 else (1, info.numel)
                )
                decoders[name] = ScaledGrid((info,), f"fp8-{fmt}-unscaled", block)
                continue
            block = _grid_block(where, info, scale, hint)
            layout = _layout_name(info, block)
            parts: tuple[TensorInfo, ...] = (info, scale)
            zero = tensors.get(stem + sep + "zero_point")
            if zero is not None:
                parts = (*parts, zero)
            prefix = "fp8-" if info.dtype in FP8_FORMATS else ""
            decoders[name] = ScaledGrid(parts, f"{prefix}{fmt}-{layout}", block)
            for part in parts[1:]:
                consumed[part.name] = f"quantization scale of {name} (decoded)"
            for extra in (".input_scale", ".input_zero_point", ".output_scale"):
                if stem + extra in tensors:
                    consumed[stem + extra] = "activation quantization scale (not a weight)"
    for name in tensors:
        if name.endswith((".k_scale", ".v_scale", ".kv_scale")):
            consumed[name] = "kv-cache quantization scale (not a weight)"
    method = _method(ckpt.config)
    if method is not None and method not in KNOWN_METHODS and (decoders or _has_integers(ckpt)):
        raise QuantizationError(
            f"{where}: unknown quantization method {method!r} in config.json "
            f"(decoded: fp8, mxfp4, compressed-tensors; named: gptq, awq, bitsandbytes)"
        )
    return Found(decoders, consumed)


def _has_integers(ckpt: Checkpoint) -> bool:
    return any(not i.is_float for i in ckpt.tensors.values())


def _layout_name(weight: TensorInfo, block: tuple[int, int]) -> str:
    shape = weight.shape
    m, n = (shape[-2], shape[-1]) if len(shape) >= 2 else (1, math.prod(shape))
    if block == (m, n):
        return "tensor"
    if block == (1, n):
        return "channel"
    if block[0] == 1:
        return f"group{block[1]}"
    return f"block{block[0]}x{block[1]}"


def dequantized(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with its quantized weights replaced by decoded float32 views (in place)."""
    found = find(ckpt)
    if not found.decoders and not found.consumed:
        return ckpt
    for name, decoder in found.decoders.items():
        weight = decoder.parts[0]
        dtype = "MXFP4" if isinstance(decoder, Mxfp4) else weight.dtype
        shape = _decoded_shape(decoder)
        nbytes = 4 * math.prod(shape)  # what the decoded float32 tensor holds in memory
        ckpt.tensors[name] = TensorInfo(name, dtype, shape, weight.file, weight.start, nbytes)
        ckpt.decoders[name] = decoder
    for name, reason in found.consumed.items():
        if name not in found.decoders:
            ckpt.tensors.pop(name, None)
            ckpt.consumed[name] = reason
    return ckpt


def _decoded_shape(decoder: ScaledGrid | Mxfp4) -> tuple[int, ...]:
    if isinstance(decoder, ScaledGrid):
        return decoder.parts[0].shape
    *prefix, rows, groups, _ = decoder.parts[0].shape
    if len(prefix) == 1:
        return (prefix[0], groups * MXFP4_GROUP, rows)
    return (*prefix, rows, groups * MXFP4_GROUP)


def describe(ckpt: Checkpoint) -> dict[str, str]:
    """For ``inspect``: how each quantization-related tensor is used, by stored name (the
    error itself on every tensor when the layout cannot be decoded)."""
    try:
        found = find(ckpt)
    except QuantizationError as exc:
        return dict.fromkeys(ckpt.tensors, str(exc))
    notes = dict(found.consumed)
    for name, decoder in found.decoders.items():
        notes[decoder.parts[0].name] = f"{decoder.method} -> {name} (float32)"
    return notes
