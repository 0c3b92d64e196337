"""Settings and classifier thresholds: frozen dataclasses, overridable from TOML.

The defaults here are mirrored in ``configs/default.toml`` (a test keeps the two equal).
A config file may set any subset of keys in the tables ``[settings]`` and ``[thresholds]``;
unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opdgeo.calibration import RULE_LABELS, Calibration, check_rule_name
from opdgeo.errors import ConfigError
from opdgeo.parsing import read_regular, toml_loads

SCOPES = ("all", "linear", "attention")
SPECTRAL_METHODS = ("gram", "svd")
TIERS = ("scan", "fast", "standard", "exact")


@dataclass(frozen=True)
class Settings:
    """How tensors are selected and how each diagnostic is computed."""

    scope: str = "all"
    """Which tensors enter the comparison: all float tensors, 2-D linear weights inside
    transformer blocks, or attention q/k/v/o only."""
    include: str | None = None
    """Regex; only tensors whose name matches are compared."""
    exclude: str | None = None
    """Regex; tensors whose name matches are left out."""
    atol: float = 1e-5
    """Absolute tolerance of ``sparsity_atol`` (MUK 2505.11711 §2.2)."""
    angle_k: int = 0
    """Top-k for principal angles; 0 picks ``clamp(min(m, n) // 8, 1, 512)`` (OPDG uses 512)."""
    energy_rank_frac: float = 0.10
    """Rank of the principal-energy projection as a fraction of min(m, n) (DSSU rho = 10 %)."""
    mask_rank: int = 64
    """Rank r of the reconstruction that defines the principal mask (OPDG r = 64); capped at
    ``ceil(min(m, n) / 16)`` so that small matrices keep a low-rank mask."""
    alpha: float = 0.3
    """Fraction of entries in the principal / low-magnitude masks (OPDG Fig. 3: 0.3)."""
    tier: str = "standard"
    """How much linear algebra runs (see :data:`TIERS`):

    * ``scan`` - element-wise metrics only (the three sparsities, norms, max |dW|): no
      linear algebra, reads overlapped with one blocked pass (:mod:`opdgeo.scan`); a first
      look at a 70B pair at disk speed;
    * ``fast`` - element-wise metrics (sparsity, norms) and stable rank from block power
      iteration in float32; no decompositions, so it runs at the speed of the reads;
    * ``standard`` - every metric; W0 and W1 spectra from the float64 Gram (all eigenvalues,
      top-k eigenvectors by MRRR), sigma_1 of the update by block Krylov in float32;
    * ``exact`` - every metric from float64 full SVD (papers' reference numbers).
    """
    spectral_embeddings: bool = False
    """Run spectral metrics on embedding / lm_head matrices too (V x h Grams are costly)."""
    max_spectral_dim: int = 16384
    """Matrices whose smaller side exceeds this get sparsity and norms only."""
    device: str = "cpu"
    """Where the linear algebra runs: ``cpu`` or ``cuda``."""
    threads: int = 0
    """CPU threads for torch; 0 = the number of physical cores (or ``OMP_NUM_THREADS``)."""
    cache: bool = True
    """Keep each base matrix's spectrum and top-k subspaces in an on-disk cache, keyed by
    the file's identity, so repeated comparisons and trajectories skip decomposing W0."""
    cache_dir: str = ""
    """Where the base cache lives; empty = ``$OPDGEO_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/opdgeo``, else ``~/.cache/opdgeo``."""
    read_ahead: int = 2
    """Tensor pairs read ahead on a background thread while the current one is analysed
    (0 reads in the main thread)."""

    metric_params: tuple[tuple[str, float | int], ...] = ()
    """Settings owned by registered metrics (:class:`opdgeo.metrics.Param`), as set in a
    config's ``[settings]`` table; :meth:`param` reads them with their defaults."""

    @property
    def spectral_method(self) -> str:
        """``gram`` (float64 Gram matrix + eigh) or ``svd`` (float64 full SVD), decided by the
        tier: ``svd`` exactly for ``exact``. In a config file without a ``tier`` key, the
        legacy ``spectral_method = "svd"`` selects the exact tier (see :func:`load_config`)."""
        return "svd" if self.tier == "exact" else "gram"

    def param(self, name: str) -> float | int:
        """The value of metric setting ``name`` (its registered default when not set)."""
        from opdgeo.metrics import params

        for key, value in self.metric_params:
            if key == name:
                return value
        return params()[name].default

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ConfigError(f"tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        if self.threads < 0 or self.read_ahead < 0:
            raise ConfigError("threads and read_ahead must be >= 0")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0.0 < self.energy_rank_frac <= 1.0:
            raise ConfigError(f"energy_rank_frac must be in (0, 1], got {self.energy_rank_frac}")
        if not (0 <= self.atol < math.inf):
            raise ConfigError(f"atol must be a finite number >= 0, got {self.atol}")
        if self.angle_k < 0 or self.mask_rank < 1:
            raise ConfigError("angle_k must be >= 0 and mask_rank >= 1")
        for key in ("include", "exclude"):
            pattern = getattr(self, key)
            if pattern is not None:
                if not isinstance(pattern, str):
                    raise ConfigError(f"{key} must be a regular expression, got {pattern!r}")
                _check_regex(pattern, key)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class Thresholds:
    """Cut points of the regime classifier (papers.md §7.3; each sits between the published
    SFT / OPD / RLVR values of OPDG 2606.07082 on Qwen3-8B)."""

    sparsity_sft_below: float = 0.30
    """sparsity_bf16 below this votes sft-like (published: SFT 8.1 %, OPD 51.6 %)."""
    sparsity_rlvr_above: float = 0.65
    """sparsity_bf16 above this votes rlvr-like (published: OPD 51.6 %, RLVR 77.2 %)."""
    lowmag_sft_below: float = 1.3
    """lowmag_overlap / alpha below this votes sft-like (published: 1.06x / 1.79x / 2.45x)."""
    lowmag_rlvr_above: float = 2.1
    """lowmag_overlap / alpha above this votes rlvr-like."""
    angle_sft_above: float = 4.0
    """principal_angle_deg above this votes sft-like (published: >10 / ~1 / <0.5 degrees)."""
    angle_rlvr_below: float = 0.7
    """principal_angle_deg below this votes rlvr-like."""
    nss_sft_above: float = 3e-4
    """nss above this votes sft-like (published: ~1e-3 / 1e-4 / 1e-5)."""
    nss_rlvr_below: float = 3e-5
    """nss below this votes rlvr-like."""
    bf16_uninformative_above: float = 4.0
    """update_ulp_ratio at or above this: sparsity_bf16 and lowmag_enrichment abstain, their
    values follow update size (the typical changed weight moved 2+ bf16 steps, so almost every
    weight the optimiser touched is visible; zoo/ANALYSIS.md)."""
    drift_ratio_band_low: float = 0.271
    """nss / rel_norm inside [low, high]: nss abstains (SFT, OPD and RLVR all fall there on the
    zoo grid's seed 0 at every learning rate: the value is explained by update size)."""
    drift_ratio_band_high: float = 0.494
    """Upper end of the nss / rel_norm band where nss abstains."""
    angle_ratio_band_low: float = 109.0
    """principal_angle_deg / rel_norm inside [low, high]: the angle abstains (zoo grid seed 0)."""
    angle_ratio_band_high: float = 139.0
    """Upper end of the angle / rel_norm band where the angle abstains."""
    unrelated_rel_norm: float = 0.5
    """rel_norm at or above this, with almost no bf16-identical entries, means unrelated."""
    unrelated_sparsity_below: float = 0.01
    """sparsity_bf16 below this (with a large rel_norm) means unrelated."""
    unrelated_angle_above: float = 30.0
    """principal_angle_deg above this supports unrelated (reported as a reason)."""
    locked_sim_first: float = 0.8
    """trajectory: sim_final at the first checkpoint >= this, with a flat band -> locked."""
    locked_band: float = 0.25
    """trajectory: stable-rank (max - min) / mean below this counts as a flat band."""
    expanding_rise: float = 0.5
    """trajectory: stable rank rising by more than this fraction -> expanding."""
    contracting_fall: float = 0.25
    """trajectory: stable rank falling by more than this fraction -> contracting."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"thresholds: {f.name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class Config:
    """Everything a run needs besides its inputs."""

    settings: Settings = field(default_factory=Settings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration: Calibration = field(default_factory=Calibration)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {"include": str, "exclude": str}
"""Fields whose default (None) does not say their type."""


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where} is not a valid regular expression ({exc})") from None


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(cls(), key)
        if isinstance(default, bool) != isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = _FIELD_TYPES.get(key, type(default))
        if not isinstance(value, expected):
            raise ConfigError(f"{where}: {key} must be {_type_name(expected)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        if key in ("include", "exclude") and value is not None:
            _check_regex(str(value), f"{where}: {key}")
        values[key] = value
    return cls(**values)


def metric_settings(table: dict[str, Any], where: str) -> tuple[tuple[str, float | int], ...]:
    """Pop the keys of ``table`` that are registered metric settings, validated."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    if not set(table) - fields:
        return ()
    from opdgeo.metrics import params  # the registry (and torch) only when a key needs it

    known = params()
    out = []
    for key in sorted(set(table) & set(known)):
        try:
            out.append((key, known[key].check(table.pop(key))))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(out)


MAX_TOML_BYTES = 10_000_000


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file that must be a regular file (a FIFO never blocks) of bounded nesting."""
    try:
        return toml_loads(read_regular(path, MAX_TOML_BYTES))
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is {exc}" if "TOML" in str(exc) else
                          f"{what} {path}: {exc}") from None  # fmt: skip


def _table(data: dict[str, Any], key: str, path: Path | None) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {key} must be a table ([{key}]), got {type(table).__name__}")
    return table


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Read a TOML config (or the defaults) and apply non-None keyword overrides to settings."""
    data: dict[str, Any] = read_toml(Path(path), "config file") if path is not None else {}
    unknown = sorted(set(data) - {"settings", "thresholds", "study", "calibration"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}")
    settings_table = dict(_table(data, "settings", path))
    legacy = settings_table.pop("spectral_method", None)
    if legacy is not None and legacy not in SPECTRAL_METHODS:
        raise ConfigError(
            f"{path} [settings]: spectral_method must be one of {', '.join(SPECTRAL_METHODS)}, "
            f"got {legacy!r}"
        )
    if legacy == "svd" and "tier" not in settings_table:
        settings_table["tier"] = "exact"  # legacy spelling of the exact tier
    settings_table.update({k: v for k, v in overrides.items() if v is not None})
    settings_table["metric_params"] = metric_settings(settings_table, f"{path} [settings]")
    settings = _build(Settings, settings_table, f"{path or 'options'} [settings]")
    thresholds = _build(Thresholds, _table(data, "thresholds", path), f"{path} [thresholds]")
    calibration = _calibration(data.get("calibration"), f"{path} [calibration]")
    return Config(settings=settings, thresholds=thresholds, calibration=calibration)


def _calibration(table: Any, where: str) -> Calibration:
    """A ``[calibration]`` table: rule = [right, total] (the built-in counts when absent)."""
    if table is None:
        return Calibration()
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of rule = [right, total]")
    rules: dict[str, tuple[int, int]] = {}
    for rule, counts in table.items():
        if not check_rule_name(rule):
            raise ConfigError(
                f"{where}: unknown rule {rule!r} (a rule is '<label> <agreeing>/<voting>', "
                f'label one of {", ".join(RULE_LABELS)}, e.g. "sft-like 2/3")'
            )
        ok = (
            isinstance(counts, list)
            and len(counts) == 2
            and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
            and 0 <= counts[0] <= counts[1]
        )
        if not ok:
            raise ConfigError(f"{where}: {rule} must be [right, total] with 0 <= right <= total")
        rules[rule] = (counts[0], counts[1])
    return Calibration(rules, source=f"calibration table of {where.split(' [')[0]}")
