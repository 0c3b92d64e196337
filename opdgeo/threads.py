"""Thread counts per operation size: small operations on one thread, large ones on all.

Starting and synchronising an OpenMP team costs tens of microseconds when the cores are free
and whole scheduler time slices when another process holds a core (a spinning team waits for
a descheduled member at every barrier): on this 2-core VM a 256 x 256 float64 ``eigh`` took
45 ms on 2 threads and 14 ms on 1 with another process on the second core. :func:`threads_for`
runs a block on one thread when its arithmetic is below :data:`SMALL_OP_FLOPS` and leaves the
process's thread count ("all", set by the engine from ``--threads``) otherwise. It sets both
torch's pool (OpenMP + MKL) and the BLAS pools that scipy loads (OpenBLAS, through
threadpoolctl), and restores them on exit.

The cut is measured by ``bench/kernels.py`` (bench/KERNELS.md, section "threads"): the flop
count where two threads start to beat one for the float64 Gram / eigensolver / GEMM kernels
this package runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import Any

import torch

SMALL_OP_FLOPS = 2.0e9
"""Below this many floating-point operations a kernel runs on one thread (see the module doc
and bench/KERNELS.md: on this VM two threads only paid off above ~1-4 GFlop, and never while
another process held the second core)."""


@cache
def _blas_pools() -> Any:
    """threadpoolctl's handle on the BLAS libraries of scipy and numpy (OpenBLAS; scipy's
    LAPACK is imported first so its library is loaded), or None without threadpoolctl.
    torch's own pool (OpenMP + MKL) is set through torch."""
    try:
        import scipy.linalg.lapack  # noqa: F401 - loads scipy's OpenBLAS
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - both are dependencies
        return None
    return ThreadpoolController().select(user_api="blas")


def threads_wanted(flops: float, available: int | None = None) -> int:
    """Threads for an operation of ``flops`` floating-point operations: 1 below
    :data:`SMALL_OP_FLOPS`, else ``available`` (default: torch's current thread count)."""
    have = torch.get_num_threads() if available is None else available
    return 1 if flops < SMALL_OP_FLOPS else max(1, have)


@contextmanager
def threads_for(flops: float) -> Iterator[int]:
    """Run the block with :func:`threads_wanted` threads (torch and BLAS); yields the count.

    Nothing changes when the count already matches. Setting torch's count costs < 1 µs and
    the BLAS limit ~40 µs, both negligible next to the operations it is meant for (≥ 1 ms).
    """
    have = torch.get_num_threads()
    want = threads_wanted(flops, have)
    if want == have:
        yield have
        return
    with ExitStack() as stack:
        torch.set_num_threads(want)
        stack.callback(torch.set_num_threads, have)
        pools = _blas_pools()
        if pools is not None and len(pools.lib_controllers):
            stack.enter_context(pools.limit(limits=want))
        yield want
