"""`autlearn tables`: build (on a device through the campaign engine, or on the host), show, export, validate."""

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
@click.option("--device", "serial", default=None, help="Measure on this device through the campaign engine.")
@click.option("--governors", default="interactive,powersave", show_default=True,
              help="Comma-separated governor intents (one table each; mapped to the kernel's governors).")
@click.option("--host", is_flag=True, help="Instead: single-layer PyTorch steps on this host (labelled 'host (not a "
                                           "phone)').")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Model config override (repeatable).")
@click.option("--every", default=2, show_default=True, help="Measure every N-th channel count; interpolate the rest.")
@click.option("--reps", default=5, show_default=True, help="Host: interleaved rounds. Device: runner launches.")
@click.option("--steps", default=10, show_default=True, help="Device: timed steps per runner launch.")
@click.option("--warmup", default=2, show_default=True, help="Device: untimed steps per runner launch.")
@click.option("--per-suite", default=48, show_default=True, help="Device: layer shapes compiled into one artifact.")
@click.option("--rounds", default=3, show_default=True,
              help="Device: run the campaign this many times, pooled (robust to a few slow seconds).")
@click.option("--energy", default="auto", show_default=True, help="Device: none | fuelgauge | monsoon:SERIAL | auto.")
@click.option("--threads", default=1, show_default=True)
@click.option("--trainable", type=click.Choice(["head", "all"]), default="head", show_default=True)
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Device: campaign results root.")
@click.option("--resume", is_flag=True, help="Device: continue an interrupted table campaign.")
@click.option("--artifacts", "artifact_cache", default=None, type=click.Path(file_okay=False),
              help="Artifact cache (default $AUTLEARN_HOME/artifacts).")
@click.option("--out", "out", required=True, type=click.Path(),
              help="Host: a .parquet/.csv file. Device: a directory (one table per governor).")
def build(model, serial, governors, host, sets, every, reps, steps, warmup, per_suite, rounds, energy, threads,
          trainable, results_root, resume, artifact_cache, out):
    """Build tables covering every model the pruner can reach from the config."""
    from workloads.layers import table_grid

    cfg = config_from(model, None, parse_overrides(sets))
    grid = table_grid(cfg, trainable)
    if host == bool(serial):
        raise ConfigError("give --device SERIAL (a phone, through the campaign engine) or --host", key="device")
    if serial:
        _build_on_device(model, cfg, grid, serial, governors, every, reps, steps, warmup, per_suite, rounds, energy,
                         threads, trainable, Path(results_root), resume, Path(out), artifact_cache)
        return
    _build_on_host(model, cfg, grid, every, reps, threads, out)


def _build_on_host(model, cfg, grid, every, reps, threads, out) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from workloads.layers import unique_shapes
    from workloads.tables import build_host_table, sample_grid

    if Path(out).suffix not in (".parquet", ".pq", ".csv"):
        raise ConfigError(f"unknown table format {Path(out).suffix!r}; use .parquet or .csv", key="out")
    n = reps + 1   # interleaved rounds (1 warm-up)
    console = Console(stderr=True)
    shapes = len(unique_shapes(sample_grid(grid, every)))
    with Progress(TextColumn(f"measuring {shapes} layer shapes on host, round"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("m", total=n)
        table = build_host_table(model, cfg, grid, every=every, reps=reps, threads=threads,
                                 progress=lambda i, total: bar.update(task, completed=i))
    p = table.save(out)
    c = table.counts()
    click.echo(f"{p}: {len(table)} keys ({c['measured']} measured, {c['interpolated']} interpolated) on "
               f"{table.meta.source_device}")


def table_campaign(model: str, cfg: Any, serial: str, governors: list[str], every: int, suites: int, *,
                   reps: int, steps: int, warmup: int, energy: str, trainable: str = "head") -> dict[str, Any]:
    """The campaign (as a dict for `parse_campaign`) measuring the layer suites of `cfg` on one device."""
    base = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "batch")}
    from workloads.measure import named

    return named(f"tables-{model}", {
        "description": f"per-layer table of {model} ({cfg.key()}), every {every}, {suites} suite(s)",
        "warmup": warmup, "steps": steps, "repetitions": reps, "energy": energy,
        "devices": {"serials": [serial]}, "governors": governors,
        "workload": [{"model": "layers", "batch": [cfg.batch],
                      "config": {"family": model, "every": every, "suite": i, "suites": suites,
                                 "trainable": trainable, **base}} for i in range(suites)],
    })


