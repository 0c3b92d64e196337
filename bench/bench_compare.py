"""Benchmark `opdgeo compare` tiers against a plain read of the files and naive SVD scripts.

Generates Qwen2-shaped bf16 checkpoint pairs (W0: spike + Marchenko-Pastur bulk spectra from
``opdgeo.synthetic.base_matrix``; W1: a small RLVR/OPD-like update, noise plus a low-rank part,
stored in bf16) at several sizes and measures, in the same run and on the same files:

* ``read``      - a plain sequential read of both checkpoints (page cache evicted, then warm);
* ``scan``      - ``opdgeo compare --tier scan`` (page cache cold and warm);
* ``fast``      - ``opdgeo compare --tier fast`` (page cache cold and warm), and ``fast-before``
  the same with the opdgeo of ``--baseline REV`` (a ``git archive`` of that commit);
* ``standard``  - the default tier without base cache, with a cold and with a warm base cache;
* ``exact``     - float64 / full SVD;
* ``naive``     - what a user writes by hand: load both state dicts, ``torch.linalg.svd`` per
  matrix (``full_matrices=False``), and ``naive-full`` the same with the defaults;
* ``demo``      - ``opdgeo demo`` (writes and compares the synthetic family), once per run.

Sizes from ``--sample-from`` up (default ``7b``) time the standard tier and naive on the first
``--sample-layers`` layers only (plus embeddings and norms; ``--include``), the rest on the
whole pair; the report gives the per-layer extrapolation to all layers and says so.

Every measurement runs in a fresh child process wrapped by a launcher that reports its peak RSS
(VmHWM), bytes read (``/proc/self/io``: ``read_bytes`` from disk, ``rchar`` all read calls) and
the time after imports. Per-tensor results of every tier are compared with ``exact`` on one
size. Writes a markdown report and a long-format CSV beside it; with ``--device cuda`` the
default output is ``bench/RESULTS-gpu.md`` so CPU results are kept.

    python bench/bench_compare.py --sizes tiny,small --out /tmp/r.md      # quick
    python bench/bench_compare.py                                         # full default set
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo.metrics import METRICS  # noqa: E402
from opdgeo.synthetic import base_matrix  # noqa: E402

MATRIX_METRICS = {name for name, spec in METRICS.items() if spec.matrix_only}

GB = 1e9
MB = 1e6


# --------------------------------------------------------------------------------------------
# Model shapes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """Qwen2-style shapes (untied lm_head)."""

    hidden: int
    inter: int
    kv: int
    layers: int
    vocab: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes in the order HF writes them."""
        h = self.hidden
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out.update(
                {
                    p + "input_layernorm.weight": (h,),
                    p + "mlp.down_proj.weight": (h, self.inter),
                    p + "mlp.gate_proj.weight": (self.inter, h),
                    p + "mlp.up_proj.weight": (self.inter, h),
                    p + "post_attention_layernorm.weight": (h,),
                    p + "self_attn.k_proj.bias": (self.kv,),
                    p + "self_attn.k_proj.weight": (self.kv, h),
                    p + "self_attn.o_proj.weight": (h, h),
                    p + "self_attn.q_proj.bias": (h,),
                    p + "self_attn.q_proj.weight": (h, h),
                    p + "self_attn.v_proj.bias": (self.kv,),
                    p + "self_attn.v_proj.weight": (self.kv, h),
                }
            )
        out["model.norm.weight"] = (h,)
        out["lm_head.weight"] = (self.vocab, h)
        return out

    def n_params(self) -> int:
        """Parameter count."""
        return sum(math.prod(s) for s in self.shapes().values())

    def largest(self) -> int:
        """Elements of the largest tensor."""
        return max(math.prod(s) for s in self.shapes().values())

    def largest_matrix(self) -> int:
        """Elements of the largest non-embedding matrix (what the spectral metrics hold)."""
        return max(
            math.prod(s)
            for n, s in self.shapes().items()
            if len(s) == 2 and "embed" not in n and "lm_head" not in n
        )


SIZES: dict[str, Spec] = {
    "tiny": Spec(hidden=256, inter=704, kv=128, layers=2, vocab=4096),
    "small": Spec(hidden=896, inter=4864, kv=128, layers=4, vocab=32000),
    "medium": Spec(hidden=896, inter=4864, kv=128, layers=24, vocab=151936),  # Qwen2-0.5B
    "large": Spec(hidden=1536, inter=8960, kv=256, layers=28, vocab=151936),  # Qwen2-1.5B
    "7b": Spec(hidden=3584, inter=18944, kv=512, layers=28, vocab=152064),  # Qwen2.5-7B
}
ORDER = list(SIZES)


def spec_for(size: str, layers: int | None) -> Spec:
    """The spec of ``size``, with ``--layers`` applied to the largest requested size."""
    s = SIZES[size]
    if layers is None:
        return s
    return Spec(s.hidden, s.inter, s.kv, layers, s.vocab)


