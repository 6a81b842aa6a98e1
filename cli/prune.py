"""`autlearn prune`: budget-constrained compression driven by a per-layer table (NetAdapt-style search)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from profiler.errors import ConfigError


@click.command()
@click.option("--model", "model", type=click.Choice(["mobilenet", "lstm"]), default="mobilenet", show_default=True)
@click.option("--table", "table_path", type=click.Path(dir_okay=False),
              help="Per-layer table (needed for latency/energy budgets; its config is the default model config).")
@click.option("--budget", "budgets", multiple=True, required=True, metavar="KIND=VALUE",
              help="latency=40ms | energy=5mJ | flops=2M | memory=100KB (repeatable).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=20, show_default=True, help="Fine-tune steps per proposal.")
@click.option("--final-steps", default=200, show_default=True, help="Long fine-tune steps per budget point.")
@click.option("--pretrain-steps", default=200, show_default=True)
@click.option("--init-reduction", default=0.025, show_default=True, help="Fraction of the initial resource.")
@click.option("--decay", default=0.96, show_default=True)
@click.option("--importance", type=click.Choice(["l2", "random"]), default="l2", show_default=True)
@click.option("--per-class", type=int, default=None, help="Synthetic glyphs per class (default data: 16).")
@click.option("--max-iterations", default=500, show_default=True)
@click.option("--select", type=click.Choice(["first", "best-val"]), default="first", show_default=True,
              help="Model per budget: the chain's first snapshot under it (NetAdapt; sits at the budget) or the "
                   "most accurate (validation) snapshot under it, possibly a smaller budget's.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Model config override (repeatable).")
@click.option("--measure-on", "measure_on", default=None, metavar="SERIAL",
              help="Close the loop: compile every resulting model and measure it on this device through a campaign "
                   "(governor: the table's); a model over its budget is pruned further to a corrected target. "
                   "Writes OUT/measured.csv (final model per budget) and OUT/loop.csv (every attempt).")
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Campaign results root for --measure-on.")
@click.option("--measure-rounds", default=5, show_default=True,
              help="--measure-on: control-gated campaign rounds (one runner launch per model each).")
@click.option("--corrections", default=2, show_default=True,
              help="--measure-on: at most this many re-searches of a budget its model measured over.")
@click.option("--margin", default=0.05, show_default=True,
              help="--measure-on: a corrected target aims this fraction below the budget (measurement noise).")
@click.option("--verdict-on", "verdict_on", type=click.Choice(["normalized", "raw"]), default="normalized",
              show_default=True,
              help="--measure-on: judge a latency budget on the control-normalized latency (median over rounds of "
                   "model / control x the table's control reference: the latency under the table's conditions, "
                   "with slow spells of host or phone cancelled) or on the raw median. Both are written.")
@click.option("--artifacts", "artifact_cache", default=None, type=click.Path(file_okay=False),
              help="Artifact cache (default $AUTLEARN_HOME/artifacts).")
@click.option("--allow-version-mismatch", is_flag=True)
def prune(model, table_path, budgets, out, steps, final_steps, pretrain_steps, init_reduction, decay, importance,
          per_class, max_iterations, select, sets, measure_on, results_root, measure_rounds, corrections, margin,
          verdict_on, artifact_cache, allow_version_mismatch):
    """Prune to each budget; writes a Pareto set of `compressed` models under OUT (rerun to resume)."""
    from rich.console import Console

    from workloads.tables import load_table
    from workloads.pruning.budget import parse_budget
    from workloads.tables_cli import config_from, parse_overrides

    parsed = [parse_budget(b) for b in budgets]
    if not 0 <= margin < 0.5:
        raise ConfigError(f"must be in [0, 0.5), got {margin}", key="margin")
    if corrections < 0:
        raise ConfigError(f"must be >= 0, got {corrections}", key="corrections")
    table = load_table(table_path, allow_version_mismatch) if table_path else None
    if table is None and any(b.kind in ("latency", "energy") for b in parsed):
        raise ConfigError("latency/energy budgets need --table", key="table")
    cfg = config_from(model, table.meta if table else None, parse_overrides(sets))
    console = Console(stderr=True)
    if table is not None:
        console.print(f"table: {table.meta.source_device} ({table.meta.device_model}), governor "
                      f"{table.meta.governor_applied or '?'}, {table.counts()}")
        if not table.counts()["fitted"]:
            console.print("note: the table is not smoothed; per-key noise steers a greedy search (`autlearn "
                          "tables smooth`)")
    out = Path(out)
    if model == "lstm":
        from workloads.pruning.svd import smallest_rank_value

        def propose(targets):
            return _prune_lstm(cfg, table, targets, out, console)

        def smallest(kind):
            return smallest_rank_value(cfg, kind, table)
    else:
        from workloads.pruning.search import SearchSettings, smallest_reachable

        settings = SearchSettings(init_reduction=init_reduction, decay=decay, short_steps=steps,
                                  long_steps=final_steps, pretrain_steps=pretrain_steps, importance=importance,
                                  per_class=per_class, max_iterations=max_iterations, select=select)

        def propose(targets):
            return _search_mobilenet(cfg, table, targets, out, settings, console)

        def smallest(kind):
            return smallest_reachable(cfg, kind, table, settings)
    if not measure_on:
        propose(parsed)
        return
    closed_loop(parsed, propose, smallest, table, measure_on, out, Path(results_root), artifact_cache,
                measure_rounds, corrections, margin, console, verdict_on)


def _search_mobilenet(cfg, table, targets, out: Path, settings, console) -> dict[str, str]:
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.pruning.budget import format_value
    from workloads.pruning.search import search

    with console.status("searching") as status:
        results = search(cfg, table, targets, out, settings,
                         on_event=lambda m: (status.update(m), console.log(m) if "iteration" in m and "->" in m
                                             else None))
    view = RichTable(title=f"Pareto set ({cfg.to_dict()['model']}, accuracy on held-out data)")
    for col in ("budget", "predicted", "accuracy", "channels", "export"):
        view.add_column(col)
    for r in results:
        for p in r.points:
            view.add_row(str(p.budget), format_value(p.budget.kind, p.value), f"{p.accuracy:.3f}",
                         ",".join(map(str, p.channels)), p.export)
        for b in r.unmet:
            view.add_row(str(b), "not met", "", "", "")
    Console().print(view)
    return {str(p.budget): p.export for r in results for p in r.points}


def verdict_values(measured, labels, judged_on: str) -> dict[str, dict]:
    """Rows of `measure_models`' frame -> close_loop values: the latency a verdict uses (control-normalized or raw;
    raw for a model no round measured beside the control), energy (raw), and both latencies with the drift."""
    nan = float("nan")
    by = {r.model: r for r in measured.itertuples()}
    values = {}
    for label in labels:
        if label not in by:
            continue
        r = by[label]
        norm = getattr(r, "ms_normalized", nan)
        basis = judged_on if norm == norm else "raw"
        values[label] = {"latency": norm if basis == "control-normalized" else r.ms, "energy": r.mj,
                         "measured_ms": r.ms, "normalized_ms": norm, "drift": getattr(r, "drift", nan),
                         "judged_on": basis}
    return values


def closed_loop(budgets, propose, smallest, table, serial: str, out: Path, results_root: Path, artifact_cache,
                rounds: int, corrections: int, margin: float, console, verdict_on: str = "normalized") -> None:
    """Prune, measure each model on `serial` (the table's governor), prune further where a model measured over its
    budget (workloads.pruning.loop); OUT/measured.csv and OUT/loop.csv. A latency verdict uses the control-
    normalized latency (`verdict_on="normalized"`, when the table has a control reference) or the raw median."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.measure import measure_models
    from workloads.pruning.loop import close_loop

    governor = table.meta.governor_requested if table is not None else "schedutil"
    # Timing without a power source polling the phone unless an energy budget needs one (the sampler's own
    # work competes with the runner; on the 2-core lab host it visibly slows steps).
    energy = "auto" if any(b.kind == "energy" for b in budgets) else "none"
    control = None
    if table is not None and table.meta.model:
        from workloads.tables_cli import config_from

        control = config_from(table.meta.model, table.meta)
    reference = (table.meta.control_ms or None) if table is not None else None
    judged_on = "control-normalized" if verdict_on == "normalized" and control is not None and reference else "raw"
    if verdict_on == "normalized" and judged_on == "raw":
        console.print("note: the table has no control reference; latency budgets are judged on the raw median")

    def measure(exports: dict[str, str], k: int):
        got, rdir, rr = measure_models(
            f"pruned-{out.name}-{k}", {label: Path(p) for label, p in exports.items()}, serial, governor,
            results_root=results_root, resume=True, reps=1, rounds=rounds, steps=20, warmup=3, energy=energy,
            artifact_cache=artifact_cache, control=control, reference_ms=reference)
        console.print(f"rounds: {rr.summary()}")
        values = verdict_values(got, exports, judged_on)
        info = {"device": serial, "governor": governor, "results": str(rdir), "rounds": rr.summary(),
                "disturbed": rr.disturbed}
        return values, info

    final, history = close_loop(budgets, propose, measure, corrections=corrections, margin=margin,
                                smallest=smallest, emit=console.print)
    if not any(a.export for a in final):
        raise ConfigError("no model met any budget: nothing to measure", key="budget")
    pd.DataFrame([a.row() for a in final]).to_csv(out / "measured.csv", index=False)
    pd.DataFrame([a.row() for a in history]).to_csv(out / "loop.csv", index=False)
    view = RichTable(title=f"pruned models measured on {serial} ({governor})")
    for col in ("budget", "round", "search target", "predicted", "measured (raw)", "normalized", "verdict"):
        view.add_column(col)

    def fmt(v) -> str:
        return f"{v:.4g}" if v is not None and v == v else ""

    for a in final:
        view.add_row(str(a.budget), str(a.round), f"{a.target.value:.4g}", fmt(a.predicted),
                     fmt(a.info.get("measured_ms")) or ("not measured" if a.measured is None else ""),
                     fmt(a.info.get("normalized_ms")), a.verdict)
    Console().print(view)
    basis = ("the control-normalized latency (median over control-gated rounds of model / control in the same round "
             "x the table's control reference)" if judged_on == "control-normalized"
             else "the raw latency (median of control-gated rounds)")
    click.echo(f"met = {basis} <= budget; a model over its budget was searched again to target * budget / measured "
               f"* (1 - {margin:g}), at most {corrections} time(s)")
    click.echo(f"-> {out / 'measured.csv'}, {out / 'loop.csv'}")


def _prune_lstm(cfg, table, budgets, out: Path, console) -> dict[str, str]:
    """LSTM family: SVD rank of the dense head per budget (weights: the seed model's head factorised, no
    fine-tune), written as `compressed.json` + `model.pt` that campaigns compile (variant `compressed`)."""
    from dataclasses import replace

    import torch

    from workloads.models import build_model
    from workloads.pruning.search import FORMAT
    from workloads.pruning.svd import factorize_head, rank_for_budget
    from workloads.resource import model_resource

    net = build_model(replace(cfg, head_rank=0))
    exports: dict[str, str] = {}
    full = min(cfg.hidden_size, cfg.vocab_size)
    for b in budgets:
        r = rank_for_budget(replace(cfg, head_rank=0), table, b)
        rank = 0 if r >= full else r                     # the dense head already meets the budget
        d = out / "lstm" / b.slug
        d.mkdir(parents=True, exist_ok=True)
        torch.save((factorize_head(net, rank) if rank else net).state_dict(), d / "model.pt")
        pcfg = replace(cfg, head_rank=rank)
        predicted = model_resource(pcfg, table)
        base = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "head_rank")}
        doc = {"format": FORMAT, "model": "lstm", "variant": "compressed", "config": pcfg.to_dict(),
               "build_program": {"model": "lstm", "variant": "compressed", "config": base,
                                 "compressed_config": {"head_rank": rank}},
               "state_dict": "model.pt", "budget": str(b), "kind": b.kind, "budget_value": b.value,
               "head_rank": rank, "predicted": predicted.to_dict(),
               "value": predicted.value(b.kind) if (table is not None or b.kind in ("flops", "memory")) else None,
               "note": "head factorised by SVD (no fine-tune)",
               "table": (json.loads(table.meta.to_json()) if table is not None else None)}
        (d / "compressed.json").write_text(json.dumps(doc, indent=1))
        console.print(f"{b}: head rank {rank or 'dense'} -> {d / 'compressed.json'}")
        exports[str(b)] = str(d / "compressed.json")
    return exports
