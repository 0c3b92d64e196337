"""The on-disk base cache: hits skip W0's decomposition, misses are never stale, bad entries
are rewritten, warm results are bit-identical to cold ones, and failures only cost speed."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import opdgeo.pair
from opdgeo.api import compare_checkpoints
from opdgeo.cache import CACHE_VERSION, BaseCache, default_dir, tensor_identity
from opdgeo.cli import app
from opdgeo.config import Config, Settings
from opdgeo.errors import OpdgeoWarning
from opdgeo.io import open_checkpoint
from tests.conftest import perturb, tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time
runner = CliRunner()
N_MATRICES = 7
"""Spectral matrices of :func:`model`: q, k, v, o, gate, up, down."""


def model() -> dict[str, torch.Tensor]:
    """A one-layer toy model (small, so that the many runs below stay fast)."""
    return tiny_model(layers=1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache-ckpts")
    return {
        "base": write_checkpoint(root / "base", model()),
        "tuned": write_checkpoint(root / "tuned", perturb(model(), 0.01)),
    }


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of decompositions (``spectrum``) and mask thresholds computed from scratch."""
    seen = {"spectrum": 0, "threshold": 0}
    real_spectrum, real_threshold = opdgeo.pair.spectrum, opdgeo.pair.fraction_threshold

    def spectrum(w, k, method="gram"):  # type: ignore[no-untyped-def]
        seen["spectrum"] += 1
        return real_spectrum(w, k, method)

    def threshold(x, frac, largest):  # type: ignore[no-untyped-def]
        seen["threshold"] += 1
        return real_threshold(x, frac, largest)

    monkeypatch.setattr(opdgeo.pair, "spectrum", spectrum)
    monkeypatch.setattr(opdgeo.pair, "fraction_threshold", threshold)
    return seen


