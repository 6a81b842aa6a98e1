"""Training-step time: TVM `full` / `unoptimized` / `cached` vs PyTorch eager, same CPU, same thread count.

Every row is the same frozen-backbone transfer-learning step: forward, cross-entropy loss, backward to the
trainable head, SGD update (the `cached` rows: head only, on cached backbone features). Median ms per step.

    nice python benchmarks/bench_training_step.py [--threads 2] [--steps 10] [--out benchmarks/results/training_step]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {   # name -> (model, config overrides)
    "mobilenet 28x28x1 b1": ("mobilenet", {}),
    "mobilenet 224x224x3 b16": ("mobilenet", {"image_size": 224, "in_channels": 3, "batch": 16}),
    "lstm v10000 b16": ("lstm", {}),
}
VARIANTS = ("full", "unoptimized", "cached")


def bench_tvm(model: str, config: dict, variant: str, steps: int, warmup: int, threads: int) -> dict:
    from workloads.compile import build_program
    from workloads.program import build_executable, run_on_host

    t0 = time.perf_counter()
    prog = build_program(model, variant, "x86_64", **config)
    ex = build_executable(prog)
    compile_s = time.perf_counter() - t0
    recs = run_on_host(prog, steps, warmup=warmup, num_threads=threads, executable=ex)
    ms = [r["step_ns"] / 1e6 for r in recs if not r["warmup"]]
    return {"ms": statistics.median(ms), "ms_min": min(ms), "steps": len(ms), "compile_s": compile_s,
            "tuned": f'{prog.meta["tuned_kernels"]}' if variant != "unoptimized" else "-"}


def bench_torch(model: str, config: dict, cached: bool, steps: int, warmup: int, threads: int) -> dict:
    import torch

    from workloads import data
    from workloads.models import build_model, make_config

    torch.set_num_threads(threads)
    cfg = make_config(model, **config)
    net = build_model(cfg)
    x, y = data.default_batch(cfg)
    x, y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    if cached:
        with torch.no_grad():
            x = net.features(x)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    ms = []
    for i in range(warmup + steps):
        t0 = time.perf_counter_ns()
        logits = net.head(x) if cached else net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss)
        if i >= warmup:
            ms.append((time.perf_counter_ns() - t0) / 1e6)
    return {"ms": statistics.median(ms), "ms_min": min(ms), "steps": len(ms), "compile_s": 0.0, "tuned": "-"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--slow-steps", type=int, default=3, help="steps for unoptimized 224x224 (seconds each)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/training_step"),
                    help="output path without extension (.csv and .md are written)")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)

    rows = []
    for case in a.cases:
        model, config = CASES[case]
        runs = {}
        for variant in ("pytorch eager", "pytorch eager (cached features)", *VARIANTS):
            slow = variant == "unoptimized" and config.get("image_size", 28) >= 128
            steps, warm = (a.slow_steps, 1) if slow else (a.steps, a.warmup)
            t0 = time.time()
            if variant.startswith("pytorch"):
                r = bench_torch(model, config, "cached" in variant, steps, warm, a.threads)
            else:
                r = bench_tvm(model, config, variant, steps, warm, a.threads)
            runs[variant] = r
            print(f"{case:26s} {variant:32s} {r['ms']:10.2f} ms/step  ({time.time() - t0:.0f}s)", flush=True)
        for variant, r in runs.items():
            # cached rows (TVM and PyTorch) are compared with PyTorch on cached features; `unoptimized / this`
            # always compares with the unoptimized *full* step (what caching + compilation buys together).
            base = runs["pytorch eager (cached features)" if "cached" in variant else "pytorch eager"]
            rows.append({
                "case": case, "variant": variant, "ms_per_step": round(r["ms"], 3), "ms_min": round(r["ms_min"], 3),
                "steps": r["steps"], "threads": a.threads,
                "pytorch_over_this": round(base["ms"] / r["ms"], 3),
                "unoptimized_over_this": round(runs["unoptimized"]["ms"] / r["ms"], 3),
                "tuned_kernels": r["tuned"], "compile_s": round(r["compile_s"], 1),
            })

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import torch
    import tvm

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    head = ["case", "variant", "ms/step (median)", "min", "steps", "PyTorch / this", "unoptimized / this",
            "tuned kernels"]
    lines = [
        "# Training step: TVM vs PyTorch eager",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; CPU {cpu}, {os.cpu_count()} logical cores, "
        f"{a.threads} threads for TVM and PyTorch; load average at end {os.getloadavg()[0]:.1f} "
        "(shared machine: numbers are noisy); "
        f"tvm {tvm.__version__}, torch {torch.__version__}. Frozen backbone, trainable head, CE loss, SGD.",
        "`PyTorch / this` > 1 means faster than PyTorch eager (the `cached` row is compared with PyTorch on "
        "cached features). Host executor overhead (Python VM calls) is included in TVM rows.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['variant']} | {r['ms_per_step']:.2f} | {r['ms_min']:.2f} | {r['steps']} | "
                     f"{r['pytorch_over_this']:.2f}x | {r['unoptimized_over_this']:.2f}x | {r['tuned_kernels']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
