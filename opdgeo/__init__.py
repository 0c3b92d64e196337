"""opdgeo: compare language-model checkpoints in parameter space.

Library entry point::

    from opdgeo import compare_checkpoints
    runs = compare_checkpoints("base/", ["sft/", "rlvr/"])
    runs[0].summary["regime"], runs[0].verdict.reasons
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "compare_checkpoints"]


def __getattr__(name: str) -> object:
    # Lazy: importing the package (e.g. for --version) does not import torch.
    if name == "compare_checkpoints":
        from opdgeo.report import compare_checkpoints

        return compare_checkpoints
    raise AttributeError(name)
