"""`autlearn tables`: build (on a device through the campaign engine, or on the host), show, export, validate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from autlearn.cli.campaign import LiveProgress
from autlearn.cli.options import measure_options, parse_sets, set_option
from autlearn.pipelines.tables import (
    TablePlan,
    build_device_tables,
    calibrate_validated,
    config_from,
    plan_device_tables,
    prediction_frame,
    validate_table,
)
from autlearn.profiler.errors import ConfigError
from autlearn.workloads import registry
from autlearn.workloads.layers import table_grid, unique_shapes
from autlearn.workloads.tables import build_host_table, load_table, sample_grid, smooth

if TYPE_CHECKING:
    from autlearn.engine.settings import MeasureSettings
    from autlearn.workloads.layers import LayerKey


@click.group()
def tables() -> None:
    """Per-layer latency/energy tables (one per device x governor x tool version)."""


@tables.command("build")
@click.option("--model", "model", type=click.Choice(registry.names()), default="mobilenet", show_default=True)
@click.option("--device", "serial", default=None, help="Measure on this device through the campaign engine.")
@click.option(
    "--governors",
    default="interactive,powersave",
    show_default=True,
    help="Comma-separated governor intents (one table each; mapped to the kernel's governors).",
)
@click.option(
    "--host", is_flag=True, help="Instead: single-layer PyTorch steps on this host (labelled 'host (not a phone)')."
)
@set_option("Model config override (repeatable).")
@click.option("--every", default=2, show_default=True, help="Measure every N-th channel count; interpolate the rest.")
@click.option("--per-suite", default=48, show_default=True, help="Device: layer shapes compiled into one artifact.")
@click.option("--trainable", type=click.Choice(["head", "all"]), default="head", show_default=True)
@measure_options(
    rounds=3,
    repetitions=5,
    steps=10,
    warmup=2,
    energy="auto",
    threads=1,
    help={
        "repetitions": "Host: interleaved rounds. Device: runner launches.",
        "steps": "Device: timed steps per runner launch.",
        "warmup": "Device: untimed steps per runner launch.",
        "rounds": "Device: run the campaign this many times, pooled (robust to a few slow seconds).",
        "energy": "Device: none | fuelgauge | monsoon:SERIAL | auto.",
        "results_root": "Device: campaign results root.",
        "resume": "Device: continue an interrupted table campaign.",
    },
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="Host: a .parquet/.csv file. Device: a directory (one table per governor).",
)
def build(
    model: str,
    serial: str | None,
    governors: str,
    host: bool,
    sets: tuple[str, ...],
    every: int,
    per_suite: int,
    trainable: str,
    settings: MeasureSettings,
    out: str,
) -> None:
    """Build tables covering every model the pruner can reach from the config."""

    cfg = config_from(model, None, parse_sets(sets))
    grid = table_grid(cfg, trainable)
    if host == bool(serial):
        raise ConfigError("give --device SERIAL (a phone, through the campaign engine) or --host", key="device")
    if serial:
        plan = plan_device_tables(model, cfg, grid, serial, governors.split(","), every, per_suite, settings, trainable)
        _build_on_device(plan, settings, Path(out))
        return
    assert settings.threads is not None  # --threads: an int from 1 (default 1)
    _build_on_host(model, cfg, grid, every, settings.repetitions, settings.threads, out)


def _build_on_host(
    model: str, cfg: Any, grid: tuple[LayerKey, ...], every: int, reps: int, threads: int, out: str
) -> None:

    if Path(out).suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError(f"unknown table format {Path(out).suffix!r}; use .parquet or .csv", key="out")
    n = reps + 1  # interleaved rounds (1 warm-up)
    console = Console(stderr=True)
    shapes = len(unique_shapes(sample_grid(grid, every)))
    with Progress(
        TextColumn(f"measuring {shapes} layer shapes on host, round"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("m", total=n)
        table = build_host_table(
            model,
            cfg,
            grid,
            every=every,
            reps=reps,
            threads=threads,
            progress=lambda i, total: bar.update(task, completed=i),
        )
    p = table.save(out)
    c = table.counts()
    click.echo(
        f"{p}: {len(table)} keys ({c['measured']} measured, {c['interpolated']} interpolated) on "
        f"{table.meta.source_device}"
    )


def _build_on_device(plan: TablePlan, settings: MeasureSettings, out: Path) -> None:

    click.echo(
        f"{plan.campaign.name}: {plan.shapes} layer shapes in {plan.suites} suite(s) x {len(plan.governors)} "
        f"governor(s) x {settings.rounds} round(s) on {plan.device}",
        err=True,
    )
    with LiveProgress() as display:
        built = build_device_tables(plan, settings, out, on_progress=display.on_progress, log=display.log)
    for (dev, gov), p in built.paths.items():
        t = built.tables[(dev, gov)]
        c = t.counts()
        click.echo(
            f"{p}: {len(t)} keys ({c['measured']} measured, {c['interpolated']} interpolated) on "
            f"{t.meta.source_device} [{t.meta.labels or 'measured'}], governor {gov} -> "
            f"{t.meta.governor_applied}{', energy' if t.has_energy else ''}"
        )
    if built.failed:
        click.echo(
            f"warning: {built.failed} suite cell(s) failed; their keys were interpolated where possible "
            f"(rerun with --resume to retry)",
            err=True,
        )


@tables.command("show")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--allow-version-mismatch", is_flag=True)
@click.option("--rows", default=0, show_default=True, help="Also print the first N rows.")
def show(table_path: str, allow_version_mismatch: bool, rows: int) -> None:
    """Metadata and a per-layer-type summary of a table."""

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


@tables.command("smooth")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Smoothed table (.parquet or .csv); the measured table is left as it is.",
)
@click.option("--allow-version-mismatch", is_flag=True)
def smooth_cmd(table_path: str, out: str, allow_version_mismatch: bool) -> None:
    """A copy of TABLE whose values are a robust monotone fit per layer family (source 'fitted').

    A table measured once per key is noisy, and a greedy search exploits the noise (it prefers the layers whose
    savings are overstated). The fit (a + b c_in + c c_out + d FLOPs, coefficients >= 0, soft-L1) never gets
    faster with more channels; the measured values stay in the column measured_ms."""

    if Path(out).resolve() == Path(table_path).resolve():
        raise ConfigError("--out must differ from TABLE (the measured table is kept)", key="out")
    t, info = smooth(load_table(table_path, allow_version_mismatch=allow_version_mismatch))
    p = t.save(out)
    click.echo(
        f"{p}: {len(t)} keys fitted from {info['measured_points']} measured; |residual| median "
        f"{info['median_abs_residual']:.1%}, {info['share_within_20pct']:.0%} within 20 %, max "
        f"{info['max_abs_residual']:.0%}"
    )
    for f in info["worst_families"][:3]:
        click.echo(
            f"  noisiest family {f['family']}: {f['measured']} measured, median |residual| "
            f"{f['median_abs_residual']:.1%}",
            err=True,
        )


@tables.command("export")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write CSV (metadata as first line).")
@click.option("--parquet", "pq_out", type=click.Path(dir_okay=False), help="Write Parquet.")
@click.option("--allow-version-mismatch", is_flag=True)
def export(table_path: str, csv_out: str | None, pq_out: str | None, allow_version_mismatch: bool) -> None:
    """Export a table to CSV and/or Parquet."""

    if not csv_out and not pq_out:
        raise ConfigError("give --csv OUT and/or --parquet OUT", key="export")
    t = load_table(table_path, allow_version_mismatch=allow_version_mismatch)
    for out, suffix in ((csv_out, ".csv"), (pq_out, ".parquet")):
        if out:
            if Path(out).suffix != suffix:
                raise ConfigError(f"{out}: expected a {suffix} file name", key="export")
            click.echo(str(t.save(out)))


@tables.command("validate")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--device", "serial", default=None, help="Device to measure on (default: the table's).")
@click.option("--models", "n_models", default=12, show_default=True, help="Whole models to measure (>= 10 advised).")
@click.option("--seed", default=0, show_default=True)
@measure_options(
    rounds=3,
    repetitions=2,
    steps=10,
    warmup=2,
    energy="none",
    threads=1,
    help={
        "repetitions": "Runner launches per model per round.",
        "rounds": "Campaign rounds, pooled (robust to slow seconds).",
        "energy": "Also measure energy (auto | fuelgauge | monsoon:SERIAL); off by default: a polling power source "
        "competes with the runner for CPU.",
        "threads": "Runner threads (use the table's).",
    },
)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(dir_okay=False),
    help="CSV of per-model errors (default: prediction_error.csv in the campaign's results).",
)
@click.option(
    "--calibrate",
    "calibrated",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also write a copy of the table whose whole-model latency is fitted to these measurements.",
)
@click.option(
    "--calibration",
    "method",
    type=click.Choice(["affine", "ratio"]),
    default="affine",
    show_default=True,
    help="affine: scale x sum of layers + offset (a fixed cost per layer call is "
    "counted once per layer in the sum); ratio: scale only.",
)
@click.option("--allow-version-mismatch", is_flag=True)
def validate(
    table_path: str,
    serial: str | None,
    n_models: int,
    seed: int,
    settings: MeasureSettings,
    out: str | None,
    calibrated: str | None,
    method: str,
    allow_version_mismatch: bool,
) -> None:
    """Prediction error of the resource model: measure whole models on the device, compare with the table's sum."""

    t = load_table(table_path, allow_version_mismatch=allow_version_mismatch)
    if not t.meta.model:
        raise ConfigError(f"{table_path}: the table does not say which model family it was built for", key="model")
    with LiveProgress() as display:
        v = validate_table(t, serial, n_models, seed, settings, on_progress=display.on_progress, log=display.log)
    click.echo(f"rounds: {v.rounds.summary()}", err=True)
    outp = Path(out) if out else v.results_dir / "prediction_error.csv"
    prediction_frame(v).to_csv(outp, index=False)
    view = RichTable(
        title=f"resource model vs measurement ({t.meta.source_device}, {t.meta.governor_requested}"
        f"{', ' + t.meta.labels if t.meta.labels else ''})"
    )
    for col in ("model", "predicted ms", "measured ms", "error"):
        view.add_column(col)
    for r in v.latency.per_model.itertuples():
        view.add_row(r.model, f"{r.predicted:.4g}", f"{r.measured:.4g}", f"{r.error:+.1%}")
    Console().print(view)
    click.echo(f"latency: {v.latency.summary()}")
    if v.energy is not None:
        click.echo(f"energy: {v.energy.summary()}")
    if calibrated:
        ct, fit, control_ms = calibrate_validated(v, method, settings.rounds)
        click.echo(
            f"calibrated: latency x {fit['scale']:.3f} {fit['offset_ms']:+.4g} ms; leave-one-out mean |err| "
            f"{fit['loo_mean_abs_error']:.1%}, max {fit['loo_max_abs_error']:.1%}, "
            f"{fit['loo_within_10pct']:.0%} within +-10%"
            + (
                f"; control reference {control_ms:.4g} ms (median of the rounds used; the table's: "
                f"{t.meta.control_ms:.4g} ms)"
                if control_ms
                else ""
            )
            + f" -> {ct.save(calibrated)}"
        )
    if v.missing:
        click.echo(f"not measured (failed cells): {', '.join(v.missing)}", err=True)
    click.echo(f"-> {outp}")
