"""`autlearn tables`: build (host measurement for now), show and export per-layer latency/energy tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from profiler.errors import ConfigError


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """('width=0.25', 'channels=[8,16]') -> {'width': 0.25, 'channels': [8, 16]} (values JSON when they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", key="set")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def config_from(model: str, table_meta: Any = None, overrides: dict[str, Any] | None = None):
    """Model config: the table's config (when it was made for this model) updated by overrides."""
    from workloads.models import make_config

    base: dict[str, Any] = {}
    if table_meta is not None and table_meta.model:
        if table_meta.model != model:
            raise ConfigError(f"table was built for {table_meta.model!r}, not {model!r}", key="model")
        base = {k: v for k, v in table_meta.config_dict().items() if k != "model"}
    base.update(overrides or {})
    return make_config(model, **base)


@click.group()
def tables():
    """Per-layer latency/energy tables (one per device x governor x tool version)."""


@tables.command("build")
@click.option("--model", "model", type=click.Choice(["mobilenet", "lstm"]), default="mobilenet", show_default=True)
@click.option("--host", is_flag=True, help="Measure single-layer PyTorch steps on this host (labelled 'host (not a "
                                           "phone)'). Phone tables come from the campaign engine.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Model config override (repeatable).")
@click.option("--every", default=2, show_default=True, help="Measure every N-th channel count; interpolate the rest.")
@click.option("--reps", default=5, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--trainable", type=click.Choice(["head", "all"]), default="head", show_default=True)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help=".parquet or .csv")
def build(model, host, sets, every, reps, threads, trainable, out):
    """Build a table covering every model the pruner can reach from the config."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from workloads.layers import table_grid, unique_shapes
    from workloads.tables import build_host_table, sample_grid

    if not host:
        raise ConfigError("phone tables are measured by the campaign engine (`layer_workloads` -> "
                          "`table_from_measurements`), not wired into this command yet; pass --host for a "
                          "host-measured table (labelled 'host (not a phone)')", key="host")
    if Path(out).suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError(f"unknown table format {Path(out).suffix!r}; use .parquet or .csv", key="out")
    cfg = config_from(model, None, parse_overrides(sets))
    grid = table_grid(cfg, trainable)
    n = reps + 1   # interleaved rounds (1 warm-up)
    console = Console(stderr=True)
    with Progress(TextColumn(f"measuring {len(unique_shapes(sample_grid(grid, every)))} layer shapes on host, round"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("m", total=n)
        table = build_host_table(model, cfg, grid, every=every, reps=reps, threads=threads,
                                 progress=lambda i, total: bar.update(task, completed=i))
    p = table.save(out)
    c = table.counts()
    click.echo(f"{p}: {len(table)} keys ({c['measured']} measured, {c['interpolated']} interpolated) on "
               f"{table.meta.source_device}")


@tables.command("show")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--allow-version-mismatch", is_flag=True)
@click.option("--rows", default=0, show_default=True, help="Also print the first N rows.")
def show(table_path, allow_version_mismatch, rows):
    """Metadata and a per-layer-type summary of a table."""
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.tables import load_table

    t = load_table(table_path, allow_version_mismatch=allow_version_mismatch)
    console = Console()
    meta = RichTable(title=f"{table_path}", show_header=False)
    for k, v in json.loads(t.meta.to_json()).items():
        meta.add_row(k, str(v))
    console.print(meta)
    summary = RichTable(title="keys by type / phase / source")
    for col in ("type", "phase", "source", "keys", "median ms (min..max)"):
        summary.add_column(col)
    for (typ, ph, src), g in t.df.groupby(["type", "phase", "source"]):
        summary.add_row(typ, ph, src, str(len(g)), f"{g['median_ms'].min():.4g}..{g['median_ms'].max():.4g}")
    console.print(summary)
    if rows:
        console.print(t.df.head(rows).to_string(index=False))


@tables.command("export")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write CSV (metadata as first line).")
@click.option("--parquet", "pq_out", type=click.Path(dir_okay=False), help="Write Parquet.")
@click.option("--allow-version-mismatch", is_flag=True)
def export(table_path, csv_out, pq_out, allow_version_mismatch):
    """Export a table to CSV and/or Parquet."""
    from workloads.tables import load_table

    if not csv_out and not pq_out:
        raise ConfigError("give --csv OUT and/or --parquet OUT", key="export")
    t = load_table(table_path, allow_version_mismatch=allow_version_mismatch)
    for out, suffix in ((csv_out, ".csv"), (pq_out, ".parquet")):
        if out:
            if Path(out).suffix != suffix:
                raise ConfigError(f"{out}: expected a {suffix} file name", key="export")
            click.echo(str(t.save(out)))
