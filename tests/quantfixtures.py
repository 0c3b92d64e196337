"""Tiny quantized checkpoints and adapters in the real layouts (names and shapes from the
real configs: DeepSeek-V3 / Qwen3-FP8 ``weight_scale_inv`` with ``weight_block_size``
[128, 128]; compressed-tensors ``weight_scale`` / ``input_scale``; gpt-oss
``mlp.experts.gate_up_proj_blocks`` [E, 2I, H/32, 16] and ``_scales`` [E, 2I, H/32]; PEFT
``base_model.model.<module>.lora_A.weight`` [r, in] / ``lora_B.weight`` [out, r])."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

FP8_MAX = 448.0
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp8_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3 weight, float32 scale_inv [ceil(m/b), ceil(n/b)]) as transformers'
    ``Fp8Quantize``: per block scale = amax / 448, q = w / scale; partial edge blocks."""
    m, n = w.shape
    sm, sn = -(-m // block), -(-n // block)
    scale = torch.empty(sm, sn)
    q = torch.empty(m, n, dtype=torch.float8_e4m3fn)
    for i in range(sm):
        for j in range(sn):
            blk = w[i * block : (i + 1) * block, j * block : (j + 1) * block].float()
            s = float(blk.abs().max()) / FP8_MAX or 1.0
            scale[i, j] = s
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = (blk / s).to(
                torch.float8_e4m3fn
            )
    return q, scale


def fp8_dequant_reference(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Entry by entry: W[i, j] = q[i, j] * scale[i // b, j // b] (DeepSeek weight_dequant)."""
    m, n = q.shape
    rows = torch.arange(m) // block
    cols = torch.arange(n) // block
    return q.float() * scale[rows][:, cols]


def fp8_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors per-channel float8: scale [m, 1] = row amax / 448."""
    s = (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (w.float() / s).to(torch.float8_e4m3fn), s


def mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [E, R, C] (C a multiple of 32) to gpt-oss blocks [E, R, C/32, 16] and scales
    [E, R, C/32]: per group of 32, exponent e = ceil(log2(amax / 6)), values rounded to the
    nearest e2m1 code, even entries in the low nibble."""
    e_, r_, c_ = w.shape
    groups = w.float().reshape(e_, r_, c_ // 32, 32)
    amax = groups.abs().amax(dim=-1).clamp(min=2.0**-100)
    exponent = torch.ceil(torch.log2(amax / 6.0))
    scaled = groups / torch.exp2(exponent).unsqueeze(-1)
    idx = (scaled.abs().unsqueeze(-1) - E2M1).abs().argmin(dim=-1)
    code = (idx | ((scaled < 0).long() << 3)).to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks, (exponent + 127).to(torch.uint8)


def mxfp4_reference(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """transformers' convert_moe_packed_tensors, loop for loop (float32 output)."""
    lut = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])  # fmt: skip
    scales = scales.to(torch.int32) - 127
    *prefix, g, b = blocks.shape
    rows = 1
    for d in prefix:
        rows *= d
    rows *= g
    blk = blocks.reshape(rows, b)
    exp = scales.reshape(rows, 1)
    out = torch.empty(rows, b * 2)
    out[:, 0::2] = lut[(blk & 0x0F).long()]
    out[:, 1::2] = lut[(blk >> 4).long()]
    torch.ldexp(out, exp, out=out)
    out = out.reshape(*prefix, g, b * 2).view(*prefix, g * b * 2)
    return out.transpose(1, 2).contiguous()


def save(path: Path, tensors: dict[str, torch.Tensor], config: dict | None = None,
         name: str = "model.safetensors") -> Path:  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / name))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], config: dict | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(path / "adapter_model.safetensors")
    )
    if config is not None:
        full = {"peft_type": "LORA", "base_model_name_or_path": "base", "bias": "none", **config}
        (path / "adapter_config.json").write_text(json.dumps(full))
    return path