def _build_on_device(model, cfg, grid, serial, governors, every, reps, steps, warmup, per_suite, rounds, energy,
                     threads, trainable, results_root: Path, resume, out: Path, artifact_cache=None) -> None:
    from dataclasses import replace

    from profiler.campaign_config import parse_campaign
    from workloads.layer_suite import suite_count
    from workloads.layers import unique_shapes
    from workloads.measure import run_rounds, safe_name, workload_of
    from workloads.tables import Table, sample_grid, tables_from_results

    if trainable != "head":
        raise ConfigError("device tables measure the transfer-learning step (--trainable head); "
                          "use --host for trainable=all", key="trainable")
    govs = [g.strip() for g in governors.split(",") if g.strip()]
    shapes = len(unique_shapes(sample_grid(grid, every)))
    suites = suite_count(shapes, per_suite)
    spec = table_campaign(model, cfg, serial, govs, every, suites, reps=reps, steps=steps, warmup=warmup,
                          energy=energy)
    parse_campaign(spec, source="autlearn tables build")          # bad settings fail before anything runs
    click.echo(f"{spec['name']}: {shapes} layer shapes in {suites} suite(s) x {len(govs)} governor(s) x {rounds} "
               f"round(s) on {serial}", err=True)
    ctl = workload_of(cfg)
    made = {}
    failed = 0
    for gov in govs:            # per governor: its own control reference (a governor may change speed)
        one = {**spec, "name": f"{spec['name']}-{gov}", "governors": [gov]}
        got = run_rounds(one, rounds, results_root=results_root, resume=resume, threads=threads,
                         artifact_cache=artifact_cache, control=ctl)
        failed += got.failed
        notes = (f"measured {shapes} layer shapes ({len(sample_grid(grid, every))} of {len(grid)} grid keys, every "
                 f"{every}) in {suites} suite(s), {reps} runner launch(es) x {steps} steps per round, {threads} "
                 f"thread(s); {got.summary()}; campaigns {', '.join(str(d) for d in got.dirs)}")
        for k, t in tables_from_results(got.raw, grid, model=model, config=cfg, notes=notes).items():
            made[k] = Table(t.df, replace(t.meta, control_ms=float(got.reference_ms or 0.0),
                                          control_config=json.dumps(ctl, sort_keys=True)))
    out.mkdir(parents=True, exist_ok=True)
    for (dev, gov), t in made.items():
        p = t.save(out / f"{safe_name(f'{model}-{dev}-{gov}', 200)}.parquet")
        c = t.counts()
        click.echo(f"{p}: {len(t)} keys ({c['measured']} measured, {c['interpolated']} interpolated) on "
                   f"{t.meta.source_device} [{t.meta.labels or 'measured'}], governor {gov} -> "
                   f"{t.meta.governor_applied}{', energy' if t.has_energy else ''}")
    if failed:
        click.echo(f"warning: {failed} suite cell(s) failed; their keys were interpolated where possible "
                   f"(rerun with --resume to retry)", err=True)


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


@tables.command("smooth")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Smoothed table (.parquet or .csv); the measured table is left as it is.")
@click.option("--allow-version-mismatch", is_flag=True)
def smooth_cmd(table_path, out, allow_version_mismatch):
    """A copy of TABLE whose values are a robust monotone fit per layer family (source 'fitted').

    A table measured once per key is noisy, and a greedy search exploits the noise (it prefers the layers whose
    savings are overstated). The fit (a + b c_in + c c_out + d FLOPs, coefficients >= 0, soft-L1) never gets
    faster with more channels; the measured values stay in the column measured_ms."""
    from workloads.tables import load_table, smooth

    if Path(out).resolve() == Path(table_path).resolve():
        raise ConfigError("--out must differ from TABLE (the measured table is kept)", key="out")
    t, info = smooth(load_table(table_path, allow_version_mismatch=allow_version_mismatch))
    p = t.save(out)
    click.echo(f"{p}: {len(t)} keys fitted from {info['measured_points']} measured; |residual| median "
               f"{info['median_abs_residual']:.1%}, {info['share_within_20pct']:.0%} within 20 %, max "
               f"{info['max_abs_residual']:.0%}")
    for f in info["worst_families"][:3]:
        click.echo(f"  noisiest family {f['family']}: {f['measured']} measured, median |residual| "
                   f"{f['median_abs_residual']:.1%}", err=True)


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


