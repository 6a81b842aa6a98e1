"""`autlearn prune`: budget-constrained compression driven by a per-layer table (NetAdapt-style search)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table as RichTable

from autlearn.cli.campaign import LiveProgress
from autlearn.cli.options import measure_options, parse_sets, set_option
from autlearn.pipelines.closed_loop import measure_closed_loop
from autlearn.pipelines.tables import config_from
from autlearn.profiler.errors import ConfigError
from autlearn.workloads import registry
from autlearn.workloads.pruning.budget import parse_budget
from autlearn.workloads.tables import load_table

if TYPE_CHECKING:
    from rich.console import Console

    from autlearn.engine.settings import MeasureSettings
    from autlearn.workloads.pruning.budget import Budget
    from autlearn.workloads.tables import Table


@click.command()
@click.option("--model", "model", type=click.Choice(registry.names()), default="mobilenet", show_default=True)
@click.option(
    "--table",
    "table_path",
    type=click.Path(dir_okay=False),
    help="Per-layer table (needed for latency/energy budgets; its config is the default model config).",
)
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    required=True,
    metavar="KIND=VALUE",
    help="latency=40ms | energy=5mJ | flops=2M | memory=100KB (repeatable).",
)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=20, show_default=True, help="Fine-tune steps per proposal.")
@click.option("--final-steps", default=200, show_default=True, help="Long fine-tune steps per budget point.")
@click.option("--pretrain-steps", default=200, show_default=True)
@click.option("--init-reduction", default=0.025, show_default=True, help="Fraction of the initial resource.")
@click.option("--decay", default=0.96, show_default=True)
@click.option("--importance", type=click.Choice(["l2", "random"]), default="l2", show_default=True)
@click.option("--per-class", type=int, default=None, help="Synthetic glyphs per class (default data: 16).")
@click.option("--max-iterations", default=500, show_default=True)
@click.option(
    "--select",
    type=click.Choice(["first", "best-val"]),
    default="first",
    show_default=True,
    help="Model per budget: the chain's first snapshot under it (NetAdapt; sits at the budget) or the "
    "most accurate (validation) snapshot under it, possibly a smaller budget's.",
)
@set_option("Model config override (repeatable).")
@click.option(
    "--measure-on",
    "measure_on",
    default=None,
    metavar="SERIAL",
    help="Close the loop: compile every resulting model and measure it on this device through a campaign "
    "(governor: the table's); a model over its budget is pruned further to a corrected target. "
    "Writes OUT/measured.csv (final model per budget) and OUT/loop.csv (every attempt).",
)
@measure_options(
    rounds=5,
    repetitions=1,
    steps=20,
    warmup=3,
    energy="none",
    threads=1,
    resume_default=True,
    fixed=("resume", "threads", "repetitions", "steps", "warmup", "energy"),
    flags={"rounds": "--measure-rounds"},
    help={
        "results_root": "Campaign results root for --measure-on.",
        "rounds": "--measure-on: control-gated campaign rounds (one runner launch per model each).",
    },
)
@click.option(
    "--corrections",
    default=2,
    show_default=True,
    help="--measure-on: at most this many re-searches of a budget its model measured over.",
)
@click.option(
    "--margin",
    default=0.05,
    show_default=True,
    help="--measure-on: a corrected target aims this fraction below the budget (measurement noise).",
)
@click.option(
    "--verdict-on",
    "verdict_on",
    type=click.Choice(["normalized", "raw"]),
    default="normalized",
    show_default=True,
    help="--measure-on: judge a latency budget on the control-normalized latency (median over rounds of "
    "model / control x the table's control reference: the latency under the table's conditions, "
    "with slow spells of host or phone cancelled) or on the raw median. Both are written.",
)
@click.option("--allow-version-mismatch", is_flag=True)
def prune(
    model: str,
    table_path: str | None,
    budgets: tuple[str, ...],
    out: str | Path,
    steps: int,
    final_steps: int,
    pretrain_steps: int,
    init_reduction: float,
    decay: float,
    importance: str,
    per_class: int | None,
    max_iterations: int,
    select: str,
    sets: tuple[str, ...],
    measure_on: str | None,
    settings: MeasureSettings,
    corrections: int,
    margin: float,
    verdict_on: str,
    allow_version_mismatch: bool,
) -> None:
    """Prune to each budget; writes a Pareto set of `compressed` models under OUT (rerun to resume)."""

    parsed = [parse_budget(b) for b in budgets]
    if not 0 <= margin < 0.5:
        raise ConfigError(f"must be in [0, 0.5), got {margin}", key="margin")
    if corrections < 0:
        raise ConfigError(f"must be >= 0, got {corrections}", key="corrections")
    table = load_table(table_path, allow_version_mismatch) if table_path else None
    if table is None and any(b.kind in ("latency", "energy") for b in parsed):
        raise ConfigError("latency/energy budgets need --table", key="table")
    cfg = config_from(model, table.meta if table else None, parse_sets(sets))
    console = Console(stderr=True)
    if table is not None:
        console.print(
            f"table: {table.meta.source_device} ({table.meta.device_model}), governor "
            f"{table.meta.governor_applied or '?'}, {table.counts()}"
        )
        if not table.counts()["fitted"]:
            console.print(
                "note: the table is not smoothed; per-key noise steers a greedy search (`autlearn tables smooth`)"
            )
    out = Path(out)
    family = registry.get(model)
    if family.strategy is None:
        raise ConfigError(f"the {model} family has no compression strategy", key="model")
    options = dict(
        init_reduction=init_reduction,
        decay=decay,
        short_steps=steps,
        long_steps=final_steps,
        pretrain_steps=pretrain_steps,
        importance=importance,
        per_class=per_class,
        max_iterations=max_iterations,
        select=select,
    )  # the search's settings (a strategy without a search ignores them)
    compressor = family.strategy.compressor(cfg, table, out, options, console)
    propose, smallest = compressor.propose, compressor.smallest
    if not measure_on:
        propose(parsed)
        return
    _closed_loop(parsed, propose, smallest, table, measure_on, out, settings, corrections, margin, console, verdict_on)


def _closed_loop(
    budgets: list[Budget],
    propose: Callable[[list[Budget]], Mapping[str, str]],
    smallest: Callable[[str], float] | None,
    table: Table | None,
    serial: str,
    out: Path,
    settings: MeasureSettings,
    corrections: int,
    margin: float,
    console: Console,
    verdict_on: str,
) -> None:

    with LiveProgress() as display:
        loop = measure_closed_loop(
            budgets,
            propose,
            smallest,
            table,
            serial,
            out,
            settings,
            corrections=corrections,
            margin=margin,
            verdict_on=verdict_on,
            emit=console.print,
            on_progress=display.on_progress,
            log=display.log,
        )
    final, governor, judged_on = loop.final, loop.governor, loop.judged_on
    view = RichTable(title=f"pruned models measured on {serial} ({governor})")
    for col in ("budget", "round", "search target", "predicted", "measured (raw)", "normalized", "verdict"):
        view.add_column(col)

    def fmt(v: float | None) -> str:
        return f"{v:.4g}" if v is not None and v == v else ""

    for a in final:
        view.add_row(
            str(a.budget),
            str(a.round),
            f"{a.target.value:.4g}",
            fmt(a.predicted),
            fmt(a.info.get("measured_ms")) or ("not measured" if a.measured is None else ""),
            fmt(a.info.get("normalized_ms")),
            a.verdict,
        )
    Console().print(view)
    basis = (
        "the control-normalized latency (median over control-gated rounds of model / control in the same round "
        "x the table's control reference)"
        if judged_on == "control-normalized"
        else "the raw latency (median of control-gated rounds)"
    )
    click.echo(
        f"met = {basis} <= budget; a model over its budget was searched again to target * budget / measured "
        f"* (1 - {margin:g}), at most {corrections} time(s)"
    )
    click.echo(f"-> {loop.measured_csv}, {loop.loop_csv}")
