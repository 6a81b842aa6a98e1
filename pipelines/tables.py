"""Per-layer tables measured on a device through the campaign engine, and their validation on whole models.

The pipelines return data; `autlearn tables build|validate` (cli/tables.py) print it. `plan_device_tables` ->
`build_device_tables` (one control-gated run per governor, a table per device x governor);
`validate_table` -> `prediction_frame` (CSV rows) and `calibrate_validated`."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import pandas as pd

from autlearn.engine.campaign_config import make_workload
from autlearn.engine.settings import MeasureSettings
from autlearn.pipelines.generated import GeneratedCampaign, generated, safe_name, workload_dict, workload_of
from autlearn.pipelines.measure import measure_models, run_rounds
from autlearn.profiler.errors import ConfigError
from autlearn.workloads.layer_suite import suite_count
from autlearn.workloads.layers import unique_shapes
from autlearn.workloads.models import make_config
from autlearn.workloads.registry import LAYER_SUITE
from autlearn.workloads.resource import model_resource, prediction_error, validation_configs
from autlearn.workloads.tables import Table, calibrate, sample_grid, tables_from_results

HOST_DEVICE = "host (not a phone)"


def config_from(model: str, table_meta: Any = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Model config: the table's config (when it was made for this model) updated by overrides."""

    base: dict[str, Any] = {}
    if table_meta is not None and table_meta.model:
        if table_meta.model != model:
            raise ConfigError(f"table was built for {table_meta.model!r}, not {model!r}", key="model")
        base = {k: v for k, v in table_meta.config_dict().items() if k != "model"}
    base.update(overrides or {})
    return make_config(model, **base)


def table_campaign(
    model: str,
    cfg: Any,
    device: str,
    governors: tuple[str, ...],
    every: int,
    suites: int,
    settings: MeasureSettings,
    trainable: str = "head",
) -> GeneratedCampaign:
    """The campaign measuring the layer suites of `cfg` on `device` (its serial)."""

    base = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "batch")}
    suite = {"family": model, "every": every, "suites": suites, "trainable": trainable, **base}
    return generated(
        f"tables-{model}",
        device,
        governors,
        (make_workload(LAYER_SUITE, ("full",), (cfg.batch,), {**suite, "suite": i}) for i in range(suites)),
        settings,
        f"per-layer table of {model} ({cfg.key()}), every {every}, {suites} suite(s)",
    )


@dataclass(frozen=True)
class TablePlan:
    """What `build_device_tables` will measure: `campaign` (on its device, before the per-governor split)."""

    model: str
    cfg: Any
    grid: Any
    every: int
    shapes: int
    suites: int
    campaign: GeneratedCampaign

    @property
    def device(self) -> str:
        return self.campaign.device

    @property
    def governors(self) -> tuple[str, ...]:
        return self.campaign.governors


def plan_device_tables(
    model: str,
    cfg: Any,
    grid: Any,
    serial: str,
    governors: list[str] | tuple[str, ...],
    every: int,
    per_suite: int,
    settings: MeasureSettings,
    trainable: str = "head",
) -> TablePlan:
    """Check the settings and lay out the layer suites; ConfigError before anything runs."""

    if trainable != "head":
        raise ConfigError(
            "device tables measure the transfer-learning step (--trainable head); use --host for trainable=all",
            key="trainable",
        )
    govs = tuple(g.strip() for g in governors if g.strip())
    shapes = len(unique_shapes(sample_grid(grid, every)))
    suites = suite_count(shapes, per_suite)
    campaign = table_campaign(model, cfg, serial, govs, every, suites, settings)
    for gov in govs:  # bad settings fail before anything runs
        campaign.for_governor(gov).with_control(workload_of(cfg)).campaign("-r0")
    return TablePlan(model, cfg, grid, every, shapes, suites, campaign)


@dataclass(frozen=True)
class BuiltTables:
    """`paths`: (device, governor) -> saved table path; `tables`: the same keys -> Table; `failed`: suite cells."""

    paths: Mapping[tuple[str, str], Path]
    tables: Mapping[tuple[str, str], Any]
    failed: int


