"""opdgeo: compare language-model checkpoints in parameter space.

Library entry points (see :mod:`opdgeo.api`)::

    import opdgeo
    runs = opdgeo.compare("base/", ["sft/", "rlvr/"], tier="standard")
    runs[0].summary["regime"], runs[0].verdict.reasons
    opdgeo.batch("base/", "runs/"); opdgeo.trajectory("base/", "run/"); opdgeo.inspect("x/")
"""

from __future__ import annotations

from opdgeo.version import __version__

__all__ = ["__version__", "batch", "compare", "compare_checkpoints", "inspect", "trajectory"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> object:
    # Lazy: importing the package (e.g. for --version) does not import torch.
    if name in _API:
        from opdgeo import api

        return getattr(api, name)
    raise AttributeError(name)
