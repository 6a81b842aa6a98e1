"""Searched (table-driven, NetAdapt-style) pruning vs uniformly thinned MobileNet at equal predicted latency.

    nice .venv/bin/python benchmarks/bench_pruning_vs_width.py [--quick] [--out benchmarks/results]
    .venv/bin/python benchmarks/bench_pruning_vs_width.py --device SERIAL --batch 16   # table + models on a phone

Setup (small, a few minutes on 2 cores):
  * model: MobileNetV1 width 0.25 (channels 8..256), 28x28x1 input, 10 classes, on-device batch 64 (large enough that
    host latency is compute- rather than call-overhead-dominated);
  * data: SYNTHETIC glyphs (workloads.data.synthetic_femnist, 80 per class): 60 % train, 20 % val (the search's
    choices), 20 % test (reported accuracy, never used for a choice);
  * table: per-layer latencies measured on THIS HOST with PyTorch eager (every 4th channel count measured, the
    rest interpolated), labelled "host (not a phone)" -- a stand-in until the campaign engine measures phones;
  * baselines at the same predicted latency as each budget: uniform thinning to fraction f of every layer
    ("width multiplier"), (a) keeping the largest-L2 filters of the same pretrained model, (b) trained from a
    fresh seed; both get the same number of training steps as the searched model's kept chain;
  * "measured" latency: whole-model transfer-learning step on this host (PyTorch eager), median of 30 steps,
    interleaved across the models (weights do not affect latency; the seed model of each config is timed).
Nobody tuned the baseline or the search for this comparison; one seed, 160 test samples
(a binomial 95 % CI is about +-6 points at 80 % accuracy).
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
DEVICE_WORK = Path(tempfile.gettempdir()) / "autlearn-prune-bench-device"   # campaign results (resumable)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--fractions", default="0.75,0.5", help="uniform-thinning fractions defining the budgets")
    ap.add_argument("--work", default=None, help="search state dir (default: a fresh temp dir; weights stay out "
                                                 "of benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--device", default=None, help="measure the table and every model on this device through the "
                                                   "campaign engine (e.g. a lab phone) instead of this host")
    ap.add_argument("--batch", type=int, default=64, help="on-device batch of the transfer-learning step")
    ap.add_argument("--every", type=int, default=4, help="table: measure every N-th channel count")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from workloads.layers import table_grid
    from workloads.models import build_model, make_config
    from workloads.pruning.budget import Budget
    from workloads.pruning.mobilenet import thin_to, uniform_channels, with_channels
    from workloads.pruning.search import SearchSettings, search, smallest_reachable
    from workloads.pruning.train import evaluate, fine_tune, split_dataset, trainable_init
    from workloads.resource import measure_models_on_host, model_resource, prediction_error
    from workloads.tables import build_host_table, load_table

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config("mobilenet", width=0.25, num_classes=10, batch=args.batch)
    s = SearchSettings(short_steps=3 if args.quick else 5, long_steps=60 if args.quick else 150,
                       pretrain_steps=100 if args.quick else 300, per_class=80, batch_size=32)
    torch.set_num_threads(1)

    if args.device:
        table_path = device_table(cfg, args.device, args.every, out, t_start)
        table = load_table(table_path)
    else:
        print(f"[{time.time() - t_start:5.0f}s] measuring the per-layer table on this host (not a phone) ...",
              flush=True)
        table = build_host_table("mobilenet", cfg, table_grid(cfg), every=args.every, reps=9)
        table_path = table.save(out / "pruning_host_table.parquet")
    fractions = [float(f) for f in args.fractions.split(",")]
    uni = {f: uniform_channels(cfg, f) for f in fractions}
    budgets = {f: Budget("latency", model_resource(with_channels(cfg, ch), table).latency_ms) for f, ch in uni.items()}
    smallest = smallest_reachable(cfg, "latency", table, s)
    for f in [f for f, b in budgets.items() if b.value < smallest]:   # a noisy host table can be non-monotone
        print(f"f={f}: uniform thinning predicts {budgets.pop(f)}, below the all-8-channel model "
              f"({smallest:.4g} ms) in this (noisy, host) table; skipped", flush=True)
    if not budgets:
        print("no budget left; re-run on a quieter machine", flush=True)
        return 1
    print(f"[{time.time() - t_start:5.0f}s] budgets (= predicted latency of uniform thinning): "
          + ", ".join(f"f={f}: {b}" for f, b in budgets.items()), flush=True)

    run_dir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="autlearn-prune-bench-"))
    shutil.rmtree(run_dir, ignore_errors=True)   # the table was just re-measured: a resumed run would refuse it
    (res,) = search(cfg, table, list(budgets.values()), run_dir, s,
                    on_event=lambda m: print(f"[{time.time() - t_start:5.0f}s] {m}", flush=True)
                    if "->" in m or "long" in m or "pretrain" in m else None)
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
        snet = trainable_init(build_model(tcfg), seed=12)
        fine_tune(snet, split, s.pretrain_steps + steps, s.lr, s.batch_size, seed=13)
        acc_b = evaluate(snet, split, "test")
        scfg = with_channels(cfg, p.channels)
        for name, c, acc in ((f"searched@{b}", scfg, p.test_accuracy), (f"uniform-L2 f={f}", tcfg, acc_a),
                             (f"uniform-scratch f={f}", tcfg, acc_b)):
            r = model_resource(c, table)
            pred[name], configs[name] = r.latency_ms, c
            rows.append({"model": name, "budget": str(b), "fraction": f, "test_accuracy": round(acc, 4),
                         "pred_latency_ms": round(r.latency_ms, 4),
                         "mflops": round(r.flops / 1e6, 3), "params_kb": round(r.memory_bytes / 1e3, 1),
                         "train_steps": (s.pretrain_steps + steps), "channels": ",".join(map(str, c.layer_channels))})
        print(f"[{time.time() - t_start:5.0f}s] {b}: test accuracy: searched {p.test_accuracy:.3f} vs uniform-L2 {acc_a:.3f} vs "
              f"uniform-scratch {acc_b:.3f}", flush=True)
    base = model_resource(cfg, table)
    name = "unpruned (pretrain only)"
    pred[name], configs[name] = base.latency_ms, cfg
    rows.append({"model": name, "budget": "", "fraction": 1.0,
                 "test_accuracy": round(evaluate(pre, split, "test"), 4),
                 "pred_latency_ms": round(base.latency_ms, 4),
                 "mflops": round(base.flops / 1e6, 3), "params_kb": round(base.memory_bytes / 1e3, 1),
                 "train_steps": s.pretrain_steps, "channels": ",".join(map(str, cfg.layer_channels))})
    if args.device:
        from workloads.measure import measure_models

        print(f"[{time.time() - t_start:5.0f}s] measuring whole training steps on {args.device} (campaign, "
              f"control-gated rounds) ...", flush=True)
        got, _home, rounds = measure_models("bench-prune-vs-width", configs, args.device,
                                            table.meta.governor_requested, results_root=DEVICE_WORK / "results",
                                            resume=True, reps=1, rounds=3, steps=20, warmup=3, energy="none",
                                            control=cfg, reference_ms=table.meta.control_ms or None)
        print(f"rounds: {rounds.summary()}", flush=True)
        meas = {r.model: r.ms for r in got.itertuples()}
        col = "device_latency_ms"
    else:
        print(f"[{time.time() - t_start:5.0f}s] measuring whole training steps on this host (interleaved) ...",
              flush=True)
        meas = measure_models_on_host(configs, steps=30, warmup=5)
        col = "host_latency_ms"
    for row in rows:
        row[col] = round(meas[row["model"]], 4) if row["model"] in meas else None
    pred = {k: v for k, v in pred.items() if k in meas}
    df = pd.DataFrame(rows)
    err = prediction_error(pred, meas)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df.drop(columns=["channels"]).to_string(index=False))
    print(f"table-sum prediction vs {'device' if args.device else 'host'} whole-step measurement:", err.summary())
    print(err.per_model[["model", "predicted", "measured", "error"]].round(4).to_string(index=False))
    stem = "pruning_vs_width_device" if args.device else "pruning_vs_width"
    df.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.json").write_text(json.dumps({
        "rows": rows, "prediction_error": {"summary": err.summary(), "per_model": err.per_model.to_dict("records")},
        "settings": {k: v for k, v in s.__dict__.items()}, "config": cfg.to_dict(), "table": str(table_path),
        "search_dir": str(run_dir), "table_source_device": table.meta.source_device, "data": {"source": split.source,
                                                                  "synthetic": split.synthetic,
                                                                  "held_out": len(split.test_y)},
        "elapsed_s": round(time.time() - t_start, 1)}, indent=1, default=str))
    print(f"wrote {out / (stem + '.csv')} ({time.time() - t_start:.0f}s)")
    return 0


def device_table(cfg, serial: str, every: int, out: Path, t_start: float) -> Path:
    """`autlearn tables build` on the device (one governor: the phone's default dynamic one, 'interactive')."""
    import subprocess

    tdir = DEVICE_WORK / "tables"
    print(f"[{time.time() - t_start:5.0f}s] measuring the per-layer table on {serial} ...", flush=True)
    cmd = [sys.executable, "-m", "profiler", "tables", "build", "--device", serial, "--governors", "interactive",
           "--set", f"width={cfg.width}", "--set", f"num_classes={cfg.num_classes}", "--set", f"batch={cfg.batch}",
           "--every", str(every), "--reps", "1", "--steps", "10", "--energy", "none", "--results",
           str(DEVICE_WORK / "results"), "--resume", "--out", str(tdir)]
    subprocess.run(cmd, check=True)
    return sorted(tdir.glob("mobilenet-*-interactive.parquet"))[-1]


if __name__ == "__main__":
    sys.exit(main())
