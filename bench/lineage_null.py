"""Calibration of ``opdgeo lineage``: its p-values under the null, its power, its reads.

    python bench/lineage_null.py                 # ~10 min on 2 busy cores; make lineage-null
    python bench/lineage_null.py --quick         # a minute: fewer pairs

Writes ``bench/LINEAGE_NULL.md`` (quoted by docs/lineage.md) and ``bench/lineage_null.json``.

1. Independently initialised pairs (the null the p-values are exact for): ``--pairs``
   pairs of tiny Llama-shaped models (i.i.d. N(0, 0.02^2) weights, bf16; GQA and MHA
   shapes alternate), each model from its own seed. Reported: the Kolmogorov-Smirnov test
   of the combined p-values (and of every single test's p-value, pooled) against
   Uniform(0, 1), the false-positive rate at p < 0.01 and 0.05, and the verdicts.
2. Independently *trained* pairs: ``--trained`` pairs of the zoo's tiny decoder
   (zoo/model.py, hidden 64, 2 blocks) trained from their own seeds on the zoo's addition
   task (``--steps`` AdamW steps), released in bf16. Training correlates weights inside a
   model; this checks that it does not make independent models look related.
3. Power: derived pairs (continued training of a trained model, function-preserving
   permutations, a re-initialised block, pruned / duplicated blocks, casts, vocabulary
   resizing, a permuted residual stream): verdict and p-value for each.
4. Bytes the read plan takes for a Qwen2.5-7B-shaped pair (fake header, no weights), and
   the whole pair run on rows drawn on demand (time and memory of the tests at that size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo.lineage import LineageSettings, lineage_pair, plan_bytes  # noqa: E402
from opdgeo.lineage import transforms as tf  # noqa: E402
from opdgeo.lineage.layout import build_layout  # noqa: E402
from opdgeo.lineage.nullmodels import (  # noqa: E402
    QWEN25_7B,
    LlamaShape,
    MemorySource,
    RandomSource,
    llama_header,
    llama_state,
)
from zoo import task  # noqa: E402
from zoo.model import ModelConfig, TinyLlama  # noqa: E402
from zoo.train import solution_mask, token_logprobs  # noqa: E402

NULL_SHAPES = (
    LlamaShape(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=256),
    LlamaShape(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=4, vocab=256),
)
ZOO_TINY = ModelConfig(hidden=64, layers=2, heads=4, intermediate=128, init_std=0.02)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _pair(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: dict) -> dict:
    t0 = time.perf_counter()
    r = lineage_pair(MemorySource("A", a, cfg), MemorySource("B", b, cfg), LineageSettings())
    return {
        "verdict": r.verdict,
        "log10_p": r.log10_p,
        "log10_p_bonferroni": r.log10_p_bonferroni,
        "effect": r.effect,
        "tests": [t.log10_p for t in r.tests if t.in_combined],
        "not_shared": [e.part for e in r.layers if e.status == "not shared"],
        "missing": [e.part for e in r.layers if e.status == "missing in B"],
        "duplicates": [e.part for e in r.layers if e.status == "duplicate"],
        "alignment": r.alignment,
        "seconds": time.perf_counter() - t0,
    }


def _null_summary(rows: list[dict]) -> dict:
    p = np.array([10.0 ** r["log10_p"] for r in rows])
    per_test = np.array([10.0**x for r in rows for x in r["tests"]])
    return {
        "pairs": len(rows),
        "ks_p_combined": float(stats.kstest(p, "uniform").pvalue),
        "ks_stat_combined": float(stats.kstest(p, "uniform").statistic),
        "ks_p_per_test": float(stats.kstest(per_test, "uniform").pvalue),
        "tests_pooled": len(per_test),
        "fpr_0.01": float(np.mean(p < 0.01)),
        "fpr_0.05": float(np.mean(p < 0.05)),
        "fpr_bonferroni_0.01": float(np.mean([10 ** r["log10_p_bonferroni"] < 0.01 for r in rows])),
        "min_p": float(p.min()),
        "verdicts": {
            v: sum(r["verdict"] == v for r in rows)
            for v in ("same-weights", "derived", "independent", "inconclusive")
        },  # fmt: skip
        "seconds_per_pair": float(np.mean([r["seconds"] for r in rows])),
    }


def random_null(n_pairs: int, log: object = print) -> dict:
    rows = []
    for k in range(n_pairs):
        shape = NULL_SHAPES[k % 2]
        rows.append(_pair(llama_state(shape, 2 * k), llama_state(shape, 2 * k + 1), shape.config()))
    summary = _null_summary(rows)
    summary["shapes"] = [s.as_dict() for s in NULL_SHAPES]
    summary["log10_p"] = [round(r["log10_p"], 4) for r in rows]
    return summary


def _train(model: TinyLlama, steps: int, seed: int, lr: float = 3e-3) -> float:
    """AdamW on the zoo's task (2-3 term sums), data from ``seed``; returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        ids = task.sequences(task.sample_problems(32, 2 + step % 2, gen))
        logp, _ = token_logprobs(model, ids)
        mask = solution_mask(ids)
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def _release(model: TinyLlama) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()}


