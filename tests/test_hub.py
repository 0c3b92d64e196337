"""Hub checkpoints (``org/name[@rev]``) against a fake Hub on 127.0.0.1 and hand-built caches.

No test touches the internet: the server (tests/hubserver.py) is started per test on port 0,
HF_ENDPOINT points at it, the Hub cache lives in tmp_path, and every network wait is bounded
by short timeouts. Failure modes go through the CLI: exit code, one ``error:`` line, no
traceback.
"""

from __future__ import annotations

import gc
import io
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import pandas as pd
import pytest
from typer.testing import CliRunner

import opdgeo.io.hub
from opdgeo.cli import app
from opdgeo.io.hub import HubFetcher
from opdgeo.synthetic import write_family
from tests.conftest import perturb, tiny_model, write_checkpoint
from tests.hubserver import SHA_A, SHA_B, FakeHub, FakeRepo, repo_from_dir

runner = CliRunner()
TOKEN = "hf_SECRETSECRET"
SHA_C = "fedcba9876543210fedcba9876543210fedcba98"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_family(tmp_path_factory.mktemp("family"), seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small base (one file) and its perturbed fine-tune, single-file and in 3 shards."""
    root = tmp_path_factory.mktemp("tiny")
    config = {"model_type": "qwen2", "tie_word_embeddings": False}
    base = tiny_model(seed=3, layers=3)
    tuned = perturb(base, scale=1e-2, seed=4)
    paths = {
        "base": write_checkpoint(root / "base", base, config=config),
        "sharded": write_checkpoint(root / "sharded", tuned, shards=3, config=config),
    }
    assert all((paths["sharded"] / s).stat().st_size > 4096 for s in SHARDS)  # see cached_blobs
    return paths


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache in tmp_path, no token anywhere, short timeouts, offline by default."""
    folder = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 3)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    # nothing listens there: a request that escapes offline mode fails at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    # huggingface_hub sleeps 1 s before resuming an interrupted download: not in tests
    monkeypatch.setattr(hf_file_download, "time", SimpleNamespace(sleep=lambda _s: None))
    return folder


@pytest.fixture
def hub(
    cache: Path, family: dict[str, Path], tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """The fake Hub, online: org/base (main, tag v1), org/sft, org/tiny, org/sharded, ..."""
    server = FakeHub()
    refs = {"main": SHA_A, "v1": SHA_A}
    server.repos = {
        "org/base": repo_from_dir(family["base"], sha=SHA_A, refs=refs),
        "org/sft": repo_from_dir(family["sft"], sha=SHA_B),
        "org/tiny": repo_from_dir(tiny["base"], sha=SHA_C),
        "org/sharded": repo_from_dir(tiny["sharded"], sha=SHA_B),
        "org/gated": repo_from_dir(family["sft"], gated=True),
        "org/private": repo_from_dir(family["sft"], sha=SHA_B, token=TOKEN, cdn=True),
    }
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield server
    server.stop()


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def error_line(code: int, out: str, err: str) -> str:
    """The one ``error:`` line of a failed command (and nothing that looks like a traceback)."""
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0] == lines[-1], err
    return errors[0]


def csv_frame(out: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(out))


def assert_same_numbers(hub_frame: pd.DataFrame, local_frame: pd.DataFrame) -> None:
    """Every column equal, numbers exactly, except the run/base labels."""
    assert list(hub_frame.columns) == list(local_frame.columns)
    numeric = local_frame.select_dtypes("number").columns
    assert len(numeric) > 10
    pd.testing.assert_frame_equal(
        hub_frame[numeric], local_frame[numeric], check_exact=True, check_dtype=True
    )
    other = [c for c in local_frame.columns if c not in numeric and c not in ("run", "base")]
    pd.testing.assert_frame_equal(hub_frame[other], local_frame[other])


def local_compare(base: Path, tuned: Path) -> pd.DataFrame:
    code, out, err = run("compare", str(base), str(tuned), "-f", "csv", "-q")
    assert code == 0, err
    return csv_frame(out)


def cached_blobs(folder: Path) -> list[Path]:
    """Complete weight files under ``folder`` (blobs or plain snapshot files, no symlinks)."""
    if not folder.exists():
        return []
    return [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and "incomplete" not in p.name
        and (p.suffix == ".safetensors" or p.parent.name == "blobs")
        and p.stat().st_size > 4096
    ]


