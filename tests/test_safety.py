"""Nothing that opdgeo did not write is ever removed or replaced (issue: Robustness II).

Battery per class: ``cache --clear`` pointed at things that are not a cache; ``-o`` through
symlinks, onto special files, into checkpoint folders, with missing folders, full disks and
read-only folders; cache writes that fail; cache entries that are damaged or poisoned (the
output must equal ``--no-cache`` exactly).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opdgeo import outputs
from opdgeo.cache import BaseCache, StoredBase
from opdgeo.cache_folder import TAG_NAME
from opdgeo.cli import app
from opdgeo.errors import OutputError
from tests.conftest import perturb, tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time
runner = CliRunner()


def model() -> dict[str, torch.Tensor]:
    return tiny_model(layers=1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    return {
        "base": write_checkpoint(root / "base", model(), config={"model_type": "qwen2"}),
        "tuned": write_checkpoint(root / "tuned", perturb(model(), 0.01)),
    }


def tree(folder: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Everything under ``folder`` (not following symlinks): mode, size and content/link."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[str(p.relative_to(folder))] = (st.st_mode, 0, os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, p.read_bytes())
        else:
            out[str(p.relative_to(folder))] = (st.st_mode, 0, b"")
    return out


def compare(ckpts: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    args = ["compare", str(ckpts["base"]), str(ckpts["tuned"]), "-f", "csv", *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def fill_cache(ckpts: dict[str, Path], store: Path) -> list[Path]:
    code, _, err = compare(ckpts, "-q", "--cache-dir", str(store))
    assert code == 0, err
    return sorted(store.glob("*/*.safetensors"))


# -- cache --clear --------------------------------------------------------------------------


def model_folder(root: Path) -> Path:
    folder = write_checkpoint(root, model(), config={"model_type": "qwen2"})
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("how", ["option", "env", "config"])
def test_clear_refuses_a_folder_that_holds_a_model(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = model_folder(tmp_path / "model")
    before = tree(folder)
    args = ["cache", "--clear"]
    if how == "option":
        args += ["--cache-dir", str(folder)]
    elif how == "env":
        monkeypatch.setenv("OPDGEO_CACHE_DIR", str(folder))
    else:
        config = tmp_path / "c.toml"
        config.write_text(f'[settings]\ncache_dir = "{folder}"\n')
        args += ["--config", str(config)]
    for extra in ([], ["--dry-run"]):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 1, result.stdout
        assert result.stderr.startswith("error: refusing to clear")
        assert len(result.stderr.strip().splitlines()) == 1
    assert tree(folder) == before


def test_compare_with_the_cache_pointed_at_a_model_writes_nothing_there(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    folder = model_folder(tmp_path / "model")
    before = tree(folder)
    config = tmp_path / "c.toml"
    config.write_text(f'[settings]\ncache_dir = "{folder}"\n')
    want = compare(ckpts, "-q", "--no-cache")[1]
    for extra in (["--cache-dir", str(folder)], ["--config", str(config)]):
        code, out, err = compare(ckpts, *extra)
        assert code == 0 and out == want
        assert "warning: not using" in err and "caching is off" in err
    assert tree(folder) == before


def test_clear_never_follows_a_symlinked_subfolder_or_entry(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    paths = fill_cache(ckpts, store)
    victim = model_folder(tmp_path / "victim")
    before = tree(victim)
    # a shard-like name (two hex digits) that no entry's shard uses: entries' keys are hashes
    used = {p.parent.name for p in paths}
    shard = store / next(f"{i:02x}" for i in range(256) if f"{i:02x}" not in used)
    shard.symlink_to(victim, target_is_directory=True)
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(store)])
    assert result.exit_code == 1 and "refusing to clear" in result.stderr
    assert tree(victim) == before and all(p.exists() for p in paths)
    shard.unlink()
    # a symlink named like an entry, pointing at a model file
    link = paths[0].parent / ("e" * 2 + "0" * 62 + ".safetensors")
    link.symlink_to(victim / "model.safetensors")
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(store)])
    assert result.exit_code == 1 and tree(victim) == before
    link.unlink()


def test_clear_refuses_a_renamed_model_file_and_a_symlinked_root(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    paths = fill_cache(ckpts, store)
    # a foreign safetensors file that only looks like an entry by name
    key = "ab" + "1" * 62
    (store / "ab").mkdir(exist_ok=True)
    impostor = store / "ab" / f"{key}.safetensors"
    impostor.write_bytes((ckpts["base"] / "model.safetensors").read_bytes())
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(store)])
    assert result.exit_code == 1 and impostor.exists() and all(p.exists() for p in paths)
    impostor.unlink()
    link = tmp_path / "link"
    link.symlink_to(store, target_is_directory=True)
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(link)])
    assert result.exit_code == 1 and "symlink" in result.stderr
    assert all(p.exists() for p in paths)


def test_dry_run_lists_exactly_what_clear_removes(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    paths = fill_cache(ckpts, store)
    leftover = paths[0].parent / ".tmp-abc123_x.safetensors"
    leftover.write_bytes(b"partial")
    result = runner.invoke(app, ["cache", "--clear", "--dry-run", "--cache-dir", str(store)])
    assert result.exit_code == 0, result.stderr
    listed = sorted(Path(line) for line in result.stdout.splitlines())
    assert listed == sorted([*paths, leftover])
    assert all(p.exists() for p in listed)
    result = runner.invoke(app, ["cache", "--clear", "--cache-dir", str(store)])
    assert result.exit_code == 0
    assert not any(p.exists() for p in listed)
    assert sorted(p.name for p in store.iterdir()) == [TAG_NAME]  # empty subfolders removed


# -- -o and the other outputs ---------------------------------------------------------------


def test_output_through_a_symlink_writes_the_target_and_keeps_the_link(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "real.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    code, _, err = compare(ckpts, "-q", "--no-cache", "-o", str(link))
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("run,base,regime")
    # a dangling link: the target is created, as the shell's > does
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "made.csv")
    assert compare(ckpts, "-q", "--no-cache", "-o", str(dangling))[0] == 0
    assert dangling.is_symlink() and (tmp_path / "made.csv").is_file()


def test_output_into_a_fifo_is_written_in_place(ckpts: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = compare(ckpts, "-q", "--no-cache", "-o", str(fifo))
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert got and got[0].startswith(b"run,base,regime")


def test_output_onto_a_full_device_fails_like_the_shell(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    device = tmp_path / "full"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # a private /dev/full
    except (PermissionError, OSError):
        pytest.skip("cannot create a character device here")
    code, out, err = compare(ckpts, "-q", "--no-cache", "-o", str(device))
    assert code == 1 and out == ""
    assert err.strip() == f"error: cannot write {device}: No space left on device"
    assert stat.S_ISCHR(device.lstat().st_mode)  # still the device, not a regular file
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def _cli(
    ckpts: dict[str, Path], *args: str, **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    """opdgeo in a fresh process: real descriptors (``>>``, pipes), which CliRunner replaces."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "opdgeo", "compare", str(ckpts["base"]),
               str(ckpts["tuned"]), "-q", "--no-cache", "-f", "csv", *args]  # fmt: skip
    return subprocess.run(command, env=env, timeout=110, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.mark.parametrize("case", ["append", "pipe", "fd-n", "full", "stdout-full"])
def test_output_to_a_descriptor_writes_the_descriptor(
    ckpts: dict[str, Path], tmp_path: Path, case: str
) -> None:
    """``-o /dev/stdout >> log`` appends to log (it was replaced by the report), a pipe works
    (``pipe:[...]`` is no path), ``/dev/fd/N`` is descriptor N, a full disk behind > is one line."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"kept line\n")
    if case in ("append", "fd-n"):
        with open(log, "ab") as fh:
            if case == "append":
                done = _cli(ckpts, "-o", "/dev/stdout", stdout=fh, stderr=subprocess.PIPE)
            else:
                fd = fh.fileno()  # passed to the child under the same number
                done = _cli(ckpts, "-o", f"/dev/fd/{fd}", pass_fds=(fd,), stderr=subprocess.PIPE)
        assert done.returncode == 0, done.stderr
        text = log.read_bytes()
        assert text.startswith(b"kept line\nrun,base,regime") and stat.S_ISREG(log.lstat().st_mode)
    elif case == "pipe":
        done = _cli(ckpts, "-o", "/dev/stdout", capture_output=True)
        assert done.returncode == 0 and done.stdout.startswith(b"run,base,regime"), done.stderr
    else:
        extra = ["-o", "/dev/stdout"] if case == "full" else []
        with open("/dev/full", "wb") as full:
            done = _cli(ckpts, *extra, stdout=full, stderr=subprocess.PIPE)
        where = "/dev/stdout" if case == "full" else "standard output"
        assert done.returncode == 1
        assert done.stderr.decode() == f"error: cannot write {where}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]


@pytest.mark.parametrize("where", ["dir-checkpoint", "next-to-file", "link-into"])
def test_output_inside_a_checkpoint_folder_is_refused(tmp_path: Path, where: str) -> None:
    base = write_checkpoint(tmp_path / "base", model())
    tuned = write_checkpoint(tmp_path / "tuned", perturb(model(), 0.01))
    inputs = [str(base), str(tuned)]
    if where == "dir-checkpoint":
        out = base / "report.csv"
    elif where == "next-to-file":
        inputs = [str(base / "model.safetensors"), str(tuned / "model.safetensors")]
        out = tuned / "report.csv"
    else:
        (tmp_path / "reports").symlink_to(base, target_is_directory=True)
        out = tmp_path / "reports" / "report.csv"
    before = tree(tmp_path / "base") | tree(tmp_path / "tuned")
    for option in ("-o", "--per-tensor", "--per-group"):
        result = runner.invoke(app, ["compare", *inputs, "-q", "--no-cache", option, str(out)])
        assert result.exit_code == 1, result.stdout
        assert result.stderr.startswith(f"error: refusing to write {out}")
    assert tree(tmp_path / "base") | tree(tmp_path / "tuned") == before


def test_missing_output_folder_is_refused_not_created(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "missing" / "dir" / "r.csv"
    code, _, err = compare(ckpts, "-q", "--no-cache", "-o", str(out))
    assert code == 1 and "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("failure", ["enospc-write", "enospc-rename", "read-only"])
def test_failed_writes_are_one_line_and_leave_nothing(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    if failure == "enospc-write":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, fd: int, mode: str) -> None:
                self.fh = real_fdopen(fd, mode)

            def __enter__(self) -> Full:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def fileno(self) -> int:
                return self.fh.fileno()

            def write(self, data: bytes) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

        def fdopen(fd: int, mode: str = "r", *args: object, **kwargs: object) -> object:
            if "w" not in mode:  # reads (config.json, headers) go through os.fdopen too
                return real_fdopen(fd, mode, *args, **kwargs)  # type: ignore[call-overload]
            return Full(fd, mode)

        monkeypatch.setattr(outputs.os, "fdopen", fdopen)
        want = "No space left on device"
    elif failure == "enospc-rename":

        def replace(src: str, dst: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(outputs.os, "replace", replace)
        want = "No space left on device"
    else:

        def mkstemp(**kwargs: object) -> tuple[int, str]:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(outputs.tempfile, "mkstemp", mkstemp)
        want = "Permission denied"
    code, _, err = compare(ckpts, "-q", "--no-cache", "-o", str(out))
    assert code == 1 and err.strip() == f"error: cannot write {out}: {want}"
    assert list(out.parent.iterdir()) == []


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        made = outputs.write_output(tmp_path / "new.csv", "a")
        assert stat.S_IMODE(made.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    kept = tmp_path / "kept.csv"
    kept.write_text("x")
    kept.chmod(0o600)
    outputs.write_output(kept, "y")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() == "y"
    with pytest.raises(OutputError, match="is a directory"):
        outputs.write_output(tmp_path, "z")


def test_plot_folder_in_a_missing_parent_is_refused(ckpts: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, _, err = compare(ckpts, "-q", "--no-cache", "--plot", str(tmp_path / "a" / "b"))
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "a").exists()


# -- the cache's own writes -----------------------------------------------------------------


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_a_failing_cache_write_warns_once_and_the_comparison_goes_on(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    from safetensors import SafetensorError

    import opdgeo.cache

    calls = []

    def full_disk(tensors: object, path: str, metadata: object = None) -> None:
        calls.append(path)
        Path(path).write_bytes(b"partial")
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    want = compare(ckpts, "-q", "--no-cache")[1]
    monkeypatch.setattr(opdgeo.cache, "save_file", full_disk)
    store = tmp_path / "store"
    code, out, err = compare(ckpts, "--cache-dir", str(store))
    assert code == 0 and out == want
    assert err.count("warning: cannot write the base cache") == 1, err
    assert len(calls) == 1  # no retry per matrix after the first failure
    assert not [p for p in store.rglob("*") if p.is_file() and p.name != TAG_NAME]


# -- damaged and poisoned entries -----------------------------------------------------------


def _poison(path: Path, how: str) -> None:
    cache = BaseCache(path.parent.parent)
    key = path.stem
    entry = cache.load(key)
    assert entry is not None
    s, small, other, method = entry.s, entry.small, entry.other, entry.method
    thresholds = dict(entry.thresholds)
    if how == "flip-bit":  # damage without a matching checksum
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))
        return
    if how == "nan":
        s = s.clone()
        s[1] = float("nan")
    elif how == "short-s":
        s = s[:-1].contiguous()
    elif how == "wide-vectors":
        small = torch.cat([small, small[:1]], dim=0)  # one row too many
    elif how == "scaled":
        s = s * 1.001
    elif how == "other-matrix":
        gen = torch.Generator().manual_seed(5)
        small = torch.linalg.qr(torch.randn(small.shape, generator=gen, dtype=torch.float64))[0]
    elif how == "thresholds":
        thresholds = {k: (float("nan"), v[1]) for k, v in thresholds.items()}
    path.unlink()
    cache.save(key, StoredBase(s, small, other, method, thresholds))  # a valid checksum


@pytest.mark.parametrize(
    "how",
    ["flip-bit", "nan", "short-s", "wide-vectors", "scaled", "other-matrix", "thresholds"],
)
@pytest.mark.parametrize("tier", ["standard", "exact"])
def test_a_poisoned_cache_gives_the_output_of_no_cache(
    ckpts: dict[str, Path], tmp_path: Path, how: str, tier: str
) -> None:
    per = tmp_path / "t.csv"
    opts = ["-q", "--tier", tier, "--per-tensor", str(per)]
    code, want, _ = compare(ckpts, *opts, "--no-cache")
    want_tensors = per.read_text()
    store = tmp_path / "store"
    for path in fill_cache(ckpts, store) if tier == "standard" else []:
        _poison(path, how)
    if tier == "exact":
        compare(ckpts, *opts, "--cache-dir", str(store))
        for path in sorted(store.glob("*/*.safetensors")):
            _poison(path, how)
    code, got, err = compare(ckpts, *opts, "--cache-dir", str(store))
    assert code == 0, err
    assert got == want and per.read_text() == want_tensors


# -- the demo's checkpoints -----------------------------------------------------------------

DEMO_SQUATTERS = ["model", "model-by-link", "config-only", "fifo", "other-label", "folder"]


@pytest.mark.parametrize("case", DEMO_SQUATTERS)
def test_demo_never_replaces_files_it_did_not_write(tmp_path: Path, case: str) -> None:
    from opdgeo.synthetic import CONFIG_TEXT, write_family

    demo = tmp_path / "demo"
    mine = model_folder(tmp_path / "mine")
    target = demo / ("sft" if case == "other-label" else "base")
    target.mkdir(parents=True)
    weights, config = target / "model.safetensors", target / "config.json"
    if case == "model":
        weights.write_bytes((mine / "model.safetensors").read_bytes())
    elif case == "model-by-link":
        weights.symlink_to(mine / "model.safetensors")
    elif case == "config-only":
        config.write_text('{"model_type": "llama"}\n')
    elif case == "fifo":
        os.mkfifo(weights)
    elif case == "other-label":  # the demo's own base weights, copied where sft goes
        write_family(tmp_path / "earlier")
        weights.write_bytes((tmp_path / "earlier" / "base" / "model.safetensors").read_bytes())
        config.write_text(CONFIG_TEXT)
    else:
        weights.mkdir()
    before = tree(tmp_path / "mine") | tree(demo)
    result = runner.invoke(app, ["demo", str(demo), "-q", "-f", "csv"])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: refusing to write") and target.name in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert tree(tmp_path / "mine") | tree(demo) == before


def test_demo_replaces_its_own_files(tmp_path: Path) -> None:
    from opdgeo.synthetic import write_family

    first = {k: (p / "model.safetensors").read_bytes() for k, p in write_family(tmp_path).items()}
    (tmp_path / "notes.txt").write_text("mine")
    again = write_family(tmp_path, seed=1)  # a rerun over an earlier demo: allowed
    assert all((p / "model.safetensors").read_bytes() != first[k] for k, p in again.items())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _oversized(path: Path, how: str) -> None:
    import json
    import struct

    if how == "sparse-16GiB":  # a valid safetensors file whose one tensor is 16 GiB of holes
        n = 2**31
        header = {"s": {"dtype": "F64", "shape": [n], "data_offsets": [0, 8 * n]}}
    else:  # a 2 MiB header of metadata before a tiny tensor
        header = {
            "__metadata__": {"key": path.stem, "pad": "x" * 2**21},
            "s": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
        }
    text = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text)
        fh.truncate(8 + len(text) + header["s"]["data_offsets"][1])  # type: ignore[index]


@pytest.mark.parametrize("how", ["sparse-16GiB", "big-header"])
def test_an_oversized_entry_is_rejected_before_it_is_read(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    import safetensors

    want = compare(ckpts, "-q", "--no-cache")[1]
    store = tmp_path / "store"
    paths = fill_cache(ckpts, store)
    for path in paths:
        _oversized(path, how)
    real_open = safetensors.safe_open
    opened: list[str] = []

    def safe_open(name: str, *args: object, **kwargs: object) -> object:
        opened.append(name)
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(safetensors, "safe_open", safe_open)
    code, out, err = compare(ckpts, "--cache-dir", str(store))
    assert code == 0 and out == want, err
    assert not set(opened) & {str(p) for p in paths}  # sized first, never opened
    assert all(p.stat().st_size < 2**20 for p in paths)  # recomputed and rewritten
