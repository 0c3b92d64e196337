"""``python -m zoo grid-explore``: candidate magnitude-aware features of every grid checkpoint.

For every saved checkpoint (step > 0) of every grid run, against the run's origin, this
computes directly from the weights, over the 2-D block matrices (q/k/v/o, gate/up/down; the
embedding and head are left out, as opdgeo's spectral metrics leave them out), with every
decomposition a float64 ``torch.linalg.svd`` of the bf16 values upcast exactly:

* ``update_size`` - median over the changed entries (bf16 bits differ) of |ΔW| / (½ ulp of
  W0), ulp = the bf16 spacing at W0 (2^(⌊log2|w|⌋-7)); 1 = at the rounding boundary, and a
  change of one bf16 step reads 2. Entries with W0 = 0 are left out.
* ``update_size_mean`` - the mean of the same ratio over *all* entries (unchanged count 0).
* ``update_size_fp32`` - final checkpoints only: the median over all entries of
  |W1_fp32 − W0| / (½ ulp of W0), from the run's fp32 master weights (the update before
  rounding; the fraction above 1 is what becomes visible in bf16).
* ``rel_norm`` - sqrt(Σ‖ΔW‖_F²) / sqrt(Σ‖W0‖_F²) over these matrices; ``sparsity`` - share of
  entries whose bf16 value is unchanged.
* ``angle_per_rel`` - per matrix, mean principal angle (degrees) between the top-k left
  singular subspaces of W0 and W1 (k = min(m, n) // 8, sines from σ((I − U0U0ᵀ)U1)) divided
  by the matrix's ‖ΔW‖_F/‖W0‖_F; median over matrices.
* ``spectral_drift`` - per matrix ‖σ(W1) − σ(W0)‖₂ / ‖ΔW‖_F (DSSU); median. This is also NSS
  per unit rel_norm: per matrix NSS / (‖ΔW‖_F/‖W0‖_F) equals it exactly, since
  ‖σ(W0)‖₂ = ‖W0‖_F, so it is listed once.
* ``energy_ratio`` - per matrix ‖U_kᵀ ΔW V_k‖_F² / ‖ΔW‖_F² over its random baseline
  k²/(mn), U_k, V_k from W0, k = ⌊0.1·min(m, n)⌋ (DSSU); median.
* ``intruders`` - Shuttleworth et al. 2410.21228: number of W1's top-10 left singular vectors
  whose largest |cos| with every left singular vector of W0 (full basis) is < 0.5, summed
  over matrices; ``intruder_sim`` - the smallest such largest |cos| among the top 10, median
  over matrices (a continuous version: 1 = no new direction).
* ``stable_rank`` - ‖ΔW‖_F² / ‖ΔW‖₂², mean over matrices (OPDG's pooling);
  ``effective_rank`` - exp of the entropy of σ(ΔW)/Σσ(ΔW), mean.
* ``row_share`` / ``col_share`` - share of ‖ΔW‖_F² in the 10 % of rows (columns) with the most
  update energy (0.1 = spread evenly); median.
* ``sign_agree`` - among changed entries with W0 ≠ 0, the share where ΔW has W0's sign
  (the weight grows in magnitude); pooled.
* ``cos_w0`` - per matrix ⟨ΔW, W0⟩ / (‖ΔW‖_F‖W0‖_F) (negative: the update shrinks W0, as weight
  decay does); median.

Then, for each candidate feature, a matched-size test: on seed 0, per algorithm, a least-
squares line of the (log) feature against log ``update_size_mean`` (see EXPLORE.md for why this
axis), with its residual spread; each checkpoint is assigned the algorithm whose line explains
it best (Gaussian likelihood of the residual), and the share assigned correctly is reported on
seed 0 (in sample) and seed 1 (held out). Results: ``explore.csv`` (one row per checkpoint),
``separation.csv`` and ``EXPLORE.md`` (tables; the hand-written reading is
``EXPLORE-notes.md``, appended verbatim).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from zoo.grid import REPO

MATRIX = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
ALGOS = ("sft", "rlvr", "opd")
AXES = ("update_size_mean", "update_size", "rel_norm")
"""Update-size axes the matched comparison is made on (the first is the main one)."""
AXIS = AXES[0]
CANDIDATES: dict[str, bool] = {
    # feature -> compared on a log scale
    "sparsity": False,
    "update_size": True,
    "rel_norm": True,
    "angle_per_rel": True,
    "spectral_drift": False,
    "energy_ratio": True,
    "intruder_sim": False,
    "stable_rank": True,
    "effective_rank": True,
    "row_share": False,
    "col_share": False,
    "sign_agree": False,
    "cos_w0": False,
}


def _path(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else REPO / p


def matrices(path: Path) -> dict[str, torch.Tensor]:
    """The 2-D block matrices of a checkpoint directory, upcast to float64 (exact for bf16)."""
    state = load_file(str(path / "model.safetensors"))
    return {k: v.to(torch.float64) for k, v in state.items() if MATRIX.search(k)}


def half_ulp(w: torch.Tensor) -> torch.Tensor:
    """Half the bf16 spacing at each value of ``w`` (w = m·2^e, m ∈ [0.5, 1): 2^(e−9))."""
    _, exponent = torch.frexp(w)
    return torch.ldexp(torch.ones_like(w), exponent - 9)


@dataclass
class Origin:
    """A base matrix and its decompositions (computed once per origin)."""

    w: torch.Tensor
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    u_full: torch.Tensor
    half_ulp: torch.Tensor

    @classmethod
    def of(cls, w: torch.Tensor) -> Origin:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u_full = torch.linalg.svd(w, full_matrices=True)[0] if w.shape[0] > w.shape[1] else u
        return cls(w, u, s, vh, u_full, half_ulp(w))


def matrix_features(o: Origin, w1: torch.Tensor) -> dict[str, float] | None:
    """Per-matrix features of W1 against the origin (None when ΔW = 0)."""
    d = w1 - o.w
    fro_d = float(torch.linalg.norm(d))
    if fro_d == 0.0:
        return None
    m, n = d.shape
    rel = fro_d / float(torch.linalg.norm(o.w))
    u1, s1, _ = torch.linalg.svd(w1, full_matrices=False)
    k = max(1, min(min(m, n) // 8, 512))
    u0k, u1k = o.u[:, :k], u1[:, :k]
    sines = torch.linalg.svdvals(u1k - u0k @ (u0k.T @ u1k)).clamp(0.0, 1.0)
    angle = float(torch.rad2deg(torch.arcsin(sines)).mean())
    shift = float(torch.linalg.norm(s1 - o.s))
    ke = max(1, int(0.1 * min(m, n)))
    energy = float(torch.linalg.norm(o.u[:, :ke].T @ d @ o.vh[:ke].T) ** 2) / fro_d**2
    sims = (u1[:, :10].T @ o.u_full).abs().amax(dim=1)
    sd = torch.linalg.svdvals(d)
    p = sd / sd.sum()
    p = p[p > 0]
    rows = (d**2).sum(1).sort(descending=True).values
    cols = (d**2).sum(0).sort(descending=True).values
    return {
        "angle_per_rel": angle / rel,
        "spectral_drift": shift / fro_d,
        "energy_ratio": energy / (ke * ke / (m * n)),
        "intruders": float((sims < 0.5).sum()),
        "intruder_sim": float(sims.min()),
        "stable_rank": fro_d**2 / float(sd[0]) ** 2,
        "effective_rank": float(torch.exp(-(p * p.log()).sum())),
        "row_share": float(rows[: math.ceil(0.1 * m)].sum() / rows.sum()),
        "col_share": float(cols[: math.ceil(0.1 * n)].sum() / cols.sum()),
        "cos_w0": float((d * o.w).sum()) / (fro_d * float(torch.linalg.norm(o.w))),
    }


POOL_MEAN = ("stable_rank", "effective_rank")
POOL_SUM = ("intruders",)


def checkpoint_features(
    origin: dict[str, Origin],
    tuned: dict[str, torch.Tensor],
    fp32: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Every candidate feature of one checkpoint (see the module docstring for pooling)."""
    per: list[dict[str, float]] = []
    ratios_changed, ratio_sum, n_ratio = [], 0.0, 0
    grow, changed_nonzero, unchanged, numel = 0, 0, 0, 0
    d2, w2 = 0.0, 0.0
    fp32_ratios = []
    for name, o in origin.items():
        w1 = tuned[name]
        d = w1 - o.w
        changed = d != 0
        nz = o.w != 0
        ratio = d.abs() / o.half_ulp
        ratios_changed.append(ratio[changed & nz])
        ratio_sum += float(ratio[nz].sum())
        n_ratio += int(nz.sum())
        grow += int(((torch.sign(d) == torch.sign(o.w)) & changed & nz).sum())
        changed_nonzero += int((changed & nz).sum())
        unchanged += int((~changed).sum())
        numel += d.numel()
        d2 += float((d**2).sum())
        w2 += float((o.w**2).sum())
        if fp32 is not None:
            fp32_ratios.append(((fp32[name] - o.w).abs() / o.half_ulp)[nz])
        f = matrix_features(o, w1)
        if f is not None:
            per.append(f)
    all_changed = torch.cat(ratios_changed)
    out: dict[str, float] = {
        "sparsity": unchanged / numel,
        "rel_norm": math.sqrt(d2 / w2),
        "update_size": float(all_changed.median()) if all_changed.numel() else math.nan,
        "update_size_mean": ratio_sum / n_ratio,
        "sign_agree": grow / changed_nonzero if changed_nonzero else math.nan,
        "update_size_fp32": math.nan,
        "fp32_visible": math.nan,
    }
    if fp32_ratios:
        every = torch.cat(fp32_ratios)
        out["update_size_fp32"] = float(every.median())
        out["fp32_visible"] = float((every > 1).double().mean())
    keys = per[0].keys() if per else ()
    for key in keys:
        values = np.array([f[key] for f in per])
        if key in POOL_SUM:
            out[key] = float(values.sum())
        elif key in POOL_MEAN:
            out[key] = float(values.mean())
        else:
            out[key] = float(np.median(values))
    out["n_matrices"] = float(len(per))
    return out


