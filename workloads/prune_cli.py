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
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Model config override (repeatable).")
@click.option("--measure-on", "measure_on", default=None, metavar="SERIAL",
              help="Compile every resulting model and measure it on this device through a campaign (governor: the "
                   "table's); writes OUT/measured.csv saying whether each meets its budget.")
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Campaign results root for --measure-on.")
@click.option("--measure-rounds", default=5, show_default=True,
              help="--measure-on: control-gated campaign rounds (one runner launch per model each).")
@click.option("--artifacts", "artifact_cache", default=None, type=click.Path(file_okay=False),
              help="Artifact cache (default $AUTLEARN_HOME/artifacts).")
@click.option("--allow-version-mismatch", is_flag=True)
def prune(model, table_path, budgets, out, steps, final_steps, pretrain_steps, init_reduction, decay, importance,
          per_class, max_iterations, sets, measure_on, results_root, measure_rounds, artifact_cache,
          allow_version_mismatch):
    """Prune to each budget; writes a Pareto set of `compressed` models under OUT (rerun to resume)."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.pruning.budget import format_value, parse_budget
    from workloads.tables import load_table
    from workloads.tables_cli import config_from, parse_overrides

    parsed = [parse_budget(b) for b in budgets]
    table = load_table(table_path, allow_version_mismatch) if table_path else None
    if table is None and any(b.kind in ("latency", "energy") for b in parsed):
        raise ConfigError("latency/energy budgets need --table", key="table")
    cfg = config_from(model, table.meta if table else None, parse_overrides(sets))
    console = Console(stderr=True)
    if table is not None:
        console.print(f"table: {table.meta.source_device} ({table.meta.device_model}), governor "
                      f"{table.meta.governor_applied or '?'}, {table.counts()}")
    if model == "lstm":
        exports = _prune_lstm(cfg, table, parsed, Path(out), console)
        if measure_on:
            measure_exports(exports, table, measure_on, Path(out), Path(results_root), artifact_cache,
                            measure_rounds)
        return
    from workloads.pruning.search import SearchSettings, search

    settings = SearchSettings(init_reduction=init_reduction, decay=decay, short_steps=steps, long_steps=final_steps,
                              pretrain_steps=pretrain_steps, importance=importance, per_class=per_class,
                              max_iterations=max_iterations)
    with console.status("searching") as status:
        results = search(cfg, table, parsed, out, settings,
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
    if measure_on:
        measure_exports({str(p.budget): p.export for r in results for p in r.points}, table, measure_on, Path(out),
                        Path(results_root), artifact_cache, measure_rounds)


def measure_exports(exports: dict[str, str], table, serial: str, out: Path, results_root: Path,
                    artifact_cache=None, rounds: int = 5) -> None:
    """Compile and measure each exported model on `serial` (the table's governor); OUT/measured.csv."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.measure import CONTROL_TOLERANCE, measure_models
    from workloads.pruning.budget import parse_budget

    if not exports:
        raise ConfigError("no model met any budget: nothing to measure", key="budget")
    governor = table.meta.governor_requested if table is not None else "schedutil"
    name = f"pruned-{out.name}"
    # Timing without a power source polling the phone unless an energy budget needs one (the sampler's own
    # work competes with the runner; on the 2-core lab host it visibly slows steps).
    energy = "auto" if any(parse_budget(b).kind == "energy" for b in exports) else "none"
    control = None
    if table is not None and table.meta.model:
        from workloads.tables_cli import config_from

        control = config_from(table.meta.model, table.meta)
    measured, rdir, rounds = measure_models(
        name, {b: Path(p) for b, p in exports.items()}, serial, governor, results_root=results_root, resume=True,
        reps=1, rounds=rounds, steps=20, warmup=3, energy=energy, artifact_cache=artifact_cache, control=control,
        reference_ms=(table.meta.control_ms or None) if table is not None else None)
    click.echo(f"rounds: {rounds.summary()}", err=True)
    got = {r.model: r for r in measured.itertuples()}
    rows = []
    for b_text, path in exports.items():
        b = parse_budget(b_text)
        doc = json.loads(Path(path).read_text())
        r = got.get(b_text)
        value = None if r is None else {"latency": r.ms, "energy": r.mj}.get(b.kind)
        if b.kind in ("flops", "memory"):
            value = doc.get("value")        # exact, not measured
        measured_kind = b.kind in ("latency", "energy")
        if value is None or value != value:
            verdict = "not measured"
        elif value <= b.value:
            verdict = "met"
        elif measured_kind and value <= b.value * (1 + CONTROL_TOLERANCE):
            verdict = "within noise"     # over, but inside the precision the control rounds guarantee
        else:
            verdict = "exceeded"
        rows.append({"budget": b_text, "kind": b.kind, "budget_value": b.value, "predicted": doc.get("value"),
                     "measured_ms": None if r is None else r.ms, "measured_mj": None if r is None else r.mj,
                     "value": value, "met": verdict == "met", "verdict": verdict,
                     "tolerance": CONTROL_TOLERANCE if measured_kind else 0.0,
                     "export": path, "device": serial, "governor": governor, "results": str(rdir),
                     "rounds": rounds.summary(), "disturbed": rounds.disturbed})
    df = pd.DataFrame(rows)
    df.to_csv(out / "measured.csv", index=False)
    view = RichTable(title=f"pruned models measured on {serial} ({governor})")
    for col in ("budget", "predicted", "measured", "verdict"):
        view.add_column(col)
    for r in rows:
        view.add_row(r["budget"], f"{r['predicted']:.4g}" if r["predicted"] is not None else "",
                     f"{r['value']:.4g}" if r["value"] is not None else "not measured", r["verdict"])
    Console().print(view)
    click.echo(f"rounds: {rounds.summary()}; verdicts: met = measured <= budget, within noise = at most "
               f"+{CONTROL_TOLERANCE:.0%} over (the precision control rounds hold), exceeded = more")
    click.echo(f"-> {out / 'measured.csv'}")


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
