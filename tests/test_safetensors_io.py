"""The strict safetensors reader: exact round trips, and a clear FormatError for every defect."""

from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from opdgeo.errors import FormatError, SourceError
from opdgeo.io.safetensors import (
    DTYPE_BYTES,
    MAX_HEADER_BYTES,
    TensorInfo,
    TensorReader,
    read_header,
)

TORCH_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A tensor of ``shape`` whose bytes are random (so every bit pattern, NaNs included)."""
    gen = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (math.prod(shape) * itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def raw_file(
    path: Path, header: object, data: bytes = b"", *, header_len: int | None = None
) -> Path:
    """Write ``8-byte LE length + JSON(header) + data``; ``header_len`` overrides the length."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


# -- round trips ---------------------------------------------------------------------------

SHAPES = [(), (0, 4), (7,), (2, 3, 4), (5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES), ids=str)
def test_round_trip_exact(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    torch_dtype = TORCH_DTYPES[dtype]
    tensors = {
        "a": random_bits(shape, torch_dtype, seed=1),
        "b.weight": torch.randn(3, 2).to(torch_dtype),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})

    infos, metadata = read_header(path)
    assert metadata == {"format": "pt"}
    assert set(infos) == {"a", "b.weight"}
    reader = TensorReader()
    try:
        for name, expected in tensors.items():
            info = infos[name]
            assert info.name == name
            assert info.dtype == dtype
            assert info.shape == tuple(expected.shape)
            assert info.file == path
            assert info.numel == expected.numel()
            assert info.nbytes == expected.numel() * DTYPE_BYTES[dtype]
            assert info.is_float
            got = reader.read(info)
            assert got.dtype == torch_dtype
            assert tuple(got.shape) == tuple(expected.shape)
            assert as_bytes(got) == as_bytes(expected)
    finally:
        reader.close()


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES), ids=str)
def test_read_rows_returns_leading_rows(tmp_path: Path, dtype: str) -> None:
    torch_dtype = TORCH_DTYPES[dtype]
    full = random_bits((6, 3, 2), torch_dtype, seed=7)
    other = random_bits((4,), torch_dtype, seed=8)
    path = tmp_path / "rows.safetensors"
    save_file({"m": full, "other": other}, str(path))
    infos, _ = read_header(path)
    reader = TensorReader()
    for rows in range(0, 7):
        got = reader.read(infos["m"], rows=rows)
        assert tuple(got.shape) == (rows, 3, 2)
        assert as_bytes(got) == as_bytes(full[:rows])
    # Interleaving with another tensor (the file handle is shared) changes nothing.
    assert as_bytes(reader.read(infos["other"])) == as_bytes(other)
    assert as_bytes(reader.read(infos["m"], rows=2)) == as_bytes(full[:2])
    reader.close()


def test_read_rows_rejects_too_many_rows_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_file({"m": torch.zeros(3, 2), "s": torch.tensor(1.0)}, str(path))
    infos, _ = read_header(path)
    reader = TensorReader()
    with pytest.raises(ValueError, match="cannot take 4 rows"):
        reader.read(infos["m"], rows=4)
    with pytest.raises(ValueError, match="cannot take 1 rows"):
        reader.read(infos["s"], rows=1)
    reader.close()


def test_non_float_tensors_come_back_as_raw_bytes(tmp_path: Path) -> None:
    ids = torch.arange(5, dtype=torch.int64)
    path = tmp_path / "i.safetensors"
    save_file({"ids": ids}, str(path))
    infos, _ = read_header(path)
    info = infos["ids"]
    assert info.dtype == "I64"
    assert not info.is_float
    got = TensorReader().read(info)
    assert got.dtype == torch.uint8
    assert got.numpy().tobytes() == as_bytes(ids)


