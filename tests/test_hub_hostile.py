"""Hostile Hub inputs (issue 11) and what a mistyped local path says (issue 16).

Every case ends in one ``error:`` line with a documented exit code, before any request that
the input could steer: revisions and repo ids are validated first, shard names from an index
must stay inside the repo, a cache ref must hold a commit hash. Also: a Hub cache snapshot
(shards symlinked into ``blobs/``) opened as a local folder, and huggingface_hub's own errors
mapped to one line each. The fake Hub (tests/hubserver.py) and the cache live in tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import huggingface_hub.constants as hf_constants
import pytest
import torch
from huggingface_hub import errors as hf_errors
from huggingface_hub import hf_hub_download

import opdgeo.io.hub
from opdgeo.errors import HubAccessError, OfflineMissError, OpdgeoError, SourceError
from opdgeo.io import open_checkpoint
from opdgeo.io.hub_names import check_repo_file, hub_errors, parse_spec
from tests.conftest import tiny_model, write_checkpoint
from tests.hubserver import SHA_A, SHA_B, FakeHub, FakeRepo, repo_from_dir
from tests.test_hub import build_cache, cache, error_line, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time
SHARDS = [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("small")
    config = {"model_type": "qwen2"}
    base = tiny_model(seed=5, layers=1)
    return {
        "base": write_checkpoint(root / "base", base, config=config),
        "sharded": write_checkpoint(root / "sharded", base, shards=2, config=config),
    }


@pytest.fixture
def hub(
    cache: Path,  # noqa: F811
    small: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FakeHub]:
    server = FakeHub()
    server.repos = {
        "org/base": repo_from_dir(small["base"], sha=SHA_A, refs={"v1": SHA_A}),
        "org/sharded": repo_from_dir(small["sharded"], sha=SHA_B),
    }
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield server
    server.stop()


# -- revisions and repo ids: refused before any request -----------------------------------

HOSTILE_REVISIONS = [
    "x" * 5000,  # was OSError: File name too long
    "a..b",
    "../../../etc",
    "-rf",
    "main.lock",
    "two words",
    "line\nbreak",
    "x@{1}",
    "branch/",
    ".hidden",
    "a\\b",
    "tag:x",
    "\x1b[31mred",
]


@pytest.mark.parametrize("rev", HOSTILE_REVISIONS, ids=lambda r: repr(r[:12]))
def test_hostile_revisions_are_refused_before_any_request(hub: FakeHub, rev: str) -> None:
    for extra in ([], ["--offline"]):
        code, out, err = run("inspect", f"org/base@{rev}", *extra)
        line = error_line(code, out, err)
        assert code == 4, line
        assert "cannot exist in Hub repo org/base" in line
        assert len(line) < 600 and "\x1b" not in line
    assert hub.log == []


@pytest.mark.parametrize(
    "spec", ["org/a--b", "org/..x", "-org/x", "org/x.", "o" * 97 + "/b", "org/x y"]
)
def test_invalid_repo_ids_are_not_hub_ids(hub: FakeHub, spec: str) -> None:
    assert parse_spec(spec) is None
    code, out, err = run("inspect", "--", spec)
    line = error_line(code, out, err)
    assert code == 1 and "no such file or directory" in line
    assert hub.log == []


def test_valid_ids_and_revisions_parse() -> None:
    assert parse_spec("org/name") == ("org/name", None)
    assert parse_spec("Org-1/na_me.v2@refs/pr/4") == ("Org-1/na_me.v2", "refs/pr/4")
    assert parse_spec(f"org/name@{SHA_A}") == ("org/name", SHA_A)
    assert parse_spec("name") is None and parse_spec("a/b/c") is None


# -- shard names in an index that leave the repo -------------------------------------------


@pytest.mark.parametrize(
    "shard", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors", "a\\..\\b", ""]
)
def test_index_shard_names_that_leave_the_repo(
    hub: FakeHub, small: dict[str, Path], shard: str
) -> None:
    files = dict(hub.repos["org/sharded"].files)
    index = json.loads(files["model.safetensors.index.json"])
    index["weight_map"] = dict.fromkeys(index["weight_map"], shard)
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    hub.repos["org/evil"] = FakeRepo(files=files)
    code, out, err = run("inspect", "org/evil")
    line = error_line(code, out, err)
    assert code == 1 and "points outside the repo" in line
    assert not [r for r in hub.log if r.path.endswith(".safetensors") or "passwd" in r.path]
    with pytest.raises(SourceError, match="outside the repo"):
        check_repo_file("x", shard)


# -- cache refs that climb out of the cache ------------------------------------------------


@pytest.mark.parametrize("content", ["../../..", "../../../../../../", "0" * 39, "", "main\n"])
def test_cache_refs_that_are_not_commits(
    cache: Path,  # noqa: F811
    small: dict[str, Path],
    content: str,
) -> None:
    build_cache(cache, "org/base", SHA_A, small["base"], refs=())
    refs = cache / "models--org--base" / "refs"
    refs.mkdir()
    (refs / "main").write_text(content)
    code, out, err = run("inspect", "org/base", "--offline")
    line = error_line(code, out, err)
    assert code == 5, line
    assert "refs/main does not hold a commit hash" in line or "not in the local Hub cache" in line
    # the commit itself still works
    code, out, err = run("inspect", f"org/base@{SHA_A}", "-f", "json", "--offline")
    assert code == 0, err
    assert json.loads(out)["source"] == f"org/base@{SHA_A}"


# -- a Hub cache snapshot read as a local folder ------------------------------------------


def test_hub_snapshot_with_symlinked_shards_opens_as_a_local_folder(
    hub: FakeHub,
    small: dict[str, Path],
    cache: Path,  # noqa: F811
) -> None:
    for name in hub.repos["org/sharded"].files:
        hf_hub_download("org/sharded", name, revision=SHA_B, cache_dir=cache, endpoint=hub.url)
    snapshot = cache / "models--org--sharded" / "snapshots" / SHA_B
    assert all((snapshot / s).is_symlink() for s in SHARDS)
    assert all((snapshot / s).resolve().parent.name == "blobs" for s in SHARDS)
    via_cache = open_checkpoint(str(snapshot))
    original = open_checkpoint(str(small["sharded"]))
    assert list(via_cache.tensors) == list(original.tensors)
    for name in original.tensors:
        assert torch.equal(via_cache.read(name), original.read(name))
    code, out, err = run("compare", str(small["base"]), str(snapshot), "-f", "csv", "-q")
    assert code == 0, (out, err)


# -- huggingface_hub's errors, one line each ------------------------------------------------


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", "http://hub.invalid/x"))


@pytest.mark.parametrize(
    ("error", "offline", "kind", "words"),
    [
        (hf_errors.GatedRepoError("m", response=_response(401)), False, HubAccessError, "gated"),
        (
            hf_errors.RepositoryNotFoundError("m", response=_response(401)),
            False,
            HubAccessError,
            "not found",
        ),
        (
            hf_errors.DisabledRepoError("m", response=_response(403)),
            False,
            HubAccessError,
            "disabled",
        ),
        (
            hf_errors.RevisionNotFoundError("m", response=_response(404)),
            False,
            HubAccessError,
            "revision",
        ),
        (
            hf_errors.RemoteEntryNotFoundError("m", response=_response(404)),
            False,
            HubAccessError,
            "file not found",
        ),
        (hf_errors.LocalEntryNotFoundError("m\nmore"), True, OfflineMissError, "offline"),
        (hf_errors.OfflineModeIsEnabled("m"), True, OfflineMissError, "offline"),
        (hf_errors.RevisionResolutionError("m"), True, OfflineMissError, "offline"),
        (hf_errors.HfHubHTTPError("m", response=_response(403)), False, HubAccessError, "denied"),
        (hf_errors.HfHubHTTPError("m", response=_response(503)), False, OpdgeoError, "HTTP 503"),
        (httpx2.ConnectError("refused\nagain"), False, OpdgeoError, "cannot fetch"),
        (httpx2.ReadTimeout("timed out"), False, OpdgeoError, "cannot fetch"),
        (ConnectionResetError("reset"), False, OpdgeoError, "cannot fetch"),
        (hf_errors.HFValidationError("bad\nid"), False, SourceError, "bad id"),
    ],  # fmt: skip
)
def test_huggingface_hub_errors_map_to_one_line(
    error: Exception, offline: bool, kind: type[OpdgeoError], words: str
) -> None:
    with pytest.raises(OpdgeoError) as info, hub_errors("org/x", "main", offline):
        raise error
    assert type(info.value) is kind
    assert words in str(info.value) and "\n" not in str(info.value)
    assert "org/x" in str(info.value)


def test_a_cache_miss_caused_by_the_network_is_a_network_error() -> None:
    miss = hf_errors.LocalEntryNotFoundError("no file")
    miss.__cause__ = httpx2.ConnectError("refused")
    with pytest.raises(OpdgeoError) as info, hub_errors("org/x", None, offline=False):
        raise miss
    assert type(info.value) is OpdgeoError and "cannot fetch org/x" in str(info.value)


def test_a_branch_that_moves_mid_run_is_an_error(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    class MovingApi(opdgeo.io.hub.HfApi):
        def model_info(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            info = super().model_info(*args, **kwargs)  # type: ignore[arg-type]
            hub.repos["org/base"].refs["main"] = SHA_B  # pushed right after we resolved
            return info

    monkeypatch.setattr(opdgeo.io.hub, "HfApi", MovingApi)
    code, out, err = run("inspect", "org/base")
    line = error_line(code, out, err)
    assert code == 1 and f"moved from commit {SHA_A} to {SHA_B}" in line


# -- a mistyped local path (issue 16) -------------------------------------------------------


def test_mistyped_local_path_says_so_first_offline(
    cache: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the wrong folder: no demo/ here
    code, out, err = run("compare", "demo/base", "demo/sft")
    line = error_line(code, out, err)
    assert code == 5, line
    assert line.startswith("error: no local path demo/base exists; tried as a Hub id: ")
    assert line.index("no local path") < line.index("not in the local Hub cache")


def test_mistyped_local_path_says_so_first_online(
    cache: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # nothing listens at HF_ENDPOINT
    monkeypatch.chdir(tmp_path)
    code, out, err = run("compare", "demo/base", "demo/sft")
    line = error_line(code, out, err)
    assert code == 1, line
    assert line.startswith("error: no local path demo/base exists; tried as a Hub id: ")
    assert "cannot fetch demo/base" in line


def test_an_existing_hub_repo_is_not_called_a_missing_path(hub: FakeHub) -> None:
    code, out, err = run("inspect", "org/base@v1", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["source"] == f"org/base@{SHA_A}"


def test_a_server_that_ignores_range_requests(hub: FakeHub, small: dict[str, Path]) -> None:
    hub.no_ranges.add("org/base/model.safetensors")
    code, out, err = run("inspect", "org/base", "-f", "json")
    assert code == 0, err
    local = json.loads(run("inspect", str(small["base"]), "-f", "json")[1])
    assert json.loads(out)["tensors"] == local["tensors"]
    repo = opdgeo.io.hub.HubRepo("org/base", None, opdgeo.io.SourceOptions())
    data = hub.repos["org/base"].files["model.safetensors"]
    assert repo.read_range("model.safetensors", 1000, 77) == data[1000:1077]
    assert [r.status for r in hub.downloads()] == [200, 200]