def trained_model(seed: int, steps: int) -> tuple[dict[str, torch.Tensor], float, TinyLlama]:
    torch.manual_seed(seed)
    model = TinyLlama(ZOO_TINY)
    first = _train(model, 1, 10_000 + seed)
    last = _train(model, steps - 1, 20_000 + seed)
    return _release(model), last / first, model


def trained_null(n_pairs: int, steps: int) -> dict:
    rows, ratios = [], []
    cfg = ZOO_TINY.as_dict()
    for k in range(n_pairs):
        a, ra, _ = trained_model(1000 + 2 * k, steps)
        b, rb, _ = trained_model(1000 + 2 * k + 1, steps)
        ratios += [ra, rb]
        rows.append(_pair(a, b, cfg))
    summary = _null_summary(rows)
    summary["steps"] = steps
    summary["model"] = ZOO_TINY.as_dict()
    summary["loss_ratio_median"] = float(np.median(ratios))
    summary["log10_p"] = [round(r["log10_p"], 4) for r in rows]
    return summary


def power(steps: int) -> list[dict]:
    """Derived pairs; each row: case, verdict, log10 p, effect, blocks flagged."""
    out = []
    cfg = ZOO_TINY.as_dict()
    base, _, model = trained_model(7, steps)
    for extra in (steps, 5 * steps):
        clone = TinyLlama(ZOO_TINY)
        clone.load_state_dict({k: v.float() for k, v in base.items()})
        _train(clone, extra, 777 + extra)
        out.append({"case": f"zoo-tiny base + {extra} more AdamW steps (lr 3e-3)",
                    **_pair(base, _release(clone), cfg)})  # fmt: skip
    heads = ZOO_TINY.heads
    cases = {
        "permuted MLP units (signs, scales) + attention heads": tf.permute_heads(
            tf.permute_mlp(base, 1), heads, heads, 2),
        "block 1 re-initialised": tf.reinit_layer(base, 1),
        "block 0 dropped": tf.renumber(base, [1]),
        "block 1 duplicated": tf.renumber(base, [0, 1, 1]),
        "cast to fp32": tf.cast(base, torch.float32),
        "relative noise 1.0 on every matrix": tf.train_noise(base, 1.0),
    }  # fmt: skip
    for case, state in cases.items():
        out.append({"case": f"zoo-tiny base: {case}", **_pair(base, state, cfg)})
    shape = LlamaShape(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=2048)
    init = llama_state(shape, 5)
    for case, state in {
        "vocabulary 2048 -> 2304 rows": tf.resize_vocab(init, 2304),
        "signed permutation of the residual stream": tf.permute_residual(init, 3),
        "GQA heads + MLP units permuted": tf.permute_heads(tf.permute_mlp(init, 4), 4, 2, 5),
    }.items():
        out.append({"case": f"random-init GQA model: {case}",
                    **_pair(init, state, shape.config())})  # fmt: skip
    for row in out:
        row.pop("tests")
    return out


def _latent_embedding(
    z: torch.Tensor, dims: int, scale: float, gen: torch.Generator
) -> torch.Tensor:
    """Z R + noise with a fresh random R (rank x dims): a new basis for the same geometry."""
    base = z @ torch.randn(z.shape[1], dims, generator=gen)
    return base + scale * torch.randn(z.shape[0], dims, generator=gen)


