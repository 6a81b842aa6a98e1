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
@click.option("--allow-version-mismatch", is_flag=True)
def prune(model, table_path, budgets, out, steps, final_steps, pretrain_steps, init_reduction, decay, importance,
          per_class, max_iterations, sets, allow_version_mismatch):
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
        _prune_lstm(cfg, table, parsed, Path(out), console)
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


def _prune_lstm(cfg, table, budgets, out: Path, console) -> None:
    """LSTM family: SVD rank of the dense head per budget (weights: the seed model, no fine-tune)."""
    import torch

    from workloads.models import build_model
    from workloads.pruning.svd import factorize_head, rank_for_budget
    from workloads.resource import model_resource

    net = build_model(cfg)
    for b in budgets:
        r = rank_for_budget(cfg, table, b)
        d = out / "lstm" / b.slug
        d.mkdir(parents=True, exist_ok=True)
        torch.save(factorize_head(net, r).state_dict(), d / "model.pt")
        doc = {"model": "lstm", "budget": str(b), "head_rank": r, "config": cfg.to_dict(),
               "predicted": model_resource(cfg, table, head_rank=r).to_dict(), "state_dict": "model.pt",
               "note": "head factorised by SVD; no compile hook for factorised heads yet"}
        (d / "svd.json").write_text(json.dumps(doc, indent=1))
        console.print(f"{b}: head rank {r} -> {d / 'svd.json'}")