def compare(
    ckpts: dict[str, Path],
    tmp_path: Path,
    *extra: str,
    cache_dir: Path | None = None,
    base: Path | None = None,
) -> tuple[str, str]:
    """(summary CSV, per-tensor CSV) of base vs tuned; ``cache_dir=None`` means --no-cache."""
    per = tmp_path / "per-tensor.csv"
    args = ["compare", str(base or ckpts["base"]), str(ckpts["tuned"]), "-f", "csv", "-q"]
    args += ["--per-tensor", str(per), *extra]
    args += ["--cache-dir", str(cache_dir)] if cache_dir else ["--no-cache"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr or result.exception
    return result.stdout, per.read_text()


def entries(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.safetensors")) if root.is_dir() else []


def reset(counts: dict[str, int]) -> None:
    counts.update(spectrum=0, threshold=0)


def test_cold_run_writes_one_entry_per_matrix_and_warm_run_skips_w0(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    cold = compare(ckpts, tmp_path, cache_dir=store)
    n = int(pd.read_csv(io.StringIO(cold[0]))["n_matrices"].iloc[0])
    assert n == N_MATRICES
    assert counts == {"spectrum": 2 * n, "threshold": 2 * n}  # W0 and W1; low + principal
    assert len(entries(store)) == n
    assert BaseCache(store).size() == (n, sum(p.stat().st_size for p in entries(store)))
    stamps = {p: p.stat().st_mtime_ns for p in entries(store)}
    reset(counts)
    warm = compare(ckpts, tmp_path, cache_dir=store)
    assert counts == {"spectrum": n, "threshold": 0}  # only W1 is decomposed
    assert warm == cold  # summary and per-tensor CSV, byte for byte
    assert {p: p.stat().st_mtime_ns for p in entries(store)} == stamps  # nothing rewritten
    assert compare(ckpts, tmp_path) == cold  # --no-cache


def test_entries_hold_what_the_docs_say(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    compare(ckpts, tmp_path, cache_dir=store)
    ckpt = open_checkpoint(str(ckpts["base"]))
    cache = BaseCache(store)
    name = "model.layers.0.mlp.gate_proj.weight"  # 64 x 32: the small side is 32
    identity = tensor_identity(ckpt, name)
    assert identity is not None
    key = cache.key(identity, Settings())
    path = store / key[:2] / f"{key}.safetensors"
    assert path.is_file()
    tensors = load_file(str(path))
    assert tensors["s"].dtype == tensors["small"].dtype == torch.float64
    assert tensors["s"].shape == (32,) and tensors["small"].shape[0] == 32
    assert "other" not in tensors  # the Gram route stores the smaller side only
    entry = cache.load(key)
    assert entry is not None and entry.method == "gram-eigh-f64"
    assert set(entry.thresholds) == {"low:0.3", f"principal:0.3:{2}"}
    w0 = ckpt.read(name).double()
    torch.testing.assert_close(entry.s, torch.linalg.svdvals(w0), rtol=1e-10, atol=1e-12)
    ckpt.close()


def test_no_cache_writes_nothing(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    per = tmp_path / "t.csv"
    args = [str(ckpts["base"]), str(ckpts["tuned"]), "-q", "--per-tensor", str(per)]
    result = runner.invoke(app, ["compare", *args, "--no-cache", "--cache-dir", str(store)])
    assert result.exit_code == 0
    assert not store.exists()
    config = tmp_path / "off.toml"
    config.write_text(f'[settings]\ncache = false\ncache_dir = "{store}"\n')
    result = runner.invoke(app, ["compare", *args, "--config", str(config)])
    assert result.exit_code == 0
    assert not store.exists()


def test_cli_cache_overrides_config(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = tmp_path / "off.toml"
    config.write_text(f'[settings]\ncache = false\ncache_dir = "{store}"\n')
    args = [str(ckpts["base"]), str(ckpts["tuned"]), "-q", "--config", str(config), "--cache"]
    assert runner.invoke(app, ["compare", *args]).exit_code == 0
    assert len(entries(store)) == N_MATRICES


@pytest.fixture
def own_base(tmp_path: Path) -> Path:
    """A base checkpoint this test may modify."""
    return write_checkpoint(tmp_path / "own-base", model())


def test_touched_base_is_a_miss(
    ckpts: dict[str, Path], own_base: Path, tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    cold = compare(ckpts, tmp_path, cache_dir=store, base=own_base)
    file = own_base / "model.safetensors"
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    reset(counts)
    again = compare(ckpts, tmp_path, cache_dir=store, base=own_base)
    assert counts["spectrum"] == 2 * N_MATRICES  # the touched base is decomposed again
    assert len(entries(store)) == 2 * N_MATRICES
    assert again == cold


def test_rewritten_base_is_never_served_stale_numbers(
    ckpts: dict[str, Path], own_base: Path, tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    compare(ckpts, tmp_path, cache_dir=store, base=own_base)
    file = own_base / "model.safetensors"
    old = file.stat()
    # other values, same names, shapes, dtypes and therefore the same file size
    write_checkpoint(own_base, perturb(model(), 0.05, seed=9))
    assert file.stat().st_size == old.st_size
    # a later modification time, as a real rewrite has (the clock's tick may be coarse)
    os.utime(file, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    reset(counts)
    warm = compare(ckpts, tmp_path, cache_dir=store, base=own_base)
    assert counts["spectrum"] == 2 * N_MATRICES
    assert len(entries(store)) == 2 * N_MATRICES
    assert warm == compare(ckpts, tmp_path, base=own_base)  # the new base's numbers


def _corrupt(paths: list[Path]) -> None:
    """Damage every entry but the first in every way a crash, a full disk or a bad copy could."""
    good = paths[0].read_bytes()
    for i, path in enumerate(paths[1:]):
        data = path.read_bytes()
        kind = i % 5
        if kind == 0:
            path.write_bytes(data[: len(data) // 2])  # truncated
        elif kind == 1:
            path.write_bytes(b"")  # empty
        elif kind == 2:
            path.write_bytes(os.urandom(len(data)))  # garbage
        elif kind == 3:
            path.write_bytes(data[:8] + b"{not json" + data[17:])  # broken header
        else:
            path.write_bytes(good)  # a valid entry stored under another key


def test_corrupt_entries_are_ignored_and_rewritten(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    cold = compare(ckpts, tmp_path, cache_dir=store)
    paths = entries(store)
    _corrupt(paths)
    cache = BaseCache(store)
    assert all(cache.load(p.stem) is None for p in paths[1:])
    reset(counts)
    warm = compare(ckpts, tmp_path, cache_dir=store)
    assert warm == cold
    assert counts["spectrum"] == 2 * N_MATRICES - 1  # only the untouched entry was used
    assert entries(store) == paths
    assert all(cache.load(p.stem) is not None for p in paths)  # rewritten, valid again
    assert not [p for p in store.rglob("*") if p.name.startswith(".tmp-")]
    reset(counts)
    assert compare(ckpts, tmp_path, cache_dir=store) == cold
    assert counts["spectrum"] == N_MATRICES


def test_entry_with_wrong_dtype_or_shape_is_ignored(tmp_path: Path) -> None:
    from opdgeo.cache import StoredBase

    cache = BaseCache(tmp_path)
    s = torch.linspace(3, 1, 8, dtype=torch.float64)
    good = StoredBase(s, torch.eye(8, 3, dtype=torch.float64), None, "gram-eigh-f64", {})
    cache.save("a" * 64, good)
    assert cache.load("a" * 64) is not None and cache.hits == 1
    cache.save("b" * 64, StoredBase(s.float(), good.small.float(), None, "gram-eigh-f64", {}))
    assert cache.load("b" * 64) is None
    cache.save("c" * 64, StoredBase(s[:2], good.small, None, "gram-eigh-f64", {}))  # k > len(s)
    assert cache.load("c" * 64) is None
    assert cache.load("d" * 64) is None  # absent
    assert cache.hits == 1 and cache.writes == 3


def test_exact_and_standard_use_different_keys(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    standard = compare(ckpts, tmp_path, cache_dir=store)
    exact = compare(ckpts, tmp_path, "--exact", cache_dir=store)
    assert len(entries(store)) == 2 * N_MATRICES
    assert exact != standard
    reset(counts)
    assert compare(ckpts, tmp_path, "--tier", "exact", cache_dir=store) == exact
    assert counts["spectrum"] == N_MATRICES
    assert compare(ckpts, tmp_path, "--exact") == exact  # no cache
    reset(counts)
    assert compare(ckpts, tmp_path, cache_dir=store) == standard
    assert counts["spectrum"] == N_MATRICES
    methods = {BaseCache(store).load(p.stem).method for p in entries(store)}  # type: ignore[union-attr]
    assert methods == {"gram-eigh-f64", "svd-f64"}


def test_exact_entries_store_both_sides(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    compare(ckpts, tmp_path, "--exact", cache_dir=store)
    for path in entries(store):
        tensors = load_file(str(path))
        assert tensors["other"].dtype == torch.float64
        assert tensors["other"].shape[1] == tensors["small"].shape[1]


def test_larger_k_than_cached_recomputes(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    cold_default = compare(ckpts, tmp_path, cache_dir=store)
    reset(counts)
    warm_k = compare(ckpts, tmp_path, "--k", "8", cache_dir=store)
    assert counts["spectrum"] == 2 * N_MATRICES  # k = 8 is more than any entry holds
    assert warm_k == compare(ckpts, tmp_path, "--k", "8")
    assert len(entries(store)) == N_MATRICES  # the same keys, now holding more vectors
    reset(counts)
    assert compare(ckpts, tmp_path, "--k", "8", cache_dir=store) == warm_k
    assert counts["spectrum"] == N_MATRICES
    reset(counts)
    # a smaller k is served from the larger entries, with the numbers of a cold run
    warm = compare(ckpts, tmp_path, cache_dir=store)
    assert counts["spectrum"] == N_MATRICES
    got = pd.read_csv(io.StringIO(warm[1]))
    want = pd.read_csv(io.StringIO(cold_default[1]))
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-15)


def test_smaller_k_served_from_a_larger_entry_is_bit_identical(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """README: "Warm runs give bit-identical results to cold ones" - also when the entry
    was written by a run with a larger k (the other side's vectors must be rebuilt from the
    k columns a cold run uses, not from every stored column)."""
    store = tmp_path / "store"
    compare(ckpts, tmp_path, "--k", "8", cache_dir=store)
    assert compare(ckpts, tmp_path, cache_dir=store) == compare(ckpts, tmp_path)


def test_mask_thresholds_come_from_the_cache(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    cold = compare(ckpts, tmp_path, cache_dir=store)
    assert counts["threshold"] == 2 * N_MATRICES
    reset(counts)
    other_alpha = compare(ckpts, tmp_path, "--alpha", "0.2", cache_dir=store)
    assert counts == {"spectrum": N_MATRICES, "threshold": 2 * N_MATRICES}
    assert other_alpha == compare(ckpts, tmp_path, "--alpha", "0.2")
    assert other_alpha != cold
    for alpha, want in (("0.2", other_alpha), ("0.3", cold)):  # both are kept
        reset(counts)
        assert compare(ckpts, tmp_path, "--alpha", alpha, cache_dir=store) == want
        assert counts == {"spectrum": N_MATRICES, "threshold": 0}


def test_fast_tier_neither_reads_nor_writes(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    fast_cold = compare(ckpts, tmp_path, "--tier", "fast", cache_dir=store)
    assert not store.exists()
    compare(ckpts, tmp_path, cache_dir=store)  # a standard run fills it
    stamps = {p: p.stat().st_mtime_ns for p in entries(store)}

    def refuse(*_: object) -> None:
        raise AssertionError("the fast tier touched the base cache")

    monkeypatch.setattr(BaseCache, "load", refuse)
    monkeypatch.setattr(BaseCache, "save", refuse)
    assert compare(ckpts, tmp_path, "--tier", "fast", cache_dir=store) == fast_cold
    assert {p: p.stat().st_mtime_ns for p in entries(store)} == stamps
    assert BaseCache.for_settings(Settings(tier="fast")) is None
    assert BaseCache.for_settings(Settings(cache=False)) is None


def test_cache_command_reports_and_clears(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["cache", "--cache-dir", str(store)])
    assert result.exit_code == 0
    assert result.stdout == f"path\t{store}\nentries\t0\nbytes\t0\n"
    compare(ckpts, tmp_path, cache_dir=store)
    nbytes = sum(p.stat().st_size for p in entries(store))
    result = runner.invoke(app, ["cache", "--cache-dir", str(store)])
    assert result.exit_code == 0
    assert result.stdout == f"path\t{store}\nentries\t{N_MATRICES}\nbytes\t{nbytes}\n"
    assert result.stderr == ""
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(store)])
    assert result.exit_code == 0
    assert result.stdout == f"path\t{store}\nentries\t0\nbytes\t0\n"
    assert f"removed {N_MATRICES}" in result.stderr
    assert entries(store) == []


def test_cache_command_uses_the_default_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPDGEO_CACHE_DIR", str(tmp_path / "env"))
    result = runner.invoke(app, ["cache"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"path\t{tmp_path / 'env'}"


def test_default_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPDGEO_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "a"
    monkeypatch.delenv("OPDGEO_CACHE_DIR")
    assert default_dir() == tmp_path / "xdg" / "opdgeo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dir() == tmp_path / "home" / ".cache" / "opdgeo"
    assert BaseCache.for_settings(Settings()).root == tmp_path / "home" / ".cache" / "opdgeo"  # type: ignore[union-attr]
    explicit = BaseCache.for_settings(Settings(cache_dir=str(tmp_path / "x")))
    assert explicit is not None and explicit.root == tmp_path / "x"


def test_a_file_in_place_of_the_cache_dir_does_not_fail(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("occupied")
    want = compare(ckpts, tmp_path)
    # below a regular file: nothing can be created
    assert compare(ckpts, tmp_path, cache_dir=blocker / "cache") == want
    # the regular file itself, from a config file
    config = tmp_path / "c.toml"
    config.write_text(f'[settings]\ncache_dir = "{blocker}"\n')
    assert compare(ckpts, tmp_path, "--config", str(config), "--cache") == want
    assert blocker.read_text() == "occupied"
    runs = compare_checkpoints(
        str(ckpts["base"]), [str(ckpts["tuned"])], Config(Settings(cache_dir=str(blocker)))
    )
    assert runs[0].summary["n_matrices"] == N_MATRICES


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_cache_dir_does_not_fail(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(0o500)
    try:
        assert compare(ckpts, tmp_path, cache_dir=store) == compare(ckpts, tmp_path)
        assert entries(store) == []
    finally:
        store.chmod(0o700)


def test_save_failure_warns_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opdgeo import cache as cache_module
    from opdgeo.cache import StoredBase

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "save_file", full_disk)
    store = BaseCache(tmp_path)
    s = torch.ones(3, dtype=torch.float64)
    with pytest.warns(OpdgeoWarning, match="cannot write the base cache"):
        store.save("e" * 64, StoredBase(s, torch.eye(3, 1, dtype=torch.float64), None, "m", {}))
    assert store.writes == 0 and store.failed
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no temporary file left


@pytest.fixture
def env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    store = tmp_path / "env-cache"
    monkeypatch.setenv("OPDGEO_CACHE_DIR", str(store))
    yield store


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_cache_never_writes_inside_a_checkpoint(
    ckpts: dict[str, Path], tmp_path: Path, env_cache: Path
) -> None:
    before = {k: _snapshot(v) for k, v in ckpts.items()}
    args = [str(ckpts["base"]), str(ckpts["tuned"]), "-q"]
    assert runner.invoke(app, ["compare", *args]).exit_code == 0  # the default: cache on
    assert runner.invoke(app, ["compare", *args, "--exact"]).exit_code == 0
    assert {k: _snapshot(v) for k, v in ckpts.items()} == before
    assert len(entries(env_cache)) == 2 * N_MATRICES


def test_cache_inside_a_checkpoint_only_when_asked(tmp_path: Path) -> None:
    base = write_checkpoint(tmp_path / "b", model())
    tuned = write_checkpoint(tmp_path / "t", perturb(model(), 0.01))
    ckpts = {"base": base, "tuned": tuned}
    inside = base / "opdgeo-cache"
    first = compare(ckpts, tmp_path, cache_dir=inside)
    assert len(entries(inside)) == N_MATRICES
    assert compare(ckpts, tmp_path, cache_dir=inside) == first  # the base still opens


def test_other_spellings_of_the_base_path_hit_the_same_entries(
    ckpts: dict[str, Path], tmp_path: Path, counts: dict[str, int]
) -> None:
    store = tmp_path / "store"
    compare(ckpts, tmp_path, cache_dir=store)
    link = tmp_path / "link-to-base"
    link.symlink_to(ckpts["base"], target_is_directory=True)
    for spelling in (ckpts["base"] / "model.safetensors", link, Path(f"{ckpts['base']}/")):
        reset(counts)
        compare(ckpts, tmp_path, cache_dir=store, base=spelling)
        assert counts["spectrum"] == N_MATRICES, spelling
    assert len(entries(store)) == N_MATRICES


def test_sharded_base_and_batch_reuse_the_cache(tmp_path: Path, counts: dict[str, int]) -> None:
    base = write_checkpoint(tmp_path / "base", model(), shards=3)
    runs = tmp_path / "runs"
    write_checkpoint(runs / "a", perturb(model(), 0.01, seed=2))
    write_checkpoint(runs / "b", perturb(model(), 0.002, seed=3))
    store = tmp_path / "store"
    args = ["batch", str(base), str(runs), "-f", "csv", "-q", "--cache-dir", str(store)]
    cold = runner.invoke(app, args)
    assert cold.exit_code == 0, cold.stderr
    assert counts["spectrum"] == 3 * N_MATRICES  # W0 once, W1 of each run
    assert len(entries(store)) == N_MATRICES
    reset(counts)
    warm = runner.invoke(app, args)
    assert warm.stdout == cold.stdout
    assert counts["spectrum"] == 2 * N_MATRICES


def test_keys_depend_on_method_device_identity_and_version() -> None:
    cache = BaseCache(Path("unused"))
    identity = "file|/x/model.safetensors|10|20|w|BF16|[4, 4]|8"
    key = cache.key(identity, Settings())
    assert len(key) == 64 and key == cache.key(identity, Settings(alpha=0.1, angle_k=7))
    assert key == cache.key(identity, Settings(tier="fast"))  # (the fast tier has no cache)
    others = {
        cache.key(identity, Settings(tier="exact")),
        cache.key(identity, Settings(device="cuda")),
        cache.key(identity, Settings(device="cuda:1", tier="exact")),
        cache.key(identity.replace("|20|", "|21|"), Settings()),
        cache.key(identity.replace("|10|", "|11|"), Settings()),
    }
    assert key not in others and len(others) == 5
    assert cache.key(identity, Settings(device="cuda:1")) == cache.key(
        identity, Settings(device="cuda")
    )
    assert CACHE_VERSION >= 1


def test_tensor_identity_changes_with_the_file(own_base: Path) -> None:
    ckpt = open_checkpoint(str(own_base))
    name = "model.layers.0.self_attn.o_proj.weight"
    first = tensor_identity(ckpt, name)
    assert first is not None and name in first and str(own_base.resolve()) in first
    assert tensor_identity(ckpt, "model.layers.0.self_attn.q_proj.weight") != first
    file = own_base / "model.safetensors"
    st = file.stat()
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert tensor_identity(ckpt, name) != first
    file.unlink()
    assert tensor_identity(ckpt, name) is None  # unreadable: not cached at all
