"""Searched (table-driven, NetAdapt-style) pruning vs uniformly thinned MobileNet at equal latency.

    nice .venv/bin/python benchmarks/bench_pruning_vs_width.py [--quick] [--out benchmarks/results]
    .venv/bin/python benchmarks/bench_pruning_vs_width.py --device SERIAL --batch 16   # table + models on a phone

Setup (small, minutes on 2 cores):
  * model: MobileNetV1 width 0.25 (channels 8..256), 28x28x1 input, --classes classes (default 10);
  * data: SYNTHETIC glyphs (autlearn.workloads.data.synthetic_femnist, --per-class per class): 60 % train, 20 % val (the
    search's choices), 20 % test (reported accuracy, never used for a choice);
  * baselines: uniform thinning to fraction f of every layer ("width multiplier"), (a) keeping the largest-L2
    filters of the same pretrained model, (b) trained from a fresh seed; both get the same number of training steps
    as the searched model's kept chain. --device also trains the searched architecture from a fresh seed as (b).

--device (the acceptance comparison): the per-layer table is measured on the phone (`autlearn tables build`) and
smoothed (`tables.smooth`, a monotone robust fit per layer family; --table-fit raw: search on the measured table); the
uniform models are measured on the phone first and their MEASURED latency is each budget; the search starts at the
table's prediction for the uniform model and the closed loop (autlearn.workloads.pruning.loop) prunes further until the
searched model, measured beside its own uniform model, measures under the budget. Each budget's model is the chain's
first under it (--select first; best-val's pick is recorded as `best_val_iteration`). At the end every model is
measured again in the same control-gated campaign rounds (interleaved; latency ratios are medians of per-round
ratios). Accuracy: the exported models are compared paired on one test set (paired bootstrap 95 % CI, exact McNemar
p), and the final fine-tune of searched and uniform-L2 is repeated with --eval-seeds batch orders; the verdict is
on the mean over those (Welch 95 % CI), since one fine-tune moves test accuracy by about +-3 points at this scale.

Without --device: the table is measured on THIS HOST with PyTorch eager (labelled "host (not a phone)"), budgets
are the uniform models' predicted latency and "measured" is a host whole-step median (a proxy, not a phone).
Nobody tuned the baseline or the search for this comparison; one search seed per run (--seed; pool runs with
benchmarks/summarize_pruning.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE_WORK = Path(tempfile.gettempdir()) / "autlearn-prune-bench-device"  # campaign results (resumable)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def provenance() -> dict:
    from autlearn.workloads.tables import tool_versions
    from benchmarks.provenance import provenance as of

    return of(tool_versions())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--fractions", default="0.75,0.5", help="uniform-thinning fractions defining the budgets")
    ap.add_argument(
        "--work",
        default=None,
        help="search state dir (default: a fresh temp dir; weights stay out of benchmarks/results)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument(
        "--device",
        default=None,
        help="measure the table and every model on this device through the "
        "campaign engine (e.g. a lab phone) instead of this host",
    )
    ap.add_argument("--batch", type=int, default=64, help="on-device batch of the transfer-learning step")
    ap.add_argument("--every", type=int, default=4, help="table: measure every N-th channel count")
    ap.add_argument("--per-class", type=int, default=80, help="synthetic glyphs per class (20 %% of them: test)")
    ap.add_argument(
        "--classes",
        type=int,
        default=10,
        help="classes (62 = FEMNIST's; 10 saturates: every model size reaches ~96 %%)",
    )
    ap.add_argument("--pretrain-steps", type=int, default=None, help="default 300 (--quick: 100)")
    ap.add_argument("--short-steps", type=int, default=None, help="fine-tune per proposal; default 5 (--quick: 3)")
    ap.add_argument("--long-steps", type=int, default=None, help="final fine-tune; default 150 (--quick: 60)")
    ap.add_argument("--init-reduction", type=float, default=0.025)
    ap.add_argument(
        "--table-fit",
        choices=("smooth", "raw"),
        default="smooth",
        help="--device: search on the smoothed table (tables.smooth: monotone robust fit per layer "
        "family) or on the raw measured+interpolated one",
    )
    ap.add_argument("--measure-steps", type=int, default=60, help="--device: timed steps per runner launch")
    ap.add_argument("--seed", type=int, default=0, help="search seed (data split, init, fine-tune order)")
    ap.add_argument("--tag", default="", help="--device: suffix of the result files (keeps earlier runs)")
    ap.add_argument(
        "--eval-seeds",
        type=int,
        default=5,
        help="--device: repeat the final fine-tune of searched and uniform-L2 with this many batch-order "
        "seeds and compare mean test accuracy (one fine-tune's noise is about +-3 points here)",
    )
    ap.add_argument("--final-rounds", type=int, default=9, help="--device: rounds of the final joint measurement")
    ap.add_argument(
        "--select",
        choices=("first", "best-val"),
        default="first",
        help="model per budget (SearchSettings.select): the chain's first snapshot under the budget "
        "(at the budget: the equal-latency comparison) or the best-validation one under it",
    )
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from autlearn.workloads.families.mobilenet import thin_to, uniform_channels, with_channels
    from autlearn.workloads.layers import table_grid
    from autlearn.workloads.models import build_model, make_config
    from autlearn.workloads.pruning.budget import Budget
    from autlearn.workloads.pruning.search import SearchSettings, search, smallest_reachable
    from autlearn.workloads.pruning.train import evaluate, fine_tune, split_dataset, trainable_init
    from autlearn.workloads.resource import measure_models_on_host, model_resource, prediction_error
    from autlearn.workloads.tables import build_host_table

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config("mobilenet", width=0.25, num_classes=args.classes, batch=args.batch)
    pick = lambda given, quick, full: given if given is not None else (quick if args.quick else full)  # noqa: E731
    s = SearchSettings(
        short_steps=pick(args.short_steps, 3, 5),
        long_steps=pick(args.long_steps, 60, 150),
        pretrain_steps=pick(args.pretrain_steps, 100, 300),
        per_class=args.per_class,
        batch_size=32,
        init_reduction=args.init_reduction,
        seed=args.seed,
        select=args.select,
    )
    torch.set_num_threads(1)

    if args.device:
        return device_comparison(args, cfg, s, out, t_start)
    print(f"[{time.time() - t_start:5.0f}s] measuring the per-layer table on this host (not a phone) ...", flush=True)
    table = build_host_table("mobilenet", cfg, table_grid(cfg), every=args.every, reps=9)
    table_path = table.save(out / "pruning_host_table.parquet")
    fractions = [float(f) for f in args.fractions.split(",")]
    uni = {f: uniform_channels(cfg, f) for f in fractions}
    budgets = {f: Budget("latency", model_resource(with_channels(cfg, ch), table).latency_ms) for f, ch in uni.items()}
    smallest = smallest_reachable(cfg, "latency", table, s)
    for f in [f for f, b in budgets.items() if b.value < smallest]:  # a noisy host table can be non-monotone
        print(
            f"f={f}: uniform thinning predicts {budgets.pop(f)}, below the all-8-channel model "
            f"({smallest:.4g} ms) in this (noisy, host) table; skipped",
            flush=True,
        )
    if not budgets:
        print("no budget left; re-run on a quieter machine", flush=True)
        return 1
    print(
        f"[{time.time() - t_start:5.0f}s] budgets (= predicted latency of uniform thinning): "
        + ", ".join(f"f={f}: {b}" for f, b in budgets.items()),
        flush=True,
    )

    run_dir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="autlearn-prune-bench-"))
    shutil.rmtree(run_dir, ignore_errors=True)  # the table was just re-measured: a resumed run would refuse it
    (res,) = search(
        cfg,
        table,
        list(budgets.values()),
        run_dir,
        s,
        on_event=lambda m: (
            print(f"[{time.time() - t_start:5.0f}s] {m}", flush=True)
            if "->" in m or "long" in m or "pretrain" in m
            else None
        ),
    )
    split = split_dataset(cfg, s.holdout, s.seed, s.per_class)
    pre = build_model(cfg)
    pre.load_state_dict(torch.load(run_dir / "latency" / "iter_0000.pt", weights_only=True))

    rows, pred, configs = [], {}, {}
    by_budget = {p.budget: p for p in res.points}
    for f, b in budgets.items():
        p = by_budget.get(b)
        if p is None:
            print(f"budget {b} not met", flush=True)
            continue
        steps = p.iteration * s.short_steps + s.long_steps
        # (a) uniform L2 thinning of the same pretrained model, same steps as the searched chain after pretraining
        tcfg, tnet = thin_to(pre, cfg, uni[f])
        fine_tune(tnet, split, steps, s.lr, s.batch_size, seed=11)
        acc_a = evaluate(tnet, split, "test")
        # (b) uniform width from a fresh seed, same total steps (pretrain + chain)
        snet = trainable_init(build_model(tcfg), split.train_x, seed=12)
        fine_tune(snet, split, s.pretrain_steps + steps, s.lr, s.batch_size, seed=13)
        acc_b = evaluate(snet, split, "test")
        scfg = with_channels(cfg, p.channels)
        for name, c, acc in (
            (f"searched@{b}", scfg, p.test_accuracy),
            (f"uniform-L2 f={f}", tcfg, acc_a),
            (f"uniform-scratch f={f}", tcfg, acc_b),
        ):
            r = model_resource(c, table)
            pred[name], configs[name] = r.latency_ms, c
            rows.append(
                {
                    "model": name,
                    "budget": str(b),
                    "fraction": f,
                    "test_accuracy": round(acc, 4),
                    "pred_latency_ms": round(r.latency_ms, 4),
                    "mflops": round(r.flops / 1e6, 3),
                    "params_kb": round(r.memory_bytes / 1e3, 1),
                    "train_steps": (s.pretrain_steps + steps),
                    "channels": ",".join(map(str, c.layer_channels)),
                }
            )
        print(
            f"[{time.time() - t_start:5.0f}s] {b}: test accuracy: searched {p.test_accuracy:.3f} "
            f"vs uniform-L2 {acc_a:.3f} vs "
            f"uniform-scratch {acc_b:.3f}",
            flush=True,
        )
    base = model_resource(cfg, table)
    name = "unpruned (pretrain only)"
    pred[name], configs[name] = base.latency_ms, cfg
    rows.append(
        {
            "model": name,
            "budget": "",
            "fraction": 1.0,
            "test_accuracy": round(evaluate(pre, split, "test"), 4),
            "pred_latency_ms": round(base.latency_ms, 4),
            "mflops": round(base.flops / 1e6, 3),
            "params_kb": round(base.memory_bytes / 1e3, 1),
            "train_steps": s.pretrain_steps,
            "channels": ",".join(map(str, cfg.layer_channels)),
        }
    )
    print(f"[{time.time() - t_start:5.0f}s] measuring whole training steps on this host (interleaved) ...", flush=True)
    meas = measure_models_on_host(configs, steps=30, warmup=5)
    col = "host_latency_ms"
    for row in rows:
        row[col] = round(meas[row["model"]], 4) if row["model"] in meas else None
    pred = {k: v for k, v in pred.items() if k in meas}
    df = pd.DataFrame(rows)
    err = prediction_error(pred, meas)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["channels"]).to_string(index=False))
    print("table-sum prediction vs host whole-step measurement:", err.summary())
    print(err.per_model[["model", "predicted", "measured", "error"]].round(4).to_string(index=False))
    stem = "pruning_vs_width"
    df.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "prediction_error": {"summary": err.summary(), "per_model": err.per_model.to_dict("records")},
                "settings": {k: v for k, v in s.__dict__.items()},
                "config": cfg.to_dict(),
                "table": str(table_path),
                "search_dir": str(run_dir),
                "table_source_device": table.meta.source_device,
                "data": {"source": split.source, "synthetic": split.synthetic, "held_out": len(split.test_y)},
                "provenance": provenance(),
                "elapsed_s": round(time.time() - t_start, 1),
            },
            indent=1,
            default=str,
        )
    )
    print(f"wrote {out / (stem + '.csv')} ({time.time() - t_start:.0f}s)")
    return 0


def paired(correct_a, correct_b) -> dict:
    """Paired comparison of two models on one test set: accuracy difference a - b with a paired bootstrap 95 % CI
    (scipy.stats.bootstrap) and the exact McNemar p-value (binomial test on the discordant samples)."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    ci = stats.bootstrap(
        (a, b), lambda x, y: x.mean() - y.mean(), paired=True, vectorized=False, n_resamples=2000, random_state=0
    ).confidence_interval
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "diff": float(a.mean() - b.mean()),
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "only_searched": only_a,
        "only_uniform": only_b,
        "mcnemar_p": float(p),
    }


