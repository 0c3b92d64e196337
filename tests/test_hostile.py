"""Hostile inputs, class by class (issue: Robustness II, and issue 16's --resume items).

Every case ends in a correct result or one clean ``error:`` line with its documented exit
code, never a traceback, a raw exception or a hang. Fixtures are generated, tiny, and in the
real formats' exact names; every test that could block runs under an alarm.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from opdgeo.cli import app
from opdgeo.config import Settings, Thresholds
from opdgeo.errors import EXIT_ERROR, EXIT_USAGE, ConfigError
from opdgeo.parsing import TooDeepError, json_loads, nesting_depth
from tests.conftest import write_checkpoint

runner = CliRunner()
DEEP = 100_000


@pytest.fixture(autouse=True)
def alarm() -> Iterator[None]:
    """Fail (not hang) any test here that blocks for more than 120 s."""

    def hang(*_: object) -> None:
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def one_line_error(result: Result, code: int, *needles: str) -> str:
    """The run failed with ``code`` and exactly one ``error:`` line holding every needle."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and len(lines) == 1, result.stderr
    assert "unexpected" not in errors[0] and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def raw_file(path: Path, header: bytes | dict[str, object], data: bytes = b"") -> Path:
    """A safetensors file written byte by byte (``header`` as given, however broken)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def small(seed: int = 0, rows: int = 8) -> dict[str, torch.Tensor]:
    """A Qwen-named, two-matrix toy checkpoint (fast to compare)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(rows, 8, generator=gen).bfloat16(),
        "model.layers.0.mlp.up_proj.weight": torch.randn(rows, 8, generator=gen).bfloat16(),
        "model.layers.0.input_layernorm.weight": torch.ones(8).bfloat16(),
    }


def nudged(tensors: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (v.float() + 0.05 * torch.randn(v.shape, generator=gen)).bfloat16()
        for k, v in tensors.items()
    }


# -- headers --------------------------------------------------------------------------------

