"""Training-step time: TVM `full` (tuned for this CPU, and untuned) vs PyTorch eager, side by side in one run.

Every row is the same frozen-backbone transfer-learning step: forward, cross-entropy loss, backward to the trainable
head, SGD update. The compiled step targets this host's CPU as the probe names it (`profiler.cputarget`) with the
tuning database for that target (`autlearn workloads tune`); `untuned` is the same program with hand schedules
only. Each compiled program is timed twice: through the Python Relax VM, and through the static runner binary
that phones run (`runner` rows: an artifact launched on this CPU, one untimed warm-up step per launch); the
issue-32 targets are checked on the runner rows. Repetitions are interleaved (eager, tuned, untuned, runners,
eager, ...), so a slow spell of the shared host hits every variant alike. Achieved GFLOP/s (FLOPs of the eager step,
counted by torch's FlopCounterMode) is shown next to
the practical peak measured with torch.mm 2048^2 on the same threads.

    nice python benchmarks/bench_training_step.py [--threads 2] [--rounds 5] [--steps 4] \\
        [--out benchmarks/results/training_step]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (model, config, issue 32's targets for the runner: eager / untuned at least this on a fresh clone;
# eager / tuned at least this, and share of practical peak at least this, after <= 30 min of tuning (None: none))
CASES = {
    "mobilenet 224x224x3 b16": ("mobilenet", {"image_size": 224, "in_channels": 3, "batch": 16}, 1.3, 2.0, 0.60),
    "mobilenet 28x28x1 b1 (paper)": ("mobilenet", {"batch": 1}, 2.0, None, None),
    "lstm v10000 b16": ("lstm", {"batch": 16}, 1.67, None, None),
}


def provenance() -> dict:
    from autlearn.workloads.artifact import tool_versions
    from benchmarks.provenance import provenance as of

    return of(tool_versions())


def host_target() -> tuple[str, object]:
    from autlearn.profiler.cputarget import parse_cpuinfo
    from autlearn.workloads.targets import target_id_for

    ct = parse_cpuinfo("x86_64", Path("/proc/cpuinfo").read_text())
    return target_id_for("x86_64", ct.mcpu, ct.mattr), ct


def practical_peak(threads: int) -> float:
    """GFLOP/s of torch.mm 2048^2 float32 (oneDNN/MKL-class GEMM), median of 10."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * 2048**3 / float(np.median(ts)) / 1e9


class Eager:
    def __init__(self, model: str, config: dict, threads: int):
        import torch

        from autlearn.workloads import data
        from autlearn.workloads.models import build_model, make_config

        torch.set_num_threads(threads)
        cfg = make_config(model, **config)
        self.net = build_model(cfg)
        x, y = data.default_batch(cfg)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        self.opt = torch.optim.SGD([p for p in self.net.parameters() if p.requires_grad], lr=0.05)

    def step(self) -> None:
        import torch

        loss = torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        loss.item()

    def flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            self.step()
        return float(fc.get_total_flops())

    def run(self, steps: int) -> list[float]:
        out = []
        for _ in range(steps):
            t0 = time.perf_counter_ns()
            self.step()
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out


class Compiled:
    def __init__(self, model: str, config: dict, tid: str, database, threads: int):
        from autlearn.workloads.compile import build_program
        from autlearn.workloads.program import build_executable, set_num_threads

        set_num_threads(threads)
        t0 = time.perf_counter()
        self.prog = build_program(model, "full", tid, database=database, **config)
        self.ex = build_executable(self.prog)
        self.compile_s = time.perf_counter() - t0
        self.tensors = None

    def run(self, steps: int) -> list[float]:
        from autlearn.workloads.program import run_on_host

        recs = run_on_host(self.prog, steps, executable=self.ex, tensors=self.tensors)
        self.tensors = recs[-1].get("tensors") or self.tensors
        return [r["step_ns"] / 1e6 for r in recs]