def embedding_confound(pairs: int = 10) -> list[dict]:
    """Why the embedding test stays out of the combined p: independent embeddings that share
    a token geometry. E_A = Z R_A + noise, E_B = Z R_B + noise with a shared token latent Z
    (8192 tokens x rank r, decaying scales), independent random R (r x 512): independent
    bases, same geometry. Reported: the embedding test's p and the median |corr| of matched
    columns (the residual-alignment gate needs >= 0.5); a derived, permuted embedding for
    comparison."""
    from opdgeo.lineage.matching import signed_alignment
    from opdgeo.lineage.statistics import embedding_test

    tokens, dims, rows = 8192, 512, []
    for rank, noise in ((16, 0.0), (64, 0.0), (256, 0.3)):
        log10_ps, corrs = [], []
        for k in range(pairs):
            gen = torch.Generator().manual_seed(100 * rank + k)
            z = torch.randn(tokens, rank, generator=gen) * torch.linspace(3, 0.3, rank)
            scale = noise * float(z.std()) * rank**0.5

            ea, eb = _latent_embedding(z, dims, scale, gen), _latent_embedding(z, dims, scale, gen)
            log10_ps.append(embedding_test("e", ea, eb).tail.log10_p_random)
            corrs.append(float(np.median(signed_alignment(ea, eb)[2])))
        case = f"independent, shared token latent of rank {rank}, noise {noise}"
        rows.append(
            {"case": case, "max_log10_p": max(log10_ps), "median_corr": float(np.median(corrs))}
        )
    gen = torch.Generator().manual_seed(1)
    ea = torch.randn(tokens, dims, generator=gen)
    for noise in (0.3, 1.0, 2.0):
        eb = (ea + noise * torch.randn(tokens, dims, generator=gen))[:, torch.randperm(dims)]
        rows.append({"case": f"derived: permuted columns + relative noise {noise}",
                     "max_log10_p": embedding_test("e", ea, eb).tail.log10_p_random,
                     "median_corr": float(np.median(signed_alignment(ea, eb)[2]))})  # fmt: skip
    return rows


def bytes_7b(run: bool) -> dict:
    """The plan on a fake Qwen2.5-7B header; with ``run``, the whole pair on generated rows."""
    header = llama_header(QWEN25_7B)
    layout = build_layout(header, QWEN25_7B.config())
    pb = plan_bytes(layout, layout)
    out = {"shape": QWEN25_7B.as_dict(), "read_per_side": pb.read_a, "checkpoint": pb.size_a,
           "fraction": pb.fraction}  # fmt: skip
    if run:
        cfg = QWEN25_7B.config()
        t0 = time.perf_counter()
        r = lineage_pair(RandomSource("A", header, cfg, 0), RandomSource("B", header, cfg, 1))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        out.update(
            run_seconds=time.perf_counter() - t0,
            run_bytes=r.bytes_read,
            run_verdict=r.verdict,
            run_log10_p=r.log10_p,
            peak_rss_gb=rss,
        )
    return out


def _fmt_p(x: float) -> str:
    return f"{10**x:.3g}" if x > -4 else f"1e{x:.0f}"


