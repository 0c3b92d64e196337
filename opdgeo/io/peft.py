"""LoRA / PEFT adapters as checkpoints: ``W1 = W0 + ΔW`` per target module, in float32.

An adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) is opened against
its base: every base tensor appears under its base name; a LoRA target reads W0 from the
base and adds ``ΔW = s · B A`` (PEFT ``tuners/lora/layer.py``, ``Linear.get_delta_weight``:
``transpose(lora_B.weight @ lora_A.weight, fan_in_fan_out) * scaling``, with ``scaling =
lora_alpha / r``, or ``lora_alpha / sqrt(r)`` when ``use_rslora``). ``r`` and ``lora_alpha``
honour ``rank_pattern`` / ``alpha_pattern``, matched as PEFT's ``utils/other.py``
``get_pattern_key`` does (``re.match(rf"(.*\\.)?({key})$", module_name)``). Saved key names
follow PEFT's ``utils/save_and_load.py`` ``get_peft_model_state_dict``: the adapter name is
removed, so a module is ``base_model.model.<module>.lora_A.weight`` [r, in] and
``.lora_B.weight`` [out, r]; embeddings carry ``lora_embedding_A`` [r, vocab] and
``lora_embedding_B`` [dim, r] (ΔW = (B A)ᵀ); ``modules_to_save`` (and saved embedding
layers, biases) are full tensors ``base_model.model.<module>.weight`` that replace the base's.
DoRA (``lora_magnitude_vector``, ``use_dora``) on linear layers is composed as PEFT's merge
does (``tuners/lora/dora.py`` ``DoraLinearLayer.get_weight_norm``: the row norms of
``W0 + ΔW``): ``W1 = m / ‖W0 + ΔW‖_row · (W0 + ΔW)``; DoRA with ``fan_in_fan_out`` or on
embeddings is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opdgeo.errors import AdapterError
from opdgeo.io.checkpoint import Checkpoint, TensorInfo, TensorSource
from opdgeo.io.decoded import Decoded, annotate
from opdgeo.io.quant import stored
from opdgeo.io.safetensors import TensorReader
from opdgeo.naming import canonical

if TYPE_CHECKING:
    import torch

CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.weight)?$")
_DORA = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.weight)?$")


def read_adapter_config(folder: Path) -> dict[str, Any] | None:
    """``adapter_config.json`` in ``folder`` as a dict, None when there is none."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AdapterError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: not a JSON object")
    return data


def is_lora_name(name: str) -> bool:
    return bool(_LORA.match(name) or _DORA.match(name))