# --------------------------------------------------------------------------------------------
# Checkpoint generation (streamed: one tensor in memory at a time)
# --------------------------------------------------------------------------------------------
def _header(shapes: dict[str, tuple[int, ...]]) -> bytes:
    meta: dict[str, object] = {"__metadata__": {"format": "pt", "generator": "opdgeo-bench"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        meta[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _bf16_bytes(t: torch.Tensor) -> bytes:
    return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()


def generate_pair(spec: Spec, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``base.safetensors`` and ``tuned.safetensors`` for ``spec`` into ``folder``.

    W0 matrices come from ``base_matrix`` (eight spikes over a Marchenko-Pastur bulk, RMS 0.02);
    embeddings and lm_head are Gaussian. The update is RLVR/OPD-like: Gaussian noise of RMS
    ~1.5e-5 (below half a bf16 ulp for most entries, so many stay bit-identical) plus a rank-4
    component of similar norm, added in float32 and rounded to bf16. Norm and bias vectors of
    the tuned model are unchanged except a few entries.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.shapes()
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "base.safetensors", folder / "tuned.safetensors"
    tmp = [p.with_suffix(".part") for p in paths]
    head = _header(shapes)
    with open(tmp[0], "wb") as fa, open(tmp[1], "wb") as fb:
        fa.write(head)
        fb.write(head)
        for name, shape in shapes.items():
            if len(shape) == 1:
                w0 = 1.0 + 0.05 * torch.randn(shape, generator=gen)
                if "bias" in name:
                    w0 = 0.1 * torch.randn(shape, generator=gen)
                w0 = w0.to(torch.bfloat16).float()
                w1 = w0.clone()
                w1[:: max(1, shape[0] // 8)] += 2e-3
            else:
                m, n = shape
                if "embed" in name or "lm_head" in name:
                    w0 = 0.02 * torch.randn(m, n, generator=gen)
                else:
                    w0 = base_matrix(m, n, gen).float()
                w0 = w0.to(torch.bfloat16).float()
                delta = torch.randn(m, n, generator=gen) * 1.5e-5
                r = 4
                u = torch.randn(m, r, generator=gen) / math.sqrt(m)
                v = torch.randn(r, n, generator=gen) / math.sqrt(n)
                delta += (u @ v) * (1.5e-5 * math.sqrt(m * n / r))
                w1 = w0 + delta
            fa.write(_bf16_bytes(w0))
            fb.write(_bf16_bytes(w1))
        for fh in (fa, fb):
            fh.flush()
            os.fsync(fh.fileno())
    for t, p in zip(tmp, paths, strict=True):
        t.rename(p)
    return paths


def ensure_pair(spec: Spec, workdir: Path, size: str, seed: int) -> tuple[Path, Path, float]:
    """Reuse the pair in ``workdir/size`` when its spec file matches, else generate it."""
    folder = workdir / size
    part = folder / "base.part"
    waited = False
    while part.exists() and time.time() - part.stat().st_mtime < 1800:
        if not waited:  # another process is writing this pair: wait for it
            print(f"{size}: waiting for another process generating {folder}", file=sys.stderr)
        waited = True
        time.sleep(10)
    if waited:
        time.sleep(5)  # its spec file follows the rename
    want = json.dumps({"spec": asdict(spec), "seed": seed, "version": 2}, sort_keys=True)
    spec_file = folder / "spec.json"
    paths = folder / "base.safetensors", folder / "tuned.safetensors"
    if spec_file.exists() and spec_file.read_text() == want and all(p.exists() for p in paths):
        return paths[0], paths[1], 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    generate_pair(spec, folder, seed)
    spec_file.write_text(want)
    return paths[0], paths[1], time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Page cache and raw reads
# --------------------------------------------------------------------------------------------
def proc_io() -> dict[str, int]:
    """This process's ``/proc/self/io`` counters."""
    out = {}
    with open("/proc/self/io") as fh:
        for line in fh:
            key, val = line.split(":")
            out[key.strip()] = int(val)
    return out


def evict(paths: Iterable[Path]) -> None:
    """Drop ``paths`` from the page cache (clean pages; no root needed)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def mem_available() -> int:
    """MemAvailable in bytes (what the page cache can hold at most)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def raw_read(paths: Sequence[Path]) -> tuple[float, int, int]:
    """Read ``paths`` sequentially in 8 MiB chunks; return (seconds, bytes, disk read_bytes)."""
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    total = 0
    before = proc_io()["read_bytes"]
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    seconds = time.perf_counter() - start
    return seconds, total, proc_io()["read_bytes"] - before


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------
# Runs one measurement in a fresh interpreter and writes a JSON record to argv[1]: exit code,
# seconds after imports (torch, opdgeo.cli / safetensors are imported before the clock starts),
# VmHWM, /proc/self/io, and the CUDA allocator's peak when CUDA was used.
LAUNCHER = r"""
import json, sys, time
out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
rec = {"exit": 0, "run_s": None}
t0 = c0 = None
try:
    import torch
    if mode == "opdgeo":
        import runpy
        import opdgeo.cli  # noqa: F401
        sys.argv = ["opdgeo", *args]
        t0, c0 = time.perf_counter(), time.process_time()
        runpy.run_module("opdgeo", run_name="__main__", alter_sys=True)
    else:
        import safetensors.torch  # noqa: F401
        code = args[0]
        t0, c0 = time.perf_counter(), time.process_time()
        exec(compile(code, "<naive>", "exec"), {"__name__": "__main__", "ARGS": args[1:]})
except SystemExit as exc:
    rec["exit"] = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
except BaseException as exc:
    rec["exit"] = 99
    rec["error"] = f"{type(exc).__name__}: {exc}"
finally:
    if t0 is not None:
        rec["run_s"] = time.perf_counter() - t0
        rec["cpu_s"] = time.process_time() - c0
    status = open("/proc/self/status").read()
    rec["vmhwm_kb"] = int(status.split("VmHWM:")[1].split()[0])
    for line in open("/proc/self/io"):
        k, v = line.split(":")
        rec[k.strip()] = int(v)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    with open(out, "w") as fh:
        json.dump(rec, fh)
sys.exit(rec["exit"])
"""

# ARGS = [base, tuned, device, full_matrices ("0"/"1"), threads ("" = default), include regex
# ("" = every tensor: both files loaded whole; else only matching tensors, read one by one)]
NAIVE = r"""
import re
import torch
from safetensors import safe_open
from safetensors.torch import load_file
base, tuned, device, full, threads, include = ARGS
if threads:
    torch.set_num_threads(int(threads))
full = full == "1"
if include:
    fa, fb = safe_open(base, "pt"), safe_open(tuned, "pt")
    names = [n for n in fa.keys() if re.search(include, n)]
    a = {n: fa.get_tensor(n) for n in names}
    b = {n: fb.get_tensor(n) for n in names}
else:
    a, b = load_file(base), load_file(tuned)
for name, w0 in a.items():
    if w0.dim() != 2 or "embed" in name or "lm_head" in name:
        continue
    w0, w1 = w0.to(device).float(), b[name].to(device).float()
    if full:
        u0, s0, v0 = torch.linalg.svd(w0)
        u1, s1, v1 = torch.linalg.svd(w1)
    else:
        u0, s0, v0 = torch.linalg.svd(w0, full_matrices=False)
        u1, s1, v1 = torch.linalg.svd(w1, full_matrices=False)
    k = max(1, min(w0.shape) // 8)
    angles = torch.rad2deg(torch.arccos(torch.linalg.svdvals(u0[:, :k].T @ u1[:, :k]).clamp(max=1)))
    nss = float((s1 - s0).norm() / s0.norm())
    sparsity = float((w1.bfloat16() == w0.bfloat16()).float().mean())
    float(angles.mean())
"""


@dataclass
class SizeInfo:
    """What the report needs to know about one generated pair."""

    params: int
    pair_bytes: int
    largest_f32_bytes: int
    largest_matrix_f32_bytes: int

    @property
    def rss_bound_mb(self) -> float:
        """The target: 3 x the largest tensor in float32 + 1.5 GB."""
        return 3 * self.largest_f32_bytes / MB + 1500


@dataclass
class MetricError:
    """Error of one tier on one per-tensor metric against the exact tier."""

    tier: str
    metric: str
    status: str  # ok | partial | not computed
    n: int
    nan_mismatch: int
    max_abs_err: float
    median_abs_err: float
    max_rel_err: float
    method: str
    exact_method: str


@dataclass
class Measure:
    """One measurement (one row of the CSV)."""

    size: str
    variant: str
    tier: str
    page_cache: str  # cold | warm
    base_cache: str  # off | cold | warm | n/a
    device: str
    status: str = "ok"  # ok | timeout | failed | skipped
    wall_s: float = math.nan
    run_s: float = math.nan
    cpu_s: float = math.nan
    peak_rss_mb: float = math.nan
    gpu_peak_mb: float = math.nan
    read_bytes: float = math.nan
    rchar: float = math.nan
    evicted: str = ""
    repeats: int = 0
    command: str = ""
    note: str = ""


def run_child(
    mode: str, args: Sequence[str], timeout: float | None, env: dict[str, str]
) -> tuple[str, float, dict[str, Any], str]:
    """Run the launcher; return (status, wall seconds, record, stderr tail)."""
    with tempfile.NamedTemporaryFile(prefix="opdgeo-bench-", suffix=".json", delete=False) as fh:
        rec_path = fh.name
    # -P: no current folder first on sys.path, so PYTHONPATH decides which opdgeo runs (the
    # baseline's copy for --baseline; without -P the checkout's shadowed it)
    cmd = [sys.executable, "-P", "-c", LAUNCHER, rec_path, mode, *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        os.unlink(rec_path)
        return "timeout", time.perf_counter() - start, {}, ""
    wall = time.perf_counter() - start
    try:
        rec = json.loads(Path(rec_path).read_text())
    except (OSError, ValueError):
        rec = {}
    finally:
        os.unlink(rec_path)
    status = "ok" if proc.returncode == 0 and rec.get("exit") == 0 else "failed"
    tail = (proc.stderr or "")[-400:].strip()
    if rec.get("error"):
        tail = f"{rec['error']} {tail}"
    return status, wall, rec, tail


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
class Bench:
    """State shared by the measurements of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.rows: list[Measure] = []
        self.demo: Measure | None = None
        self.demo_analysis: Measure | None = None
        self.specs: dict[str, Spec] = {}
        self.samples: dict[str, tuple[int, int]] = {}
        """size -> (layers timed, layers in the model) where standard / naive were sampled."""
        self.before_env: dict[str, str] | None = None
        self.commit = git_commit()
        """At the start: the run's own RESULTS files would make the tree look dirty later."""
        if args.baseline:
            old = Path(tempfile.mkdtemp(prefix="opdgeo-before-", dir=args.workdir))
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline, "opdgeo"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            self.before_env = dict(self.env, PYTHONPATH=str(old))
            self.before_dir = old

    # ---- opdgeo command lines
    def opdgeo_args(
        self,
        a: Path,
        b: Path,
        tier: str,
        cache: str | None,
        per_tensor: Path | None,
        include: str = "",
    ) -> list[str]:
        """Full ``opdgeo compare`` argument list; ``cache`` is a directory or None (off)."""
        out = ["compare", str(a), str(b), "--tier", tier, "-q", "--format", "csv"]
        if include:
            out += ["--include", include]
        out += ["--output", os.devnull]
        out += ["--no-cache"] if cache is None else ["--cache-dir", cache]
        if self.args.device != "cpu":
            out += ["--device", self.args.device]
        if self.args.threads:
            out += ["--threads", str(self.args.threads)]
        if per_tensor is not None:
            out += ["--per-tensor", str(per_tensor)]
        return out

    # ---- one measured variant, best of --repeat
    def measure(
        self,
        row: Measure,
        mode: str,
        args: list[str],
        files: Sequence[Path],
        timeout: float | None = None,
        before_each: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> Measure:
        """Run ``args`` ``--repeat`` times (evicting first for a cold page cache); keep the best."""
        if mode == "opdgeo":
            row.command = "opdgeo " + " ".join(
                x for x in args if not x.startswith("/") and x != os.devnull
            )
        best: tuple[float, float, dict[str, Any]] | None = None
        for _ in range(max(1, self.args.repeat)):
            if before_each is not None:
                before_each()
            if row.page_cache == "cold":
                evict(files)
            status, wall, rec, tail = run_child(mode, args, timeout, env or self.env)
            row.repeats += 1
            if status != "ok":
                row.status, row.wall_s, row.note = status, wall, tail[-300:]
                if status == "timeout":
                    row.note = f"killed after {timeout:.0f} s"
                best = None
                break
            run_s = float(rec.get("run_s") or wall)
            if best is None or run_s < best[1]:
                best = (wall, run_s, rec)
        if best is not None:
            wall, run_s, rec = best
            row.wall_s, row.run_s = wall, run_s
            row.cpu_s = float(rec.get("cpu_s", math.nan))
            row.peak_rss_mb = float(rec["vmhwm_kb"]) * 1024 / MB
            row.read_bytes = float(rec.get("read_bytes", math.nan))
            row.rchar = float(rec.get("rchar", math.nan))
            if "gpu_peak_bytes" in rec:
                row.gpu_peak_mb = float(rec["gpu_peak_bytes"]) / MB
            if row.page_cache == "cold":
                pair = sum(p.stat().st_size for p in files)
                row.evicted = "yes" if row.read_bytes >= 0.9 * pair else "no"
        self.rows.append(row)
        print(f"  {row.size:7s} {row.variant:22s} {fmt_row(row)}", file=sys.stderr, flush=True)
        return row

    def size_run(self, size: str, a: Path, b: Path) -> None:
        """All variants for one size."""
        files = [a, b]
        dev = self.args.device
        tiers = self.args.tiers
        tmp = Path(tempfile.mkdtemp(prefix="opdgeo-bench-cache-", dir=self.args.workdir))
        try:
            # (1) raw sequential reads: page cache evicted, then warm
            evict(files)
            secs, nbytes, disk = raw_read(files)
            self.rows.append(
                Measure(
                    size,
                    "read",
                    "-",
                    "cold",
                    "n/a",
                    "cpu",
                    wall_s=secs,
                    run_s=secs,
                    read_bytes=disk,
                    rchar=nbytes,
                    repeats=1,
                    evicted="yes" if disk >= 0.9 * nbytes else "no",
                    command="sequential read, 8 MiB readinto",
                )
            )
            raw_read(files)  # make sure everything is cached before the warm timing
            warm = min(raw_read(files)[0] for _ in range(max(1, self.args.repeat)))
            self.rows.append(
                Measure(
                    size,
                    "read",
                    "-",
                    "warm",
                    "n/a",
                    "cpu",
                    wall_s=warm,
                    run_s=warm,
                    read_bytes=0,
                    rchar=nbytes,
                    repeats=self.args.repeat,
                    command="sequential read, 8 MiB readinto",
                )
            )
            for r in self.rows[-2:]:
                print(f"  {size:7s} read/{r.page_cache:17s} {fmt_row(r)}", file=sys.stderr)
            # (2) scan and fast tiers (and the fast tier before this work): cold and warm
            pair_bytes = sum(p.stat().st_size for p in files)
            fits = pair_bytes <= 0.6 * mem_available()
            before_ok = ORDER.index(size) <= ORDER.index(self.args.baseline_max_size)
            for tier, variant, env in (
                ("scan", "scan", None),
                ("fast", "fast", None),
                ("fast", "fast-before", self.before_env),
            ):
                if tier not in tiers or (
                    variant == "fast-before" and (env is None or not before_ok)
                ):
                    continue
                args = self.opdgeo_args(a, b, tier, None, None)
                limit = self.args.time_limit
                if variant != "fast-before":  # the baseline: page cache warm only (time)
                    self.measure(
                        Measure(size, variant, tier, "cold", "off", dev),
                        "opdgeo",
                        args,
                        files,
                        timeout=limit,
                        env=env,
                    )
                row = Measure(size, variant, tier, "warm", "off", dev)
                if not fits:
                    row.status, row.note = "skipped", "pair larger than the page cache"
                    self.rows.append(row)
                    continue
                raw_read(files)
                self.measure(row, "opdgeo", args, files, timeout=limit, env=env)
            # (3) standard: base cache off, cold, warm (sampled layers on the largest sizes)
            sample = self.sample_regex(size)
            if "standard" in tiers:
                if not fits:
                    raw_read(files)  # as warm as the page cache allows
                args = self.opdgeo_args(a, b, "standard", None, None, sample)
                self.measure(
                    Measure(size, "standard", "standard", "warm", "off", dev), "opdgeo", args, files
                )
                cache = tmp / "cache"
                cargs = self.opdgeo_args(a, b, "standard", str(cache), None, sample)

                def clear() -> None:
                    shutil.rmtree(cache, ignore_errors=True)

                if not self.args.no_cache_variants:
                    self.measure(
                        Measure(size, "standard+cache-cold", "standard", "warm", "cold", dev),
                        "opdgeo",
                        cargs,
                        files,
                        before_each=clear,
                    )
                    self.measure(
                        Measure(size, "standard+cache-warm", "standard", "warm", "warm", dev),
                        "opdgeo",
                        cargs,
                        files,
                    )
            # (4) exact
            if "exact" in tiers:
                row = Measure(size, "exact", "exact", "warm", "off", dev)
                if ORDER.index(size) > ORDER.index(self.args.exact_max_size):
                    row.status, row.note = (
                        "skipped",
                        f"size > --exact-max-size {self.args.exact_max_size}",
                    )
                    self.rows.append(row)
                else:
                    args = self.opdgeo_args(a, b, "exact", None, None)
                    self.measure(row, "opdgeo", args, files, timeout=self.args.time_limit)
            # (5) naive baselines
            for variant, full, opt in (
                ("naive", "0", "naive_max_size"),
                ("naive-full", "1", "naive_full_max_size"),
            ):
                row = Measure(size, variant, "-", "warm", "n/a", dev)
                limit = getattr(self.args, opt)
                if limit == "none" or ORDER.index(size) > ORDER.index(limit):
                    flag = "--" + opt.replace("_", "-")
                    why = f"{flag} none" if limit == "none" else f"size > {flag} {limit}"
                    row.status, row.note = "skipped", why
                    self.rows.append(row)
                    continue
                nargs = [NAIVE, str(a), str(b), dev, full, str(self.args.threads or ""), sample]
                self.measure(row, "naive", nargs, files, timeout=self.args.time_limit)
                row.command = (
                    "load_file x2; torch.linalg.svd(w.float()"
                    + (")" if full == "1" else ", full_matrices=False)")
                    + " per matrix"
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def sample_regex(self, size: str) -> str:
        """``--include`` for the standard tier and naive: "" (everything) below
        ``--sample-from``, else the first ``--sample-layers`` layers and every tensor outside
        the layers (embeddings, final norm, lm_head)."""
        if ORDER.index(size) < ORDER.index(self.args.sample_from):
            return ""
        layers = self.specs[size].layers
        n = min(self.args.sample_layers, layers)
        if n >= layers:
            return ""
        self.samples[size] = (n, SIZES[size].layers)
        alt = "|".join(str(i) for i in range(n))
        return rf"^(?!model\.layers\.)|^model\.layers\.({alt})\."

    def demo_run(self) -> None:
        """``opdgeo demo`` (generate the synthetic family, compare, report) in a child, with a
        fresh base cache folder."""
        folder = Path(tempfile.mkdtemp(prefix="opdgeo-demo-", dir=self.args.workdir))
        env = dict(self.env, OPDGEO_CACHE_DIR=str(folder / "cache"))
        args = ["demo", str(folder / "family"), "-q", "--format", "csv"]
        row = Measure("demo", "demo", "standard", "warm", "cold", "cpu")
        before = len(self.rows)
        self.measure(row, "opdgeo", args, [], env=env)
        del self.rows[before:]
        row.command = "opdgeo demo DIR -q --format csv"
        self.demo = row
        family = folder / "family"
        if ok(row) and (family / "base").is_dir():  # the analysis alone, on the written family
            runs = [str(family / r) for r in ("sft", "opd", "rlvr")]
            args = ["compare", str(family / "base"), *runs, "-q", "--format", "csv", "--no-cache"]
            analysis = Measure("demo", "demo-analysis", "standard", "warm", "off", "cpu")
            self.measure(analysis, "opdgeo", args, [], env=env)
            del self.rows[before:]
            analysis.command = "opdgeo compare DIR/base DIR/sft DIR/opd DIR/rlvr -q --no-cache"
            self.demo_analysis = analysis
        shutil.rmtree(folder, ignore_errors=True)

    def error_run(self, size: str, a: Path, b: Path) -> dict[str, Path]:
        """Per-tensor CSVs of every tier on one size (untimed)."""
        out: dict[str, Path] = {}
        folder = Path(self.args.workdir) / f"per-tensor-{size}-{self.args.device}"
        folder.mkdir(parents=True, exist_ok=True)
        for tier in ("scan", "fast", "standard", "exact"):
            path = folder / f"{tier}.csv"
            args = self.opdgeo_args(a, b, tier, None, path)
            if args is None:
                continue
            path.unlink(missing_ok=True)
            status, _, _, tail = run_child("opdgeo", args, None, self.env)
            if status == "ok" and path.exists():
                out[tier] = path
            else:
                print(f"  per-tensor {tier} failed: {tail}", file=sys.stderr)
        return out


# --------------------------------------------------------------------------------------------
# Per-metric error against exact
# --------------------------------------------------------------------------------------------
def _num(s: str | None) -> float:
    try:
        return float(s) if s not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {r["tensor"]: r for r in csv.DictReader(fh) if not r.get("skipped")}


def metric_of_column() -> dict[str, str]:
    """Per-tensor column -> the registered metric that produces it (``opdgeo.metrics``)."""
    return {col: name for name, spec in METRICS.items() for col in spec.columns}


def _method_of(row: dict[str, str], column: str, metric: dict[str, str]) -> str:
    """The method that produced ``column``: the per-tensor ``method`` field reads
    ``metric=method;...`` for the metrics that ran linear algebra, ``elementwise`` when
    none did; a metric it does not list was exact (element-wise) or did not run."""
    methods = dict(part.split("=", 1) for part in row.get("method", "").split(";") if "=" in part)
    name = metric.get(column, "")
    if name in methods:
        return methods[name]
    return "not run" if name in MATRIX_METRICS else "elementwise"


def metric_errors(files: dict[str, Path]) -> list[MetricError]:
    """One row per (tier, metric): error over tensors against the exact tier."""
    if "exact" not in files:
        return []
    exact = _read_rows(files["exact"])
    any_row = next(iter(exact.values()))
    families = metric_of_column()
    metrics = [
        c
        for c in any_row
        if c in families and any(math.isfinite(_num(r.get(c))) for r in exact.values())
    ]
    out: list[MetricError] = []
    for tier in ("fast", "standard"):
        if tier not in files:
            continue
        rows = _read_rows(files[tier])
        for m in metrics:
            abs_err: list[float] = []
            rel_err: list[float] = []
            nan_mismatch = 0
            methods: set[str] = set()
            for name, er in exact.items():
                e = _num(er.get(m))
                if not math.isfinite(e):
                    continue
                tr = rows.get(name)
                t = _num(tr.get(m)) if tr else math.nan
                methods.add(_method_of(tr, m, families) if tr else "missing")
                if not math.isfinite(t):
                    nan_mismatch += 1
                    continue
                d = abs(t - e)
                abs_err.append(d)
                rel_err.append(0.0 if d == 0 else (d / abs(e) if e != 0 else math.inf))
            exact_methods = {
                _method_of(r, m, families) for r in exact.values() if math.isfinite(_num(r.get(m)))
            }
            status = "ok" if nan_mismatch == 0 else "partial"
            out.append(
                MetricError(
                    tier=tier,
                    metric=m,
                    status=status if abs_err else "not computed",
                    n=len(abs_err),
                    nan_mismatch=nan_mismatch,
                    max_abs_err=max(abs_err, default=math.nan),
                    median_abs_err=statistics.median(abs_err) if abs_err else math.nan,
                    max_rel_err=max(rel_err, default=math.nan),
                    method=" | ".join(sorted(methods)) or "-",
                    exact_method=" | ".join(sorted(exact_methods)),
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def g(x: float, digits: int = 3) -> str:
    """Compact number."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if abs(x) < 100 else f"{x:.0f}"


def fmt_row(r: Measure) -> str:
    """One line of progress."""
    if r.status != "ok":
        return f"{r.status} {r.note}"
    return (
        f"run {r.run_s:8.2f} s  wall {r.wall_s:8.2f} s  peak {r.peak_rss_mb:8.0f} MB  "
        f"rchar {r.rchar / MB:9.0f} MB  disk {r.read_bytes / MB:9.0f} MB {r.evicted}"
    )


def machine_line(threads: int | None) -> str:
    """CPU model, cores, memory, torch and thread settings."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = math.nan
    if torch.cuda.is_available():
        model += f"; GPU {torch.cuda.get_device_name(0)}"
    try:
        from importlib.metadata import version

        jit = f"numba {version('numba')} (compiled scan kernel)"
    except ImportError:
        jit = "no numba (torch scan kernel)"
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {platform.machine()}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
        f"{f' (--threads {threads})' if threads else ''}; {jit}; "
        f"Python {platform.python_version()}"
    )


def git_commit() -> str:
    """The repository's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def table(cols: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return [
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def find(rows: list[Measure], size: str, variant: str, page: str | None = None) -> Measure | None:
    """The measurement of ``variant`` at ``size``."""
    for r in rows:
        if r.size == size and r.variant == variant and (page is None or r.page_cache == page):
            return r
    return None


def ok(r: Measure | None) -> TypeGuard[Measure]:
    """Whether ``r`` holds a measurement."""
    return r is not None and r.status == "ok"


def variant_label(bench: Bench, r: Measure) -> str:
    """The variant, with the sampled layers where the standard tier / naive were sampled."""
    if r.size in bench.samples and r.variant.startswith(("standard", "naive")):
        n, layers = bench.samples[r.size]
        return f"{r.variant} (layers 0-{n - 1} of {layers})"
    return r.variant


def _met(ok_: bool) -> str:
    return "met" if ok_ else "NOT met"


def summary_lines(bench: Bench, info: dict[str, SizeInfo]) -> list[str]:
    """One line per Done-when criterion of issue 15, each with its measured ratio."""
    rows, out = bench.rows, []
    sizes = list(info)
    have = [
        s for s in sizes if ok(find(rows, s, "naive")) and ORDER.index(s) <= ORDER.index("large")
    ]
    top = max(have, key=ORDER.index, default=None)
    if top is not None:
        naive = find(rows, top, "naive")
        assert naive is not None
        parts = []
        for variant, target in (
            ("standard", 0.0),
            ("standard+cache-cold", 5.0),
            ("standard+cache-warm", 10.0),
        ):
            r = find(rows, top, variant)
            if not ok(r):
                parts.append(f"{variant}: {r.status if r else 'not run'}")
                continue
            x = naive.run_s / r.run_s
            goal = f" (target >= {target:g}x: {_met(x >= target)})" if target else ""
            cpu = naive.cpu_s / r.cpu_s if r.cpu_s > 0 else math.nan
            parts.append(f"{variant} {g(r.run_s)} s: **{x:.1f}x**{goal}, CPU time {cpu:.1f}x")
        where = ""
        if top in bench.samples:
            n, layers = bench.samples[top]
            where = (
                f" (both on layers 0-{n - 1} of {layers} plus embeddings and norms: a per-layer "
                "sample, the same tensors for both)"
            )
        out.append(f"- **{top}**{where}, naive {g(naive.run_s)} s vs " + "; ".join(parts) + ".")
    # scan tier: cold vs plain cold read, warm GB/s (the largest size where each was measured)
    for page in ("cold", "warm"):
        have = [s for s in sizes if ok(find(rows, s, "scan", page))]
        if not have:
            continue
        s = max(have, key=ORDER.index)
        pair = info[s].pair_bytes
        scan, read = find(rows, s, "scan", page), find(rows, s, "read", page)
        assert scan is not None
        gbps = pair / scan.run_s / GB
        if page == "cold" and ok(read):
            x = read.run_s / scan.run_s
            out.append(
                f"- scan tier at {s}, page cache cold: {g(gbps)} GB/s vs plain read "
                f"{g(pair / read.run_s / GB)} GB/s: **{x:.2f}x** of the read (target >= 0.7x: "
                f"{_met(x >= 0.7)}; eviction worked: {scan.evicted}/{read.evicted})."
            )
        elif page == "warm":
            rd = f" (plain read {g(pair / read.run_s / GB)} GB/s)" if ok(read) else ""
            out.append(
                f"- scan tier at {s}, page cache warm: **{g(gbps)} GB/s**{rd} "
                f"(target >= 2 GB/s: {_met(gbps >= 2)})."
            )
    # fast tier against the fast tier before this work
    have = [s for s in sizes if ok(find(rows, s, "fast-before", "warm"))]
    if have:
        s = max(have, key=ORDER.index)
        parts = []
        for page in ("warm", "cold"):
            now, before = find(rows, s, "fast", page), find(rows, s, "fast-before", page)
            if ok(now) and ok(before):
                x = before.run_s / now.run_s
                parts.append(
                    f"{page} page cache {g(now.run_s)} s vs {g(before.run_s)} s: **{x:.2f}x** "
                    f"(target >= 3x: {_met(x >= 3)})"
                )
        out.append(
            f"- fast tier at {s} against `--baseline {bench.args.baseline}`: "
            + "; ".join(parts)
            + "."
        )
    d, da = bench.demo, bench.demo_analysis
    if da is not None and ok(da):
        out.append(
            f"- demo family analysis (`opdgeo compare` of the 3 runs against the base, no "
            f"base cache): **{g(da.run_s)} s** after imports ({g(da.cpu_s)} s of CPU time, "
            f"{g(da.wall_s)} s wall; target <= 3 s: {_met(da.run_s <= 3)})."
        )
    if d is not None:
        if ok(d):
            out.append(
                f"- `opdgeo demo` (write 4 checkpoints, compare 3 runs, report): "
                f"{g(d.run_s)} s after imports ({g(d.cpu_s)} s of CPU time, {g(d.wall_s)} s "
                f"wall)."
            )
        else:
            out.append(f"- demo: {d.status} ({d.note}).")
    for s, (n, layers) in bench.samples.items():
        std, naive = find(rows, s, "standard"), find(rows, s, "naive")
        if not ok(std):
            out.append(f"- **{s}**: standard tier {std.status if std else 'not run'}.")
            continue
        est = std.run_s * layers / n
        gen = bench.specs[s].layers
        pair_note = (
            f"the generated pair has the {s} shapes with {gen} of {layers} layers, and every "
            f"tier ran on it; "
            if gen < layers
            else ""
        )
        line = (
            f"- **{s}** ({info[s].params / 1e9:.2f} B params, {g(info[s].pair_bytes / GB)} GB "
            f"pair; {pair_note}standard tier on layers 0-{n - 1} of {layers} (plus embeddings and "
            "norms) "
            f"{g(std.run_s)} s, peak RSS {g(std.peak_rss_mb)} MB; all {layers} layers estimated "
            f"at ~{g(est)} s (per-layer scaling, not measured)"
        )
        if ok(naive):
            line += (
                f"; naive on the same layers {g(naive.run_s)} s (**{naive.run_s / std.run_s:.1f}x**"
                f"; ~{g(naive.run_s * layers / n)} s for all layers, estimated)"
            )
        out.append(line + ".")
    over = []
    for s in sizes:
        bound = info[s].rss_bound_mb
        for r in rows:
            if r.size == s and ok(r) and r.tier in ("scan", "fast", "standard"):
                if r.variant != "fast-before" and r.peak_rss_mb > bound:
                    over.append(f"{s} {r.variant} {g(r.peak_rss_mb)} MB > {bound:.0f} MB")
    mine = [r for r in rows if ok(r) and r.tier in ("scan", "fast", "standard")]
    mine = [r for r in mine if r.variant != "fast-before"]
    worst = [
        max((r.peak_rss_mb / info[s].rss_bound_mb for r in mine if r.size == s), default=math.nan)
        for s in sizes
    ]
    out.append(
        "- peak RSS bound (3 x largest float32 tensor + 1.5 GB) for the scan, fast and standard "
        f"tiers at every size: {_met(not over)}"
        + (f" ({'; '.join(over)})" if over else "")
        + "; largest share of the bound per size: "
        + ", ".join(f"{s} {w:.2f}" for s, w in zip(sizes, worst, strict=True))
        + "."
    )
    return out


def write_report(
    out: Path,
    bench: Bench,
    info: dict[str, SizeInfo],
    errors: list[MetricError],
    error_size: str | None,
    started: float,
    load0: float,
) -> None:
    """Write the markdown report and the long-format CSV."""
    args, rows = bench.args, bench.rows
    sizes = list(info)
    dev = args.device
    lines = [
        f"# opdgeo benchmark ({dev})",
        "",
        f"Machine: {machine_line(args.threads)}.",
        f"Generated by `{' '.join(['bench/bench_compare.py', *sys.argv[1:]])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} in {(time.time() - started) / 60:.1f} min; "
        f"best of {args.repeat}; opdgeo at commit {bench.commit}. Every number below is "
        "written by the script. Load average "
        f"(1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}: timings are only "
        "meaningful on an otherwise idle machine.",
        "",
        "Checkpoints: Qwen2-style shapes (untied lm_head, q/k/v biases), bf16, one safetensors "
        "file each; W0 from `opdgeo.synthetic.base_matrix` (spikes over a Marchenko-Pastur bulk), "
        "W1 = bf16(W0 + noise of RMS 1.5e-5 + a rank-4 update of similar norm).",
        "`run s`: seconds after imports (torch and opdgeo/safetensors are imported before the "
        "clock starts); `CPU s`: the process's CPU time over the same span (all threads; what "
        "matters when other jobs share the cores); `wall s`: the whole child process. "
        "Peak RSS: the child's VmHWM. "
        "`rchar`: bytes through read calls (page cache included, mmap not); `disk`: "
        "`read_bytes` actually read from the block device.",
        "",
    ]
    # ---- headline: every Done-when ratio of issue 15
    lines += ["## Summary", "", *summary_lines(bench, info), ""]
    # ---- (A)
    lines += [
        "## (A) Time, peak RSS and bytes read per size and tier",
        "",
        "Ratios are naive (load both + `svd(full_matrices=False)`) over the row: "
        "time on `run s`, memory on peak RSS. `page`: page cache state of the checkpoint files; "
        "`base cache`: opdgeo's on-disk cache of W0's decompositions.",
        "",
    ]
    a_rows = []
    for s in sizes:
        naive = find(rows, s, "naive")
        for r in rows:
            if r.size != s or r.variant == "read":
                continue
            label = variant_label(bench, r)
            if not ok(r):
                wall = f"> {g(r.wall_s)}" if r.status == "timeout" else "-"
                a_rows.append(
                    [s, label, r.page_cache, r.base_cache, f"{r.status}: {r.note}", "-", "-", wall]
                    + ["-"] * 6
                )
                continue
            t_ratio = m_ratio = "-"
            if ok(naive) and naive is not None:
                t_ratio = f"{naive.run_s / r.run_s:.2f}x"
                m_ratio = f"{naive.peak_rss_mb / r.peak_rss_mb:.2f}x"
            if r.variant.startswith("standard") and naive is not None and not ok(naive):
                t_ratio = "-"
            a_rows.append(
                [
                    s,
                    label,
                    r.page_cache,
                    r.base_cache,
                    "ok",
                    g(r.run_s),
                    g(r.cpu_s),
                    g(r.wall_s),
                    g(r.peak_rss_mb),
                    g(r.rchar / MB),
                    g(r.read_bytes / MB),
                    t_ratio,
                    m_ratio,
                    g(r.gpu_peak_mb),
                ]
            )
    lines += table(
        [
            "size",
            "variant",
            "page",
            "base cache",
            "status",
            "run s",
            "CPU s",
            "wall s",
            "peak RSS MB",
            "rchar MB",
            "disk MB",
            "naive/this time",
            "naive/this RSS",
            "GPU peak MB",
        ],
        a_rows,
    )
    # ---- (B)
    lines += [
        "## (B) I/O: plain sequential read vs the scan and fast tiers",
        "",
        "GB/s = both checkpoints' bytes / seconds (opdgeo: `run s`, imports excluded). "
        "`evicted`: the cold runs read >= 90 % of the bytes from disk (read_bytes), i.e. "
        "`posix_fadvise(DONTNEED)` emptied the page cache. `fast before`: the fast tier of "
        f"`--baseline {args.baseline}` on the same files. Warm runs are skipped where the pair "
        "does not fit in the page cache.",
        "",
    ]
    b_rows = []
    for s in sizes:
        pair = float(info[s].pair_bytes)

        def gbps(r: Measure | None, pair: float = pair) -> float:
            return pair / r.run_s / GB if ok(r) else math.nan

        def ratio(x: float, y: float) -> str:
            return f"{x / y:.2f}" if math.isfinite(x) and math.isfinite(y) and y > 0 else "-"

        got = {
            (v, p): gbps(find(rows, s, v, p))
            for v in ("read", "scan", "fast", "fast-before")
            for p in ("cold", "warm")
        }
        cold = [find(rows, s, v, "cold") for v in ("read", "scan", "fast")]
        evicted = "/".join(r.evicted if r is not None and ok(r) else "-" for r in cold)
        b_rows.append(
            [
                s,
                g(pair / GB),
                evicted,
                *(
                    g(got[v, p])
                    for v in ("read", "scan", "fast", "fast-before")
                    for p in ("cold", "warm")
                ),
                ratio(got["scan", "cold"], got["read", "cold"]),
                ratio(got["fast", "cold"], got["fast-before", "cold"]),
                ratio(got["fast", "warm"], got["fast-before", "warm"]),
            ]
        )
    lines += table(
        [
            "size",
            "pair GB",
            "evicted read/scan/fast",
            "read cold GB/s",
            "read warm GB/s",
            "scan cold GB/s",
            "scan warm GB/s",
            "fast cold GB/s",
            "fast warm GB/s",
            "fast before cold GB/s",
            "fast before warm GB/s",
            "scan/read cold",
            "fast/before cold",
            "fast/before warm",
        ],
        b_rows,
    )
    # ---- (C)
    lines += [
        "## (C) Peak RSS vs model size",
        "",
        "bound = 3 x largest tensor in float32 + 1.5 GB (the largest tensor is the embedding / "
        "lm_head; the largest spectral matrix is listed too). Peak RSS in MB.",
        "",
    ]
    variants = ["scan", "fast", "standard", "standard+cache-warm", "exact", "naive"]
    c_rows = []
    for s in sizes:
        it = info[s]
        bound = it.rss_bound_mb
        cells = []
        for v in variants:
            found = find(rows, s, v, "warm")
            if not ok(found):
                found = find(rows, s, v, "cold")
            cells.append(g(found.peak_rss_mb) if ok(found) else "-")
        std = find(rows, s, "standard")
        within = "-"
        if ok(std) and std is not None:
            within = "yes" if std.peak_rss_mb <= bound else "no"
        c_rows.append(
            [
                s,
                f"{it.params / 1e9:.3f}",
                g(it.pair_bytes / GB),
                g(it.largest_f32_bytes / MB),
                g(it.largest_matrix_f32_bytes / MB),
                f"{bound:.0f}",
                *cells,
                within,
            ]
        )
    lines += table(
        [
            "size",
            "params (B)",
            "pair GB",
            "largest f32 MB",
            "largest matrix f32 MB",
            "bound MB",
            *(f"{v} MB" for v in variants),
            "standard within bound",
        ],
        c_rows,
    )
    # ---- (E) demo, before (D) in the file order of the report
    if bench.demo is not None:
        d = bench.demo
        lines += [
            "## (E) The demo family",
            "",
            "`opdgeo demo` in a child process (writes the synthetic base + SFT/OPD/RLVR family "
            "of 4 layers, hidden 128, then compares and reports; empty base cache): "
            + (
                f"{g(d.run_s)} s after imports ({g(d.cpu_s)} CPU s, {g(d.wall_s)} s wall), "
                f"peak RSS {g(d.peak_rss_mb)} MB."
                if ok(d)
                else f"{d.status}: {d.note}."
            ),
            "",
        ]
        da = bench.demo_analysis
        if da is not None:
            lines += [
                "The analysis alone (`opdgeo compare` of sft, opd and rlvr against the written "
                "base, `--no-cache`): "
                + (
                    f"{g(da.run_s)} s after imports ({g(da.cpu_s)} CPU s, {g(da.wall_s)} s "
                    f"wall), peak RSS {g(da.peak_rss_mb)} MB."
                    if ok(da)
                    else f"{da.status}: {da.note}."
                ),
                "",
            ]
    # ---- (D)
    lines += [f"## (D) Per-metric error against the exact tier ({error_size or 'not run'})", ""]
    if errors:
        lines += [
            "Over the tensors where `exact` gives a finite value: max and median absolute error, "
            "max relative error (|x - exact| / |exact|). `NaN`: tensors where this tier left the "
            "metric empty while exact computed it (`not computed` when it never did). `method`: "
            "what produced the metric (the per-tensor `method` column).",
            "",
        ]
        lines += table(
            [
                "tier",
                "metric",
                "status",
                "n",
                "NaN",
                "max abs err",
                "median abs err",
                "max rel err",
                "method",
                "exact method",
            ],
            [
                [
                    str(e.tier),
                    str(e.metric),
                    str(e.status),
                    str(e.n),
                    str(e.nan_mismatch),
                    g(e.max_abs_err),
                    g(e.median_abs_err),
                    g(e.max_rel_err),
                    str(e.method),
                    str(e.exact_method),
                ]
                for e in errors
            ],
        )
    else:
        lines += ["No per-tensor comparison (the exact tier did not run).", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    # ---- CSV (long format)
    fields = [
        "size",
        "params",
        "pair_bytes",
        "largest_f32_bytes",
        "largest_matrix_f32_bytes",
        "variant",
        "tier",
        "device",
        "page_cache",
        "base_cache",
        "status",
        "repeats",
        "run_s",
        "cpu_s",
        "wall_s",
        "peak_rss_mb",
        "gpu_peak_mb",
        "read_bytes",
        "rchar",
        "gbps",
        "evicted",
        "naive_over_this_time",
        "naive_over_this_rss",
        "command",
        "note",
    ]
    with open(out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            it = info[r.size]
            naive = find(rows, r.size, "naive")
            w.writerow(
                {
                    **{k: v for k, v in asdict(r).items() if k in fields},
                    **asdict(it),
                    "gbps": it.pair_bytes / r.run_s / GB if ok(r) else math.nan,
                    "naive_over_this_time": (
                        naive.run_s / r.run_s if ok(naive) and ok(r) else math.nan
                    ),
                    "naive_over_this_rss": (
                        naive.peak_rss_mb / r.peak_rss_mb if ok(naive) and ok(r) else math.nan
                    ),
                }
            )
        for e in errors:
            w.writerow(
                {
                    "size": error_size,
                    "variant": f"error:{e.metric}",
                    "tier": e.tier,
                    "device": dev,
                    "status": e.status,
                    "note": (
                        f"n={e.n} nan={e.nan_mismatch} max_abs={e.max_abs_err} "
                        f"median_abs={e.median_abs_err} max_rel={e.max_rel_err} "
                        f"method={e.method}"
                    ),
                }
            )


# --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", default="tiny,small,medium,large", help=f"comma list of {ORDER}")
    p.add_argument("--tiers", default="scan,fast,standard,exact", help="comma list of opdgeo tiers")
    p.add_argument(
        "--baseline",
        default=None,
        help="git revision whose opdgeo is timed as fast-before (the fast tier before a change)",
    )
    p.add_argument(
        "--sample-from",
        default="7b",
        help="smallest size whose standard tier and naive run on --sample-layers layers only",
    )
    p.add_argument("--sample-layers", type=int, default=1, help="layers timed on sampled sizes")
    p.add_argument(
        "--baseline-max-size", default="small", help="largest size timed with --baseline"
    )
    p.add_argument("--no-demo", action="store_true", help="skip timing `opdgeo demo`")
    p.add_argument(
        "--no-cache-variants",
        action="store_true",
        help="time the standard tier without base cache only (no cache-cold / cache-warm runs)",
    )
    p.add_argument(
        "--delete-after",
        default="",
        help="comma list of sizes whose generated files are deleted at the end (e.g. 7b)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="markdown file (CSV beside it); default "
        "bench/RESULTS.md, or bench/RESULTS-gpu.md with --device cuda",
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="passed to opdgeo and naive")
    p.add_argument("--layers", type=int, default=None, help="layers of the largest size")
    p.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "opdgeo-bench"),
        help="generated checkpoints (reused when their spec matches)",
    )
    p.add_argument("--naive-max-size", default="large", help="largest size for naive ('none')")
    p.add_argument(
        "--naive-full-max-size",
        default="small",
        help="largest size for naive-full (full_matrices=True; 'none')",
    )
    p.add_argument("--exact-max-size", default="medium", help="largest size for the exact tier")
    p.add_argument("--error-size", default="small", help="size of the per-metric error table")
    p.add_argument("--time-limit", type=float, default=1200.0, help="seconds per naive/exact run")
    p.add_argument("--repeat", type=int, default=1, help="best of N runs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    for s in [
        *args.sizes,
        args.exact_max_size,
        *([args.error_size] if args.error_size else []),
        args.sample_from,
        args.baseline_max_size,
    ]:
        if s not in SIZES:
            p.error(f"unknown size {s!r} (choose from {', '.join(ORDER)})")
    for s in (args.naive_max_size, args.naive_full_max_size):
        if s != "none" and s not in SIZES:
            p.error(f"unknown naive size limit {s!r} (a size or 'none')")
    for t in args.tiers:
        if t not in ("scan", "fast", "standard", "exact"):
            p.error(f"unknown tier {t!r}")
    args.sizes.sort(key=ORDER.index)
    if args.out is None:
        name = "RESULTS-gpu.md" if args.device == "cuda" else "RESULTS.md"
        args.out = str(ROOT / "bench" / name)
    return args


JIT_WARMUP = (
    "import numpy as np\n"
    "from opdgeo.scan_jit import BlockTotals, scan_span\n"
    "a = np.zeros(1 << 16, np.uint16)\n"
    "scan_span(a, a, 1e-5, 1e-5, 1 << 15, BlockTotals.empty(2), 0, 2)\n"
)


def warm_jit() -> None:
    """Compile numba's scan kernel into its cache once, before anything is timed (a user pays
    this ~2 s once per machine, not per run); nothing to do without numba."""
    if importlib.util.find_spec("numba") is None:
        print("numba not installed: the torch scan kernel is timed", file=sys.stderr)
        return
    subprocess.run([sys.executable, "-c", JIT_WARMUP], cwd=ROOT, check=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Generate, measure, report."""
    args = parse_args(argv)
    started = time.time()
    load0 = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}", file=sys.stderr)
    bench = Bench(args)
    info: dict[str, SizeInfo] = {}
    largest = args.sizes[-1]
    warm_jit()
    # the per-metric errors first (untimed; the timed runs may not all finish on a busy machine)
    errors: list[MetricError] = []
    if args.error_size:
        spec = spec_for(args.error_size, args.layers if args.error_size == largest else None)
        a, b, _ = ensure_pair(spec, workdir, args.error_size, args.seed)
        print(f"per-metric error on {args.error_size}", file=sys.stderr, flush=True)
        errors = metric_errors(bench.error_run(args.error_size, a, b))
    if not args.no_demo:
        print("opdgeo demo", file=sys.stderr, flush=True)
        bench.demo_run()
    for size in args.sizes:
        spec = spec_for(size, args.layers if size == largest else None)
        bench.specs[size] = spec
        if spec.layers < SIZES[size].layers:  # --layers: the shapes of size, fewer layers
            bench.samples[size] = (spec.layers, SIZES[size].layers)
        a, b, gen_s = ensure_pair(spec, workdir, size, args.seed)
        pair = a.stat().st_size + b.stat().st_size
        info[size] = SizeInfo(
            params=spec.n_params(),
            pair_bytes=pair,
            largest_f32_bytes=spec.largest() * 4,
            largest_matrix_f32_bytes=spec.largest_matrix() * 4,
        )
        print(
            f"{size}: {spec}, {spec.n_params() / 1e9:.3f} B params, pair {pair / GB:.2f} GB"
            f"{f', generated in {gen_s:.0f} s' if gen_s else ' (reused)'}",
            file=sys.stderr,
            flush=True,
        )
        bench.size_run(size, a, b)
        write_report(Path(args.out), bench, info, errors, args.error_size, started, load0)
    write_report(Path(args.out), bench, info, errors, args.error_size, started, load0)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.csv')}", file=sys.stderr)
    if bench.before_env is not None:
        shutil.rmtree(bench.before_dir, ignore_errors=True)
    for size in filter(None, args.delete_after.split(",")):
        shutil.rmtree(workdir / size.strip(), ignore_errors=True)


if __name__ == "__main__":
    main()