class Runner:
    """The static runner binary phones run (`autlearn` artifacts), launched on this CPU: each `run` is one launch
    with one untimed warm-up step, so program loading is outside the timed steps."""

    def __init__(self, compiled: Compiled, workdir: Path, threads: int):
        from autlearn.workloads.artifact import write_artifact

        t0 = time.perf_counter()
        self.art = write_artifact(compiled.prog, workdir)
        self.compile_s = compiled.compile_s + time.perf_counter() - t0
        self.prog, self.threads = compiled.prog, threads

    def run(self, steps: int) -> list[float]:
        import subprocess

        from autlearn.profiler.steps import parse_run_output

        argv = [
            str(self.art.path / "runner"),
            str(self.art.path),
            "--warmup",
            "1",
            "--steps",
            str(steps),
            "--threads",
            str(self.threads),
        ]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if r.returncode != 0:
            raise SystemExit(f"runner exit {r.returncode}: {r.stderr.strip()[-300:]}")
        return [s.step_ns / 1e6 for s in parse_run_output(r.stdout).timed]


def tuning_spent(db: dict | None) -> dict:
    if db is None:
        return {"seconds": 0.0, "trials": 0, "runs": 0, "measured_on": []}
    runs = (
        [json.loads(ln) for ln in (Path(db["path"]) / "runs.jsonl").read_text().splitlines() if ln.strip()]
        if (Path(db["path"]) / "runs.jsonl").is_file()
        else []
    )
    return {
        "seconds": round(sum(r.get("seconds", 0) for r in runs), 1),
        "trials": sum(r.get("trials", 0) for r in runs),
        "runs": len(runs),
        "measured_on": sorted({str(r.get("measured_on")) for r in runs}),
    }