def build_cache(cache: Path, repo_id: str, sha: str, source: Path, refs: tuple[str, ...]) -> Path:
    """A hand-built Hub cache entry: refs/<ref> holds the sha, plain files in the snapshot."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copy(file, snapshot / file.name)
    for ref in refs:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(sha)
    return snapshot


# -- 1. headers by range reads only --------------------------------------------------------


def test_inspect_reads_headers_through_range_requests_only(
    hub: FakeHub, family: dict[str, Path]
) -> None:
    code, out, err = run("inspect", "org/base@main", "-f", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == f"org/base@{SHA_A}"
    size = (family["base"] / "model.safetensors").stat().st_size
    assert doc["files"] == ["model.safetensors"]
    assert (doc["remote_bytes"], doc["cached_bytes"]) == (size, 0)
    code, local_out, _ = run("inspect", str(family["base"]), "-f", "json")
    assert code == 0
    local = json.loads(local_out)
    assert doc["tensors"] == local["tensors"]  # names, dtypes, shapes, bytes, order
    assert (doc["n_tensors"], doc["n_params"], doc["nbytes"]) == (39, 869_504, 1_739_008)
    shapes = {t["tensor"]: t["shape"] for t in doc["tensors"]}
    assert shapes["model.layers.0.mlp.down_proj.weight"] == "128x352"
    assert shapes["model.layers.3.self_attn.k_proj.weight"] == "64x128"
    # weights: one range read of the first 100 kB, never a full GET, never a HEAD
    weights = hub.downloads(".safetensors")
    assert [r.range for r in weights] == ["bytes=0-99999"]
    assert all(r.status == 206 for r in weights)
    assert sum(r.sent for r in weights) <= opdgeo.io.hub.RANGE_FIRST < size / 10
    assert not hub.requests("HEAD", ".safetensors")
    # nothing but the header reads and config.json
    assert {r.path.rsplit("/", 1)[-1] for r in hub.log} == {
        "main",
        "model.safetensors",
        "config.json",
    }


def test_header_larger_than_the_first_range_read_takes_a_second_one(
    hub: FakeHub, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opdgeo.io.hub, "RANGE_FIRST", 64)
    code, out, err = run("inspect", "org/sft", "-f", "json")
    assert code == 0, err
    local = json.loads(run("inspect", str(family["sft"]), "-f", "json")[1])
    assert json.loads(out)["tensors"] == local["tensors"]
    ranges = [r.range or "" for r in hub.downloads(".safetensors")]
    assert len(ranges) == 2 and ranges[0] == "bytes=0-63"
    header_end = 8 + int.from_bytes(
        (family["sft"] / "model.safetensors").read_bytes()[:8], "little"
    )
    assert ranges[1] == f"bytes=64-{header_end - 1}"


# -- 2. Hub numbers are local numbers; the cache then serves offline runs ------------------


def test_compare_on_the_hub_equals_local_then_offline_from_the_cache(
    hub: FakeHub, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = local_compare(family["base"], family["sft"])
    code, out, err = run("compare", "org/base@main", "org/sft", "-f", "csv")
    assert code == 0, err
    online = csv_frame(out)
    assert list(online["run"]) == [f"org/sft@{SHA_B}"]
    assert list(online["base"]) == [f"org/base@{SHA_A}"]
    assert_same_numbers(online, local)
    # each weight file was downloaded once, in full, pinned to its commit
    full = [r for r in hub.downloads(".safetensors") if r.range is None]
    assert sorted(r.path for r in full) == [
        f"/org/base/resolve/{SHA_A}/model.safetensors",
        f"/org/sft/resolve/{SHA_B}/model.safetensors",
    ]
    seen = len(hub.log)

    # --offline: from the cache, no request at all
    code, out, err = run("compare", "org/base@main", "org/sft", "-f", "csv", "--offline")
    assert code == 0, err
    assert_same_numbers(csv_frame(out), local)
    assert csv_frame(out)["base"][0] == f"org/base@{SHA_A}"
    assert len(hub.log) == seen

    # HF_HUB_OFFLINE=1 semantics, with the server gone
    hub.stop()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    code, out, err = run("compare", "org/base", f"org/sft@{SHA_B}", "-f", "csv")
    assert code == 0, err
    assert_same_numbers(csv_frame(out), local)
    assert len(hub.log) == seen


def test_second_online_run_downloads_nothing_and_counts_the_cache(
    hub: FakeHub, family: dict[str, Path]
) -> None:
    assert run("compare", "org/base", "org/sft", "-q")[0] == 0
    before = len(hub.downloads(".safetensors"))
    code, out, err = run("compare", "org/base", "org/sft", "-f", "csv")
    assert code == 0, err
    assert len(hub.downloads(".safetensors")) == before  # headers from the cached files too
    assert_same_numbers(csv_frame(out), local_compare(family["base"], family["sft"]))
    size = (family["base"] / "model.safetensors").stat().st_size
    doc = json.loads(run("inspect", "org/base", "-f", "json")[1])
    assert doc["remote_bytes"] == doc["cached_bytes"] == size


def test_offline_after_an_inspect_is_a_cache_miss_not_a_weightless_repo(hub: FakeHub) -> None:
    for spec in ("org/base@v1", "org/sft"):  # headers by range reads: only config.json cached
        assert run("inspect", spec, "-f", "json")[0] == 0
    hub.stop()
    code, out, err = run("compare", "org/base@v1", "org/sft", "--offline")
    line = error_line(code, out, err)
    assert code == 5, line
    assert f"org/base@{SHA_A}: its weights are not in the local Hub cache" in line


# -- 3. a hand-built cache, no server ------------------------------------------------------


def test_hand_built_cache_works_offline_without_any_server(
    cache: Path, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    build_cache(cache, "org/base", SHA_A, family["base"], refs=("main",))
    build_cache(cache, "org/rlvr", SHA_B, family["rlvr"], refs=("main", "v2"))
    local = local_compare(family["base"], family["rlvr"])
    for tuned in ("org/rlvr", "org/rlvr@v2", f"org/rlvr@{SHA_B}"):
        code, out, err = run("compare", "org/base@main", tuned, "-f", "csv", "--offline")
        assert code == 0, err
        frame = csv_frame(out)
        assert list(frame["run"]) == [f"org/rlvr@{SHA_B}"]
        assert_same_numbers(frame, local)
    # HF_HUB_OFFLINE alone (the conftest default) is enough
    assert hf_constants.HF_HUB_OFFLINE
    code, out, err = run("inspect", "org/rlvr", "-f", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == f"org/rlvr@{SHA_B}"
    assert doc["remote_bytes"] == doc["cached_bytes"] > 0


@pytest.mark.parametrize(
    "spec", ["org/uncached", "org/base@v9", f"org/base@{SHA_B}", "org/partial"]
)
def test_offline_cache_miss_exits_5(cache: Path, family: dict[str, Path], spec: str) -> None:
    build_cache(cache, "org/base", SHA_A, family["base"], refs=("main",))
    partial = build_cache(cache, "org/partial", SHA_A, family["base"], refs=("main",))
    (partial / "model.safetensors").unlink()  # e.g. after an inspect: config.json only
    code, out, err = run("compare", "org/base", spec, "--offline")
    line = error_line(code, out, err)
    assert code == 5, line
    assert "offline" in line and "cache" in line
    assert spec.split("@")[0] in line


# -- 4. revision pinning -------------------------------------------------------------------


@pytest.mark.parametrize("rev", ["main", "v1", SHA_A])
def test_revision_is_resolved_once_and_every_file_request_uses_the_commit(
    hub: FakeHub, rev: str
) -> None:
    code, out, err = run("inspect", f"org/base@{rev}", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["source"] == f"org/base@{SHA_A}"
    api = hub.requests("GET", "/api/models/org/base")
    assert {r.path for r in api} == {f"/api/models/org/base/revision/{rev}"}
    files = [r for r in hub.log if r.path.startswith("/org/base/")]
    assert files
    # weights by the commit; config.json by the revision's name, so that huggingface_hub
    # records refs/<rev> in its cache (its commit is checked against the resolved one)
    weights = [r for r in files if r.path.endswith(".safetensors")]
    assert weights and all(r.path.startswith(f"/org/base/resolve/{SHA_A}/") for r in weights)
    assert {r.path for r in files if r not in weights} == {f"/org/base/resolve/{rev}/config.json"}
    ref = Path(hf_constants.HF_HUB_CACHE) / "models--org--base" / "refs" / rev
    assert ref.is_file() == (rev != SHA_A)
    assert rev == SHA_A or ref.read_text() == SHA_A


@pytest.mark.parametrize("rev", ["main", "v1", SHA_A])
def test_pinned_download_then_same_revision_offline(
    hub: FakeHub, family: dict[str, Path], rev: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run("compare", f"org/base@{rev}", "org/sft", "-f", "csv", "-q")
    assert code == 0, err
    assert csv_frame(out)["base"][0] == f"org/base@{SHA_A}"
    resolve = [r for r in hub.log if "/resolve/" in r.path]
    pinned = [
        r for r in resolve if f"/resolve/{SHA_A}/" in r.path or f"/resolve/{SHA_B}/" in r.path
    ]
    assert pinned and {r.path.rsplit("/", 1)[1] for r in resolve if r not in pinned} <= {
        "config.json"  # by name: huggingface_hub records refs/<rev> for the offline run
    }
    assert all(r in pinned for r in resolve if r.path.endswith(".safetensors"))
    hub.stop()
    code, out2, err = run("compare", f"org/base@{rev}", "org/sft", "-f", "csv", "--offline")
    assert code == 0, err
    assert_same_numbers(csv_frame(out2), csv_frame(out))


# -- 5. sharded repos: one shard at a time, --no-keep deletes them -------------------------


def _watch_scratch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the complete shards on disk in the --no-keep scratch folder at every fetch/release."""
    counts: list[int] = []
    local, release = HubFetcher.local, HubFetcher.release

    def count(fetcher: HubFetcher) -> None:
        if fetcher._scratch is not None:
            counts.append(len(cached_blobs(fetcher._scratch)))

    def watched_local(self: HubFetcher, shard: str) -> Path:
        path = local(self, shard)
        count(self)
        return path

    def watched_release(self: HubFetcher, shard: str) -> None:
        count(self)
        release(self, shard)
        count(self)

    monkeypatch.setattr(HubFetcher, "local", watched_local)
    monkeypatch.setattr(HubFetcher, "release", watched_release)
    return counts


