"""Micro-benchmark of opdgeo's linear-algebra and scan kernels against today's routes.

Every kernel is timed against the route it replaces in the same process on the same data,
the two routes alternating, ``--repeats`` times each; the table gives the best and the median
wall time, their ratio, and the largest difference between the results. The 1-minute load
average is recorded before and after each section: on a shared machine the numbers are only
comparable within a row. Writes a markdown report (default bench/KERNELS.md).

    python bench/kernels.py                          # all sections, ~10 min on 2 idle cores
    python bench/kernels.py --sections scan,select   # a subset
    python bench/kernels.py --big                    # adds the 3584 x 18944 Gram (Qwen2.5-7B)

Sections: eig (all eigenvalues + top-k vectors vs full eigh), accuracy (per-metric error vs
float64 SVD for both Gram routes), select (mask thresholds: radix select vs kthvalue), scan
(element-wise statistics: scan_pair vs TensorPair.elementwise), threads (1 vs 2 threads per
operation size), demo (the demo family's analysis with today's and the new kernels).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scipy.linalg.lapack  # noqa: F401 - loaded first, so threads() limits its BLAS too
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo import linalg  # noqa: E402
from opdgeo import pair as pair_module  # noqa: E402
from opdgeo.config import Config, Settings  # noqa: E402
from opdgeo.linalg_eig import _eigh_top_cpu, eigh_top  # noqa: E402
from opdgeo.linalg_select import fraction_threshold_f32  # noqa: E402
from opdgeo.scan import scan_pair  # noqa: E402
from opdgeo.synthetic import base_matrix  # noqa: E402
from opdgeo.threads import SMALL_OP_FLOPS, _blas_pools  # noqa: E402


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch and BLAS (scipy's OpenBLAS) on ``n`` threads for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    pools = _blas_pools()
    try:
        if pools is not None:
            with pools.limit(limits=n):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(before)


def alternate(
    routes: dict[str, Callable[[], Any]], repeats: int, warm_up: bool = True
) -> dict[str, list[float]]:
    """Wall seconds of each route, run in turn ``repeats`` times (after one warm-up each)."""
    for f in routes.values() if warm_up else ():
        f()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeats):
        for name, f in routes.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def ms(ts: list[float]) -> str:
    return f"{min(ts) * 1e3:.1f} / {statistics.median(ts) * 1e3:.1f}"


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, *text: str) -> None:
        self.lines.extend(text)
        print(*text, sep="\n", flush=True)

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |")
        for r in rows:
            self.add("| " + " | ".join(r) + " |")
        self.add("")


def section(rep: Report, title: str) -> float:
    start = load()
    rep.add(f"## {title}", "", f"Load average (1 min) at start: {start:.2f}.", "")
    return start


def end(rep: Report) -> None:
    rep.add(f"Load average (1 min) at end: {load():.2f}.", "")


# -- eig -----------------------------------------------------------------------------------------

EIG_SHAPES = [(256, 256), (896, 4864), (1536, 1536), (1536, 8960)]
BIG_SHAPE = (3584, 18944)


def _gram_of(m: int, n: int, seed: int) -> torch.Tensor:
    w = base_matrix(m, n, torch.Generator().manual_seed(seed)).float()
    return linalg.gram(w if m <= n else w.T)


def bench_eig(rep: Report, repeats: int, big: bool) -> None:
    section(rep, "eig: all eigenvalues + top-k eigenvectors of the float64 Gram")
    rep.add(
        "Gram G = W Wᵀ (float64) of the smaller side of a `base_matrix` W (spikes over a "
        "Marchenko-Pastur bulk, as the bench); k = min(m, n)/8 (the default angle_k and the "
        "largest k a metric needs). `eigh`: torch.linalg.eigh (all vectors, MKL syevd); "
        "`top-k`: opdgeo.linalg_eig.eigh_top (scipy dsytrd + dsterf + dstemr, torch ormqr); "
        "threads forced to 1 or 2 for both torch and OpenBLAS (eigh_top's own "
        "`threads_for` and its full-eigh switch below n = 224 bypassed). ms: best / median of "
        f"{repeats} (half as many, without warm-up, for n > 1536). Errors of top-k against "
        "eigh: eigenvalues max |Δλ| / λ_max; vectors: the "
        "largest principal-angle sine between the two top-k subspaces, and the "
        "orthogonality ‖VᵀV − I‖_max of each.",
        "",
    )
    rows = []
    shapes = EIG_SHAPES + ([BIG_SHAPE] if big else [])
    for m, n in shapes:
        g = _gram_of(m, n, seed=m + n)
        size = g.shape[0]
        k = min(512, size // 8)
        with threads(1):
            ref_vals, ref_vecs = torch.linalg.eigh(g)
        ref_vals, ref_vecs = ref_vals.flip(0), ref_vecs.flip(1)[:, :k]
        top = eigh_top(g, k)
        val_err = float((top.values - ref_vals).abs().max() / ref_vals[0])
        overlap = torch.linalg.svdvals(top.vectors.T @ ref_vecs)
        sine = math.sqrt(max(0.0, 1.0 - float(overlap.min()) ** 2))
        eye = torch.eye(k, dtype=torch.float64)
        orth_top = float((top.vectors.T @ top.vectors - eye).abs().max())
        orth_ref = float((ref_vecs.T @ ref_vecs - eye).abs().max())
        reps = repeats if size <= 1536 else max(1, repeats // 2)
        for nthreads in (1, 2):
            with threads(nthreads):
                t = alternate(
                    {
                        "eigh": lambda g=g: torch.linalg.eigh(g),
                        "top": lambda g=g, k=k: _eigh_top_cpu(g, k, False),
                    },
                    reps,
                    warm_up=size <= 1536,
                )
            rows.append(
                [
                    f"{m}x{n}",
                    f"{size}",
                    f"{k}",
                    f"{nthreads}",
                    ms(t["eigh"]),
                    ms(t["top"]),
                    f"{min(t['eigh']) / min(t['top']):.2f}x",
                    f"{val_err:.1e}",
                    f"{sine:.1e}",
                    f"{orth_top:.1e} / {orth_ref:.1e}",
                    f"{load():.1f}",
                ]
            )
    rep.table(
        [
            "W shape",
            "Gram n",
            "k",
            "threads",
            "eigh ms",
            "top-k ms",
            "speed-up (best)",
            "max |Δλ|/λ₁",
            "max sin angle",
            "orth top-k / eigh",
            "load",
        ],
        rows,
    )
    end(rep)


# -- accuracy ------------------------------------------------------------------------------------


def _bench_pair(m: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """W0 and W1 as bench/bench_compare.py makes them (bf16-rounded, float32)."""
    w0 = base_matrix(m, n, gen).float().to(torch.bfloat16).float()
    delta = torch.randn(m, n, generator=gen) * 1.5e-5
    u = torch.randn(m, 4, generator=gen) / math.sqrt(m)
    v = torch.randn(4, n, generator=gen) / math.sqrt(n)
    delta += (u @ v) * (1.5e-5 * math.sqrt(m * n / 4))
    return w0, (w0 + delta).to(torch.bfloat16).float()


def _metrics(
    w0: torch.Tensor, w1: torch.Tensor, method: str, exact: torch.Tensor | None = None
) -> dict[str, float]:
    """The spectral metrics' formulas (opdgeo/metrics/spectral.py) on one route's spectra;
    with ``exact`` (W0's exact top-k0 left vectors) also the largest principal-angle sine
    between this route's top-k0 left subspace of W0 and the exact one."""
    m, n = w0.shape
    ka = min(512, max(1, min(m, n) // 8))
    ke = max(1, int(0.1 * min(m, n)))
    k0 = max(ka, ke, min(64, math.ceil(min(m, n) / 16)))
    s0, s1 = linalg.spectrum(w0, k0, method), linalg.spectrum(w1, ka, method)
    sine = 0.0
    if exact is not None:
        cos = float(torch.linalg.svdvals(s0.u.T @ exact).min())
        sine = math.sqrt(max(0.0, 1.0 - cos * cos))
    left = torch.rad2deg(linalg.principal_angles(s0.u[:, :ka], s1.u[:, :ka]))
    right = torch.rad2deg(linalg.principal_angles(s0.v[:, :ka], s1.v[:, :ka]))
    d = w1 - w0
    total = float(d.double().square().sum())
    u, v = s0.u[:, :ke], s0.v[:, :ke]
    pl, pr = linalg.project_left(d, u), linalg.project_right(d, v)
    return {
        "angle_left_mean_deg": float(left.mean()),
        "angle_left_max_deg": float(left.max()),
        "angle_right_mean_deg": float(right.mean()),
        "angle_right_max_deg": float(right.max()),
        "nss": float(torch.linalg.vector_norm(s1.s - s0.s) / torch.linalg.vector_norm(s0.s)),
        "principal_energy": float(torch.linalg.matrix_norm(pl @ v)) ** 2 / total,
        "principal_energy_left": float(torch.linalg.matrix_norm(pl)) ** 2 / total,
        "principal_energy_right": float(torch.linalg.matrix_norm(pr)) ** 2 / total,
        "subspace_sine": sine,
    }


ACC_SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (256, 256), (704, 256)]


def bench_accuracy(rep: Report) -> None:
    section(rep, "accuracy: per-metric error against the float64 SVD (as bench table D)")
    rep.add(
        "Pairs made as bench/bench_compare.py makes them (W0 `base_matrix` in bf16; W1 = "
        "bf16(W0 + noise of RMS 1.5e-5 + a rank-4 update)), at the `small` size's matrix "
        f"shapes and the tiny size's: {', '.join(f'{m}x{n}' for m, n in ACC_SHAPES)}. Max "
        "relative error over those matrices against `spectrum(..., 'svd')`, for today's "
        "Gram route (`gram-eigh`: full eigh) and the new one (`gram-mrrr`). Table D of "
        "bench/RESULTS.md (standard vs exact, small size) for reference. `subspace_sine`: "
        "the largest principal-angle sine between W0's top-k0 left singular subspace from the "
        "route and from the SVD (absolute; k0 = the largest k a metric uses): the k0-th gap "
        "of a Marchenko-Pastur bulk is tiny, so this subspace is ill-conditioned for every "
        "route, which the metrics (sums over many angles, energies) do not inherit.",
        "",
    )
    gen = torch.Generator().manual_seed(0)
    worst: dict[tuple[str, str], float] = {}
    for m, n in ACC_SHAPES:
        w0, w1 = _bench_pair(m, n, gen)
        ref = _metrics(w0, w1, "svd")
        k0 = max(min(512, max(1, min(m, n) // 8)), max(1, int(0.1 * min(m, n))))
        exact_u = linalg.spectrum(w0, k0, "svd").u
        for method in ("gram-eigh", "gram-mrrr"):
            got = _metrics(w0, w1, method, exact_u)
            worst[(method, "subspace_sine")] = max(
                worst.get((method, "subspace_sine"), 0.0), got.pop("subspace_sine")
            )
            for key, exact in ref.items():
                if key == "subspace_sine":
                    continue
                err = abs(got[key] - exact) / abs(exact) if exact else abs(got[key])
                worst[(method, key)] = max(worst.get((method, key), 0.0), err)
    table_d = {
        "angle_left_mean_deg": "6.75e-12",
        "angle_left_max_deg": "2.40e-11",
        "angle_right_mean_deg": "5.78e-12",
        "angle_right_max_deg": "2.27e-11",
        "nss": "8.04e-12",
        "principal_energy": "2.28e-14",
        "principal_energy_left": "3.81e-15",
        "principal_energy_right": "4.65e-15",
    }
    table_d["subspace_sine"] = "-"
    rows = [
        [key, f"{worst[('gram-eigh', key)]:.2e}", f"{worst[('gram-mrrr', key)]:.2e}", table_d[key]]
        for key in table_d
    ]
    rep.table(["metric", "gram (eigh) max rel err", "gram-mrrr max rel err", "table D"], rows)
    end(rep)


# -- select ----------------------------------------------------------------------------------------


def _kth_route(x: torch.Tensor, frac: float, largest: bool) -> tuple[float, int]:
    """Today's route for float32 values that are not bf16: kthvalue + a strict count."""
    flat = x.reshape(-1)
    n = flat.numel()
    size = int(round(frac * n))
    if largest:
        thr = torch.kthvalue(flat, n - size + 1).values
        return float(thr), size - linalg.count(flat > thr)
    thr = torch.kthvalue(flat, size).values
    return float(thr), size - linalg.count(flat < thr)


def _bf16_hist_route(x: torch.Tensor, frac: float, largest: bool) -> tuple[float, int]:
    """Today's route for float32 values that are exactly bf16 (|W0|): the bf16 histogram."""
    return linalg.fraction_threshold(x.to(torch.bfloat16), frac, largest)


def today_threshold(x: torch.Tensor, frac: float, largest: bool) -> tuple[float, int]:
    """``fraction_threshold`` as it was before the radix select (for the demo variants)."""
    flat = x.reshape(-1)
    size = int(round(frac * flat.numel()))
    if not 0 < size < flat.numel():
        return linalg.fraction_threshold(x, frac, largest)
    if linalg._bf16_magnitude_bits(flat) is not None and bool((flat >= 0).all()):
        return _bf16_hist_route(flat, frac, largest)
    return _kth_route(flat, frac, largest)


def bench_select(rep: Report, repeats: int) -> None:
    section(rep, "select: exact mask thresholds (alpha = 0.3) on one thread")
    rep.add(
        "The principal mask thresholds |U_r Σ_r V_rᵀ| (float32, rank 64) and the low-magnitude "
        "mask |W0| (float32 holding bf16 values) of Qwen2-1.5B MLP-shaped matrices. Today: "
        "kthvalue for the reconstruction, the bf16 histogram for |W0| (it first converts to "
        "bf16). New: `fraction_threshold` = radix select on float32 bit patterns "
        "(opdgeo.linalg_select). `equal`: the (threshold, ties) pairs are identical. ms: "
        f"best / median of {repeats}, 1 thread.",
        "",
    )
    rows = []
    with threads(1):
        for m, n in ((1536, 8960), (8960, 1536), (896, 4864)):
            w0 = base_matrix(m, n, torch.Generator().manual_seed(m)).float()
            sp = linalg.spectrum(w0, 64, "gram-mrrr")
            recon = ((sp.u[:, :64] * sp.s[:64]).float() @ sp.v[:, :64].float().T).abs_()
            low = w0.to(torch.bfloat16).float().abs()
            for label, x, old_name, old in (
                ("principal |U Σ Vᵀ|", recon, "kthvalue", _kth_route),
                ("low-magnitude |W0|", low, "bf16 histogram", _bf16_hist_route),
            ):
                for largest in (True, False):
                    size = int(round(0.3 * x.numel()))
                    new_r = fraction_threshold_f32(x.reshape(-1), size, largest)
                    old_r = old(x, 0.3, largest)
                    kth_r = _kth_route(x, 0.3, largest)
                    t = alternate(
                        {
                            "old": lambda x=x, old=old, largest=largest: old(x, 0.3, largest),
                            "new": lambda x=x, largest=largest: linalg.fraction_threshold(
                                x, 0.3, largest
                            ),
                        },
                        repeats,
                    )
                    rows.append(
                        [
                            f"{m}x{n}",
                            label,
                            "top" if largest else "bottom",
                            old_name,
                            ms(t["old"]),
                            ms(t["new"]),
                            f"{min(t['old']) / min(t['new']):.2f}x",
                            "yes" if new_r == old_r == kth_r else "NO",
                            f"{load():.1f}",
                        ]
                    )
    rep.table(
        ["shape", "mask", "side", "today", "today ms", "radix ms", "speed-up", "equal", "load"],
        rows,
    )
    end(rep)


# -- scan ----------------------------------------------------------------------------------------


def _scan_kernel(kernel: str) -> Callable[[torch.Tensor, torch.Tensor, int], Any]:
    """scan_pair on the torch kernel (OPDGEO_JIT=0) or on numba's."""

    def go(b: torch.Tensor, t: torch.Tensor, workers: int) -> Any:
        os.environ["OPDGEO_JIT"] = "0" if kernel == "torch" else "1"
        try:
            return scan_pair(b, t, 1e-5, workers)
        finally:
            os.environ.pop("OPDGEO_JIT", None)

    return go


def bench_scan(rep: Report, repeats: int) -> None:
    section(rep, "scan: element-wise statistics of a bf16 pair")
    rep.add(
        "bf16 pairs (W0 ~ N(0, 0.02²), W1 = bf16(W0 + N(0, (1.5e-5)²)): most entries "
        "bit-identical, as an RLVR update) already in memory, so this is the compute side "
        "of the scan tier (reading is separate). `torch`: `opdgeo.scan.scan_pair`'s torch "
        "kernel (`OPDGEO_JIT=0`: 9 torch operations per 32K block, run inline). `numba`: its "
        "compiled kernel (`opdgeo.scan_jit`, the `fast` extra: one vectorised loop, float64 "
        "sums of exact squares), compiled or loaded from numba's cache before timing. Both "
        "with `workers` Python threads. GB/s = checkpoint bytes of both tensors / wall "
        f"seconds (best of {repeats}, the two alternating); `CPU GB/s` = the same over "
        "process CPU time (what one would get without other processes on the cores). "
        "`counts`: every count and the max equal; `sum err`: the largest relative difference "
        "of ‖ΔW‖_F², ‖W0‖_F² from a float64 sum (numba / torch).",
        "",
    )
    kernels = {"torch": _scan_kernel("torch"), "numba": _scan_kernel("numba")}
    if scan_jit_missing():
        rep.add("numba is not installed (`pip install 'opdgeo[fast]'`): section skipped.", "")
        end(rep)
        return
    rows = []
    for m, n in ((8960, 1536), (151936 // 4, 1536)):
        g = torch.Generator().manual_seed(m)
        b = (torch.randn(m, n, generator=g) * 0.02).to(torch.bfloat16)
        t = (b.float() + torch.randn(m, n, generator=g) * 1.5e-5).to(torch.bfloat16)
        gb = 4 * m * n / 1e9
        b64, t64 = b.double(), t.double()
        exact_d = float((t64 - b64).square().sum())
        exact_b = float(b64.square().sum())
        del b64, t64
        for workers in (1, 2):
            got = {name: f(b, t, workers) for name, f in kernels.items()}  # warm-up
            fields = ("unchanged_bf16", "le_atol", "lt_atol", "exact_equal", "nonfinite")
            same = all(
                getattr(got["torch"], f) == getattr(got["numba"], f)
                for f in (*fields, "max_abs_delta")
            )
            errors = [
                max(abs(s.delta_sq - exact_d) / exact_d, abs(s.base_sq - exact_b) / exact_b)
                for s in (got["numba"], got["torch"])
            ]
            wall: dict[str, list[float]] = {name: [] for name in kernels}
            cpu: dict[str, list[float]] = {name: [] for name in kernels}
            for _ in range(repeats):
                for name, f in kernels.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    f(b, t, workers)
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
            rows.append(
                [
                    f"{m}x{n}",
                    f"{workers}",
                    f"{gb / min(wall['torch']):.2f}",
                    f"{gb / min(wall['numba']):.2f}",
                    f"{min(wall['torch']) / min(wall['numba']):.2f}x",
                    f"{gb / min(cpu['torch']):.2f}",
                    f"{gb / min(cpu['numba']):.2f}",
                    "equal" if same else "DIFFER",
                    f"{errors[0]:.1e} / {errors[1]:.1e}",
                    f"{load():.1f}",
                ]
            )
    rep.table(
        [
            "shape",
            "workers",
            "torch GB/s",
            "numba GB/s",
            "speed-up",
            "torch CPU GB/s",
            "numba CPU GB/s",
            "counts",
            "sum err",
            "load",
        ],
        rows,
    )
    end(rep)


def scan_jit_missing() -> bool:
    """Whether numba (the compiled scan kernel) is missing."""
    return importlib.util.find_spec("numba") is None


# -- threads -------------------------------------------------------------------------------------


def bench_threads(rep: Report, repeats: int) -> None:
    section(rep, "threads: one thread against two, by operation size")
    rep.add(
        "float64 GEMM (n x n times n x n, 2n³ flops), torch.linalg.eigh (≈ 4n³ with vectors) "
        "and eigh_top (4/3·n³ + 2n²k, k = n/8) at 1 and 2 threads (torch and OpenBLAS), "
        f"alternating, best / median of {repeats} in ms. `2 thr / 1 thr` < 1 means two "
        "threads paid off. This sets opdgeo.threads.SMALL_OP_FLOPS.",
        "",
    )
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in (64, 128, 256, 512, 896, 1536):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        g = a @ a.T
        k = max(1, n // 8)
        ops: dict[str, tuple[float, Callable[[], Any]]] = {
            "gemm": (2.0 * n**3, lambda a=a: a @ a),
            "eigh": (4.0 * n**3, lambda g=g: torch.linalg.eigh(g)),
            "eigh_top": (
                4 / 3 * n**3 + 2 * n * n * k,
                lambda g=g, k=k: _eigh_top_cpu(g, k, False),
            ),
        }
        for name, (flops, f) in ops.items():
            if name != "gemm" and n > 1536:
                continue
            per: dict[int, list[float]] = {1: [], 2: []}
            f()
            for _ in range(repeats):
                for nthreads in (1, 2):
                    with threads(nthreads):
                        t0 = time.perf_counter()
                        f()
                        per[nthreads].append(time.perf_counter() - t0)
            rows.append(
                [
                    name,
                    f"{n}",
                    f"{flops / 1e9:.3f}",
                    ms(per[1]),
                    ms(per[2]),
                    f"{min(per[2]) / min(per[1]):.2f}",
                    f"{load():.1f}",
                ]
            )
    rep.table(["op", "n", "GFlop", "1 thread ms", "2 threads ms", "2 thr / 1 thr", "load"], rows)
    end(rep)


# -- demo ----------------------------------------------------------------------------------------


def bench_demo(rep: Report, repeats: int) -> None:
    from opdgeo.api import compare_checkpoints
    from opdgeo.synthetic import write_family

    section(rep, "demo: the demo family's analysis (base vs sft, opd, rlvr; standard tier)")
    rep.add(
        "`opdgeo.api.compare_checkpoints` on the demo family (4 layers, hidden 128, inter "
        "352, vocab 512; base + 3 tuned), base cache off, after imports, in this process. "
        "Variants: today's kernels (full eigh; kthvalue / bf16-histogram thresholds) on 2 "
        "threads (the default on this VM) and on 1 thread; "
        "the new kernels (W0/W1 spectra by `gram-mrrr`, float32 thresholds by radix select) "
        "on 1 thread, which is what `threads_for` chooses for every operation of these "
        f"shapes (all < {SMALL_OP_FLOPS / 1e9:.0f} GFlop). Seconds: best / median of {repeats}.",
        "",
    )
    original = linalg.spectrum
    original_threshold = linalg.fraction_threshold

    def mrrr(w: torch.Tensor, k: int, method: str = "gram") -> linalg.Spectrum:
        return original(w, k, "gram-mrrr" if method == "gram" else method)

    def full_eigh(w: torch.Tensor, k: int, method: str = "gram") -> linalg.Spectrum:
        return original(w, k, "gram-eigh" if method == "gram" else method)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_family(Path(tmp) / "demo", seed=0)
        base = str(paths["base"])
        tuned = [str(paths[k]) for k in ("sft", "opd", "rlvr")]

        def run(nthreads: int, new: bool) -> Callable[[], Any]:
            def go() -> Any:
                cfg = Config(settings=Settings(cache=False, threads=nthreads, read_ahead=0))
                # opdgeo.pair imported both names: patch them there
                threshold = original_threshold if new else today_threshold
                setattr(pair_module, "spectrum", mrrr if new else full_eigh)  # noqa: B010
                setattr(pair_module, "fraction_threshold", threshold)  # noqa: B010
                try:
                    return compare_checkpoints(base, tuned, cfg)
                finally:
                    setattr(pair_module, "spectrum", original)  # noqa: B010
                    setattr(pair_module, "fraction_threshold", original_threshold)  # noqa: B010

            return go

        t = alternate(
            {
                "today, 2 threads": run(2, False),
                "today, 1 thread": run(1, False),
                "new kernels, 1 thread": run(1, True),
            },
            repeats,
        )
    rows = [
        [name, f"{min(v):.2f} / {statistics.median(v):.2f}", f"{load():.1f}"]
        for name, v in t.items()
    ]
    rep.table(["variant", "seconds", "load"], rows)
    end(rep)


SECTIONS: dict[str, Callable[[Report, argparse.Namespace], None]] = {
    "eig": lambda rep, a: bench_eig(rep, a.repeats, a.big),
    "accuracy": lambda rep, a: bench_accuracy(rep),
    "select": lambda rep, a: bench_select(rep, a.repeats),
    "scan": lambda rep, a: bench_scan(rep, a.repeats),
    "threads": lambda rep, a: bench_threads(rep, a.repeats),
    "demo": lambda rep, a: bench_demo(rep, a.repeats),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="add the 3584 x 18944 Gram to `eig`")
    ap.add_argument("--out", default=str(ROOT / "bench" / "KERNELS.md"))
    args = ap.parse_args()
    rep = Report()
    started = time.time()
    rep.add(
        "# opdgeo kernel micro-benchmark",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs; torch "
        f"{torch.__version__}; Python {platform.python_version()}. Generated by "
        f"`bench/kernels.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')}. "
        "The machine was shared with other jobs: the load average is given per section "
        "and per row; only ratios within a row (routes alternated in one process) are "
        "meaningful, absolute times are not publishable.",
        "",
    )
    for name in args.sections.split(","):
        SECTIONS[name](rep, args)
    rep.add(f"Total {time.time() - started:.0f} s.")
    Path(args.out).write_text("\n".join(rep.lines) + "\n")


if __name__ == "__main__":
    main()