def is_adapter(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is a LoRA adapter: an ``adapter_config.json`` or LoRA tensor names."""
    return ckpt.adapter is not None or any(is_lora_name(n) for n in ckpt.tensors)


def pattern_key(keys: list[str], module: str) -> str | None:
    """The first ``rank_pattern`` / ``alpha_pattern`` key that names ``module`` (PEFT's rule)."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


@dataclass(frozen=True)
class Settings:
    """The parts of ``adapter_config.json`` that shape ΔW."""

    r: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    dora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]

    @classmethod
    def of(cls, where: str, config: dict[str, Any]) -> Settings:
        kind = str(config.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise AdapterError(f"{where}: PEFT type {kind} is not supported (only LORA)")
        try:
            return cls(
                r=int(config.get("r", 8)),
                alpha=float(config.get("lora_alpha", 8)),
                rslora=bool(config.get("use_rslora", False)),
                fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
                dora=bool(config.get("use_dora", False)),
                rank_pattern={
                    str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()
                },
                alpha_pattern={
                    str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()
                },
            )
        except (TypeError, ValueError, AttributeError):
            raise AdapterError(
                f"{where}: {CONFIG} has a malformed r / lora_alpha / pattern"
            ) from None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        rk = pattern_key(list(self.rank_pattern), module)
        ak = pattern_key(list(self.alpha_pattern), module)
        r = self.rank_pattern[rk] if rk is not None else self.r
        alpha = self.alpha_pattern[ak] if ak is not None else self.alpha
        return r, alpha

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.rslora else alpha / r


@dataclass(frozen=True)
class Unchanged:
    """A base tensor the adapter leaves as it is (read from the base)."""

    base: Checkpoint
    name: str
    parts: tuple[TensorInfo, ...] = ()
    method: str = ""

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return self.base.read(self.name)


@dataclass(frozen=True)
class Lora:
    """``W1 = W0 + s · B A`` (transposed for ``fan_in_fan_out`` and embeddings), or DoRA."""

    base: Checkpoint
    name: str
    parts: tuple[TensorInfo, ...]
    """(lora_A, lora_B[, magnitude])."""
    rank: int
    scale: float
    transpose: bool
    method: str = "lora"

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        import torch  # only when weights are read

        a, b = (
            stored(i, t).to(torch.float32) for i, t in zip(self.parts[:2], parts[:2], strict=True)
        )
        left, right = (a.T, self.scale * b.T) if self.transpose else (self.scale * b, a)
        w1 = self.base.read(self.name).to(torch.float32)
        w1 = w1 + left @ right
        if len(parts) > 2:  # DoRA: m / ||W0 + dW||_row * (W0 + dW)
            magnitude = stored(self.parts[2], parts[2]).to(torch.float32).reshape(-1, 1)
            w1 = w1 * (magnitude / torch.linalg.vector_norm(w1, dim=1, keepdim=True))
            return annotate(w1, Decoded("dora", rank=self.rank, scale=self.scale))
        return annotate(
            w1, Decoded(self.method, lowrank=(left, right), rank=self.rank, scale=self.scale)
        )


def _module_name(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def open_adapter(adapter: Checkpoint, base: Checkpoint) -> Checkpoint:
    """The checkpoint ``adapter`` (a PEFT LoRA adapter) composes with ``base``."""
    where = adapter.label
    if adapter.adapter is None:
        raise AdapterError(
            f"{where}: holds LoRA tensors (lora_A / lora_B) but no {CONFIG}; put the adapter's "
            "config next to its weights"
        )
    settings = Settings.of(where, adapter.adapter)
    reader = dataclasses.replace(
        base, source=TensorReader(), _remaining={}, _next={}, _local={}
    )  # a second reader: W0 is read for the adapter view without touching the base's stream
    by_canon = {canonical(n): n for n in base.tensors}
    factors: dict[str, dict[str, TensorInfo]] = {}
    full: dict[str, TensorInfo] = {}
    for key, info in adapter.tensors.items():
        if m := _LORA.match(key):
            factors.setdefault(m["module"], {})[m["part"]] = info
        elif m := _DORA.match(key):
            factors.setdefault(m["module"], {})["magnitude"] = info
        elif ".lora_" in key:
            raise AdapterError(f"{where}: adapter tensor {key!r} is not supported (only lora_A, "
                               "lora_B, lora_embedding_A/B, lora_magnitude_vector)")  # fmt: skip
        else:
            full[key] = info
    tensors: dict[str, TensorInfo] = {}
    decoders: dict[str, Unchanged | Lora] = {}
    for name, info in base.tensors.items():
        tensors[name] = info
        decoders[name] = Unchanged(reader, name)
    consumed: dict[str, str] = {}
    for key, parts in factors.items():
        module = _module_name(key)
        lora = _compose(where, module, parts, settings, reader, by_canon)
        tensors[lora.name] = dataclasses.replace(
            base.tensors[lora.name], dtype="F32",
            nbytes=4 * base.tensors[lora.name].numel,  # the float32 W1 held in memory
        )  # fmt: skip
        decoders[lora.name] = lora
        for part in lora.parts:
            consumed[part.name] = f"LoRA factor of {lora.name} (composed)"
    for key, info in full.items():
        name = _base_name(_module_name(key), by_canon) or _module_name(key)
        tensors[name] = info
        decoders.pop(name, None)
    files = list(adapter.files) + [f for f in base.files if f not in adapter.files]
    view = Checkpoint(
        adapter.label, tensors, files, _Sources(adapter.source, reader.source), base.config,
        fetcher=adapter.fetcher,
        check_header=adapter.check_header, shard_sizes=adapter.shard_sizes,
        decoders=dict(decoders), consumed=consumed, adapter=adapter.adapter,
    )  # fmt: skip
    return view


@dataclass
class _Sources:
    """The adapter's reader (what the view reads) and the base copy's (closed with it)."""

    main: TensorSource
    other: TensorSource

    def read(
        self, info: TensorInfo, rows: int | None = None, path: Path | None = None,
        pin: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        return self.main.read(info, rows, path, pin)

    def close(self) -> None:
        self.main.close()
        self.other.close()


def _base_name(name: str, by_canon: dict[str, str]) -> str | None:
    """The base tensor an adapter key names: same canonical name, else the one base name
    that is a dotted suffix of it or has it as one (PEFT names modules inside the task
    model, e.g. GPT-2's ``transformer.h.0...`` for a checkpoint's ``h.0...``)."""
    key = canonical(name)
    if key in by_canon:
        return by_canon[key]
    hits = [n for c, n in by_canon.items() if key.endswith("." + c) or c.endswith("." + key)]
    return hits[0] if len(hits) == 1 else None


def _compose(
    where: str,
    module: str,
    parts: dict[str, TensorInfo],
    settings: Settings,
    base: Checkpoint,
    by_canon: dict[str, str],
) -> Lora:
    embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    a = parts.get("lora_embedding_A" if embedding else "lora_A")
    b = parts.get("lora_embedding_B" if embedding else "lora_B")
    if a is None or b is None:
        raise AdapterError(f"{where}: module {module} has only {sorted(parts)}; LoRA needs A and B")
    name = _base_name(module + ".weight", by_canon)
    if name is None:
        raise AdapterError(
            f"{where}: the adapter targets {module}, which the base has no weight for"
        )
    r, alpha = settings.rank_alpha(module)
    if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != r or b.shape[1] != r:
        raise AdapterError(
            f"{where}: module {module} has A {list(a.shape)} and B {list(b.shape)}, which do "
            f"not match r = {r} from {CONFIG} (r, rank_pattern)"
        )
    transpose = embedding or settings.fan_in_fan_out
    out = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
    if out != base.tensors[name].shape:
        raise AdapterError(
            f"{where}: module {module}'s update is {list(out)} but the base's {name} is "
            f"{list(base.tensors[name].shape)}"
        )
    magnitude = parts.get("magnitude")
    chosen: tuple[TensorInfo, ...] = (a, b)
    if magnitude is not None or settings.dora:
        if embedding or settings.fan_in_fan_out or magnitude is None:
            raise AdapterError(
                f"{where}: DoRA on {module} is not supported here (only linear layers without "
                "fan_in_fan_out, with their lora_magnitude_vector)"
            )
        if magnitude.numel != out[0]:
            raise AdapterError(f"{where}: {module}'s lora_magnitude_vector has {magnitude.numel} "
                               f"entries for {out[0]} rows")  # fmt: skip
        chosen = (a, b, magnitude)
    return Lora(base, name, chosen, r, settings.scale(r, alpha), transpose)


def describe(ckpt: Checkpoint) -> dict[str, str]:
    """For ``inspect``: each adapter tensor's role, rank and scale (from the config)."""
    if ckpt.adapter is None:
        return {}
    try:
        settings = Settings.of(ckpt.label, ckpt.adapter)
    except AdapterError as exc:
        return dict.fromkeys(ckpt.tensors, str(exc))
    notes = {}
    for name in ckpt.tensors:
        if m := _LORA.match(name) or _DORA.match(name):
            module = _module_name(m["module"])
            r, alpha = settings.rank_alpha(module)
            part = m.groupdict().get("part", "lora_magnitude_vector (DoRA)")
            notes[name] = f"{part} of {module} (r={r}, scale={settings.scale(r, alpha):g})"
        else:
            notes[name] = "full tensor (modules_to_save): replaces the base's"
    return notes