def test_sharded_no_keep_streams_shards_and_leaves_nothing(
    hub: FakeHub,
    tiny: dict[str, Path],
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the scratch folder lives under a symlinked temp dir (as /var -> /private/var on macOS)
    real = tmp_path / "real-tmp"
    real.mkdir()
    (tmp_path / "link-tmp").symlink_to(real)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "link-tmp"))
    counts = _watch_scratch(monkeypatch)
    local = local_compare(tiny["base"], tiny["sharded"])
    code, out, err = run("compare", "org/tiny", "org/sharded", "-f", "csv", "--no-keep")
    assert code == 0, err
    frame = csv_frame(out)
    assert frame["n_tensors"][0] == len(tiny_model(layers=3))
    assert_same_numbers(frame, local)
    # the three shards and the base file were downloaded, each once, one at a time per repo
    full = [r for r in hub.downloads(".safetensors") if r.range is None]
    shard_gets = [r for r in full if r.path.startswith("/org/sharded/")]
    assert [r.path.rsplit("/", 1)[1] for r in shard_gets] == SHARDS
    for before, after in zip(shard_gets, shard_gets[1:], strict=False):
        assert before.end <= after.start
    # at most two shards on disk at once, none left anywhere afterwards
    assert counts and max(counts) <= 2, counts
    assert cached_blobs(cache) == []
    assert cached_blobs(real) == []
    assert list(real.iterdir()) == []  # the scratch folder itself is gone
    # index and config.json are small and stay in the normal cache
    snapshot = cache / "models--org--sharded" / "snapshots" / SHA_B
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json",
        "model.safetensors.index.json",
    ]
    # so offline, the shards are a cache miss
    for base in ("org/tiny", str(tiny["base"])):
        code, out, err = run("compare", base, "org/sharded", "--offline")
        line = error_line(code, out, err)
        assert code == 5 and "offline" in line and "cache" in line
    assert f"org/sharded@{SHA_B}: {SHARDS[0]} is not in the local Hub cache" in line


