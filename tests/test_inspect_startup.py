"""``opdgeo inspect`` reads headers and never imports torch (issue 16: "inspect should not
need torch's import time to print a header").

Each case runs the real command line in a fresh interpreter (``python -c`` over
``runpy``), several invocations in one process, and asserts after each that ``torch`` is
not in ``sys.modules``: a single eager ``import torch`` anywhere on the path fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_model, write_checkpoint
from tests.hubserver import SHA_A, FakeHub, repo_from_dir
from tests.test_hub import build_cache

ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
import json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["opdgeo", *argv]
    code = 0
    try:
        runpy.run_module("opdgeo", run_name="__main__")
    except SystemExit as exc:
        code = exc.code or 0
    results.append({"argv": argv, "code": code, "torch": "torch" in sys.modules})
    print("\x00", flush=True)  # separates the invocations' outputs
print(json.dumps(results), file=sys.stderr)
"""


def run_cli(invocations: list[list[str]], env: dict[str, str] | None = None) -> list[dict]:
    """Run each argv in one fresh interpreter; each result has its exit code, stdout and
    whether torch had been imported by then."""
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps(invocations)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results: list[dict] = json.loads(proc.stderr.strip().splitlines()[-1])
    outputs = proc.stdout.split("\x00\n")
    for result, out in zip(results, outputs, strict=False):
        result["stdout"] = out
    return results


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("startup")
    model = tiny_model(seed=3, layers=2)
    return {
        "file": write_checkpoint(root / "single", model) / "model.safetensors",
        "sharded": write_checkpoint(root / "sharded", model, shards=2, config={"x": 1}),
    }


def test_inspect_file_and_sharded_folder_import_no_torch(checkpoints: dict[str, Path]) -> None:
    file, sharded = str(checkpoints["file"]), str(checkpoints["sharded"])
    results = run_cli(
        [
            ["inspect", file, "-f", "csv"],
            ["inspect", sharded, "-f", "json"],
            ["inspect", sharded, "-f", "table"],
            ["inspect", file],  # not a terminal: csv by default
        ]
    )
    for result in results:
        assert result["code"] == 0, result
        assert not result["torch"], f"torch imported by: opdgeo {' '.join(result['argv'])}"
    n_tensors = len(tiny_model(seed=3, layers=2))
    csv_lines = results[0]["stdout"].strip().splitlines()
    assert csv_lines[0].startswith("tensor,dtype,shape,numel,nbytes")
    assert len(csv_lines) == 1 + n_tensors
    doc = json.loads(results[1]["stdout"])
    assert doc["n_tensors"] == n_tensors
    assert len(doc["files"]) == 2  # both shards' headers were read
    assert "model.layers.1.self_attn.q_proj.weight" in results[2]["stdout"]
    assert results[3]["stdout"] == results[0]["stdout"]


def test_inspect_hub_id_offline_imports_no_torch(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A Hub id answered from the local Hub cache (HF_HUB_OFFLINE=1) stays torch-free too."""
    build_cache(tmp_path / "hf", "org/base", SHA_A, checkpoints["sharded"], refs=("main",))
    env = {
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN_PATH": str(tmp_path / "no-token"),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing answers: a request would fail loudly
    }
    (result,) = run_cli([["inspect", "org/base", "-f", "json"]], env)
    assert result["code"] == 0, result
    assert not result["torch"]
    doc = json.loads(result["stdout"])
    assert doc["source"] == f"org/base@{SHA_A}"
    assert doc["n_tensors"] == len(tiny_model(seed=3, layers=2))


def test_inspect_hub_id_online_imports_no_torch(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """A Hub id read from the (fake, local) Hub by range requests: headers only, no torch,
    no weights downloaded."""
    server = FakeHub()
    server.repos = {"org/base": repo_from_dir(checkpoints["sharded"], sha=SHA_A)}
    server.start()
    try:
        env = {
            "HF_HUB_CACHE": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN_PATH": str(tmp_path / "no-token"),
            "HF_ENDPOINT": server.url,
        }
        (result,) = run_cli([["inspect", "org/base", "-f", "json"]], env)
        downloads = server.downloads()
    finally:
        server.stop()
    assert result["code"] == 0, result
    assert not result["torch"]
    assert json.loads(result["stdout"])["source"] == f"org/base@{SHA_A}"
    assert downloads and all(r.range for r in downloads), "a whole shard was downloaded"


def test_the_harness_sees_torch_when_a_command_reads_weights(
    checkpoints: dict[str, Path],
) -> None:
    """The check can fail: ``compare`` reads tensors, so the same harness reports torch."""
    sharded = str(checkpoints["sharded"])
    (result,) = run_cli([["compare", sharded, sharded, "-q", "-f", "csv", "--tier", "scan"]])
    assert result["code"] == 0, result
    assert result["torch"]


def test_dtype_tables_resolve_torch_dtypes_by_safetensors_name() -> None:
    import torch

    from opdgeo.io.dtypes import DTYPE_BYTES, FLOAT_DTYPES, TORCH_DTYPES, safetensors_name

    assert set(FLOAT_DTYPES) == {"F64", "F32", "F16", "BF16"}
    assert FLOAT_DTYPES["BF16"] is torch.bfloat16 and FLOAT_DTYPES.get("I8") is None
    assert TORCH_DTYPES["F8_E4M3"] is torch.float8_e4m3fn and TORCH_DTYPES["U8"] is torch.uint8
    assert "F4" not in TORCH_DTYPES and "F4" in DTYPE_BYTES  # no torch dtype holds packed e2m1
    for name, dtype in TORCH_DTYPES.items():
        assert safetensors_name(dtype) == name
        assert torch.empty(0, dtype=dtype).element_size() == DTYPE_BYTES[name]
    assert safetensors_name(torch.complex64) == "complex64"
