"""Peak memory of MoE comparisons: fused expert tensors against per-expert ones.

A fused expert tensor (``experts.gate_up_proj [E, 2I, H]``) is read whole, once, and sliced
into per-expert views (:mod:`opdgeo.io.experts`), so it is the largest tensor a comparison
holds. This script writes the same tiny-Qwen3-MoE-shaped bf16 model (2 MoE layers, per-expert
matrices ``I x H``) in the per-expert and the fused layout at several expert counts E, runs
``opdgeo.compare`` in a fresh process for every base / tuned layout pair and reports the peak
resident set (VmHWM) against the size of one layer's fused tensors. Fast tier (element-wise
metrics and σ₁): the reads, and so the memory bound, are those of every tier.

    python bench/moe_memory.py --experts 8,64 --hidden 512 --inter 256 --out bench/MOE_MEMORY.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.moe_fixtures import fuse  # noqa: E402

CHILD = """
import sys
import opdgeo
runs = opdgeo.compare(sys.argv[1], [sys.argv[2]], tier="fast", cache=False)
assert runs[0].summary["n_experts"] > 0
status = open("/proc/self/status").read().splitlines()
print([line.split()[1] for line in status if line.startswith("VmHWM:")][0])
"""


def model(experts: int, hidden: int, inter: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(2):
        p = f"model.layers.{layer}.mlp."
        out[p + "gate.weight"] = torch.randn(experts, hidden, generator=gen) * 0.02
        for e in range(experts):
            for part, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                ("down_proj", (hidden, inter))):  # fmt: skip
                out[f"{p}experts.{e}.{part}.weight"] = torch.randn(*shape, generator=gen) * 0.02
    return {k: v.bfloat16() for k, v in out.items()}


def peak_mb(base: Path, tuned: Path) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(base), str(tuned)],
                         capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experts", default="8,64")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.experts.split(",")):
            paths = {}
            for side, seed in (("base", 0), ("tuned", 0)):
                tensors = model(n, args.hidden, args.inter, seed)
                if side == "tuned":
                    tensors = {k: (v.float() * 1.001).bfloat16() for k, v in tensors.items()}
                for layout, data in (("per-expert", tensors), ("fused", fuse(tensors))):
                    d = Path(tmp) / f"{side}-{layout}-{n}"
                    d.mkdir()
                    save_file({k: v.contiguous() for k, v in data.items()},
                              str(d / "model.safetensors"))  # fmt: skip
                    (d / "config.json").write_text('{"model_type": "qwen3_moe"}')
                    paths[side, layout] = d
            layer_mb = 3 * n * args.inter * args.hidden * 2 / 2**20  # gate_up + down, bf16
            for bl in ("per-expert", "fused"):
                for tl in ("per-expert", "fused"):
                    mb = peak_mb(paths["base", bl], paths["tuned", tl])
                    rows.append((n, bl, tl, layer_mb, mb))
                    print(f"E={n} {bl} vs {tl}: fused layer {layer_mb:.1f} MB, peak {mb:.0f} MB",
                          flush=True)  # fmt: skip
    lines = [
        "| E | base | tuned | one layer's fused tensors (MB, per side) | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {n} | {b} | {t} | {lm:.1f} | {mb:.0f} |" for n, b, t, lm, mb in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
