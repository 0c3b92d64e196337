"""CPU threads for torch: how many the process uses (:func:`apply_threads`), and per
operation size: small operations on one thread, large ones on all (:func:`threads_for`).

Starting and synchronising an OpenMP team costs tens of microseconds when the cores are free
and whole scheduler time slices when another process holds a core (a spinning team waits for
a descheduled member at every barrier): on this 2-core VM a 256 x 256 float64 ``eigh`` took
45 ms on 2 threads and 14 ms on 1 with another process on the second core. :func:`threads_for`
runs a block on one thread when its arithmetic is below a cut (:data:`SMALL_OP_FLOPS` for
GEMM-like work, :data:`EIGH_PARALLEL_FLOPS` for the eigensolver) and on the process's thread
count ("all", set by the engine from ``--threads``) otherwise. It sets both
torch's pool (OpenMP + MKL) and the BLAS pools that scipy loads (OpenBLAS, through
threadpoolctl), and restores them on exit.

The cut is measured by ``bench/kernels.py`` (bench/KERNELS.md, section "threads"): the flop
count where two threads start to beat one for the float64 Gram / eigensolver / GEMM kernels
this package runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import torch

if TYPE_CHECKING:  # a type only: config imports the metric registry, which imports this
    from opdgeo.config import Settings

SMALL_OP_FLOPS = 4.0e9
"""Below this many floating-point operations a GEMM-like kernel runs on one thread.
Provisional: on this VM with other jobs running (load 7-8) the 2-thread / 1-thread time of a
float64 GEMM scattered between 0.56x and 1.24x from run to run for 0.03-7.2 GFlop (and was
up to 190x at 0.001-0.004 GFlop; bench/KERNELS.md, section "threads"), so no cut could be
measured for GEMMs; 4 GFlop keeps every operation of the demo family (≤ 0.02 GFlop) on one
thread and leaves the Grams of 0.5B-1.5B MLP matrices (7.8-42 GFlop) on all threads.
Re-measure on idle cores."""

EIGH_PARALLEL_FLOPS = 2.5e9
"""The cut for the tridiagonal eigensolver (:func:`opdgeo.linalg_eig.eigh_top`), whose
reduction is half matrix-vector work with a synchronisation per column. Measured on this
2-core VM with the cores idle (load 0.8; k = n/8, best of 2): n = 896 (1.1e9 flops) 131-140
ms on one thread against 119-127 ms on two, n = 1536 (5.5e9) 648-663 ms against 423-446 ms
(1.5x). With other jobs running (load 7-8) two threads never paid off (1.3-80x slower at
n = 64 ... 1536; bench/KERNELS.md): on a busy machine pass ``--threads 1``."""


KRYLOV_GEMM_FLOPS_PER_ENTRY = 2 * 16
"""Flops per matrix entry of one GEMM of the fast tier's block Krylov σ₁ (16 columns): the
size of each operation, which is what decides whether a second thread pays off."""

_configured: int | None = None
"""The process's thread count as set by :func:`apply_threads` (``--threads``)."""


def configured_threads() -> int:
    """The thread count the process was configured with (:func:`apply_threads`), whatever
    :func:`threads_for` has set for the operation now running; torch's count before that."""
    return _configured or torch.get_num_threads()


def pair_flops(shape: tuple[int, ...], tier: str, spectral: bool) -> float:
    """The size of the largest linear-algebra operations of one tensor pair's analysis, which
    decides its thread count (:func:`threads_for` around every metric of the pair): two
    float64 Grams of the smaller side (standard, exact: 4·min²·max) or one GEMM of the block
    Krylov σ₁ (fast) for 2-D matrices that the spectral metrics decompose (``spectral``);
    0 for everything else (the ``scan`` tier, vectors, embeddings). The element-wise pass
    picks its own workers (:func:`opdgeo.scan.scan_pair`, from :func:`configured_threads`)."""
    if not spectral or len(shape) != 2 or tier == "scan":
        return 0.0
    small, big = min(shape), max(shape)
    if tier == "fast":
        return float(small * big * KRYLOV_GEMM_FLOPS_PER_ENTRY)
    return 4.0 * small * small * big


class _SizedPair(Protocol):
    shape: tuple[int, ...]
    module: str


F = TypeVar("F", bound=Callable[..., Any])


def sized_threads(fn: F) -> F:
    """Decorate ``fn(pair, base, tuned, settings, ...)`` (the engine's ``analyze_pair``) to run
    under :func:`threads_for` with :func:`pair_flops` of the pair: small pairs, every step of
    their analysis included, on one thread."""

    @wraps(fn)
    def run(pair: _SizedPair, base: Any, tuned: Any, settings: Settings, *a: Any, **kw: Any) -> Any:
        spectral = len(pair.shape) == 2 and (
            pair.module not in ("embed", "lm_head") or settings.spectral_embeddings
        )
        with threads_for(pair_flops(pair.shape, settings.tier, spectral)):
            return fn(pair, base, tuned, settings, *a, **kw)

    return cast(F, run)


_POOLS: list[Any] = []


def _blas_pools() -> Any:
    """threadpoolctl's handle on the BLAS libraries of scipy and numpy (OpenBLAS), or None
    until scipy's LAPACK is loaded (:func:`opdgeo.linalg_eig.eigh_top` loads it before its
    own :func:`threads_for`): opdgeo calls no other BLAS that torch does not control, and
    finding the libraries costs ~0.25 s, which the scan and fast tiers then never pay.
    torch's own pool (OpenMP + MKL) is set through torch."""
    if _POOLS:
        return _POOLS[0]
    if "scipy.linalg" not in sys.modules:
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency
        return None
    _POOLS.append(ThreadpoolController().select(user_api="blas"))
    return _POOLS[0]


def threads_wanted(flops: float, available: int | None = None, cut: float = SMALL_OP_FLOPS) -> int:
    """Threads for an operation of ``flops`` floating-point operations: 1 below ``cut``
    (default :data:`SMALL_OP_FLOPS`), else ``available`` (default: torch's thread count)."""
    have = torch.get_num_threads() if available is None else available
    return 1 if flops < cut else max(1, have)


@contextmanager
def threads_for(flops: float, cut: float = SMALL_OP_FLOPS) -> Iterator[int]:
    """Run the block with :func:`threads_wanted` threads (torch and BLAS); yields the count.

    torch's count is changed only when it differs; scipy's OpenBLAS is limited to the same
    count whenever its own differs (it starts with one thread per CPU whatever torch uses,
    so ``--threads 1`` or a small operation must limit it too). Setting torch's count costs
    < 1 µs and the BLAS limit ~40 µs, negligible next to the operations it is meant for.
    """
    have = torch.get_num_threads()
    want = threads_wanted(flops, have, cut)
    with ExitStack() as stack:
        if want != have:
            torch.set_num_threads(want)
            stack.callback(torch.set_num_threads, have)
        pools = _blas_pools()
        if pools is not None and any(c.num_threads != want for c in pools.lib_controllers):
            stack.enter_context(pools.limit(limits=want))
        yield want


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's FPUs)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def apply_threads(settings: Settings) -> int:
    """Set torch's CPU threads from ``settings.threads``; return the count in use.

    0 means the physical cores, unless ``OMP_NUM_THREADS`` is set: then torch's own
    setting (which follows it) is kept, so schedulers and shared machines stay in control.
    """
    global _configured
    if not settings.threads and os.environ.get("OMP_NUM_THREADS"):
        _configured = torch.get_num_threads()
        return _configured
    threads = settings.threads or physical_cores()
    _configured = threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