def test_a_failed_no_keep_run_leaves_no_scratch_folder(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    hub.interrupt[f"org/sharded/{SHARDS[1]}"] = "always"
    code, out, err = run("compare", "org/tiny", "org/sharded", "--no-keep", "-q")
    line = error_line(code, out, err)
    assert code == 1 and "cannot fetch org/sharded" in line
    gc.collect()  # the CLI does not close a failed tuned checkpoint: its finalizer cleans up
    assert list(scratch.iterdir()) == []


def test_sharded_keep_leaves_the_shards_in_the_cache(
    hub: FakeHub, tiny: dict[str, Path], cache: Path
) -> None:
    code, out, err = run("compare", "org/tiny", "org/sharded", "-f", "csv")
    assert code == 0, err
    assert_same_numbers(csv_frame(out), local_compare(tiny["base"], tiny["sharded"]))
    snapshot = cache / "models--org--sharded" / "snapshots" / SHA_B
    for shard in SHARDS:
        assert (snapshot / shard).is_file()
        assert (snapshot / shard).read_bytes() == (tiny["sharded"] / shard).read_bytes()
    doc = json.loads(run("inspect", "org/sharded", "-f", "json")[1])
    assert doc["files"] == SHARDS
    assert doc["remote_bytes"] == doc["cached_bytes"] > 0


def test_no_keep_uses_shards_already_in_the_cache(
    hub: FakeHub, tiny: dict[str, Path], cache: Path
) -> None:
    assert run("compare", "org/tiny", "org/sharded", "-q")[0] == 0
    before = len(hub.downloads(".safetensors"))
    code, out, err = run("compare", "org/tiny", "org/sharded", "-f", "csv", "--no-keep")
    assert code == 0, err
    assert len(hub.downloads(".safetensors")) == before
    snapshot = cache / "models--org--sharded" / "snapshots" / SHA_B
    assert all((snapshot / shard).is_file() for shard in SHARDS)  # not deleted


# -- 6. errors: one line, documented exit codes --------------------------------------------


@pytest.mark.parametrize(
    ("spec", "exit_code", "words"),
    [
        ("org/missing", 4, ["org/missing", "not found"]),
        ("org/private", 4, ["org/private", "not found", "--token"]),
        ("org/gated", 4, ["org/gated", "gated"]),
        ("org/base@nope", 4, ["'nope'", "revision", "org/base"]),
        ("./nope", 1, ["no such file or directory", "./nope"]),
        ("a/b/c", 1, ["no such file or directory", "a/b/c"]),
    ],
)
def test_access_errors(hub: FakeHub, spec: str, exit_code: int, words: list[str]) -> None:
    code, out, err = run("compare", spec, "org/sft")
    line = error_line(code, out, err)
    assert code == exit_code, line
    for word in words:
        assert word in line
    assert not hub.requests(contains="/resolve/")  # nothing fetched
    code, out, err = run("inspect", spec)
    assert code == exit_code and error_line(code, out, err) == line


def test_gated_with_a_token_is_still_gated(hub: FakeHub) -> None:
    code, out, err = run("compare", "org/gated", "org/sft", "--token", TOKEN)
    line = error_line(code, out, err)
    assert code == 4 and "gated" in line
    assert hub.log[-1].status == 403
    assert TOKEN not in out + err


def test_missing_shard_file_is_a_hub_error(hub: FakeHub) -> None:
    repo = hub.repos["org/sharded"]
    hub.repos["org/broken"] = FakeRepo(
        files={k: v for k, v in repo.files.items() if k != SHARDS[1]},
        siblings=sorted(repo.files),
    )
    code, out, err = run("compare", "org/tiny", "org/broken")
    line = error_line(code, out, err)
    assert code == 4
    assert "file not found" in line and SHARDS[1] in line and "org/broken" in line


def test_interrupted_download_resumes_with_a_range_request(
    hub: FakeHub, family: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub writes (and so resumes from) whole chunks of DOWNLOAD_CHUNK_SIZE (10 MB)
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.interrupt["org/sft/model.safetensors"] = "once"
    code, out, err = run("compare", "org/base", "org/sft", "-f", "csv", "-q")
    assert code == 0, err
    assert_same_numbers(csv_frame(out), local_compare(family["base"], family["sft"]))
    gets = [
        r for r in hub.downloads() if r.path.startswith("/org/sft/") and r.range != "bytes=0-99999"
    ]
    data = (family["sft"] / "model.safetensors").read_bytes()
    first, resumed = gets  # the cut one, then one resumed where the written chunks ended
    assert (first.range, first.sent) == (None, len(data) // 2)
    offset = int((resumed.range or "").removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset <= len(data) // 2 and offset % (64 * 1024) == 0
    assert (resumed.status, resumed.sent) == (206, len(data) - offset)
    snapshot = cache / "models--org--sft" / "snapshots" / SHA_B
    assert (snapshot / "model.safetensors").read_bytes() == data


def test_interrupted_download_fails_with_one_line(hub: FakeHub) -> None:
    hub.interrupt["org/sft/model.safetensors"] = "always"
    started = time.monotonic()
    code, out, err = run("compare", "org/base", "org/sft")
    line = error_line(code, out, err)
    assert code == 1
    assert "cannot fetch org/sft" in line and "rerun to resume" in line
    assert time.monotonic() - started < 10


def test_truncated_download_fails_with_one_line(hub: FakeHub) -> None:
    hub.short.add("org/sft/model.safetensors")
    code, out, err = run("compare", "org/base", "org/sft")
    line = error_line(code, out, err)
    assert code == 1
    assert "cannot fetch org/sft" in line


def test_a_stalled_hub_times_out(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    for stalled in ("/api/models/org/sft", f"/org/sft/resolve/{SHA_B}/model.safetensors"):
        hub.stall = {stalled: 3.0}
        started = time.monotonic()
        code, out, err = run("inspect", "org/sft")
        line = error_line(code, out, err)
        assert code == 1
        assert "cannot fetch org/sft" in line and "timed out" in line
        assert time.monotonic() - started < 2.5


def test_unreachable_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # HF_ENDPOINT: port 9, closed
    code, out, err = run("compare", "org/base", "org/sft")
    line = error_line(code, out, err)
    assert code == 1
    assert "cannot fetch org/base" in line and os.environ["HF_ENDPOINT"] in line


# -- 7. tokens -----------------------------------------------------------------------------


def test_token_is_sent_as_bearer_and_never_printed(
    hub: FakeHub, family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["opdgeo", "compare", "org/base", "org/private", "-f", "json", "--token", TOKEN]
    monkeypatch.setattr(sys, "argv", argv)
    code, out, err = run(*argv[1:])
    assert code == 0, err
    assert TOKEN not in out and TOKEN not in err
    doc = json.loads(out)
    assert TOKEN not in doc["command"]
    words = shlex.split(doc["command"])
    assert words[words.index("--token") + 1] == "REDACTED"
    (only,) = doc["runs"]
    assert only["summary"]["run"] == f"org/private@{SHA_B}"
    hub_requests = [r for r in hub.log if not r.path.startswith("/cdn/")]
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    # org/private sends its weights through a CDN on another origin: the token stays home
    cdn = hub.requests(contains="/cdn/")
    assert {r.range is None for r in cdn} == {True, False}  # range read and download
    assert all(r.authorization is None for r in cdn)
    # without the token the private repo is invisible
    code, out, err = run("inspect", "org/private")
    assert code == 4 and "not found" in error_line(code, out, err)


def test_token_from_the_environment(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = run("inspect", "org/private", "-f", "json")
    assert code == 0, err
    assert TOKEN not in out + err
    assert hub.log[0].authorization == f"Bearer {TOKEN}"


# -- 8. the plan ---------------------------------------------------------------------------


def test_plan_is_printed_before_any_download(hub: FakeHub, family: dict[str, Path]) -> None:
    hub.interrupt["org/base/model.safetensors"] = "always"
    hub.interrupt["org/sft/model.safetensors"] = "always"
    code, out, err = run("compare", "org/base", "org/sft")
    assert code == 1
    lines = err.splitlines()
    plan = [i for i, line in enumerate(lines) if "GB to download" in line]
    assert len(plan) == 2
    size = (family["base"] / "model.safetensors").stat().st_size
    assert f"plan: org/base@{SHA_A}: 1 shard(s), {size / 1e9:.2f} GB of weights" in err
    assert "0.00 GB already cached" in err
    assert f"plan: org/sft@{SHA_B}: 39 tensor pairs to compare, 0 skipped" in err
    assert max(plan) < lines.index(error_line(code, out, err))


def test_quiet_prints_no_plan(hub: FakeHub) -> None:
    code, out, err = run("compare", "org/base", "org/sft", "-q", "-f", "csv")
    assert code == 0
    assert err == ""
    assert out.startswith("run,base,")
