"""Opening checkpoints: single files, directories, sharded indexes and every way they go wrong."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from opdgeo.errors import FormatError, SourceError
from opdgeo.io import Checkpoint, open_checkpoint
from tests.conftest import tiny_model

MakeCkpt = Callable[..., Path]


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same_contents(a: Checkpoint, b: Checkpoint) -> None:
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        ia, ib = a.tensors[name], b.tensors[name]
        assert (ia.dtype, ia.shape, ia.nbytes) == (ib.dtype, ib.shape, ib.nbytes)
        assert _bytes(a.read(name)) == _bytes(b.read(name))
    assert a.n_params == b.n_params
    assert a.nbytes == b.nbytes
    assert a.dtypes == b.dtypes


# -- the layouts that open -----------------------------------------------------------------


def test_single_file(make_checkpoint: MakeCkpt) -> None:
    tensors = tiny_model()
    path = make_checkpoint("m", tensors) / "model.safetensors"
    ckpt = open_checkpoint(str(path))
    assert ckpt.label == str(path)
    assert ckpt.files == [path]
    assert set(ckpt.tensors) == set(tensors)
    for name, t in tensors.items():
        assert _bytes(ckpt.read(name)) == _bytes(t)
    assert ckpt.n_params == sum(t.numel() for t in tensors.values())
    assert ckpt.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert ckpt.dtypes == ["BF16"]
    ckpt.close()


def test_directory_with_model_safetensors(make_checkpoint: MakeCkpt) -> None:
    tensors = tiny_model()
    path = make_checkpoint("m", tensors)
    ckpt = open_checkpoint(str(path))
    assert ckpt.files == [path / "model.safetensors"]
    assert set(ckpt.tensors) == set(tensors)
    for name, t in tensors.items():
        assert _bytes(ckpt.read(name)) == _bytes(t)


def test_directory_prefers_model_safetensors_over_other_files(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model())
    save_file({"stray": torch.zeros(2)}, str(path / "extra.safetensors"))
    ckpt = open_checkpoint(str(path))
    assert ckpt.files == [path / "model.safetensors"]
    assert "stray" not in ckpt.tensors


def test_sharded_directory_matches_single_file(make_checkpoint: MakeCkpt) -> None:
    tensors = tiny_model()
    single = open_checkpoint(str(make_checkpoint("single", tensors)))
    sharded_path = make_checkpoint("sharded", tensors, shards=3)
    sharded = open_checkpoint(str(sharded_path))
    assert [f.name for f in sharded.files] == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert len({info.file for info in sharded.tensors.values()}) == 3
    _assert_same_contents(single, sharded)
    for name in tensors:  # partial reads agree too
        if sharded.tensors[name].shape and sharded.tensors[name].shape[0] > 1:
            assert _bytes(sharded.read(name, rows=1)) == _bytes(single.read(name, rows=1))
    single.close()
    sharded.close()


def test_index_takes_precedence_over_model_safetensors(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model(), shards=2)
    save_file({"decoy": torch.zeros(1)}, str(path / "model.safetensors"))
    ckpt = open_checkpoint(str(path))
    assert "decoy" not in ckpt.tensors
    assert len(ckpt.files) == 2


def test_directory_of_arbitrary_safetensors_files(tmp_path: Path) -> None:
    tensors = tiny_model()
    names = list(tensors)
    save_file({k: tensors[k] for k in names[:5]}, str(tmp_path / "foo.safetensors"))
    save_file({k: tensors[k] for k in names[5:]}, str(tmp_path / "bar-2.safetensors"))
    (tmp_path / "README.md").write_text("not weights")
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.files == [tmp_path / "bar-2.safetensors", tmp_path / "foo.safetensors"]
    assert set(ckpt.tensors) == set(tensors)
    for name, t in tensors.items():
        assert _bytes(ckpt.read(name)) == _bytes(t)


# -- errors --------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    spec = str(tmp_path / "nope")
    with pytest.raises(SourceError, match="no such file or directory") as err:
        open_checkpoint(spec)
    assert spec in str(err.value)


def test_directory_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError) as err:
        open_checkpoint(str(tmp_path))
    message = str(err.value)
    assert f"no safetensors weights in {tmp_path}" in message
    for looked_for in ("model.safetensors.index.json", "model.safetensors", "*.safetensors"):
        assert looked_for in message
    assert "pickle" not in message


def test_directory_with_only_pickle_weights(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(SourceError, match="pickle") as err:
        open_checkpoint(str(tmp_path))
    assert "pytorch_model.bin" in str(err.value)
    assert "convert to safetensors" in str(err.value)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl"])
def test_pickle_file_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"pytorch_model{suffix}"
    path.write_bytes(b"\x80\x02")
    with pytest.raises(SourceError, match="pickle") as err:
        open_checkpoint(str(path))
    assert str(path) in str(err.value)


def test_other_file_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK")
    with pytest.raises(SourceError, match="not a .safetensors file"):
        open_checkpoint(str(path))


def test_malformed_file_surfaces_as_format_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"[1] ")
    with pytest.raises(FormatError, match="not a JSON object"):
        open_checkpoint(str(tmp_path))


def _index(path: Path) -> dict:
    return json.loads((path / "model.safetensors.index.json").read_text())


def _write_index(path: Path, index: dict) -> None:
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_index_with_missing_shard(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model(), shards=3)
    (path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(SourceError, match="model-00002-of-00003.safetensors is missing"):
        open_checkpoint(str(path))


def test_index_lists_tensor_absent_from_its_shard(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model(), shards=3)
    index = _index(path)
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    _write_index(path, index)
    with pytest.raises(SourceError) as err:
        open_checkpoint(str(path))
    message = str(err.value)
    assert "'model.layers.9.mlp.up_proj.weight' is not in its shard" in message
    assert "model-00001-of-00003.safetensors" in message


def test_index_points_tensor_at_the_wrong_shard(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model(), shards=2)
    index = _index(path)
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors"
    _write_index(path, index)
    with pytest.raises(SourceError, match="'lm_head.weight' is not in its shard"):
        open_checkpoint(str(path))


def test_same_tensor_in_two_files_without_index(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2), "a": torch.zeros(1)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(SourceError, match="'w' appears in both a.safetensors and b.safetensors"):
        open_checkpoint(str(tmp_path))


@pytest.mark.parametrize("shard", ["../x.safetensors", "sub/../../x.safetensors"])
def test_index_shard_escaping_the_directory(tmp_path: Path, shard: str) -> None:
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "sub").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))  # exists, but outside
    _write_index(ckpt_dir, {"weight_map": {"w": shard}})
    with pytest.raises(SourceError, match="points outside the checkpoint directory"):
        open_checkpoint(str(ckpt_dir))


def test_index_shard_in_subdirectory_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    save_file({"w": torch.arange(3.0)}, str(tmp_path / "sub" / "s.safetensors"))
    _write_index(tmp_path, {"weight_map": {"w": "sub/s.safetensors"}})
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.read("w").tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "no weight_map"),
        ('{"weight_map": []}', "no weight_map"),
        ('{"weight_map": {"w": 3}}', "no weight_map"),
        ('{"metadata": {}}', "no weight_map"),
    ],
    ids=["bad-json", "list", "map-is-list", "non-string-shard", "no-map"],
)
def test_malformed_index(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(content)
    with pytest.raises(SourceError, match=problem):
        open_checkpoint(str(tmp_path))


# -- config.json and ordering ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"tie_word_embeddings": True}, True),
        ({"tie_word_embeddings": False, "model_type": "qwen2"}, False),
        ({"model_type": "qwen2"}, None),
        ({"tie_word_embeddings": "yes"}, None),
        (None, None),
    ],
    ids=["true", "false", "absent", "not-bool", "no-config"],
)
def test_tie_word_embeddings_from_config(
    make_checkpoint: MakeCkpt, config: dict | None, expected: bool | None
) -> None:
    path = make_checkpoint("m", tiny_model(), config=config)
    ckpt = open_checkpoint(str(path))
    assert ckpt.tie_word_embeddings is expected
    assert ckpt.config == (config or {})
    # The config next to model.safetensors is found when the file itself is given, too.
    assert open_checkpoint(str(path / "model.safetensors")).tie_word_embeddings is expected


def test_config_of_sharded_checkpoint(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model(), shards=2, config={"tie_word_embeddings": True})
    assert open_checkpoint(str(path)).tie_word_embeddings is True


def test_broken_config_is_ignored(make_checkpoint: MakeCkpt) -> None:
    path = make_checkpoint("m", tiny_model())
    (path / "config.json").write_text("{broken")
    assert open_checkpoint(str(path)).config == {}
    (path / "config.json").write_text("[1, 2]")
    assert open_checkpoint(str(path)).config == {}


def _disk_order(ckpt_dir: Path) -> list[str]:
    """Tensor names ordered by (shard file name, data offset), read from the raw headers."""
    keyed = []
    for file in sorted(ckpt_dir.glob("*.safetensors")):
        blob = file.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + n])
        header.pop("__metadata__", None)
        keyed += [(file.name, e["data_offsets"][0], name) for name, e in header.items()]
    return [name for *_, name in sorted(keyed)]


@pytest.mark.parametrize("shards", [1, 3])
def test_file_position_orders_by_file_then_offset(make_checkpoint: MakeCkpt, shards: int) -> None:
    tensors = tiny_model()
    # Mixed dtypes make safetensors reorder tensors inside a file (by alignment, then name).
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors[
        "model.layers.0.mlp.up_proj.weight"
    ].float()
    tensors["model.norm.weight"] = tensors["model.norm.weight"].double()
    path = make_checkpoint("m", dict(reversed(tensors.items())), shards=shards)
    ckpt = open_checkpoint(str(path))
    for name, info in ckpt.tensors.items():
        assert ckpt.file_position(name) == (ckpt.files.index(info.file), info.start)
    ordered = sorted(ckpt.tensors, key=ckpt.file_position)
    assert ordered == _disk_order(path)
    positions = [ckpt.file_position(n) for n in ordered]
    assert len(set(positions)) == len(positions)
    if shards > 1:
        file_ids = [p[0] for p in positions]
        assert file_ids == sorted(file_ids)
        assert set(file_ids) == {0, 1, 2}