def test_reader_switches_between_files(tmp_path: Path) -> None:
    a, b = torch.randn(4, 4), torch.randn(2, 2)
    save_file({"x": a}, str(tmp_path / "a.safetensors"))
    save_file({"x": b}, str(tmp_path / "b.safetensors"))
    ia, _ = read_header(tmp_path / "a.safetensors")
    ib, _ = read_header(tmp_path / "b.safetensors")
    reader = TensorReader()
    for _ in range(2):
        assert torch.equal(reader.read(ia["x"]), a)
        assert torch.equal(reader.read(ib["x"]), b)
    reader.close()
    reader.close()  # idempotent


def test_truncated_data_is_detected_at_read_time(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.randn(8, 8)}, str(path))
    infos, _ = read_header(path)
    # Cut the file after the header was read: the reader still refuses a short read.
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated") as err:
        TensorReader().read(infos["x"])
    assert str(path) in str(err.value)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "gone.safetensors"
    with pytest.raises(SourceError, match="cannot read") as err:
        read_header(path)
    assert not isinstance(err.value, FormatError)
    assert str(path) in str(err.value)
    info = TensorInfo("x", "F32", (2,), path, 8, 8)
    with pytest.raises(SourceError, match="cannot open"):
        TensorReader().read(info)


def test_empty_header(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "empty.safetensors", {})
    assert read_header(path) == ({}, {})
    path = raw_file(tmp_path / "null-meta.safetensors", {"__metadata__": None})
    assert read_header(path) == ({}, {})


def test_zero_size_tensors_may_share_offsets(tmp_path: Path) -> None:
    header = {
        "e1": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
        "e2": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]},
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    }
    data = struct.pack("<2f", 1.5, -2.0)
    path = raw_file(tmp_path / "z.safetensors", header, data)
    infos, _ = read_header(path)
    reader = TensorReader()
    assert reader.read(infos["x"]).tolist() == [1.5, -2.0]
    assert tuple(reader.read(infos["e1"]).shape) == (0, 4)


# -- malformed files -----------------------------------------------------------------------

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA_8 = bytes(8)


def _entry(**kw: object) -> dict[str, object]:
    return {**F32_2, **kw}


