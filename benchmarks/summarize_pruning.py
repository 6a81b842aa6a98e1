"""Pool `bench_pruning_vs_width.py --device` runs (one per search seed) into one verdict per width and overall.

    .venv/bin/python benchmarks/summarize_pruning.py [benchmarks/results/pruning_vs_width_device_first_seed*.json]

(default: the current runs, each budget's own model (`select=first`) measured beside its own uniform model in the
loop; `crn_tapinit_seed*` chose the best-validation model under a budget, `crn_seed*` also used the earlier init)

Each run gives, per width fraction, the mean test accuracy of searched and uniform-L2 over its fine-tune seeds and
the searched/uniform latency ratio in the final joint measurement. A cell is one (search seed, width). The pooled
difference is the mean over cells with a one-sample t 95 % CI (cells as the unit: search seeds differ in the
pretrained model, the search and the fine-tune batches, so they are the replication that matters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

DEFAULT = "pruning_vs_width_device_first_seed*.json"


def cells(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        doc = json.loads(path.read_text())
        seed = doc["settings"].get("seed")
        for c in doc["comparison"]:
            if not c.get("seeds_n"):
                raise SystemExit(f"{path}: no fine-tune seeds (run with --eval-seeds >= 2)")
            rows.append(
                {
                    "run": path.stem,
                    "seed": seed,
                    "fraction": c["fraction"],
                    "searched": float(np.mean(c["seeds_searched"])),
                    "uniform": float(np.mean(c["seeds_uniform"])),
                    "diff": c["seeds_diff"],
                    "ci_low": c["seeds_ci_low"],
                    "ci_high": c["seeds_ci_high"],
                    "latency_ratio": c["latency_ratio"],
                    "scratch_diff": c.get("scratch_diff"),
                    "select": c.get("select", doc["settings"].get("select", "best-val")),
                    "iteration": c.get("iteration"),
                    "virtual": doc.get("virtual"),
                }
            )
    return pd.DataFrame(rows).sort_values(["fraction", "seed"], ascending=[False, True])


def pooled(diffs: pd.Series) -> tuple[float, float, float]:
    if len(diffs) < 2:
        return float(diffs.mean()), float("nan"), float("nan")
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    return float(diffs.mean()), float(ci.low), float(ci.high)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args(argv)
    paths = args.files or sorted((Path(__file__).parent / "results").glob(DEFAULT))
    if not paths:
        print(f"no result files ({DEFAULT})", file=sys.stderr)
        return 1
    df = cells(paths)
    pd.set_option("display.width", 160)
    print(df.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    groups = [(f"width {f:g}", g) for f, g in df.groupby("fraction", sort=False)] + [("all cells", df)]
    for name, g in groups:
        mean, lo, hi = pooled(g["diff"])
        print(
            f"{name}: {len(g)} cells, searched - uniform-L2 = {mean * 100:+.1f} points "
            f"[{lo * 100:+.1f}, {hi * 100:+.1f}] (t 95 % CI over cells); searched >= uniform in "
            f"{int((g['diff'] >= 0).sum())} of {len(g)}; latency ratio {g['latency_ratio'].min():.2f}-"
            f"{g['latency_ratio'].max():.2f}x"
        )
    if df["virtual"].any():
        print("latency measured on VIRTUAL phones (this host's CPU), data SYNTHETIC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