def main(argv: list[str] | None = None) -> int:
    from autlearn.profiler.stats import summarize
    from autlearn.workloads.compile import tuning_database

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks/results/training_step"),
        help="output path without extension (.csv, .md and .json are written)",
    )
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    prov = provenance()  # before anything is written: the results files are in the tree
    tid, ct = host_target()
    db = tuning_database(tid)
    peak = practical_peak(a.threads)
    print(f"target {tid} ({ct.note}); database {db and db['key']}; practical peak {peak:.0f} GFLOP/s", flush=True)
    load_start = os.getloadavg()[0]

    rows, targets = [], []
    for case in a.cases:
        model, config, want_untuned, want_tuned, want_peak = CASES[case]
        eager = Eager(model, config, a.threads)
        flops = eager.flops()
        tuned, untuned = (Compiled(model, config, tid, db, a.threads) for db in ("default", None))
        work = Path(tempfile.mkdtemp(prefix="bench-step-"))
        runners = {
            "pytorch eager": eager,
            "tvm full (tuned)": tuned,
            "tvm full (untuned)": untuned,
            "runner (tuned)": Runner(tuned, work / "tuned", a.threads),
            "runner (untuned)": Runner(untuned, work / "untuned", a.threads),
        }
        for r in runners.values():  # warm-up outside the timed rounds
            r.run(1)
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(a.rounds):
            for name, r in runners.items():
                times[name] += r.run(a.steps)
        s = {k: summarize(v) for k, v in times.items()}
        base = s["pytorch eager"].median
        for name, sm in s.items():
            c = runners[name]
            tuning = c.prog.meta.get("tuning") if isinstance(c, (Compiled, Runner)) else None
            rows.append(
                {
                    "case": case,
                    "variant": name,
                    "ms_median": round(sm.median, 3),
                    "ci_low": round(sm.ci_low, 3),
                    "ci_high": round(sm.ci_high, 3),
                    "n": sm.n,
                    "cv": round(sm.cv, 3),
                    "eager_over_this": round(base / sm.median, 3),
                    "gflops": round(flops / sm.median / 1e6, 1),
                    "peak_share": round(flops / sm.median / 1e6 / peak, 3),
                    "tuned_kernels": (
                        f"{tuning['tuned_kernels']} of {tuning['kernels']}"
                        if isinstance(tuning, dict)
                        else ("untuned" if isinstance(c, (Compiled, Runner)) else "-")
                    ),
                    "compile_s": round(getattr(c, "compile_s", 0.0), 1),
                    "step_gflop": round(flops / 1e9, 3),
                }
            )
            print(f"{case:30s} {name:20s} {sm.median:9.2f} ms [{sm.ci_low:.2f}, {sm.ci_high:.2f}]", flush=True)
        shutil.rmtree(work, ignore_errors=True)
        for variant, want, peak_want in (
            ("runner (untuned)", want_untuned, None),
            ("runner (tuned)", want_tuned, want_peak),
        ):  # what phones run
            if want is None or (variant == "runner (tuned)" and db is None):
                continue
            sm, e = s[variant], s["pytorch eager"]
            ratio, share = base / sm.median, flops / sm.median / 1e6 / peak
            apart = sm.ci_high < e.ci_low  # the issue asks for CIs that do not overlap
            targets.append(
                {
                    "case": case,
                    "variant": variant,
                    "want_ratio": want,
                    "ratio": round(ratio, 3),
                    "ci_apart": apart,
                    "ratio_met": ratio >= want and apart,
                    "want_peak_share": peak_want,
                    "peak_share": round(share, 3),
                    "peak_met": None if peak_want is None else share >= peak_want,
                }
            )

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    spent = tuning_spent(db)
    meta = {
        "created": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": a.threads,
        "rounds": a.rounds,
        "steps": a.steps,
        "target": tid,
        "cpu_note": ct.note,
        "database": db,
        "tuning_spent": spent,
        "practical_peak_gflops": round(peak, 1),
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "provenance": prov,
        "targets": targets,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    head = ["case", "variant", "ms/step median [95 % CI]", "n", "eager / this", "GFLOP/s", "of peak", "tuned kernels"]
    lines = [
        "# Training step: TVM (tuned for this CPU) vs PyTorch eager",
        "",
        f"{meta['created']}; CPU {cpu}, {os.cpu_count()} logical cores, {a.threads} threads for TVM and PyTorch; "
        f"target `{tid}` ({ct.note}); load average {load_start:.1f} at start, {meta['load_end']:.1f} at end "
        f"(shared machine). {a.rounds} interleaved rounds of {a.steps} steps per variant; bootstrap CI of the median. "
        f"Practical peak (torch.mm 2048^2): {peak:.0f} GFLOP/s. Commit {prov['commit'][:12]}"
        f"{' (dirty)' if prov['dirty'] else ''}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(prov["tools"].items()))
        + ".",
        "",
        f"Tuning database `{db['key']}` ({db['digest'][:12]}): {spent['trials']} candidates measured in "
        f"{spent['seconds'] / 60:.0f} min over {spent['runs']} run(s) on {', '.join(spent['measured_on']) or '?'} "
        "(a virtual phone on this host)."
        if db
        else "No tuning database for this target: every kernel is hand-scheduled.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['ms_median']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
            f"| {r['n']} | {r['eager_over_this']:.2f}x | {r['gflops']:.0f} | {r['peak_share']:.0%} | "
            f"{r['tuned_kernels']} |"
        )
    lines += ["", "| case | row | target | eager / this | met |", "|---|---|---|---|---|"]
    for t in targets:
        met = (
            "yes"
            if t["ratio_met"]
            else (
                f"no: {t['want_ratio'] / t['ratio']:.2f}x short"
                if t["ratio"] < t["want_ratio"]
                else "no: the CIs overlap"
            )
        )
        lines.append(
            f"| {t['case']} | {t['variant']} | >= {t['want_ratio']:.2f}x eager, CIs apart | {t['ratio']:.2f}x | {met} |"
        )
        if t["want_peak_share"] is not None:
            lines.append(
                f"| {t['case']} | {t['variant']} | >= {t['want_peak_share']:.0%} of peak | "
                f"{t['peak_share']:.0%} | {'yes' if t['peak_met'] else 'no'} |"
            )
    if db is None:
        lines.append(
            "\nNo tuning database: the tuned targets (after <= 30 min of `autlearn workloads tune`) were not measured."
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