def build_device_tables(
    plan: TablePlan,
    settings: MeasureSettings,
    out: Path,
    *,
    on_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuiltTables:
    """Measure the plan once per governor (its own control reference: a governor may change speed), in
    `settings.rounds` control-gated rounds, and save a table per device x governor under `out`."""

    ctl = workload_of(plan.cfg)
    made = {}
    failed = 0
    for gov in plan.governors:
        got = run_rounds(plan.campaign.for_governor(gov), settings, control=ctl, on_progress=on_progress, log=log)
        failed += got.failed
        notes = (
            f"measured {plan.shapes} layer shapes ({len(sample_grid(plan.grid, plan.every))} of "
            f"{len(plan.grid)} grid keys, every {plan.every}) in {plan.suites} suite(s), "
            f"{settings.repetitions} runner launch(es) x {settings.steps} steps per round, {settings.threads} "
            f"thread(s); {got.summary()}; campaigns {', '.join(str(d) for d in got.dirs)}"
        )
        for k, t in tables_from_results(got.raw, plan.grid, model=plan.model, config=plan.cfg, notes=notes).items():
            made[k] = Table(
                t.df,
                replace(
                    t.meta,
                    control_ms=float(got.reference_ms or 0.0),
                    control_config=json.dumps(workload_dict(ctl), sort_keys=True),
                ),
            )
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        (dev, gov): t.save(out / f"{safe_name(f'{plan.model}-{dev}-{gov}', 200)}.parquet")
        for (dev, gov), t in made.items()
    }
    return BuiltTables(paths, made, failed)


@dataclass(frozen=True)
class Validation:
    """Whole models measured against a table's prediction. `predicted`: name -> model_resource; `measured`: name ->
    row of measure_models' frame (failed models absent); `latency`/`energy`: resource.PredictionReport (energy None
    unless the table and every measurement have it)."""

    table: Any
    serial: str
    models: Mapping[str, Any]
    predicted: Mapping[str, Any]
    measured: Mapping[str, Any]
    latency: Any
    energy: Any
    results_dir: Path
    rounds: Any

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.models) - set(self.measured))


def validate_table(
    table: Any,
    serial: str | None,
    n_models: int,
    seed: int,
    settings: MeasureSettings,
    *,
    on_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Validation:
    """Measure `n_models` whole models of the table's family on `serial` (default: the table's device) under the
    table's governor and compare with the table's sums."""

    if not table.meta.model:
        raise ConfigError("the table does not say which model family it was built for", key="model")
    cfg = config_from(table.meta.model, table.meta)
    serial = serial or table.meta.device_serial
    if not serial or table.meta.source_device == HOST_DEVICE:
        raise ConfigError("give --device SERIAL (the table was not measured on a device)", key="device")
    models = validation_configs(cfg, n_models, seed)
    pred = {n: model_resource(c, table) for n, c in models.items()}
    name = f"validate-{table.meta.model}-{table.meta.governor_requested}"
    measured, rdir, rounds = measure_models(
        name,
        models,
        serial,
        table.meta.governor_requested,
        settings,
        control=cfg,
        reference_ms=table.meta.control_ms or None,
        on_progress=on_progress,
        log=log,
    )
    got = {r.model: r for r in measured.itertuples()}
    # with a table, every prediction has a latency (and an energy when the table has energy)
    rep = prediction_error({n: cast(float, pred[n].latency_ms) for n in got}, {n: got[n].ms for n in got})
    erep = None
    if table.has_energy and all(pd.notna(got[n].mj) and got[n].mj > 0 for n in got):
        erep = prediction_error({n: cast(float, pred[n].energy_mj) for n in got}, {n: got[n].mj for n in got})
    return Validation(table, serial, models, pred, got, rep, erep, Path(rdir), rounds)


def prediction_frame(v: Validation) -> Any:  # a pandas DataFrame
    """Per-model errors (latency rows, then energy rows when measured) with device, governor and labels: the CSV of
    `tables validate`."""

    df = v.latency.per_model.rename(columns={"predicted": "predicted_ms", "measured": "measured_ms"})
    df.insert(0, "kind", "latency")
    frames = [df]
    if v.energy is not None:
        e = v.energy.per_model.rename(columns={"predicted": "predicted_mj", "measured": "measured_mj"})
        e.insert(0, "kind", "energy")
        frames.append(e)
    full = pd.concat(frames, ignore_index=True)
    full["device"] = v.table.meta.source_device
    full["governor"] = v.table.meta.governor_requested
    full["labels"] = v.table.meta.labels
    return full


def calibrate_validated(v: Validation, method: str, rounds: int) -> tuple[Any, dict[str, Any], float | None]:
    """(calibrated table, fit, control ms of the rounds used): the table's whole-model latency fitted to `v`'s
    measurements, under the conditions of those rounds (median control of the rounds used)."""

    names = sorted(v.measured)
    used = [c for _, c, ok in v.rounds.controls if ok and c is not None]
    control_ms = statistics.median(used) if used else None
    ct, fit = calibrate(
        v.table,
        [v.predicted[n].latency_ms for n in names],
        [v.measured[n].ms for n in names],
        {"results": str(v.results_dir), "governor": v.table.meta.governor_requested, "rounds": rounds},
        method,
        control_ms=control_ms,
    )
    return ct, fit, control_ms
