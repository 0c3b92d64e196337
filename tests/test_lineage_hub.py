"""opdgeo lineage on Hub ids, against the fake Hub of tests/hubserver.py (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

import opdgeo.io.hub
from opdgeo.lineage import lineage
from opdgeo.lineage.nullmodels import LlamaShape, llama_state, write_model
from opdgeo.lineage.transforms import permute_mlp, train_noise
from tests.conftest import write_checkpoint
from tests.hubserver import SHA_A, SHA_B, FakeHub, repo_from_dir
from tests.test_hub import cache  # noqa: F401  (fixture: empty Hub cache, no token, offline)

SHAPE = LlamaShape(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64)


@pytest.fixture
def hub(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:  # noqa: F811
    base = llama_state(SHAPE, 0)
    server = FakeHub()
    server.repos = {
        "org/base": repo_from_dir(write_model(tmp_path / "b", base, SHAPE.config()), sha=SHA_A),
        "org/tuned": repo_from_dir(
            write_model(tmp_path / "t", permute_mlp(train_noise(base, 0.3)), SHAPE.config()),
            sha=SHA_B,
        ),
        "org/sharded": repo_from_dir(
            write_checkpoint(
                tmp_path / "s", train_noise(base, 0.3), shards=3, config=SHAPE.config()
            ),
            sha=SHA_B,
        ),
    }
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield server
    server.stop()


def test_lineage_reads_hub_checkpoints(hub: FakeHub) -> None:
    pair = lineage(["org/base", "org/tuned@main"]).pairs[0]
    assert (pair.a, pair.b) == (f"org/base@{SHA_A}", f"org/tuned@{SHA_B}")
    assert pair.verdict == "derived"
    assert {t.kind for t in pair.tests} >= {"mlp", "attn_kv", "attn_q"}


def test_lineage_on_the_hub_reads_byte_ranges_not_shards(
    hub: FakeHub,
    cache: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opdgeo.io.hub, "RANGE_FIRST", 64)  # header reads stay small
    pair = lineage(["org/base", "org/tuned"]).pairs[0]
    assert pair.verdict == "derived"
    header_end = {}
    for repo in ("org/base", "org/tuned"):
        data = hub.repos[repo].files["model.safetensors"]
        header_end[repo] = 8 + int.from_bytes(data[:8], "little")
    weights = hub.downloads(".safetensors")
    assert weights and all(r.range is not None and r.status == 206 for r in weights)
    data_reads = []
    for r in weights:
        first, last = (int(x) for x in (r.range or "").removeprefix("bytes=").split("-"))
        repo = "/".join(r.path.strip("/").split("/")[:2])
        if last >= header_end[repo]:  # a tensor read: starts after the header
            assert first >= header_end[repo]
            assert r.sent == last - first + 1
            data_reads.append(r)
    assert data_reads
    # the bytes served for tensor data are exactly the bytes lineage says it read
    assert sum(r.sent for r in data_reads) == pair.bytes_read
    total = sum(len(hub.repos[r].files["model.safetensors"]) for r in header_end)
    assert pair.bytes_read < total
    # and no shard landed in the Hub cache
    assert not list(cache.rglob("*.safetensors"))


def test_sharded_hub_checkpoint_is_read_by_ranges_across_shards(
    hub: FakeHub,
    cache: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opdgeo.io.hub, "RANGE_FIRST", 64)
    pair = lineage(["org/base", "org/sharded"]).pairs[0]
    assert pair.verdict == "derived"
    files = hub.repos["org/sharded"].files
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert len(shards) == 3 and "model.safetensors.index.json" in files
    reads = [r for r in hub.downloads(".safetensors") if "/org/sharded/" in r.path]
    assert {r.path.rsplit("/", 1)[1] for r in reads} == set(shards)  # every shard touched
    assert all(r.range is not None and r.status == 206 for r in hub.downloads(".safetensors"))
    data_sent = 0
    for r in hub.downloads(".safetensors"):
        org, name, *_, file = r.path.strip("/").split("/")
        data = hub.repos[f"{org}/{name}"].files[file]
        first, last = (int(x) for x in (r.range or "").removeprefix("bytes=").split("-"))
        if last >= 8 + int.from_bytes(data[:8], "little"):  # a tensor read, not the header
            data_sent += r.sent
    assert data_sent == pair.bytes_read  # what lineage reports is what the Hub sent
    assert 0 < pair.read_fraction <= 1 and pair.pair_bytes > 0
    assert not list(cache.rglob("*.safetensors"))