def device_comparison(args, cfg, s, out: Path, t_start: float) -> int:
    """Budgets = the uniform models' latency measured on the phone; the searched model is pruned (closed loop)
    until it measures under that; then all models are measured together and compared on one test set."""
    import numpy as np
    import pandas as pd
    import torch

    from autlearn.engine.settings import MeasureSettings
    from autlearn.pipelines.measure import measure_models, paired_ratio, per_round
    from autlearn.workloads.families.mobilenet import thin_to, uniform_channels, with_channels
    from autlearn.workloads.models import build_model
    from autlearn.workloads.pruning.budget import Budget
    from autlearn.workloads.pruning.loop import close_loop
    from autlearn.workloads.pruning.search import load_compressed, pick_snapshot, search, smallest_reachable
    from autlearn.workloads.pruning.train import evaluate, fine_tune, split_dataset, trainable_init
    from autlearn.workloads.resource import model_resource
    from autlearn.workloads.tables import load_table, smooth

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:5.0f}s] {msg}", flush=True)

    raw_path = device_table(cfg, args.device, args.every, out, t_start)
    table = load_table(raw_path)
    if args.table_fit == "smooth":
        table, fit = smooth(table)
        log(
            f"smoothed table: median |residual| {fit['median_abs_residual']:.1%} of the measured keys, "
            f"{fit['share_within_20pct']:.0%} within 20 %, max {fit['max_abs_residual']:.0%} -> "
            f"{table.save(raw_path.with_name(raw_path.stem + '-smoothed.parquet'))}"
        )
    gov, ref = table.meta.governor_requested, table.meta.control_ms or None
    results = DEVICE_WORK / "results"

    def measure(name: str, models: dict, rounds: int):
        settings = MeasureSettings(
            results_root=results,
            resume=True,
            threads=1,
            rounds=rounds,
            repetitions=1,
            steps=args.measure_steps,
            warmup=3,
            energy="none",
        )
        got, _, rr = measure_models(name, models, args.device, gov, settings, control=cfg, reference_ms=ref)
        log(f"{name}: {rr.summary()}")
        return {r.model: r.ms for r in got.itertuples()}, per_round(rr.raw, models), rr

    fractions = [float(f) for f in args.fractions.split(",")]
    ucfg = {f: with_channels(cfg, uniform_channels(cfg, f)) for f in fractions}
    log(f"measuring the uniform models on {args.device} (their measured latency is the budget) ...")
    umeas, _, _ = measure("bench-uniform", {f"uniform f={f}": c for f, c in ucfg.items()}, 3)
    smallest = smallest_reachable(cfg, "latency", table, s)
    budgets, start = {}, {}
    for f in fractions:
        b = Budget("latency", umeas[f"uniform f={f}"])
        budgets[f] = b
        start[b] = Budget("latency", max(model_resource(ucfg[f], table).latency_ms, smallest))
    log("budgets (measured uniform latency): " + ", ".join(f"f={f}: {b}" for f, b in budgets.items()))

    run_dir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="autlearn-prune-bench-"))
    shutil.rmtree(run_dir, ignore_errors=True)

    def propose(targets):
        (res,) = search(
            cfg,
            table,
            targets,
            run_dir,
            s,
            on_event=lambda m: log(m) if "->" in m or "long" in m or "pretrain" in m or "budgets" in m else None,
        )
        return {str(p.budget): p.export for p in res.points}

    by_label = {str(b): f for f, b in budgets.items()}

    def measure_exports(exports: dict, k: int):
        # Each candidate is measured in the same rounds as its uniform model and counted relative to it:
        # value = median over rounds of (candidate / uniform in that round) x budget. Separate campaigns on this
        # host can differ by tens of percent (slow spells), so "at equal measured latency" is decided side by side.
        models = {label: Path(p) for label, p in exports.items()}
        models.update({f"uniform f={by_label[label]}": ucfg[by_label[label]] for label in exports})
        got, rounds, rr = measure(f"bench-searched-{k}", models, 5)  # as `prune --measure-rounds` (default 5)
        values, raw = {}, {}
        for label in exports:
            r = paired_ratio(rounds, label, f"uniform f={by_label[label]}")
            raw[label] = (got.get(label), got.get(f"uniform f={by_label[label]}"), r)
            values[label] = {"latency": r["median"] * budgets[by_label[label]].value if r else None}
        return values, {"rounds": rr.summary(), "side_by_side_ms": json.dumps(raw)}

    # per_budget: a value is relative to the budget's own uniform model, so a model two budgets share is measured
    # beside each of them
    final, history = close_loop(
        list(budgets.values()),
        propose,
        measure_exports,
        corrections=3,
        margin=0.03,
        smallest=lambda kind: smallest,
        start=start,
        per_budget=True,
        emit=log,
    )
    snaps = [json.loads(f.read_text()) for f in sorted((run_dir / "latency" / "final").glob("iter_*.json"))]
    split = split_dataset(cfg, s.holdout, s.seed, s.per_class)
    pre = build_model(cfg)
    pre.load_state_dict(torch.load(run_dir / "latency" / "iter_0000.pt", weights_only=True))

    def correct(net) -> torch.Tensor:
        with torch.no_grad():
            return (net(split.test_x).argmax(1) == split.test_y).int()

    rows, compare, models = [], [], {}

    def row(name: str, c, f: float, budget_ms, accuracy: float, train_steps: int) -> dict:
        r = model_resource(c, table)
        return {
            "model": name,
            "fraction": f,
            "budget_ms": budget_ms,
            "test_accuracy": round(accuracy, 4),
            "pred_latency_ms": round(r.latency_ms, 4),
            "mflops": round(r.flops / 1e6, 3),
            "params_kb": round(r.memory_bytes / 1e3, 1),
            "train_steps": train_steps,
            "channels": ",".join(map(str, c.layer_channels)),
        }

    for f, att in zip(fractions, final):
        if not att.export:
            log(f"f={f}: {att.verdict}")
            continue
        doc = json.loads(Path(att.export).read_text())
        scfg, snet = load_compressed(att.export)
        j = doc["iteration"]
        steps = j * s.short_steps + s.long_steps
        tcfg, tnet = thin_to(pre, cfg, uniform_channels(cfg, f))
        fine_tune(tnet, split, steps, s.lr, s.batch_size, seed=11)
        fnet = trainable_init(build_model(tcfg), split.train_x, seed=12)
        fine_tune(fnet, split, s.pretrain_steps + steps, s.lr, s.batch_size, seed=13)
        # The searched architecture trained like uniform-scratch: is the architecture better, apart from the
        # weights it inherits (Liu et al., "Rethinking the value of network pruning")?
        gnet = trainable_init(build_model(scfg), split.train_x, seed=12)
        fine_tune(gnet, split, s.pretrain_steps + steps, s.lr, s.batch_size, seed=13)
        cs, cu, cf, cg = correct(snet), correct(tnet), correct(fnet), correct(gnet)
        # The final fine-tune repeated with --eval-seeds batch orders (searched: its long fine-tune from the kept
        # snapshot; uniform-L2: its whole fine-tune from the pretrained model; seed k shared by both).
        rs, ru = [], []
        for k in range(args.eval_seeds):
            m = build_model(scfg)
            m.load_state_dict(torch.load(run_dir / "latency" / f"iter_{j:04d}.pt", weights_only=True))
            fine_tune(m, split, s.long_steps, s.lr, s.batch_size, seed=5000 + k)
            rs.append(float(correct(m).float().mean()))
            _, u = thin_to(pre, cfg, uniform_channels(cfg, f))
            fine_tune(u, split, steps, s.lr, s.batch_size, seed=5000 + k)
            ru.append(float(correct(u).float().mean()))
        # what select="best-val" would have exported for this budget (the other selection, for the record)
        alt = pick_snapshot(snaps, att.target.value, "best-val")
        cmp = {
            "fraction": f,
            "budget_ms": att.budget.value,
            "loop_rounds": att.round,
            "loop_verdict": att.verdict,
            "iteration": j,
            "select": s.select,
            "best_val_iteration": alt["iteration"] if alt else None,
            **paired(cs, cu),
            **{f"scratch_{k}": v for k, v in paired(cg, cf).items()},
            **over_seeds(rs, ru),
        }
        compare.append(cmp)
        for name, c, net_correct, accs in (
            (f"searched f={f}", scfg, cs, rs),
            (f"uniform-L2 f={f}", tcfg, cu, ru),
            (f"uniform-scratch f={f}", tcfg, cf, None),
            (f"searched-scratch f={f}", scfg, cg, None),
        ):
            if not name.startswith("searched-scratch"):  # same architecture as "searched": measured once
                models[name] = Path(att.export) if name.startswith("searched") else c
            rows.append(
                {
                    **row(
                        name,
                        c,
                        f,
                        round(att.budget.value, 4),
                        float(net_correct.float().mean()),
                        s.pretrain_steps + steps,
                    ),
                    "seeds_mean_accuracy": round(float(np.mean(accs)), 4) if accs else None,
                    "seeds_sd_accuracy": round(float(np.std(accs, ddof=1)), 4) if accs and len(accs) > 1 else None,
                }
            )
        log(
            f"f={f}: test accuracy searched {cs.float().mean():.3f} vs uniform-L2 {cu.float().mean():.3f} "
            f"(diff {cmp['diff']:+.3f}, 95 % CI [{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}], McNemar p "
            f"{cmp['mcnemar_p']:.3g}); over {len(rs)} fine-tune seeds {np.mean(rs):.3f} vs {np.mean(ru):.3f} "
            f"(diff {cmp['seeds_diff']:+.3f}, Welch 95 % CI {interval(cmp)}); from scratch: searched architecture "
            f"{cg.float().mean():.3f} vs uniform "
            f"{cf.float().mean():.3f} (diff {cmp['scratch_diff']:+.3f}, 95 % CI [{cmp['scratch_ci_low']:+.3f}, "
            f"{cmp['scratch_ci_high']:+.3f}])"
        )
    rows.append(row("unpruned (pretrain only)", cfg, 1.0, None, evaluate(pre, split, "test"), s.pretrain_steps))
    models["unpruned (pretrain only)"] = cfg
    log(f"measuring every model again on {args.device}, interleaved in the same control-gated rounds ...")
    meas, final_rounds, rr = measure("bench-final", models, args.final_rounds)
    for row in rows:
        name = row["model"].replace("searched-scratch", "searched")
        row["device_latency_ms"] = round(meas[name], 4) if name in meas else None
    for cmp in compare:
        f = cmp["fraction"]
        cmp["searched_ms"], cmp["uniform_ms"] = meas.get(f"searched f={f}"), meas.get(f"uniform-L2 f={f}")
        r = paired_ratio(final_rounds, f"searched f={f}", f"uniform-L2 f={f}")
        cmp["latency_ratio"] = r["median"] if r else None  # median over rounds of the paired ratio
        cmp["latency_ratio_min"], cmp["latency_ratio_max"] = (r["min"], r["max"]) if r else (None, None)
        # the verdict uses the seed-averaged accuracy (one fine-tune's noise is as large as the effect)
        cmp["at_least_as_accurate"] = (cmp["seeds_diff"] if cmp.get("seeds_n") else cmp["diff"]) >= 0
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["channels"]).to_string(index=False))
        print(pd.DataFrame(compare).round(4).to_string(index=False))
    print(f"final rounds: {rr.summary()}")
    for cmp in compare:
        print(
            f"f={cmp['fraction']}: searched {'>=' if cmp['at_least_as_accurate'] else '<'} uniform-L2 in mean test "
            f"accuracy over {cmp['seeds_n']} fine-tune seeds ({cmp['seeds_diff']:+.3f}; Welch 95 % CI "
            f"{interval(cmp)}; the exported model alone "
            f"{cmp['diff']:+.3f}) at "
            f"{cmp['latency_ratio']:.3f}x its measured latency (median of per-round ratios; rounds "
            f"{cmp['latency_ratio_min']:.3f}-{cmp['latency_ratio_max']:.3f})"
            if cmp["latency_ratio"]
            else ""
        )
    stem = "pruning_vs_width_device" + (f"_{args.tag}" if args.tag else "")
    df.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "comparison": compare,
                "loop": [a.row() for a in history],
                "final_rounds": rr.summary(),
                "settings": dict(s.__dict__),
                "config": cfg.to_dict(),
                "table": str(table.meta.source_device),
                "table_fit": args.table_fit,
                "table_governor": gov,
                "virtual": table.meta.virtual,
                "labels": table.meta.labels,
                "data": {"source": split.source, "synthetic": split.synthetic, "held_out": len(split.test_y)},
                "provenance": provenance(),
                "elapsed_s": round(time.time() - t_start, 1),
            },
            indent=1,
            default=str,
        )
    )
    log(f"wrote {out / (stem + '.csv')}")
    return 0


