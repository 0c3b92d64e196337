"""CPU threads for torch: how many, and who decides."""

from __future__ import annotations

import os

import torch

from opdgeo.config import Settings


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
    if not settings.threads and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = settings.threads or physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
