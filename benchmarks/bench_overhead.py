"""The harness's own cost per cell: the same campaign with 1-step and with N-step cells, for no energy, the fuel
gauge and the (simulated) Monsoon, on a private virtual lab; this code and a `--before` revision in one run.

    python benchmarks/bench_overhead.py [--steps 20] [--launches 2] [--cells 6] [--before REV]

Per cell: wall = the time from one cell's end to the next one's on the same phone (`finished_at` differences:
everything the harness does for a cell, on any revision), steps = the sum of its steps' times (warm-up included:
they are training steps the user asked for). overhead = wall - steps, median over the cells. Where the revision
records it (`harness` column), the parts are shown too. Results: benchmarks/results/overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd

from autlearn import profiler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

BASE = "bcf4929"  # before the harness work of issue 22 (parts recorded, probe with builtins, batched governor, ...)
ENERGIES = ("none", "fuelgauge", "monsoon:auto")


def campaign(serial: str, name: str, energy: str, steps: int, launches: int, cells: int) -> str:
    govs = ["performance", "powersave"] * ((cells + 1) // 2)
    return textwrap.dedent(f"""
        name = "{name}"
        warmup = 1
        steps = {steps}
        repetitions = {launches}
        energy = "{energy}"
        [devices]
        serials = ["{serial}"]
        [[workload]]
        model = "lstm"
        variants = ["full"]
        batch = {json.dumps(list(range(2, 2 + (cells + 1) // 2)))}
        config = {{ vocab_size = 200, hidden_size = 32, embed_dim = 16 }}
        [governors]
        intents = {json.dumps(sorted(set(govs)))}
        fallback = "nearest"
        [cooldown]
        max_temp_c = 95
        timeout_s = 10
    """)


def run_rev(src: Path, toml: Path, results: Path, env: dict) -> None:
    # the command's module in that revision's layout
    module = next(
        m
        for m, f in (("autlearn", "autlearn/__main__.py"), ("cli", "cli/__main__.py"), ("profiler", ""))
        if (src / f).exists()
    )
    r = subprocess.run(
        [sys.executable, "-m", module, "run", str(toml), "--results", str(results)],
        cwd=src,
        env={**env, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if r.returncode != 0:
        raise SystemExit(f"bench_overhead: {toml.name} failed on {src}:\n{r.stderr[-2000:]}")


def overhead(results: Path) -> dict:
    from autlearn.engine.store import load_results

    df = load_results(results)
    cells = df.drop_duplicates("cell_id").sort_values("finished_at").set_index("cell_id")
    steps_s = df.groupby("cell_id")["step_ns"].sum() / 1e9
    walls = cells["finished_at"].diff().dropna()  # the first cell also carries the run's start-up
    over = (walls - steps_s.reindex(walls.index)).dropna()
    out = {
        "cells": int(len(over)),
        "overhead_s": round(float(over.median()), 3),
        "overhead_range_s": [round(float(over.min()), 3), round(float(over.max()), 3)],
        "steps_s": round(float(steps_s.median()), 4),
    }
    if "harness" in cells:
        parts = pd.DataFrame([json.loads(h) for h in cells.loc[walls.index, "harness"]])
        out["parts_s"] = {k: round(float(v), 3) for k, v in parts.median().sort_values(ascending=False).items()}
        out["harness_s"] = round(float(cells.loc[walls.index, "harness_s"].median()), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--launches", type=int, default=2)
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--before", default=BASE, help="revision to compare against ('' = none)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="autlearn-overhead-"))
    port = 20000 + os.getpid() % 5000
    env = {
        **os.environ,
        "AUTLEARN_HOME": str(work / "home"),
        "ANDROID_ADB_SERVER_PORT": str(port),
        "PYTHONWARNINGS": "ignore",
    }
    revs = {"this": ROOT}
    if a.before:
        before = work / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(before), a.before], check=True)
        revs["before"] = before
    lab = [sys.executable, "-m", "autlearn", "lab"]
    subprocess.run(
        [*lab, "up", "--profile", "legacy", "--monsoon", "legacy"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    rows = []
    try:
        serial = json.loads(
            subprocess.run(
                [sys.executable, "-m", "autlearn", "devices", "--json"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )[0]["serial"]
        for energy in ENERGIES:
            for steps in (1, a.steps):
                for rev, src in revs.items():  # interleaved: the host's slow spells hit both revisions
                    name = f"{rev}-{energy.replace(':', '-')}-{steps}"
                    toml = work / f"{name}.toml"
                    toml.write_text(campaign(serial, name, energy, steps, a.launches, a.cells))
                    t0 = time.monotonic()
                    run_rev(src, toml, work / "results", env)
                    res = overhead(work / "results" / name)
                    rows.append(
                        {
                            "revision": rev,
                            "energy": energy,
                            "steps": steps,
                            "launches": a.launches,
                            "campaign_s": round(time.monotonic() - t0, 1),
                            **res,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        subprocess.run([*lab, "down"], cwd=ROOT, env=env, capture_output=True)
        if "before" in revs:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(revs["before"])])
        shutil.rmtree(work, ignore_errors=True)

    doc = {
        "benchmark": "overhead",
        "rows": rows,
        "before": a.before or None,
        "provenance": provenance({"autlearn": profiler.__version__}),
        "method": __doc__.strip().splitlines()[4:9],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "overhead.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "| revision | energy | steps/launch | overhead per cell (median, range) | steps per cell | parts |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.get("parts_s", {}).items() if v >= 0.01) or "(not recorded)"
        lines.append(
            f"| {r['revision']} | {r['energy']} | {r['steps']} | {r['overhead_s']:.2f} s "
            f"({r['overhead_range_s'][0]:.2f}-{r['overhead_range_s'][1]:.2f}) | {r['steps_s']:.3f} s | "
            f"{parts} |"
        )
    (a.out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
