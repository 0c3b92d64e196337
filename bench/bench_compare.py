"""Benchmark `opdgeo compare` against a plain read of the files and a naive SVD script.

Generates Qwen2-shaped bf16 checkpoints (spike + Marchenko-Pastur bulk spectra, an RLVR-like
update stored in bf16) at several sizes, then measures for each size, in the same run:

* ``read``   - sequential read of both checkpoints' files (the I/O floor);
* ``opdgeo`` - ``opdgeo compare`` (default settings: float64 Gram + eigh) in a child process;
* ``naive``  - what a user writes by hand: load both state dicts fully, then per 2-D matrix
  ``torch.linalg.svd`` in float32 of W0 and W1 for angles and NSS.

Wall time and peak RSS (VmHWM of the child process) are reported, with ratios against the
naive script. Results go to a markdown table and a CSV next to it.

    python bench/bench_compare.py --sizes tiny,small --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo.synthetic import base_matrix  # noqa: E402

# hidden, intermediate, kv width, layers, vocab
SIZES = {
    "tiny": (256, 704, 128, 2, 4096),
    "small": (896, 4864, 128, 4, 32000),
    "medium": (896, 4864, 128, 24, 151936),  # Qwen2-0.5B shapes, ~0.5 B params
}

NAIVE = r"""
import sys, time, torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
for name, w0 in a.items():
    if w0.dim() != 2 or "embed" in name or "lm_head" in name:
        continue
    w0, w1 = w0.float(), b[name].float()
    u0, s0, v0 = torch.linalg.svd(w0, full_matrices=False)
    u1, s1, v1 = torch.linalg.svd(w1, full_matrices=False)
    k = max(1, min(w0.shape) // 8)
    torch.linalg.svdvals(u0[:, :k].T @ u1[:, :k])
    float((s1 - s0).norm() / s0.norm())
    float(((w1.bfloat16() == w0.bfloat16()).float().mean()))
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""

OPDGEO = r"""
import sys
from opdgeo import compare_checkpoints
compare_checkpoints(sys.argv[1], [sys.argv[2]])
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""


def make_pair(size: str, folder: Path, seed: int = 0) -> tuple[Path, Path, int, int]:
    """Write base/tuned safetensors for ``size``; return paths, parameter count, largest numel."""
    hidden, inter, kv, layers, vocab = SIZES[size]
    gen = torch.Generator().manual_seed(seed)
    base: dict[str, torch.Tensor] = {}
    tuned: dict[str, torch.Tensor] = {}

    def add(name: str, w: torch.Tensor) -> None:
        w0 = w.to(torch.bfloat16)
        noise = torch.randn(w.shape, generator=gen, dtype=torch.float32) * 2e-5
        base[name] = w0
        tuned[name] = (w0.float() + noise).to(torch.bfloat16)

    add("model.embed_tokens.weight", (0.02 * torch.randn(vocab, hidden, generator=gen)))
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj, (m, n) in {
            "self_attn.q_proj": (hidden, hidden),
            "self_attn.k_proj": (kv, hidden),
            "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, hidden),
            "mlp.gate_proj": (inter, hidden),
            "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter),
        }.items():
            add(p + proj + ".weight", base_matrix(m, n, gen).float())
        add(p + "input_layernorm.weight", torch.ones(hidden))
        add(p + "post_attention_layernorm.weight", torch.ones(hidden))
    add("model.norm.weight", torch.ones(hidden))
    add("lm_head.weight", 0.02 * torch.randn(vocab, hidden, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "base.safetensors", folder / "tuned.safetensors"
    save_file(base, str(a))
    save_file(tuned, str(b))
    n_params = sum(t.numel() for t in base.values())
    largest = max(t.numel() for t in base.values())
    return a, b, n_params, largest


def timed_child(script: str, *args: str) -> tuple[float, float]:
    """Run ``script`` in a fresh interpreter; return (seconds, peak RSS in MB)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, int(out.stdout.strip().splitlines()[-1]) / 1024


def read_files(*paths: Path) -> tuple[float, float]:
    """Sequentially read ``paths`` (1 MiB chunks); return (seconds, GB/s)."""
    total = 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    seconds = time.perf_counter() - start
    return seconds, total / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--skip-naive", action="store_true", help="only read + opdgeo")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="opdgeo-bench-") as tmp:
        for size in args.sizes.split(","):
            a, b, n_params, largest = make_pair(size, Path(tmp) / size)
            nbytes = a.stat().st_size + b.stat().st_size
            read_s, read_gbs = read_files(a, b)
            ours_s, ours_mb = timed_child(OPDGEO, str(a), str(b))
            naive_s, naive_mb = (float("nan"), float("nan"))
            if not args.skip_naive:
                naive_s, naive_mb = timed_child(NAIVE, str(a), str(b))
            rows.append({
                "size": size, "params": n_params, "pair_bytes_MB": round(nbytes / 1e6, 1),
                "largest_tensor_f32_MB": round(largest * 4 / 1e6, 1),
                "read_s": round(read_s, 3), "read_GBps": round(read_gbs, 2),
                "opdgeo_s": round(ours_s, 2), "opdgeo_peak_MB": round(ours_mb),
                "naive_s": round(naive_s, 2), "naive_peak_MB": round(naive_mb, 1),
                "speedup_vs_naive": round(naive_s / ours_s, 2),
                "peak_ratio_naive_over_opdgeo": round(naive_mb / ours_mb, 2),
            })  # fmt: skip
            print(rows[-1], file=sys.stderr)
            a.unlink()
            b.unlink()
    write_results(Path(args.out), rows)


def write_results(out: Path, rows: list[dict[str, object]]) -> None:
    machine = (
        f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )
    cols = list(rows[0])
    lines = [
        "# opdgeo benchmark",
        "",
        f"Machine: {machine}. Generated by `make bench` (bench/bench_compare.py).",
        "Times are wall seconds of a fresh interpreter (imports included); peak = VmHWM.",
        "`naive` loads both state dicts and runs float32 `torch.linalg.svd` per matrix.",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
    ]
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