def write_markdown(doc: dict, path: Path) -> None:
    n, t = doc["random_null"], doc["trained_null"]
    lines = [
        "# opdgeo lineage: calibration",
        "",
        f"Written by `python bench/lineage_null.py{' --quick' if doc['quick'] else ''}` "
        f"({doc['wall_seconds']:.0f} s; machine: {doc['machine']}, load average at start "
        f"{doc['load_start']}, at end {doc['load_end']}; torch threads 1). Numbers are "
        "regenerated by the script, never edited.",
        "",
        "## Null: independently initialised pairs",
        "",
        "| null | pairs | KS p (combined p) | KS p (every test, pooled) | FPR p<0.01 | FPR p<0.05 "
        "| verdicts (derived / independent / inconclusive) | s/pair |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in (("random init", n), ("trained", t)):
        v = s["verdicts"]
        lines.append(
            f"| {name} | {s['pairs']} | {s['ks_p_combined']:.3f} | {s['ks_p_per_test']:.3f} "
            f"({s['tests_pooled']} tests) | {s['fpr_0.01']:.3f} | {s['fpr_0.05']:.3f} | "
            f"{v['derived']} / {v['independent']} / {v['inconclusive']} | "
            f"{s['seconds_per_pair']:.2f} |"
        )
    lines += [
        "",
        f"Random init: {n['pairs']} pairs of 4-block Llama-shaped models (hidden 64, "
        "intermediate 128, 4 q heads in 2 or 4 kv groups, vocab 256, i.i.d. N(0, 0.02^2), bf16). "
        f"Trained: {t['pairs']} pairs of the zoo's decoder (hidden 64, 2 blocks, 4 heads, "
        f"intermediate 128), each model trained from its own seed for {t['steps']} AdamW steps "
        f"on the zoo's addition task (median loss ratio last/first {t['loss_ratio_median']:.2f}), "
        "released in bf16. A KS p above 0.05 means no detectable departure from Uniform(0, 1).",
        "",
        "## Power: derived pairs",
        "",
        "| case | verdict | combined p | effect | flagged blocks | residual alignment |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in doc["power"]:
        flags = [f"{p}: not shared" for p in row["not_shared"]]
        flags += [f"{p}: missing in B" for p in row["missing"]]
        flags += [f"{p}: duplicate" for p in row["duplicates"]]
        align = "permuted" if row["alignment"].startswith("signed") else "as stored"
        lines.append(
            f"| {row['case']} | {row['verdict']} | {_fmt_p(row['log10_p'])} | "
            f"{row['effect']:.2f} | {'; '.join(flags) or '-'} | {align} |"
        )
    lines += [
        "",
        "## Why the embedding test is not combined",
        "",
        "8192 tokens x 512 dimensions; 10 pairs per independent case (the largest p of the 10 "
        "is shown), one pair per derived case (`embedding_confound` in the script).",
        "",
        "| case | embedding-test p | median \\|corr\\| of matched columns |",
        "| --- | --- | --- |",
    ]
    for row in doc["embedding_confound"]:
        lines.append(f"| {row['case']} | {_fmt_p(row['max_log10_p'])} | {row['median_corr']:.2f} |")
    b = doc["bytes_7b"]
    lines += [
        "",
        "## Bytes read for a Qwen2.5-7B-shaped pair",
        "",
        f"From a fake header (28 blocks, hidden 3584, intermediate 18944, 28 q / 4 kv heads of "
        f"dim 128, vocab 152064, untied head, bf16; {b['checkpoint'] / 1e9:.2f} GB per "
        f"checkpoint): the plan reads {b['read_per_side'] / 1e9:.3f} GB per side, "
        f"**{100 * b['fraction']:.1f} %** of the pair.",
        "",
    ]
    if "run_seconds" in b:
        lines += [
            f"Run end to end on generated rows (`RandomSource`: the header's shapes, rows drawn "
            f"on demand, two independent models): {b['run_bytes'] / 1e9:.3f} GB read, verdict "
            f"`{b['run_verdict']}` (p = {10 ** b['run_log10_p']:.3g}), "
            f"{b['run_seconds']:.0f} s including drawing the rows, peak resident memory "
            f"{b['peak_rss_gb']:.2f} GB (the whole script's), one torch thread, load as above.",
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=240)
    parser.add_argument("--trained", type=int, default=60)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="40 + 10 pairs")
    parser.add_argument(
        "--no-7b-run", action="store_true", help="plan the 7B-shaped pair, do not run it (~4 min)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "LINEAGE_NULL.md")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "lineage_null.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.trained = 40, 10
    torch.set_num_threads(1)
    start, load_start = time.perf_counter(), _load()
    doc: dict = {"quick": args.quick, "load_start": load_start}
    print(f"random-init null: {args.pairs} pairs", flush=True)
    doc["random_null"] = random_null(args.pairs)
    print(f"trained null: {args.trained} pairs", flush=True)
    doc["trained_null"] = trained_null(args.trained, args.steps)
    print("power", flush=True)
    doc["power"] = power(args.steps)
    print("embedding confound", flush=True)
    doc["embedding_confound"] = embedding_confound()
    print("7B-shaped pair", flush=True)
    doc["bytes_7b"] = bytes_7b(not args.no_7b_run)
    doc["wall_seconds"] = time.perf_counter() - start
    doc["load_end"] = _load()
    doc["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    write_markdown(doc, args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
