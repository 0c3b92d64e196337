"""Read-ahead on a background thread (same results, bounded memory, errors and interrupts
surface as usual and stop the thread) and torch's thread count."""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo import engine, readahead, threads
from opdgeo.api import compare_checkpoints
from opdgeo.cli import app
from opdgeo.config import Config, Settings
from opdgeo.errors import FormatError
from opdgeo.io import Checkpoint, open_checkpoint
from opdgeo.pairing import plan_pairs
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()
THREAD = "opdgeo-read-ahead"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("read-ahead")
    model = tiny_model(layers=1)
    return {
        "base": write_checkpoint(root / "base", model, shards=2),
        "a": write_checkpoint(root / "a", perturb(model, 0.01, seed=3)),
        "b": write_checkpoint(root / "b", perturb(model, 0.001, seed=4), shards=3),
    }


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD) and t.is_alive()]


def assert_no_reader() -> None:
    deadline = time.monotonic() + 5
    while readers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert readers() == []


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    assert_no_reader()
    yield
    assert_no_reader()


def config_file(tmp_path: Path, ahead: int) -> Path:
    path = tmp_path / f"ahead{ahead}.toml"
    path.write_text(f"[settings]\nread_ahead = {ahead}\ncache = false\n")
    return path


def frames(ckpts: dict[str, Path], ahead: int) -> pd.DataFrame:
    runs = compare_checkpoints(
        str(ckpts["base"]),
        [str(ckpts["a"]), str(ckpts["b"])],
        Config(Settings(read_ahead=ahead, cache=False)),
    )
    return pd.concat([r.tensors for r in runs], ignore_index=True)


def test_results_do_not_depend_on_read_ahead(ckpts: dict[str, Path]) -> None:
    want = frames(ckpts, 0)
    assert len(want) == 2 * 11
    for ahead in (1, 2, 5):
        pd.testing.assert_frame_equal(frames(ckpts, ahead), want, check_exact=True)


