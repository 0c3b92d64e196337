"""What ``inspect`` shows: one row per tensor and the JSON document, from headers only.

Kept apart from :mod:`opdgeo.report` (whose pooling imports the metric registry, hence
torch): ``opdgeo inspect`` reads headers and prints, and should start as fast as that.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from opdgeo.io import Checkpoint
from opdgeo.io.experts import describe as describe_experts
from opdgeo.naming import layer_index, module_type
from opdgeo.records import clean

INSPECT_COLUMNS = (
    "tensor", "dtype", "shape", "numel", "nbytes", "module", "layer", "file", "decoding",
)  # fmt: skip


def inspect_frame(ckpt: Checkpoint) -> pd.DataFrame:
    """One row per tensor of a checkpoint, in file order, from its headers; ``decoding`` says
    how a quantized weight, its scales or an adapter's factors are used ("" for plain)."""
    from opdgeo.io import peft, quant

    notes = {**quant.describe(ckpt), **peft.describe(ckpt)}
    names = sorted(ckpt.tensors, key=ckpt.file_position)
    return pd.DataFrame(
        [
            {
                "tensor": n,
                "dtype": ckpt.tensors[n].dtype,
                "shape": "x".join(map(str, ckpt.tensors[n].shape)),
                "numel": ckpt.tensors[n].numel,
                "nbytes": ckpt.tensors[n].nbytes,
                "module": module_type(n),
                "layer": layer_index(n),
                "file": ckpt.tensors[n].file.name,
                "decoding": notes.get(n, ""),
            }
            for n in names
        ],
        columns=list(INSPECT_COLUMNS),
    )


def inspect_document(ckpt: Checkpoint, frame: pd.DataFrame) -> dict[str, Any]:
    """The JSON document of ``inspect``."""
    total, cached = ckpt.download_bytes()
    return {
        "source": ckpt.label,
        "n_tensors": len(frame),
        "n_params": ckpt.n_params,
        "nbytes": ckpt.nbytes,
        "dtypes": ckpt.dtypes,
        "files": [str(f) for f in ckpt.files],
        "remote_bytes": total,
        "cached_bytes": cached,
        "experts": describe_experts(ckpt),
        "tensors": [{k: clean(v) for k, v in r.items()} for r in frame.to_dict(orient="records")],
    }
