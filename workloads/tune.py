"""Tune the `full` pipeline's conv/matmul kernels on this host; the best choice per kernel is kept in the repo.

    nice python -m workloads.tune --model mobilenet --abi x86_64 [--set image_size=224 --set in_channels=3
        --set batch=16] [--variant full] [--max-minutes 20]

Search: for every fused kernel that `workloads.compile.tiled_schedule` handles, each (vector width v, unroll u)
choice from `tiled_candidates` is built and timed in-process (`time_evaluator`, median of repeats); the best is
merged into `workloads/tuning/<target-key>/tiled_schedules.json` (keyed by `kernel_key`, the structural hash of
the unscheduled kernel), which `build_program` reads, so CI never re-tunes. It is a small grid search, not
MetaSchedule: in apache-tvm 0.27.0.post1 serializing a PrimFunc (MetaSchedule's JSON database and its
builder/runner workers) segfaults. Measurements need the target's CPU, so only x86_64 can be tuned here.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time

from profiler.errors import ConfigError, UserError

DB_VERSION = 1


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}", key="set")
        k, v = item.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def fused_kernels(model: str, variant: str, abi: str, **config) -> dict:
    """{kernel_key: (name, PrimFunc)} of a program's tunable kernels, as `optimize` sees them."""
    from workloads import compile as C

    cfg = C.resolve_config(model, variant, abi, **config)
    mod, *_ = C.training_module(cfg, variant, C.DEFAULT_LR[model])
    with C.target_for_abi(abi):
        mod = C.legalize_and_fuse()(mod)
    out = {}
    for gv, f in mod.functions.items():
        if C._is_tir(f) and C.tiled_candidates(f):
            out[C.kernel_key(f)] = (gv.name_hint, f)
    return out


def time_kernel(func, target, *, repeat: int = 5, min_ms: int = 20) -> float:
    """Median ms of one call of a scheduled kernel, on zero-filled inputs."""
    import numpy as np
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.zeros([int(x) for x in a.shape], str(a.dtype)), dev)
            for a in ArgInfo.from_prim_func(func)]
    f = lib.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=int(min_ms))
    f(*args)   # warm-up
    return float(np.median([f(*args).mean * 1e3 for _ in range(repeat)]))


def tune(model: str, abi: str = "x86_64", *, variant: str = "full", max_minutes: float = 20.0,
         threads: int | None = None, **config) -> dict:
    """Grid-search every tunable kernel of one program and merge the winners into the repo database."""
    from workloads import compile as C
    from workloads.program import set_num_threads

    if abi != "x86_64":
        raise ConfigError(f"tuning measures on this host (x86_64); cannot tune {abi!r} here", key="abi")
    set_num_threads(threads)
    t0 = time.time()
    target = C.target_for_abi(abi)
    db = C.load_database(abi) or {"version": DB_VERSION, "target": str(target), "kernels": {}}
    kernels = fused_kernels(model, variant, abi, **config)
    print(f"[tune] {model} {variant} {config}: {len(kernels)} kernels", file=sys.stderr, flush=True)
    done = 0
    for key, (name, func) in sorted(kernels.items(), key=lambda kv: kv[1][0]):
        if time.time() - t0 > max_minutes * 60:
            print("[tune] time budget reached", file=sys.stderr, flush=True)
            break
        results = []
        heuristic = C.tiled_schedule(func, C.tiled_heuristic(func))
        for choice in C.tiled_candidates(func):
            sch = C.tiled_schedule(func, choice)
            try:
                ms = time_kernel(sch.mod["main"], target)
            except Exception as e:  # noqa: BLE001 - a candidate that fails to build is skipped
                print(f"[tune]   {name} {choice}: failed ({str(e).splitlines()[0][:80]})", file=sys.stderr)
                continue
            results.append((ms, choice))
        if not results:
            continue
        best_ms, best = min(results, key=lambda r: r[0])
        h_ms = time_kernel(heuristic.mod["main"], target) if heuristic is not None else float("nan")
        if h_ms <= best_ms:   # re-measured heuristic wins (noise): keep the heuristic's choice
            best_ms, best = h_ms, C.tiled_heuristic(func)
        db["kernels"][key] = {"v": best["v"], "u": best["u"], "ms": round(best_ms, 4),
                              "heuristic_ms": round(h_ms, 4), "name": name, "model": model,
                              "config": C.resolve_config(model, variant, abi, **config).key()}
        done += 1
        print(f"[tune]   {name}: best {best} {best_ms:.3f} ms (heuristic {h_ms:.3f} ms, "
              f"{len(results)} candidates)", file=sys.stderr, flush=True)
        _write(db, abi)
    out = {"kernels_tuned": done, "kernels": len(kernels), "seconds": round(time.time() - t0, 1),
           "database": str(C.database_path(abi))}
    print(f"[tune] done: {out}", file=sys.stderr, flush=True)
    return out


def _write(db: dict, abi: str) -> None:
    from workloads import compile as C

    p = C.database_path(abi)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(db, indent=1, sort_keys=True) + "\n")
    tmp.replace(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workloads.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--abi", default="x86_64")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="model config override key=value")
    a = ap.parse_args(argv)
    try:
        tune(a.model, a.abi, variant=a.variant, max_minutes=a.max_minutes, threads=a.threads,
             **_parse_set(a.set))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