F32 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
HEADERS: dict[str, tuple[bytes | dict[str, object], str]] = {
    "dtype as a list": ({"w": {**F32, "dtype": ["F32"]}}, "unknown dtype"),
    "dtype as an object": ({"w": {**F32, "dtype": {"F32": 1}}}, "unknown dtype"),
    "dtype as a number": ({"w": {**F32, "dtype": 4}}, "unknown dtype"),
    "dtype missing": ({"w": {"shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    "0 elements beside a 2^64 dim": (
        {"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}},
        "invalid shape",
    ),
    "dim of 2^63": ({"w": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}, "shape"),
    "negative dim": ({"w": {**F32, "shape": [-1]}}, "invalid shape"),
    "dim as a float": ({"w": {**F32, "shape": [1.0]}}, "invalid shape"),
    "dim as a bool": ({"w": {**F32, "shape": [True]}}, "invalid shape"),
    "offsets as strings": ({"w": {**F32, "data_offsets": ["0", "4"]}}, "data_offsets"),
    "entry not an object": ({"w": [1, 2]}, "not an object"),
    "header a list": (b"[1, 2, 3]", "not a JSON object"),
    "metadata value a list": ({"__metadata__": {"a": [1]}}, "__metadata__"),
    "metadata a string": ({"__metadata__": "x"}, "__metadata__"),
    "duplicate tensor name": (
        b'{"w":' + json.dumps(F32).encode() + b',"w":' + json.dumps(F32).encode() + b"}",
        "duplicate key 'w'",
    ),
    "duplicate key inside an entry": (
        b'{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}',
        "duplicate key 'dtype'",
    ),
    "deep array in __metadata__": (
        b'{"__metadata__":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}",
        "levels deep",
    ),
    "deep object in __metadata__": (
        b'{"__metadata__":' + b'{"a":' * DEEP + b'"x"' + b"}" * DEEP + b"}",
        "levels deep",
    ),
    "deep shape": ({"w": {**F32, "shape": json.loads("[" * 60 + "]" * 60)}}, "invalid shape"),
    "not UTF-8": (b'{"\xff\xfe":1}', "UTF-8"),
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_hostile_header_is_one_format_error(tmp_path: Path, case: str) -> None:
    header, needle = HEADERS[case]
    path = raw_file(tmp_path / "model.safetensors", header, b"\0" * 4)
    one_line_error(invoke("inspect", str(path)), EXIT_ERROR, "not a valid safetensors file", needle)


def test_depth_is_bounded_before_parsing() -> None:
    assert nesting_depth(b'{"a": "[[[[{{{{", "b": [[1]]}') == 3  # brackets in strings ignored
    assert nesting_depth(b'{"a\\"[[[": 1}') == 1  # escaped quotes inside strings
    with pytest.raises(TooDeepError, match="1000000 levels"):
        json_loads(b"[" * 1_000_000 + b"]" * 1_000_000)
    assert json_loads(b"[" * 64 + b"]" * 64) == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        json_loads('{"a": 1, "b": {"a": 2, "a": 3}}', unique=True)
    assert json_loads('{"a": 1, "a": 2}') == {"a": 2}  # only headers refuse duplicates


def test_recursion_bombs_in_index_config_json_and_toml(tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text(
        '{"weight_map": ' + "[" * DEEP + "]" * DEEP + "}"
    )
    one_line_error(invoke("inspect", str(sharded)), EXIT_ERROR, "index.json", "levels deep")
    folder = write_checkpoint(tmp_path / "cfg", small())
    (folder / "config.json").write_text('{"a": ' + '{"b": ' * DEEP + "1" + "}" * DEEP + "}")
    one_line_error(invoke("inspect", str(folder)), EXIT_ERROR, "config.json", "levels deep")
    for name, text in {
        "array.toml": "a = " + "[" * DEEP + "]" * DEEP,
        "inline.toml": "a = " + "{b = " * 5000 + "1" + "}" * 5000,
        "mixed.toml": "[settings]\nx = [" + "{y = [" * 3000 + "]}" * 3000 + "]",
    }.items():
        toml = tmp_path / name
        toml.write_text(text + "\n")
        one_line_error(invoke("compare", "a", "b", "--config", str(toml)), EXIT_USAGE, "levels")
        study = tmp_path / f"study-{name}"
        study.write_text(text + "\n")
        one_line_error(invoke("batch", "--study", str(study)), EXIT_USAGE, "study file")
    comment = tmp_path / "comment.toml"
    comment.write_text("# " + "[" * 40 + '\n[settings]\natol = 1e-4\nx = "[[[["\n')
    result = invoke("compare", "a", "b", "--config", str(comment))
    one_line_error(result, EXIT_USAGE, "unknown key(s) x")


def sparse_pair(tmp_path: Path, nbytes: int) -> tuple[Path, Path]:
    """Two checkpoints each holding one F32 matrix of ``nbytes`` (sparse files: no disk used)."""
    side = math.isqrt(nbytes // 4)
    header = json.dumps(
        {"model.layers.0.mlp.up_proj.weight": {"dtype": "F32", "shape": [side, side],
                                               "data_offsets": [0, side * side * 4]}}  # fmt: skip
    ).encode()
    out = []
    for name in ("base", "tuned"):
        path = tmp_path / name / "model.safetensors"
        path.parent.mkdir()
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)) + header)
            fh.truncate(8 + len(header) + side * side * 4)
        out.append(path.parent)
    return out[0], out[1]


def test_huge_tensor_is_sized_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opdgeo.io import safetensors

    base, tuned = sparse_pair(tmp_path, 16 * 2**30)  # 16 GiB each
    monkeypatch.setattr(safetensors, "available_memory", lambda: 2**30)
    real_empty = torch.empty

    def guarded(*args: object, **kwargs: object) -> torch.Tensor:
        size = args[0] if args and isinstance(args[0], int) else 0
        assert size < 2**32, "allocated before sizing"
        return real_empty(*args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(torch, "empty", guarded)
    result = invoke("compare", str(base), str(tuned), "-f", "csv", "--no-cache")
    one_line_error(result, EXIT_ERROR, "needs 16.0 GiB", "1.0 GiB of memory is available")


def test_available_memory_honours_the_address_space_limit() -> None:
    from opdgeo.io.safetensors import available_memory

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    try:
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, hard))
        free = available_memory()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert free is not None and free <= 2**30


# -- files that are not regular, unreadable folders -----------------------------------------


def test_special_files_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    one_line_error(invoke("compare", "a", "b", "--config", str(fifo)), EXIT_USAGE, "FIFO")
    one_line_error(invoke("batch", "--study", str(fifo)), EXIT_USAGE, "FIFO")
    device = "/dev/zero"
    one_line_error(invoke("compare", "a", "b", "--config", device), EXIT_USAGE, "device")
    folder = write_checkpoint(tmp_path / "ck", small())
    os.mkfifo(folder / "config.json")  # optional: ignored with a warning, never read
    result = invoke("inspect", str(folder), "-f", "csv")
    assert result.exit_code == 0 and "q_proj" in result.stdout, result.stderr
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(device)  # a link to an endless device
    result = invoke("inspect", str(folder), "-f", "csv")
    assert result.exit_code == 0, result.stderr
    for name in ("model.safetensors", "model.safetensors.index.json", "x.safetensors"):
        special = tmp_path / f"special-{name}"
        special.mkdir()
        os.mkfifo(special / name)
        one_line_error(invoke("inspect", str(special)), EXIT_ERROR, "no safetensors weights")
    fifo_file = tmp_path / "w.safetensors"
    os.mkfifo(fifo_file)
    one_line_error(invoke("inspect", str(fifo_file)), EXIT_ERROR, "not a file or directory")


def test_permission_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the suite may run as root (which reads anything), so the denial is simulated
    from opdgeo.io import local

    folder = write_checkpoint(tmp_path / "ck", small())

    def denied(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", str(folder / "model.safetensors"))

    monkeypatch.setattr(local, "open_local", denied)
    one_line_error(invoke("inspect", str(folder)), EXIT_ERROR, "permission denied")
    monkeypatch.setattr(Path, "iterdir", denied)
    one_line_error(invoke("batch", str(folder), str(tmp_path)), EXIT_ERROR, "permission denied")


# -- config values --------------------------------------------------------------------------

CONFIGS = {
    "settings = 3": "settings must be a table",
    'settings = "x"': "settings must be a table",
    "thresholds = [1]": "thresholds must be a table",
    '[settings]\ninclude = "("': "include is not a valid regular expression",
    '[settings]\nexclude = "[a-"': "exclude is not a valid regular expression",
    "[settings]\ninclude = 3": "include must be str",
    '[settings]\nexclude = ["a"]': "exclude must be str",
    "[settings]\natol = nan": "atol must be a finite number",
    "[settings]\natol = inf": "atol must be a finite number",
    "[settings]\nalpha = nan": "alpha must be a finite number",
    "[settings]\nenergy_rank_frac = -inf": "energy_rank_frac must be a finite number",
    "[thresholds]\nsparsity_sft_below = nan": "sparsity_sft_below must be a finite number",
    "[thresholds]\nnss_sft_above = inf": "nss_sft_above must be a finite number",
    '[thresholds]\nangle_sft_above = "4"': "angle_sft_above must be float",
}


@pytest.mark.parametrize("text", list(CONFIGS))
def test_config_values_are_validated_with_their_name(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    one_line_error(invoke("compare", "a", "b", "--config", str(config)), EXIT_USAGE, CONFIGS[text])


def test_settings_and_thresholds_validate_in_python_too() -> None:
    for bad in ({"atol": math.nan}, {"include": "("}, {"exclude": 3}, {"alpha": math.nan}):
        with pytest.raises(ConfigError):
            Settings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="locked_band"):
        Thresholds(locked_band=math.nan)
    assert Settings(include=r"q_proj", atol=0.0).include == "q_proj"