MALFORMED: list[tuple[str, object, bytes, int | None, str]] = [
    # (id, header, data, header_len override, expected problem regex)
    ("too-short", b"", b"", None, "shorter than the 8-byte header length"),
    ("header-longer-than-file", {"x": F32_2}, DATA_8, 10_000, "larger than the file"),
    ("header-above-limit", b"", b"", MAX_HEADER_BYTES + 1, "exceeds the 100000000-byte limit"),
    ("header-not-json", b"{not json", b"", None, "header is not JSON"),
    ("header-not-utf8", b'{"\xff": 1}', b"", None, "header is not JSON"),
    ("header-list", [1, 2], b"", None, "header is not a JSON object"),
    ("header-string", "abc", b"", None, "header is not a JSON object"),
    ("entry-not-object", {"x": [1, 2]}, b"", None, "entry for 'x' is not an object"),
    ("unknown-dtype", {"x": _entry(dtype="F128")}, DATA_8, None, "unknown dtype 'F128'"),
    ("missing-dtype", {"x": {"shape": [2], "data_offsets": [0, 8]}}, DATA_8, None,
     "unknown dtype None"),
    ("negative-dim", {"x": _entry(shape=[-2])}, DATA_8, None, "invalid shape"),
    ("float-dim", {"x": _entry(shape=[2.0])}, DATA_8, None, "invalid shape"),
    ("string-dim", {"x": _entry(shape=["2"])}, DATA_8, None, "invalid shape"),
    ("bool-dim", {"x": _entry(shape=[True, 2])}, DATA_8, None, "invalid shape"),
    ("shape-not-list", {"x": _entry(shape=2)}, DATA_8, None, "invalid shape"),
    ("offsets-missing", {"x": {"dtype": "F32", "shape": [2]}}, DATA_8, None,
     "invalid data_offsets"),
    ("offsets-three", {"x": _entry(data_offsets=[0, 4, 8])}, DATA_8, None,
     "invalid data_offsets"),
    ("offsets-float", {"x": _entry(data_offsets=[0, 8.0])}, DATA_8, None,
     "invalid data_offsets"),
    ("offsets-past-end", {"x": _entry(data_offsets=[8, 16])}, DATA_8, None,
     r"data_offsets \[8, 16\] outside the 8-byte data"),
    ("offsets-negative", {"x": _entry(data_offsets=[-8, 0])}, DATA_8, None,
     r"data_offsets \[-8, 0\] outside"),
    ("offsets-reversed", {"x": _entry(data_offsets=[8, 0])}, DATA_8, None,
     r"data_offsets \[8, 0\] outside"),
    ("span-too-small", {"x": _entry(data_offsets=[0, 4])}, DATA_8, None,
     r"spans 4 bytes but shape \[2\] x F32 needs 8"),
    ("span-too-large", {"x": _entry(shape=[1])}, DATA_8, None,
     r"spans 8 bytes but shape \[1\] x F32 needs 4"),
    ("overlap", {"x": _entry(data_offsets=[0, 8]), "y": _entry(shape=[1], data_offsets=[4, 8])},
     DATA_8, None, "tensors 'x' and 'y' overlap"),
    ("same-offsets", {"a": _entry(), "b": _entry()}, DATA_8, None, "tensors 'a' and 'b' overlap"),
    ("metadata-list", {"__metadata__": ["a"], "x": F32_2}, DATA_8, None,
     "__metadata__ is not an object"),
    ("metadata-string", {"__metadata__": "pt", "x": F32_2}, DATA_8, None,
     "__metadata__ is not an object"),
    ("metadata-empty-list", {"__metadata__": [], "x": F32_2}, DATA_8, None,
     "__metadata__ is not an object"),
    ("metadata-zero", {"__metadata__": 0, "x": F32_2}, DATA_8, None,
     "__metadata__ is not an object"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("header", "data", "header_len", "problem"),
    [pytest.param(*case[1:], id=case[0]) for case in MALFORMED],
)
def test_malformed_file_raises_format_error(
    tmp_path: Path, header: object, data: bytes, header_len: int | None, problem: str
) -> None:
    path = tmp_path / "bad.safetensors"
    if header == b"" and header_len is None:
        path.write_bytes(b"\x01\x02\x03")  # shorter than the 8-byte length
    else:
        raw_file(path, header, data, header_len=header_len)
    with pytest.raises(FormatError, match=problem) as err:
        read_header(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a valid safetensors file: ")
    assert isinstance(err.value, SourceError)
    assert err.value.exit_code == 1


def test_header_above_limit_is_refused_before_reading(tmp_path: Path) -> None:
    # A huge claimed length on a large-enough file is still refused by the limit check.
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(FormatError, match="exceeds"):
        read_header(path)


# -- properties ----------------------------------------------------------------------------

_DTYPE_CHOICE = st.sampled_from(["F32", "F16", "BF16"])
_SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
_TENSORS = st.dictionaries(
    st.text("abcxyz._0123", min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
    st.tuples(_DTYPE_CHOICE, _SHAPE),
    min_size=1,
    max_size=4,
)


def _save(path: Path, spec: dict[str, tuple[str, tuple[int, ...]]], seed: int) -> dict:
    tensors = {
        name: random_bits(shape, TORCH_DTYPES[dtype], seed + i)
        for i, (name, (dtype, shape)) in enumerate(spec.items())
    }
    save_file(tensors, str(path), metadata={"k": "v"})
    return tensors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_TENSORS, seed=st.integers(0, 2**16))
def test_property_round_trip(spec: dict[str, tuple[str, tuple[int, ...]]], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.safetensors"
        tensors = _save(path, spec, seed)
        infos, metadata = read_header(path)
        assert metadata == {"k": "v"}
        assert set(infos) == set(tensors)
        reader = TensorReader()
        for name, expected in tensors.items():
            assert infos[name].dtype == spec[name][0]
            assert infos[name].shape == spec[name][1]
            got = reader.read(infos[name])
            assert got.dtype == expected.dtype
            assert tuple(got.shape) == tuple(expected.shape)
            assert as_bytes(got) == as_bytes(expected)
            if expected.dim() and expected.shape[0]:
                rows = expected.shape[0] - 1
                assert as_bytes(reader.read(infos[name], rows=rows)) == as_bytes(expected[:rows])
        reader.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=_TENSORS,
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["truncate-header", "truncate-data", "flip-header"]),
    where=st.floats(0.0, 1.0, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_property_corruption_never_crashes(
    spec: dict[str, tuple[str, tuple[int, ...]]], seed: int, mode: str, where: float, bit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        _save(path, spec, seed)
        blob = bytearray(path.read_bytes())
        (n,) = struct.unpack("<Q", blob[:8])
        if mode == "truncate-header":
            blob = blob[: int(where * (8 + n))]  # somewhere in the length prefix or the JSON
        elif mode == "truncate-data":
            if len(blob) == 8 + n:
                blob = blob[: int(where * (8 + n))]  # no data: cut the header instead
            else:
                blob = blob[: 8 + n + int(where * (len(blob) - 8 - n))]
        else:
            blob[int(where * (8 + n))] ^= 1 << bit  # length prefix included
        path.write_bytes(bytes(blob))
        try:
            infos, _ = read_header(path)
            reader = TensorReader()
            for info in infos.values():
                got = reader.read(info)
                assert got.numel() * got.element_size() == info.nbytes
            reader.close()
        except (FormatError, SourceError) as exc:
            assert str(path) in str(exc)


# -- mapped reads (the scan tier) --------------------------------------------------------------


def _mapped_reader(monkeypatch: pytest.MonkeyPatch) -> TensorReader:
    from opdgeo.io import safetensors as st_io

    monkeypatch.setattr(st_io, "MAP_MIN_BYTES", 1)  # map every tensor, however small
    reader = TensorReader()
    reader.mapped = True
    return reader


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES), ids=str)
def test_mapped_reads_equal_plain_reads(
    tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tensor (unaligned offsets, odd sizes, rows, zero-size) maps to the same bytes."""
    tensors = {
        f"t{i}": random_bits(shape, TORCH_DTYPES[dtype], seed=i)
        for i, shape in enumerate([(3,), (0, 4), (5, 3), (1000, 7), (2, 3, 4), (4099,)])
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    infos, _ = read_header(path)
    reader = _mapped_reader(monkeypatch)
    for name, want in tensors.items():
        assert as_bytes(reader.read(infos[name])) == as_bytes(want), name
        if want.dim() and want.shape[0] > 1:
            assert as_bytes(reader.read(infos[name], rows=1)) == as_bytes(want[:1]), name
    reader.close()


def test_mapped_tensor_writes_never_reach_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.arange(4096, dtype=torch.float32)}, str(path))
    before = path.read_bytes()
    infos, _ = read_header(path)
    got = _mapped_reader(monkeypatch).read(infos["x"])
    got.add_(1.0)  # a private (copy-on-write) mapping: this process's copy only
    del got
    assert path.read_bytes() == before


def test_mapped_read_refuses_a_truncated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"x": torch.randn(64, 64)}, str(path))
    infos, _ = read_header(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated") as err:
        _mapped_reader(monkeypatch).read(infos["x"])
    assert str(path) in str(err.value)


def test_mapping_is_released_with_the_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded: a tensor's mapping goes when the tensor does."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps")
    path = tmp_path / "r.safetensors"
    save_file({"x": torch.randn(256, 256)}, str(path))
    infos, _ = read_header(path)
    reader = _mapped_reader(monkeypatch)
    got = reader.read(infos["x"])
    assert str(path) in maps.read_text()
    del got
    reader.close()
    assert str(path) not in maps.read_text()
