"""Hostile inputs, class by class (issue: Robustness II, and issue 16's --resume items).

Every case ends in a correct result or one clean ``error:`` line with its documented exit
code, never a traceback, a raw exception or a hang. Fixtures are generated, tiny, and in the
real formats' exact names; every test that could block runs under an alarm.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import struct
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from opdgeo.cli import app
from opdgeo.config import Settings, Thresholds
from opdgeo.errors import EXIT_ERROR, EXIT_USAGE, ConfigError
from opdgeo.parsing import TooDeepError, json_loads, nesting_depth, toml_loads
from tests.conftest import write_checkpoint

runner = CliRunner()
DEEP = 100_000


pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time


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
    "unterminated string of escaped quotes": (b'{"a' + b'\\"[' * 300_000, "not valid JSON"),
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
    start = time.monotonic()  # linear on unterminated strings (a naive pattern is quadratic)
    for text in (b'"a' + b'\\"{' * 300_000, b'"a' + b'\\"' * 300_000 + b"\\"):
        assert nesting_depth(text) == 0
    toml = b'x = "' + b'\\"[' * 300_000
    with pytest.raises(ValueError, match="TOML"):
        toml_loads(toml)
    assert time.monotonic() - start < 20
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
        {
            "model.layers.0.mlp.up_proj.weight": {
                "dtype": "F32",
                "shape": [side, side],
                "data_offsets": [0, side * side * 4],
            }
        }  # fmt: skip
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

    def vm_size() -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    before = vm_size()
    try:
        resource.setrlimit(resource.RLIMIT_AS, (before + 2**30, hard))
        free = available_memory()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    lowest = min(before, vm_size())  # other threads may map or unmap meanwhile
    assert free is not None and free <= before + 2**30 - lowest + 2**27


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


UNREADABLE = {  # what is made unreadable -> (exit code, needle of the one stderr line)
    "folder 000": (EXIT_ERROR, "cannot read folder {t}: permission denied"),
    "folder 400": (EXIT_ERROR, "cannot read folder {t}: permission denied"),
    "weights": (EXIT_ERROR, "cannot read {t}/model.safetensors: Permission denied"),
    "shard": (EXIT_ERROR, "cannot read {t}/model-00002-of-00002.safetensors: Permission denied"),
    "index": (EXIT_ERROR, "cannot read {t}/model.safetensors.index.json: Permission denied"),
    "output folder": (EXIT_ERROR, "cannot write {o}/r.csv: Permission denied"),
    "cache folder": (0, "warning: cannot write the base cache in {c} (Permission denied)"),
}


def _without_root_powers() -> list[str]:
    """A command prefix under which permissions apply (root ignores them): none for a user;
    for root, setpriv dropping the capabilities that bypass them; skip when there is none."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("running as root without setpriv: permissions cannot be denied")
    return prefix


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_real_permission_errors_are_one_line(tmp_path: Path, case: str) -> None:
    """Real denials in a fresh process (no monkeypatching): one line naming the path."""
    import subprocess
    import sys

    prefix = _without_root_powers()
    write_checkpoint(tmp_path / "base", small())
    tuned = write_checkpoint(tmp_path / "tuned", nudged(small()), shards=2 if case in (
        "shard", "index") else 1, config={"model_type": "qwen2"})  # fmt: skip
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    cache.mkdir()
    victim = {"folder 000": tuned, "folder 400": tuned, "weights": tuned / "model.safetensors",
              "shard": tuned / "model-00002-of-00002.safetensors",
              "index": tuned / "model.safetensors.index.json", "output folder": out,
              "cache folder": cache}[case]  # fmt: skip
    victim.chmod({"folder 400": 0o400, "output folder": 0o555, "cache folder": 0o555}.get(case, 0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [*prefix, sys.executable, "-m", "opdgeo", "compare", "base", "tuned", "-f", "csv",
               "-o", "out/r.csv", "--cache-dir", "cache"]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=110, check=False)  # fmt: skip
    finally:
        victim.chmod(0o755)
    code, needle = UNREADABLE[case]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == (1 if code else 2), done.stderr
    assert needle.format(t="tuned", o="out", c="cache") in lines[0], lines[0]
    assert code or lines[1].startswith("wrote ")
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ([] if code else ["r.csv"])


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
    "calibration = 3": "[calibration] must be a table",
    '[calibration]\n"sft-lik 2/2" = [1, 2]': "unknown rule 'sft-lik 2/2'",
    '[calibration]\n"sft-like 3/2" = [1, 2]': "unknown rule 'sft-like 3/2'",
    '[calibration]\n"indeterminate 0/0" = [0, 0]': "unknown rule 'indeterminate 0/0'",
    '[calibration]\n"sft-like 2/2" = [3, 2]': "sft-like 2/2 must be [right, total]",
    '[calibration]\n"sft-like 2/2" = [1.0, 2]': "sft-like 2/2 must be [right, total]",
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


def test_calibration_rule_names_are_the_classifiers() -> None:
    from opdgeo.calibration import GRID_SEED0, RULE_LABELS, check_rule_name
    from opdgeo.regimes import OPD, RL, RLVR, SFT

    assert set(RULE_LABELS) == {str(label) for label in (SFT, OPD, RLVR, RL)}
    assert all(check_rule_name(rule) for rule in GRID_SEED0)
    assert check_rule_name("rl-like (opd or rlvr) 2/3")
    for bad in ("sft-like", "sft-like 2", "sft-like 2/", "sft-like x/2", "sft-like 0/2", ""):
        assert not check_rule_name(bad), bad


# -- resume state ---------------------------------------------------------------------------


@pytest.fixture
def family(tmp_path: Path) -> dict[str, Path]:
    runs = tmp_path / "runs"
    return {
        "base": write_checkpoint(tmp_path / "base", small()),
        "runs": runs,
        "a": write_checkpoint(runs / "a", nudged(small(), 1)),
        "b": write_checkpoint(runs / "b", nudged(small(), 2)),
        "out": tmp_path / "out.csv",
        "state": tmp_path / "out.csv.state.jsonl",
    }


def batch(f: dict[str, Path], *extra: str) -> Result:
    return invoke("batch", str(f["base"]), str(f["runs"]), "-o", str(f["out"]), *extra)


def interrupted(f: dict[str, Path], monkeypatch: pytest.MonkeyPatch, after: int) -> Result:
    """A batch cut by Ctrl-C after ``after`` records were written to its state file."""
    from opdgeo.state import StateFile

    real = StateFile.append
    seen = {"n": 0}

    def cut(self: StateFile, *args: object) -> None:
        if seen["n"] == after:
            raise KeyboardInterrupt
        seen["n"] += 1
        real(self, *args)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(StateFile, "append", cut)
        return batch(f)


def records(state: Path) -> list[str]:
    return state.read_text().splitlines()[1:]


def test_resume_refuses_other_settings_or_inputs_and_dedups(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    full = invoke("batch", str(family["base"]), str(family["runs"]), "-f", "csv", "-q")
    assert full.exit_code == 0, full.stderr
    cut = interrupted(family, monkeypatch, after=4)
    assert cut.exit_code == 130
    assert "--resume" in cut.stderr and str(family["state"]) in cut.stderr
    assert not family["out"].exists() and len(records(family["state"])) == 4
    kept = family["state"].read_bytes()
    # other settings: refused, naming the setting; the state file is untouched
    one_line_error(batch(family, "--resume", "--tier", "fast"), EXIT_USAGE, "setting tier")
    one_line_error(batch(family, "--resume", "--alpha", "0.2"), EXIT_USAGE, "setting alpha")
    assert family["state"].read_bytes() == kept
    # a run changed on disk since: refused, naming the input and the file
    weights = family["a"] / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    one_line_error(batch(family, "--resume"), EXIT_USAGE, f"input {family['a']}", "changed")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a damaged record: its line number and the missing field
    lines = kept.decode().splitlines()
    entry = json.loads(lines[2])
    del entry["record"]["numel"]
    family["state"].write_text("\n".join([*lines[:2], json.dumps(entry), *lines[3:]]) + "\n")
    one_line_error(batch(family, "--resume"), EXIT_USAGE, ":3:", "missing field 'numel'")
    family["state"].write_text("\n".join([*lines[:2], "{not json", *lines[3:]]) + "\n")
    one_line_error(batch(family, "--resume"), EXIT_USAGE, ":3:")
    # every record twice (two batches appending to one file), then a line cut mid-write
    family["state"].write_bytes(
        kept + b"\n".join(kept.splitlines()[1:]) + b"\n" + lines[1][:9].encode()
    )
    resumed = batch(family, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "4 (run, tensor) record(s) already done (4 duplicated line(s) ignored)" in resumed.stderr
    assert not family["state"].exists()
    got = family["out"].read_text().splitlines()
    want = full.stdout.splitlines()
    assert got[0] == want[0] and len(got) == len(want)
    n_tensors = got[0].split(",").index("n_tensors")
    assert [r.split(",")[n_tensors] for r in got] == [r.split(",")[n_tensors] for r in want]


def test_resume_without_state_starts_fresh_and_the_state_is_locked(
    family: dict[str, Path],
) -> None:
    from opdgeo.state import StateFile

    holder = StateFile(family["state"], resume=False)
    try:
        result = batch(family)
        one_line_error(result, EXIT_ERROR, "in use by another opdgeo batch")
        assert family["state"].exists()
    finally:
        holder.close(finished=False)  # kept: an earlier batch's state file
    result = batch(family)
    assert result.exit_code == 0 and "starting over" in result.stderr, result.stderr
    result = batch(family, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "no state file" in result.stderr and "starting fresh" in result.stderr
    assert family["out"].is_file() and not family["state"].exists()


def test_state_file_must_be_a_regular_file(family: dict[str, Path]) -> None:
    os.mkfifo(family["state"])
    one_line_error(batch(family, "--resume"), EXIT_ERROR, "not a regular file")


@pytest.mark.parametrize(
    "clash",
    [
        ("-o", "out.csv", "--state", "out.csv"),
        ("-o", "out.csv", "--per-tensor", "out.csv.state.jsonl"),  # the default state file
        ("-o", "out.csv", "--per-group", "g.csv", "--state", "g.csv"),
        ("-o", "out.csv", "--html", "r.html", "--state", "r.html"),
        ("-o", "out.csv", "--state", "link"),  # a link to the report
    ],
    ids=["output", "per-tensor-default", "per-group", "html", "link"],
)
def test_a_state_file_that_is_also_an_output_is_refused(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clash: tuple[str, ...]
) -> None:
    """A finished batch removes its state file: were it a report, the report would vanish."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to("out.csv")
    result = invoke("batch", str(family["base"]), str(family["runs"]), "-q", *clash)
    one_line_error(result, EXIT_USAGE, "is also an output of this batch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "link", "runs"]


FOREIGN_STATES = {
    "notes": b"my notes\n",
    "no final newline": b"line one\nline two, cut",
    "a checkpoint": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    "other JSON lines": b'{"state": 1}\n{"a": 2}\n',
    "key later in the object": b'{"x": 1, "opdgeo_state": 1}\n',
    "one byte": b"x",
}


@pytest.mark.parametrize("case", list(FOREIGN_STATES))
def test_a_state_path_holding_a_foreign_file_is_refused_untouched(
    family: dict[str, Path], tmp_path: Path, case: str
) -> None:
    """``--state notes.txt`` never truncates, replaces or removes the user's file."""
    content = FOREIGN_STATES[case]
    target = tmp_path / "notes.txt"
    target.write_bytes(content)
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    for state in (target, link):
        for extra in ([], ["--resume"]):
            result = batch(family, "--state", str(state), *extra)
            one_line_error(result, EXIT_ERROR, "refusing to use", "did not write")
            assert target.read_bytes() == content and link.is_symlink()
    assert not family["out"].exists()
    # the default state file of -o (OUTPUT.state.jsonl) gets the same check
    family["state"].write_bytes(content)
    one_line_error(batch(family), EXIT_ERROR, "refusing to use")
    assert family["state"].read_bytes() == content


# -- text from files reaching the terminal --------------------------------------------------

HOSTILE_NAMES = (
    "model.layers.0.self_attn.q_proj[/].weight",
    "model.layers.0.mlp.[bold red]up_proj.weight",
    "model.layers.0.x\x1b[31mred\x1b]0;title\x07.weight",
    "model.layers.0.new\nline\r.weight",
)


def test_markup_ansi_and_newlines_from_files_are_escaped(tmp_path: Path) -> None:
    tensors = {name: torch.randn(8, 8).bfloat16() for name in HOSTILE_NAMES}
    base = write_checkpoint(tmp_path / "base[bold]", tensors)
    extra = {"only\x1b[2J[bold red]in[/]tuned\n": torch.ones(2).bfloat16()}
    runs = tmp_path / "r[/]uns"
    tuned = write_checkpoint(runs / "t[red]1", {**nudged(tensors), **extra})
    per_tensor = tmp_path / "pt.csv"
    for args in (
        ["compare", str(base), str(tuned), "-f", "table", "--per-tensor", str(per_tensor)],
        ["batch", str(base), str(runs), "-f", "table"],
        ["trajectory", str(base), str(tuned), "-f", "table"],
        ["lineage", str(base), str(tuned), "-f", "table"],
        ["inspect", str(tuned), "-f", "table"],
    ):
        result = runner.invoke(app, args, color=True)
        assert result.exit_code == 0, (args, result.stderr, result.exception)
        text = result.stdout + result.stderr
        assert "\x1b[31mred" not in text and "\x1b[2J" not in text and "\x07" not in text
        assert "new\nline" not in text
    assert "[red]1" in result.stdout or "t[red]" in result.stdout  # shown, not applied
    # CSV keeps the exact bytes
    import csv

    with open(per_tensor, newline="", encoding="utf-8") as fh:
        names = {row["tensor"] for row in csv.DictReader(fh)}
    assert set(HOSTILE_NAMES) | set(extra) <= names
    missing = tmp_path / "no\nsuch\x1b[31m"
    line = one_line_error(invoke("compare", str(missing), str(tuned)), EXIT_ERROR)
    assert "no\\nsuch\\x1b[31m" in line


# -- empty and degenerate inputs ------------------------------------------------------------


def test_empty_tensors_warn_nothing(tmp_path: Path) -> None:
    from opdgeo import api
    from opdgeo.config import load_config

    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.zeros(0, 8).bfloat16(),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 0).bfloat16(),
        "model.layers.0.self_attn.v_proj.weight": torch.zeros(0, 0).bfloat16(),
        "model.norm.weight": torch.zeros(0).bfloat16(),
        "model.layers.0.self_attn.k_proj.weight": torch.randn(8, 8).bfloat16(),
    }
    base = write_checkpoint(tmp_path / "base", tensors)
    tuned = write_checkpoint(tmp_path / "tuned", nudged(tensors))
    for cache in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs = api.compare(str(base), [str(tuned)], config=load_config(cache=cache))
        assert [str(w.message) for w in caught] == []
        assert runs[0].summary["n_tensors"] == 5
    result = invoke("compare", str(base), str(tuned), "-f", "csv", "-q")
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_nothing_to_classify_and_undefined_overlaps(tmp_path: Path) -> None:
    from opdgeo import api
    from opdgeo.config import load_config

    flat = {f"model.layers.{i}.input_layernorm.weight": torch.randn(16) for i in range(3)}
    flat = {k: v.bfloat16() for k, v in flat.items()}
    base = write_checkpoint(tmp_path / "flat-base", flat)
    tuned = write_checkpoint(tmp_path / "flat-tuned", nudged(flat))
    result = invoke("compare", str(base), str(tuned), "-f", "json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)["runs"][0]
    assert run["summary"]["regime"] == "indeterminate"  # not a label from bf16 sparsity alone
    assert "nothing to classify" in run["verdict"]["reasons"][0]
    assert run["verdict"]["regime"] == "indeterminate" and run["verdict"]["votes"] == {}
    same = invoke("compare", str(base), str(base), "-f", "csv", "-q")  # unchanged stays so
    assert same.exit_code == 0 and ",unchanged," in same.stdout
    base2 = write_checkpoint(tmp_path / "base", small(rows=16))
    tuned2 = write_checkpoint(tmp_path / "tuned", nudged(small(rows=16)))
    (run2,) = api.compare(str(base2), [str(tuned2)], config=load_config(alpha=1e-9))
    for key in ("principal_overlap", "lowmag_overlap", "principal_notlow_overlap"):
        assert math.isnan(run2.summary[key]), key
    (run3,) = api.compare(str(base2), [str(tuned2)], config=load_config(alpha=0.3))
    assert 0 < run3.summary["lowmag_overlap"] < 1


TWICE = "model.layers.0.mlp.up_proj.weight"
SHARDED_TWICE = {  # shard file -> its tensors, index (or None), the two shards the error names
    "two files, no index": ({"a": [0, 1], "b": [1, 2]}, None, ("a", "b")),
    "three files, no index": ({"s0": [0], "s1": [1], "s2": [1, 2]}, None, ("s1", "s2")),
    "index names the first": ({"a": [0, 1], "b": [1, 2]}, "a", ("a", "b")),
    "index names the second": ({"a": [0, 1], "b": [1, 2]}, "b", ("b", "a")),
    "in three, index names one": ({"a": [1], "b": [0, 1], "c": [1, 2]}, "b", ("b",)),
}


@pytest.mark.parametrize("case", list(SHARDED_TWICE))
def test_a_tensor_in_two_shards_is_refused_naming_both(tmp_path: Path, case: str) -> None:
    from safetensors.torch import save_file

    layout, listed, named = SHARDED_TWICE[case]
    tensors = small()
    names = sorted(tensors)
    assert names[1] == TWICE
    folder = tmp_path / "ck"
    folder.mkdir()
    weight_map = {}
    for shard, which in layout.items():
        save_file(
            {names[i]: tensors[names[i]] for i in which}, str(folder / f"{shard}.safetensors")
        )
        weight_map.update({names[i]: f"{shard}.safetensors" for i in which})
    if listed is not None:
        weight_map[TWICE] = f"{listed}.safetensors"
        index = {"weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    want = " and ".join(f"{shard}.safetensors" for shard in named)  # the index's shard first
    tuned = write_checkpoint(tmp_path / "tuned", nudged(tensors))
    for args in (["inspect", str(folder)], ["compare", str(folder), str(tuned), "-f", "csv"]):
        line = one_line_error(invoke(*args), EXIT_ERROR, f"tensor '{TWICE}' appears in both {want}")
        assert re.search(r"in both \w+\.safetensors and \w+\.safetensors$", line), line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_hub_snapshot_read_as_a_local_folder(tmp_path: Path) -> None:
    """huggingface_hub's cache: snapshots/<sha>/<file> are symlinks to ../../blobs/<hash>."""
    from safetensors.torch import save_file

    repo = tmp_path / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    tensors = small()
    names = list(tensors)
    weight_map = {}
    for i, chunk in enumerate((names[:2], names[2:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in chunk}, str(blobs / f"blob{i}"))
        (snapshot / shard).symlink_to(f"../../blobs/blob{i}")
        weight_map.update(dict.fromkeys(chunk, shard))
    (blobs / "index").write_text(json.dumps({"weight_map": weight_map}))
    (snapshot / "model.safetensors.index.json").symlink_to("../../blobs/index")
    result = invoke("inspect", str(snapshot), "-f", "csv")
    assert result.exit_code == 0, result.stderr
    assert all(name in result.stdout for name in names)
    from opdgeo.io import open_checkpoint

    ckpt = open_checkpoint(str(snapshot))
    assert torch.equal(ckpt.read(names[0]), tensors[names[0]])
    ckpt.close()


def test_huge_tensor_under_a_real_ulimit(tmp_path: Path) -> None:
    """The same in a fresh process under ``ulimit -v`` 8 GiB (no monkeypatching)."""
    import subprocess
    import sys

    base, tuned = sparse_pair(tmp_path, 16 * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "opdgeo", "compare", str(base), str(tuned), "-f", "csv",
         "--no-cache"],
        capture_output=True, text=True, timeout=110, preexec_fn=limit, env=env,
    )  # fmt: skip
    assert done.returncode == EXIT_ERROR and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "needs 16.0 GiB" in done.stderr, done.stderr