def fp32_twin(checkpoint: Path) -> Path:
    """``RUN/checkpoint-N`` -> ``RUN-fp32/checkpoint-N``."""
    return checkpoint.parent.with_name(checkpoint.parent.name + "-fp32") / checkpoint.name


def explore_rows(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per (run, saved checkpoint > 0) with every candidate feature."""
    origins: dict[str, dict[str, Origin]] = {}
    rows = []
    for run in manifest["runs"]:
        if run["origin"] not in origins:
            base = matrices(_path(run["origin"]))
            origins[run["origin"]] = {k: Origin.of(v) for k, v in base.items()}
        run_dir = _path(run["path"])
        final = int(run["steps"])
        for step_text, acc in run["accuracy"].items():
            step = int(step_text)
            if step == 0:
                continue
            ckpt = run_dir / f"checkpoint-{step}"
            twin = fp32_twin(ckpt)
            fp32 = matrices(twin) if step == final and twin.is_dir() else None
            feats = checkpoint_features(origins[run["origin"]], matrices(ckpt), fp32)
            rows.append(
                {
                    "seed": run["seed"],
                    "algorithm": run["algorithm"],
                    "lr": run["lr"],
                    "step": step,
                    "updates": run["updates_at"].get(step_text),
                    "final": step == final,
                    "accuracy": acc,
                    "acc_gain": acc - run["acc_before"],
                    **feats,
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- separation


def _value(frame: pd.DataFrame, feature: str) -> np.ndarray:
    v = frame[feature].to_numpy(dtype=float)
    if CANDIDATES.get(feature, False):
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.log10(np.where(v > 0, v, np.nan))
    return v


def fit_lines(
    frame: pd.DataFrame, feature: str, axis: str = AXIS
) -> dict[str, tuple[float, float, float]]:
    """Per algorithm: intercept, slope (feature against log10 axis) and residual sd."""
    lines = {}
    for algo in ALGOS:
        part = frame[frame["algorithm"] == algo]
        with np.errstate(divide="ignore"):
            x = np.log10(part[axis].to_numpy(dtype=float))
        y = _value(part, feature)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3:
            continue
        slope, intercept = np.polyfit(x[ok], y[ok], 1)
        resid = y[ok] - (intercept + slope * x[ok])
        sd = max(float(np.sqrt((resid**2).sum() / max(1, ok.sum() - 2))), 1e-12)
        lines[algo] = (float(intercept), float(slope), sd)
    return lines


def assign(
    frame: pd.DataFrame,
    feature: str,
    lines: dict[str, tuple[float, float, float]],
    among: tuple[str, ...] = ALGOS,
    axis: str = AXIS,
) -> np.ndarray:
    """The algorithm whose line gives each row the highest Gaussian likelihood."""
    with np.errstate(divide="ignore"):
        x = np.log10(frame[axis].to_numpy(dtype=float))
    y = _value(frame, feature)
    names = [a for a in among if a in lines]
    out = np.full(len(frame), "none", dtype=object)
    valid = np.isfinite(x) & np.isfinite(y)
    if not names or not valid.any():
        return out
    scores = []
    for a in names:
        b0, b1, sd = lines[a]
        r = (y[valid] - (b0 + b1 * x[valid])) / sd
        scores.append(-0.5 * r**2 - math.log(sd))
    out[valid] = [names[i] for i in np.argmax(np.vstack(scores), axis=0)]
    return out


def separation(
    frame: pd.DataFrame, fit_seed: int, test_seed: int, axis: str = AXIS
) -> pd.DataFrame:
    """Per candidate feature: share of checkpoints assigned their true algorithm."""
    fit, test = frame[frame["seed"] == fit_seed], frame[frame["seed"] == test_seed]
    rows = []
    for feature in CANDIDATES:
        if feature == axis:
            continue
        lines = fit_lines(fit, feature, axis)
        row: dict[str, Any] = {
            "axis": axis,
            "feature": feature,
            "scale": "log10" if CANDIDATES[feature] else "linear",
        }
        for label, part in (("fit", fit), ("test", test)):
            got = assign(part, feature, lines, ALGOS, axis)
            row[f"acc3_{label}"] = float(np.mean(got == part["algorithm"].to_numpy()))
            pair = part[part["algorithm"].isin(("rlvr", "opd"))]
            got2 = assign(pair, feature, lines, ("rlvr", "opd"), axis)
            row[f"rlvr_opd_{label}"] = float(np.mean(got2 == pair["algorithm"].to_numpy()))
        for algo in ALGOS:
            if algo in lines:
                row[f"slope_{algo}"] = lines[algo][1]
                row[f"at1_{algo}"] = lines[algo][0]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["acc3_test", "rlvr_opd_test"], ascending=False)


# ----------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _table(frame: pd.DataFrame, columns: list[str], specs: dict[str, str] | None = None) -> str:
    specs = specs or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in frame.itertuples(index=False):
        d = r._asdict()
        lines.append("| " + " | ".join(_fmt(d.get(c), specs.get(c, ".3g")) for c in columns) + " |")
    return "\n".join(lines)


def summary_ratios(features_csv: Path) -> list[str]:
    """opdgeo's own summary features of the final checkpoints, per unit rel_norm (the ratios
    the issue quotes), from ``features.csv`` when it exists."""
    if not features_csv.is_file():
        return []
    f = pd.read_csv(features_csv)
    f["angle_per_rel_norm"] = f["principal_angle_deg"] / f["rel_norm"]
    f["nss_per_rel_norm"] = f["nss"] / f["rel_norm"]
    return [
        "## opdgeo's summary per unit rel_norm (final checkpoints)",
        "",
        "From `features.csv` (opdgeo's default settings): `principal_angle_deg / rel_norm` and "
        "`nss / rel_norm` (the summary-level ratios the issue quotes), beside opdgeo's label.",
        "",
        _table(
            f,
            [
                "seed",
                "algorithm",
                "lr",
                "sparsity_bf16",
                "lowmag_enrichment",
                "rel_norm",
                "angle_per_rel_norm",
                "nss_per_rel_norm",
                "regime",
            ],
            {"lr": ".0e", "sparsity_bf16": ".3f", "lowmag_enrichment": ".2f"},
        ),
        "",
    ]


def write_explore(
    frame: pd.DataFrame, sep: pd.DataFrame, manifest: dict[str, Any], out: Path
) -> None:
    """``EXPLORE.md``: what was computed, the separation table, the scatter data as tables."""
    seeds = sorted(frame["seed"].unique())
    fit_seed, test_seed = seeds[0], seeds[-1]
    feats = [c for c in CANDIDATES if c not in ("sparsity", "rel_norm")]
    lines = [
        "# Training grid: exploring magnitude-aware features",
        "",
        "Generated by `python -m zoo grid-explore` (part of `make zoo-grid`) from the grid's "
        "checkpoints; do not edit by hand. Definitions: the docstring of `zoo/grid_explore.py`. "
        "Every checkpoint saved after step 0 is a point (a run saves every "
        "`steps // checkpoints` steps and at its last step; RLVR makes two optimizer updates per "
        "rollout step), compared with its run's origin (SFT: the base; RLVR, OPD: the anchor). "
        "The hand-written reading is at the end.",
        "",
        f"## Separation at matched update size (fit on seed {fit_seed}, held out: seed "
        f"{test_seed})",
        "",
        "For each feature, a line per algorithm of the feature (log10 or linear, `scale`) "
        f"against the log10 of an update-size axis is fitted on seed {fit_seed}'s checkpoints; "
        "each checkpoint is assigned the algorithm whose line explains it best (Gaussian "
        "likelihood of the residual, each line's own residual spread). `acc3`: share of "
        "checkpoints assigned their true algorithm among SFT / RLVR / OPD (chance 1/3); "
        "`rlvr_opd`: the same between RLVR and OPD only (same origin, same learning rates, same "
        "updates; chance 1/2). `fit` is in-sample (seed "
        f"{fit_seed}), `test` the held-out seed {test_seed}. SFT starts from the base and the "
        "others from the anchor, so SFT-vs-rest also separates origins, not only algorithms; "
        "RLVR vs OPD is the clean comparison. Slopes: d(feature)/d log10(axis) per algorithm.",
        "",
    ]
    columns = [
        "feature",
        "scale",
        "acc3_fit",
        "acc3_test",
        "rlvr_opd_fit",
        "rlvr_opd_test",
        "slope_sft",
        "slope_rlvr",
        "slope_opd",
    ]
    specs = dict.fromkeys(columns[2:6], ".2f")
    for axis in AXES:
        part = sep[sep["axis"] == axis]
        title = "main axis" if axis == AXIS else "alternative axis"
        lines += [f"### Axis `{axis}` ({title})", "", _table(part, columns, specs), ""]
    order = {a: i for i, a in enumerate(ALGOS)}
    finals = frame[frame["final"]].sort_values(
        ["seed", "algorithm", "lr"], key=lambda c: c.map(order) if c.name == "algorithm" else c
    )
    lines += [
        "## Final checkpoints: update size axes",
        "",
        "`update_size` (median over changed entries of |ΔW| / ½ ulp; bf16 steps are whole "
        "ulps, so it is 2 whenever most changes are one bf16 step), `update_size_mean` (mean "
        "over all entries), `update_size_fp32` (median over all entries, from the fp32 master "
        "weights; 1 = the rounding boundary) and `fp32_visible` (share of fp32 updates beyond "
        "½ ulp), beside sparsity and rel_norm.",
        "",
        _table(
            finals,
            [
                "seed",
                "algorithm",
                "lr",
                "updates",
                "accuracy",
                "acc_gain",
                "sparsity",
                "rel_norm",
                "update_size",
                "update_size_mean",
                "update_size_fp32",
                "fp32_visible",
            ],
            {"lr": ".0e", "accuracy": ".3f", "acc_gain": "+.3f", "sparsity": ".3f"},
        ),
        "",
        *summary_ratios(out / "features.csv"),
        "## Scatter data: every checkpoint, sorted by the update-size axis",
        "",
        f"One table per seed; rows sorted by `{AXIS}`, so runs of different algorithms at "
        "matched update size sit next to each other.",
        "",
    ]
    for seed in seeds:
        part = frame[frame["seed"] == seed].sort_values(AXIS)
        lines += [
            f"### Seed {seed}",
            "",
            _table(
                part,
                ["algorithm", "lr", "step", AXIS, *feats],
                {
                    "lr": ".0e",
                    "intruder_sim": ".3f",
                    "sign_agree": ".3f",
                    "cos_w0": ".3f",
                    "row_share": ".3f",
                    "col_share": ".3f",
                    "spectral_drift": ".3f",
                },
            ),
            "",
        ]
    notes = out / "EXPLORE-notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    (out / "EXPLORE.md").write_text("\n".join(lines))


def explore(manifest_path: Path, out: Path) -> pd.DataFrame:
    """Compute every checkpoint's features and write explore.csv, separation.csv, EXPLORE.md."""
    torch.set_num_threads(2)
    manifest = json.loads(manifest_path.read_text())
    frame = explore_rows(manifest)
    frame.to_csv(out / "explore.csv", index=False)
    seeds = sorted(frame["seed"].unique())
    sep = pd.concat([separation(frame, seeds[0], seeds[-1], axis) for axis in AXES])
    if len(seeds) >= 2:
        sep.to_csv(out / "separation.csv", index=False)
    write_explore(frame, sep, manifest, out)
    return frame
