"""Peak memory does not grow with model size: tensors are streamed one pair at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import write_checkpoint

# VmHWM (peak resident set of this process image) rather than ru_maxrss, which Linux carries
# over from the forking parent across exec.
CHILD = """
import sys
from opdgeo import compare_checkpoints
runs = compare_checkpoints(sys.argv[1], [sys.argv[2]])
assert runs[0].summary["n_tensors"] > 0
status = open("/proc/self/status").read().splitlines()
print([line.split()[1] for line in status if line.startswith("VmHWM:")][0])
"""


def model(layers: int, hidden: int = 384, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (hidden, hidden),
            "self_attn.k_proj": (hidden // 2, hidden),
            "self_attn.v_proj": (hidden // 2, hidden),
            "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (2 * hidden, hidden),
            "mlp.up_proj": (2 * hidden, hidden),
            "mlp.down_proj": (hidden, 2 * hidden),
        }
        for name, shape in shapes.items():
            out[p + name + ".weight"] = (0.02 * torch.randn(shape, generator=gen)).bfloat16()
    return out


def peak_rss_kb(tmp: Path, layers: int) -> int:
    base = model(layers)
    tuned = {k: (v.float() * 1.001).bfloat16() for k, v in base.items()}
    a = write_checkpoint(tmp / f"base{layers}", base, shards=2)
    b = write_checkpoint(tmp / f"tuned{layers}", tuned, shards=3)
    del base, tuned
    out = subprocess.run([sys.executable, "-c", CHILD, str(a), str(b)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_is_independent_of_model_size(tmp_path: Path) -> None:
    small = peak_rss_kb(tmp_path, layers=2)  # 2.7 M params, 5 MB bf16 per checkpoint
    large = peak_rss_kb(tmp_path, layers=16)  # 21 M params, 42 MB bf16 per checkpoint
    # Loading both large checkpoints would add >= 84 MB (bf16) or 170 MB (float32).
    grown_mb = (large - small) / 1024
    assert grown_mb < 25, f"peak RSS grew by {grown_mb:.1f} MB from 2 to 16 layers"
