"""`autlearn prune`: budget-constrained compression driven by a per-layer table (NetAdapt-style search)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table as RichTable

from autlearn.cli.campaign import LiveProgress
from autlearn.cli.options import measure_options, option_group, parse_sets, set_option
from autlearn.pipelines.closed_loop import VERDICTS, LoopSettings, measure_closed_loop
from autlearn.pipelines.tables import config_from
from autlearn.profiler.errors import ConfigError
from autlearn.workloads import registry
from autlearn.workloads.pruning.budget import parse_budget
from autlearn.workloads.tables import load_table

if TYPE_CHECKING:
    from autlearn.engine.settings import MeasureSettings
    from autlearn.workloads.pruning.budget import Budget
    from autlearn.workloads.pruning.strategy import Compressor
    from autlearn.workloads.tables import Table


@dataclass(frozen=True)
class SearchOptions:
    """The search's options (filter pruning; autlearn.workloads.pruning.search.SearchSettings fields): a family's
    compressor takes them as a dict (`asdict`) and checks those it uses."""

    short_steps: int = 20
    long_steps: int = 200
    pretrain_steps: int = 200
    init_reduction: float = 0.025
    decay: float = 0.96
    importance: str = "l2"
    per_class: int | None = None
    max_iterations: int = 500
    select: str = "first"


search_options = option_group(
    SearchOptions,
    "search",
    {
        "short_steps": click.option(
            "--steps", "short_steps", default=20, show_default=True, help="Fine-tune steps per proposal."
        ),
        "long_steps": click.option(
            "--final-steps", "long_steps", default=200, show_default=True, help="Long fine-tune steps per budget point."
        ),
        "pretrain_steps": click.option("--pretrain-steps", "pretrain_steps", default=200, show_default=True),
        "init_reduction": click.option(
            "--init-reduction",
            "init_reduction",
            default=0.025,
            show_default=True,
            help="Fraction of the initial resource.",
        ),
        "decay": click.option("--decay", "decay", default=0.96, show_default=True),
        "importance": click.option(
            "--importance", "importance", type=click.Choice(["l2", "random"]), default="l2", show_default=True
        ),
        "per_class": click.option(
            "--per-class", "per_class", type=int, default=None, help="Synthetic glyphs per class (default data: 16)."
        ),
        "max_iterations": click.option("--max-iterations", "max_iterations", default=500, show_default=True),
        "select": click.option(
            "--select",
            "select",
            type=click.Choice(["first", "best-val"]),
            default="first",
            show_default=True,
            help="Model per budget: the chain's first snapshot under it (NetAdapt; sits at the budget) or the "
            "most accurate (validation) snapshot under it, possibly a smaller budget's.",
        ),
    },
)

loop_options = option_group(
    LoopSettings,
    "loop",
    {
        "device": click.option(
            "--measure-on",
            "device",
            default=None,
            metavar="SERIAL",
            help="Close the loop: compile every resulting model and measure it on this device through a campaign "
            "(governor: the table's); a model over its budget is pruned further to a corrected target. "
            "Writes OUT/measured.csv (final model per budget) and OUT/loop.csv (every attempt).",
        ),
        "corrections": click.option(
            "--corrections",
            "corrections",
            default=2,
            show_default=True,
            help="--measure-on: at most this many re-searches of a budget its model measured over.",
        ),
        "margin": click.option(
            "--margin",
            "margin",
            default=0.05,
            show_default=True,
            help="--measure-on: a corrected target aims this fraction below the budget (measurement noise).",
        ),
        "verdict_on": click.option(
            "--verdict-on",
            "verdict_on",
            type=click.Choice(VERDICTS),
            default="normalized",
            show_default=True,
            help="--measure-on: judge a latency budget on the control-normalized latency (median over rounds of "
            "model / control x the table's control reference: the latency under the table's conditions, "
            "with slow spells of host or phone cancelled) or on the raw median. Both are written.",
        ),
    },
)


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
@search_options
@set_option("Model config override (repeatable).")
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
@loop_options
@click.option("--allow-version-mismatch", is_flag=True)
def prune(
    model: str,
    table_path: str | None,
    budgets: tuple[str, ...],
    out: str | Path,
    search: SearchOptions,
    sets: tuple[str, ...],
    settings: MeasureSettings,
    loop: LoopSettings,
    allow_version_mismatch: bool,
) -> None:
    """Prune to each budget; writes a Pareto set of `compressed` models under OUT (rerun to resume)."""

    parsed = [parse_budget(b) for b in budgets]
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
    compressor = family.strategy.compressor(cfg, table, out, asdict(search), console)
    if not loop.device:
        compressor.propose(parsed)
        return
    _closed_loop(parsed, compressor, table, out, settings, loop, console)


def _closed_loop(
    budgets: list[Budget],
    compressor: Compressor,
    table: Table | None,
    out: Path,
    settings: MeasureSettings,
    loop_settings: LoopSettings,
    console: Console,
) -> None:

    with LiveProgress() as display:
        loop = measure_closed_loop(
            budgets,
            compressor,
            table,
            out,
            settings,
            loop_settings,
            emit=console.print,
            on_progress=display.on_progress,
            log=display.log,
        )
    final, governor, judged_on = loop.final, loop.governor, loop.judged_on
    view = RichTable(title=f"pruned models measured on {loop.serial} ({governor})")
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
        f"* (1 - {loop_settings.margin:g}), at most {loop_settings.corrections} time(s)"
    )
    click.echo(f"-> {loop.measured_csv}, {loop.loop_csv}")