def test_cli_results_do_not_depend_on_read_ahead(ckpts: dict[str, Path], tmp_path: Path) -> None:
    outs = set()
    for ahead in (0, 2):
        per = tmp_path / f"per{ahead}.csv"
        args = ["compare", str(ckpts["base"]), str(ckpts["a"]), "-f", "csv", "-q"]
        args += ["--config", str(config_file(tmp_path, ahead)), "--per-tensor", str(per)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        outs.add((result.stdout, per.read_text()))
    assert len(outs) == 1


class ReadLog:
    """Wraps Checkpoint.read: which thread read what, and weak references to the tensors."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, base_label: str) -> None:
        self.base_label = base_label
        self.base_reads = 0
        self.threads: set[str] = set()
        self.order: list[str] = []
        self.live: list[weakref.ref[torch.Tensor]] = []
        self.lock = threading.Lock()
        real = Checkpoint.read

        def read(ckpt: Checkpoint, name: str, *args: Any, **kwargs: Any) -> torch.Tensor:
            tensor = real(ckpt, name, *args, **kwargs)
            with self.lock:
                self.threads.add(threading.current_thread().name)
                self.live.append(weakref.ref(tensor))
                if ckpt.label == self.base_label:
                    self.base_reads += 1
                    self.order.append(name)
            return tensor

        monkeypatch.setattr(Checkpoint, "read", read)

    def alive(self) -> int:
        with self.lock:
            return sum(r() is not None for r in self.live)


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_reads_in_flight_are_bounded(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    log = ReadLog(monkeypatch, str(ckpts["base"]))
    real = engine.analyze_pair
    seen: list[tuple[int, int]] = []  # (tensor sets read ahead of the current one, live tensors)
    done = {"n": 0}
    total = 11

    def analyze(*args: Any, **kwargs: Any) -> dict[str, Any]:
        current = done["n"] + 1
        # give the reader every chance to run ahead as far as it may
        want = min(current + ahead, total)
        deadline = time.monotonic() + 5
        while log.base_reads < want and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.01)
        seen.append((log.base_reads - current, log.alive()))
        done["n"] = current
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "analyze_pair", analyze)
    runs = compare_checkpoints(
        str(ckpts["base"]), [str(ckpts["a"])], Config(Settings(read_ahead=ahead, cache=False))
    )
    assert runs[0].summary["n_tensors"] == total
    leads = [lead for lead, _ in seen]
    # the queue holds `ahead` sets, the reader at most one more waiting to be queued
    assert max(leads) <= (ahead + 1 if ahead else 0)
    if ahead:
        assert max(leads) >= ahead  # and it does read ahead
        assert {t.rsplit("_", 1)[0] for t in log.threads} == {THREAD}
    else:
        assert log.threads == {threading.current_thread().name}
    # base + tuned tensor of the current set and of every set read ahead
    assert max(live for _, live in seen) <= 2 * (max(leads) + 1)


def test_read_order_follows_the_files(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = []
    for ahead in (0, 2):
        log = ReadLog(monkeypatch, str(ckpts["base"]))
        frames(ckpts, ahead)
        orders.append(log.order)
        monkeypatch.undo()
    assert orders[0] == orders[1] and len(orders[0]) == 11


def test_bytes_in_flight_are_bounded(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny byte budget, at most two copies of the largest tensor set are held."""
    monkeypatch.setattr(readahead, "READ_AHEAD_MIN_BYTES", 1)
    base, tuned = open_checkpoint(str(ckpts["base"])), open_checkpoint(str(ckpts["a"]))
    sizes = {n: base.tensors[n].nbytes + tuned.tensors[n].nbytes for n in base.tensors}
    log = ReadLog(monkeypatch, str(ckpts["base"]))
    real = engine.analyze_pair
    outstanding: list[int] = []
    done: list[str] = []

    def analyze(pair: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(0.01)
        with log.lock:
            outstanding.append(sum(sizes[n] for n in log.order[len(done) :]))
        done.append(pair.base_name)
        return real(pair, *args, **kwargs)

    monkeypatch.setattr(engine, "analyze_pair", analyze)
    settings = Settings(read_ahead=4, cache=False)
    plan = plan_pairs(base, tuned, settings)
    records = list(engine.compare(base, tuned, plan, settings))
    assert len(records) == 11
    assert max(outstanding) <= 2 * max(sizes.values())
    base.close()
    tuned.close()


def _failing_read(monkeypatch: pytest.MonkeyPatch, after: int, exc: BaseException) -> None:
    real = Checkpoint.read
    calls = {"n": 0}

    def read(ckpt: Checkpoint, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return real(ckpt, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "read", read)


@pytest.mark.parametrize("ahead", [0, 2])
@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (FormatError("x.safetensors: not a valid safetensors file: truncated"), 1,
         "error: x.safetensors: not a valid safetensors file: truncated"),
        (KeyboardInterrupt(), 130, "interrupted: no report was written"),
    ],
)  # fmt: skip
def test_read_errors_surface_as_cli_errors(
    ckpts: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ahead: int,
    exc: BaseException,
    code: int,
    message: str,
) -> None:
    _failing_read(monkeypatch, 5, exc)
    out = tmp_path / "report.csv"
    args = ["compare", str(ckpts["base"]), str(ckpts["a"]), "-o", str(out)]
    result = runner.invoke(app, [*args, "--config", str(config_file(tmp_path, ahead))])
    assert result.exit_code == code
    assert result.stderr.strip() == message
    assert result.stdout == ""
    assert not out.exists()
    assert_no_reader()


def test_unexpected_read_error_is_one_line_from_main(
    ckpts: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from opdgeo import cli

    _failing_read(monkeypatch, 3, RuntimeError("disk on fire"))
    argv = ["opdgeo", "compare", str(ckpts["base"]), str(ckpts["a"]), "-f", "csv"]
    monkeypatch.setattr(sys, "argv", [*argv, "--config", str(config_file(tmp_path, 2))])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        "error: unexpected RuntimeError: disk on fire (rerun with --debug for a traceback)"
    ]
    assert_no_reader()


def test_truncated_file_while_streaming(tmp_path: Path) -> None:
    model = tiny_model(layers=1)
    base = write_checkpoint(tmp_path / "base", model)
    tuned_dir = write_checkpoint(tmp_path / "tuned", perturb(model, 0.01))
    base_ckpt, tuned = open_checkpoint(str(base)), open_checkpoint(str(tuned_dir))
    settings = Settings(read_ahead=2, cache=False)
    plan = plan_pairs(base_ckpt, tuned, settings)
    file = tuned_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # cut after the header
    with pytest.raises(FormatError, match="truncated"):
        list(engine.compare(base_ckpt, tuned, plan, settings))
    assert_no_reader()
    base_ckpt.close()
    tuned.close()


def test_truncated_file_is_a_one_line_cli_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file shrinks between the header read and the tensor reads (a copy still running)."""
    model = tiny_model(layers=1)
    base = write_checkpoint(tmp_path / "base", model)
    tuned = write_checkpoint(tmp_path / "tuned", perturb(model, 0.01))
    file = tuned / "model.safetensors"
    real_prepare = Checkpoint.prepare

    def prepare(ckpt: Checkpoint, names: list[str], mapped: bool = False) -> None:
        real_prepare(ckpt, names, mapped)
        if ckpt.label == str(tuned):
            file.write_bytes(file.read_bytes()[: file.stat().st_size - 100])

    monkeypatch.setattr(Checkpoint, "prepare", prepare)
    result = runner.invoke(app, ["compare", str(base), str(tuned), "-f", "csv"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "truncated" in lines[0]
    assert_no_reader()


def test_interrupt_while_analysing_stops_the_reader(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.analyze_pair
    calls = {"n": 0}

    def analyze(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 3:
            assert readers(), "the reader thread should be running"
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "analyze_pair", analyze)
    result = runner.invoke(
        app, ["compare", str(ckpts["base"]), str(ckpts["a"]), "--no-cache", "-f", "csv"]
    )
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert_no_reader()


def test_abandoned_stream_stops_the_reader(ckpts: dict[str, Path]) -> None:
    base, tuned = open_checkpoint(str(ckpts["base"])), open_checkpoint(str(ckpts["a"]))
    settings = Settings(read_ahead=1, cache=False)
    stream = engine.compare(base, tuned, plan_pairs(base, tuned, settings), settings)
    first = next(stream)
    assert first.tensor
    assert readers()
    stream.close()
    assert_no_reader()
    base.close()
    tuned.close()


# -- threads --------------------------------------------------------------------------------


@pytest.fixture
def torch_threads() -> Iterator[int]:
    """torch's thread count before the test, restored after it."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_threads_option_sets_torch_threads(ckpts: dict[str, Path], torch_threads: int) -> None:
    torch.set_num_threads(2)
    args = ["compare", str(ckpts["base"]), str(ckpts["a"]), "-q", "--no-cache", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == 1


def test_zero_threads_is_a_usage_error(ckpts: dict[str, Path]) -> None:
    result = runner.invoke(app, ["compare", str(ckpts["base"]), str(ckpts["a"]), "--threads", "0"])
    assert result.exit_code == 2


def test_physical_cores() -> None:
    cores = threads.physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cores <= len(os.sched_getaffinity(0))


def test_omp_num_threads_is_respected(monkeypatch: pytest.MonkeyPatch, torch_threads: int) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.apply_threads(Settings()) == 2
    assert torch.get_num_threads() == 2
    assert threads.apply_threads(Settings(threads=1)) == 1  # an explicit count still wins
    assert torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.apply_threads(Settings()) == threads.physical_cores()
    assert torch.get_num_threads() == threads.physical_cores()
