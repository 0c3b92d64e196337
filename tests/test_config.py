"""Config loading: defaults mirror configs/default.toml; bad keys and values are errors."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from opdgeo.calibration import Calibration
from opdgeo.config import Config, Settings, Thresholds, load_config
from opdgeo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_toml_matches_dataclass_defaults() -> None:
    from opdgeo.metrics import params

    data = tomllib.loads((ROOT / "configs" / "default.toml").read_text())
    settings = {k: v for k, v in dataclasses.asdict(Settings()).items() if v is not None}
    del settings["metric_params"]
    shipped = dict(data["settings"])
    metric = {k: shipped.pop(k) for k in list(shipped) if k in params()}
    assert shipped == settings
    assert metric == {k: p.default for k, p in params().items() if k in metric}
    assert data["thresholds"] == dataclasses.asdict(Thresholds())
    calibration = {rule: tuple(counts) for rule, counts in data["calibration"].items()}
    assert calibration == dict(Calibration().rules)
    assert load_config(ROOT / "configs" / "default.toml").calibration.rules == Calibration().rules


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_documents_its_command(path: Path) -> None:
    assert isinstance(load_config(path), Config)
    header = path.read_text().splitlines()[:6]
    used = (f"--config configs/{path.name}", f"--study configs/{path.name}")
    assert any(u in line for line in header for u in used)


def test_overrides_and_partial_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[settings]\nalpha = 0.5\n[thresholds]\nangle_sft_above = 5\n")
    loaded = load_config(cfg, scope="attention", include=None)
    assert loaded.settings.alpha == 0.5
    assert loaded.settings.scope == "attention"
    assert loaded.thresholds.angle_sft_above == 5.0
    assert loaded.thresholds.nss_rlvr_below == Thresholds().nss_rlvr_below


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[settings]\nalpah = 0.5\n", "unknown key(s) alpah"),
        ("[setings]\n", "unknown table(s) setings"),
        ("[settings]\nalpha = 'x'\n", "alpha must be float"),
        ("[settings]\nalpha = 1.5\n", "alpha must be in (0, 1)"),
        ("[settings]\nscope = 'mlp'\n", "scope must be one of"),
        ("[settings]\nspectral_embeddings = 1\n", "spectral_embeddings must be bool"),
        ("not toml [", "is not valid TOML"),
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(cfg)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