def interval(cmp: dict) -> str:
    lo, hi = cmp.get("seeds_ci_low"), cmp.get("seeds_ci_high")
    return f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "[n/a]"


def over_seeds(acc_a: list[float], acc_b: list[float]) -> dict:
    """Mean test accuracy a - b over repeated fine-tunes, with a Welch 95 % CI (training noise across seeds; the
    test set is shared, so its sampling noise is not in this interval)."""
    import numpy as np
    from scipy import stats

    out = {
        "seeds_n": len(acc_a),
        "seeds_diff": float(np.mean(acc_a) - np.mean(acc_b)) if acc_a else None,
        "seeds_ci_low": None,
        "seeds_ci_high": None,
        "seeds_searched": acc_a,
        "seeds_uniform": acc_b,
    }
    if len(acc_a) > 1 and len(acc_b) > 1 and (np.std(acc_a) > 0 or np.std(acc_b) > 0):
        ci = stats.ttest_ind(acc_a, acc_b, equal_var=False).confidence_interval(0.95)
        out["seeds_ci_low"], out["seeds_ci_high"] = float(ci.low), float(ci.high)
    return out


def device_table(cfg, serial: str, every: int, out: Path, t_start: float) -> Path:
    """`autlearn tables build` on the device (one governor: the phone's default dynamic one, 'interactive')."""
    import subprocess

    tdir = DEVICE_WORK / "tables" / f"classes{cfg.num_classes}-batch{cfg.batch}-every{every}"
    print(f"[{time.time() - t_start:5.0f}s] measuring the per-layer table on {serial} ...", flush=True)
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "tables",
        "build",
        "--device",
        serial,
        "--governors",
        "interactive",
        "--set",
        f"width={cfg.width}",
        "--set",
        f"num_classes={cfg.num_classes}",
        "--set",
        f"batch={cfg.batch}",
        "--every",
        str(every),
        "--reps",
        "1",
        "--steps",
        "10",
        "--energy",
        "none",
        "--results",
        str(DEVICE_WORK / "results"),
        "--resume",
        "--out",
        str(tdir),
    ]
    subprocess.run(cmd, check=True)
    return sorted(tdir.glob("mobilenet-*-interactive.parquet"))[-1]


if __name__ == "__main__":
    sys.exit(main())