@tables.command("validate")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--device", "serial", default=None, help="Device to measure on (default: the table's).")
@click.option("--models", "n_models", default=12, show_default=True, help="Whole models to measure (>= 10 advised).")
@click.option("--seed", default=0, show_default=True)
@click.option("--reps", default=2, show_default=True, help="Runner launches per model per round.")
@click.option("--rounds", default=3, show_default=True, help="Campaign rounds, pooled (robust to slow seconds).")
@click.option("--steps", default=10, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--energy", default="none", show_default=True,
              help="Also measure energy (auto | fuelgauge | monsoon:SERIAL); off by default: a polling power source "
                   "competes with the runner for CPU.")
@click.option("--threads", default=1, show_default=True, help="Runner threads (use the table's).")
@click.option("--results", "results_root", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True)
@click.option("--artifacts", "artifact_cache", default=None, type=click.Path(file_okay=False),
              help="Artifact cache (default $AUTLEARN_HOME/artifacts).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="CSV of per-model errors (default: prediction_error.csv in the campaign's results).")
@click.option("--calibrate", "calibrated", default=None, type=click.Path(dir_okay=False),
              help="Also write a copy of the table whose whole-model latency is fitted to these measurements.")
@click.option("--calibration", "method", type=click.Choice(["affine", "ratio"]), default="affine",
              show_default=True, help="affine: scale x sum of layers + offset (a fixed cost per layer call is "
                                      "counted once per layer in the sum); ratio: scale only.")
@click.option("--allow-version-mismatch", is_flag=True)
def validate(table_path, serial, n_models, seed, reps, rounds, steps, warmup, energy, threads, results_root, resume,
             artifact_cache, out, calibrated, method, allow_version_mismatch):
    """Prediction error of the resource model: measure whole models on the device, compare with the table's sum."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table as RichTable

    from workloads.measure import measure_models
    from workloads.resource import model_resource, prediction_error, validation_configs
    from workloads.tables import load_table

    t = load_table(table_path, allow_version_mismatch=allow_version_mismatch)
    if not t.meta.model:
        raise ConfigError(f"{table_path}: the table does not say which model family it was built for", key="model")
    cfg = config_from(t.meta.model, t.meta)
    serial = serial or t.meta.device_serial
    if not serial or t.meta.source_device == "host (not a phone)":
        raise ConfigError("give --device SERIAL (the table was not measured on a device)", key="device")
    models = validation_configs(cfg, n_models, seed)
    pred = {n: model_resource(c, t) for n, c in models.items()}
    name = f"validate-{t.meta.model}-{t.meta.governor_requested}"
    measured, rdir, got_rounds = measure_models(
        name, models, serial, t.meta.governor_requested, results_root=Path(results_root), resume=resume,
        threads=threads, reps=reps, steps=steps, warmup=warmup, energy=energy, artifact_cache=artifact_cache,
        rounds=rounds, control=cfg, reference_ms=t.meta.control_ms or None)
    click.echo(f"rounds: {got_rounds.summary()}", err=True)
    got = {r.model: r for r in measured.itertuples()}
    rep = prediction_error({n: pred[n].latency_ms for n in got}, {n: got[n].ms for n in got})
    df = rep.per_model.rename(columns={"predicted": "predicted_ms", "measured": "measured_ms"})
    df.insert(0, "kind", "latency")
    frames = [df]
    if t.has_energy and all(pd.notna(got[n].mj) and got[n].mj > 0 for n in got):
        erep = prediction_error({n: pred[n].energy_mj for n in got}, {n: got[n].mj for n in got})
        e = erep.per_model.rename(columns={"predicted": "predicted_mj", "measured": "measured_mj"})
        e.insert(0, "kind", "energy")
        frames.append(e)
    else:
        erep = None
    full = pd.concat(frames, ignore_index=True)
    full["device"] = t.meta.source_device
    full["governor"] = t.meta.governor_requested
    full["labels"] = t.meta.labels
    outp = Path(out) if out else Path(rdir) / "prediction_error.csv"
    full.to_csv(outp, index=False)
    view = RichTable(title=f"resource model vs measurement ({t.meta.source_device}, {t.meta.governor_requested}"
                           f"{', ' + t.meta.labels if t.meta.labels else ''})")
    for col in ("model", "predicted ms", "measured ms", "error"):
        view.add_column(col)
    for r in rep.per_model.itertuples():
        view.add_row(r.model, f"{r.predicted:.4g}", f"{r.measured:.4g}", f"{r.error:+.1%}")
    Console().print(view)
    click.echo(f"latency: {rep.summary()}")
    if erep is not None:
        click.echo(f"energy: {erep.summary()}")
    if calibrated:
        import statistics

        from workloads.tables import calibrate

        names = sorted(got)
        used = [c for _, c, ok in got_rounds.controls if ok and c is not None]
        control_ms = statistics.median(used) if used else None      # the conditions of these measurements
        ct, fit = calibrate(t, [pred[n].latency_ms for n in names], [got[n].ms for n in names],
                            {"results": str(rdir), "governor": t.meta.governor_requested, "rounds": rounds},
                            method, control_ms=control_ms)
        click.echo(f"calibrated: latency x {fit['scale']:.3f} {fit['offset_ms']:+.4g} ms; leave-one-out mean |err| "
                   f"{fit['loo_mean_abs_error']:.1%}, max {fit['loo_max_abs_error']:.1%}, "
                   f"{fit['loo_within_10pct']:.0%} within +-10%"
                   + (f"; control reference {control_ms:.4g} ms (median of the rounds used; the table's: "
                      f"{t.meta.control_ms:.4g} ms)" if control_ms else "") + f" -> {ct.save(calibrated)}")
    missing = sorted(set(models) - set(got))
    if missing:
        click.echo(f"not measured (failed cells): {', '.join(missing)}", err=True)
    click.echo(f"-> {outp}")

