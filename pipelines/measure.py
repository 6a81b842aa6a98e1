"""Measure whole models on a device through the campaign engine (resource-model validation, pruned models).

`models_campaign` lays out the campaign (a typed `generated.GeneratedCampaign`); `measure_models` runs it and
returns, per model name, the median step latency (ms) and energy (mJ) parsed from the results
(`resource.measured_from_results`). A model is a config (compiled as variant `full`) or a `compressed.json` path
(variant `compressed`, its weights).

With a control model and its reference latency, each model also gets a control-normalized latency: the median
over rounds of (model / control in the same round) x reference, i.e. the model's latency under the conditions the
reference was measured in. A slow spell of the host or a warm phone slows a whole round, control included, so the
ratio cancels it where the raw median does not (`per_round`, `paired_ratio`, `normalized_latency`: pure functions).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autlearn.engine.campaign import run
from autlearn.engine.campaign_config import Workload
from autlearn.engine.settings import MeasureSettings
from autlearn.engine.store import load_results
from autlearn.pipelines.artifact_cache import artifact_provider
from autlearn.pipelines.generated import GeneratedCampaign, generated, workload_of
from autlearn.profiler.errors import ConfigError, UserError
from autlearn.workloads.resource import canonical_config, measured_from_results


def models_campaign(
    name: str, workloads_by_model: Mapping[str, Workload], device: str, governor: str, settings: MeasureSettings
) -> GeneratedCampaign:
    """The campaign measuring `workloads_by_model` (label -> `workload_of(model)`) on `device` (its serial) under
    `governor`; models with the same workload are measured once."""
    return generated(
        name, device, (governor,), workloads_by_model.values(), settings, f"{len(workloads_by_model)} whole models"
    )


CONTROL_TOLERANCE = 0.20


@dataclass(frozen=True)
class Rounds:
    """Pooled results of the accepted rounds. `controls`: (results dir, control median ms or None, accepted)."""

    raw: pd.DataFrame
    dirs: tuple[Path, ...]
    failed: int
    controls: tuple[tuple[str, float | None, bool], ...] = ()
    reference_ms: float | None = None
    disturbed: bool = False

    def summary(self) -> str:
        if not self.controls:
            return f"{len(self.dirs)} round(s)"
        used = [c for c in self.controls if c[2]]
        ref = f"{self.reference_ms:.4g} ms" if self.reference_ms else "?"
        return (
            f"{len(used)} of {len(self.controls)} round(s) used (control within +{CONTROL_TOLERANCE:.0%} of "
            f"{ref}){'; host/phone DISTURBED: used the fastest rounds' if self.disturbed else ''}"
        )


def _control_ms(raw: pd.DataFrame, control: Workload) -> float | None:
    """Median step (ms) of the control workload in one round's results (None when it was not measured)."""

    try:
        m = measured_from_results(raw, control.model)
    except ConfigError:
        return None
    want = cell_key(control)
    row = m[[cell_key_of_row(r) == want for r in m.itertuples()]]
    return float(row["ms"].iloc[0]) if len(row) else None


def run_rounds(
    plan: GeneratedCampaign,
    settings: MeasureSettings,
    *,
    control: Workload | None = None,
    reference_ms: float | None = None,
    max_extra: int | None = None,
    on_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Rounds:
    """Run `plan` as campaigns one after another (`<name>-r<i>`) and pool the results of `settings.rounds` good
    rounds (results root, resume, threads and artifact cache from `settings`; `on_progress`, `log`: see
    autlearn.engine.campaign.run).

    Shared hosts (and phones heating up) have slow spells: here whole runner launches ran ~50 % slower for tens of
    seconds. With a `control` workload (added to every round) a round counts only when the control's median is
    within CONTROL_TOLERANCE of `reference_ms` (e.g. the control measured when the table was built) or, without a
    reference, of the fastest control seen; up to `max_extra` (default `rounds`) more rounds replace slow ones. If
    too few rounds pass, the fastest are used and the result says `disturbed`."""

    rounds = settings.rounds
    provider = artifact_provider(settings.artifacts, log=log)
    plan = plan.with_control(control)
    done: list[tuple[pd.DataFrame | None, Path, float | None]] = []
    failed = 0
    extra = rounds if max_extra is None else max_extra

    def ref() -> float | None:
        seen = [c for _, _, c in done if c is not None]
        return reference_ms or (min(seen) if seen else None)

    def good(c: float | None) -> bool:
        r = ref()
        return c is None or r is None or c <= r * (1 + CONTROL_TOLERANCE)

    while len(done) < max(1, rounds) + extra:
        outcome = run(plan.campaign(f"-r{len(done)}"), settings, provider, on_progress, log)
        failed += outcome.failed
        raw = load_results(outcome.results_dir) if outcome.ok + outcome.resumed else None
        c = _control_ms(raw, control) if (control is not None and raw is not None) else None
        done.append((raw, outcome.results_dir, c))
        if sum(good(c) for r, _, c in done if r is not None) >= max(1, rounds):
            break
    usable = [(r, d, c) for r, d, c in done if r is not None]
    if not usable:
        raise UserError(f"nothing was measured ({failed} cell(s) failed); see `autlearn results show {done[0][1]}`")
    chosen = [x for x in usable if good(x[2])]
    disturbed = len(chosen) < max(1, rounds) and control is not None
    if disturbed:
        chosen = sorted(usable, key=lambda x: (x[2] is None, x[2] or 0.0))[: max(1, rounds)]
    ids = {id(x) for x in chosen}
    return Rounds(
        pd.concat([r for r, _, _ in chosen], ignore_index=True),
        tuple(d for _, d, _ in usable),
        failed,
        tuple((str(x[1]), x[2], id(x) in ids) for x in usable),
        ref(),
        disturbed,
    )


# (workload, variant, canonical config, batch): a measured cell
CellKey = tuple[str, str, str, int]


def cell_key(w: Workload) -> CellKey:
    """(workload, variant, canonical config, batch) of a workload (`workload_of`): what a measured cell is matched
    on (`cell_key_of_row`)."""

    return (w.model, w.variants[0], canonical_config(w.kwargs), w.batch[0])


def cell_key_of_row(r: Any) -> CellKey:
    """`cell_key` of a row of `resource.measured_from_results`."""
    return (r.workload, r.variant, r.config, r.batch)


def cell_labels(workloads_by_label: Mapping[str, Workload]) -> dict[CellKey, list[str]]:
    """`cell_key` of a results row -> the labels whose workload (`workload_of`) it is: how measured cells are
    matched back to the models asked for."""
    want: dict[CellKey, list[str]] = {}
    for label, w in workloads_by_label.items():
        want.setdefault(cell_key(w), []).append(label)
    return want


def per_round(raw: pd.DataFrame, models: Mapping[str, Any]) -> pd.DataFrame:
    """Median step (ms) of each model in each round: indexed by round (the results' `campaign`), a column per label
    of `models` (label -> model as for `workload_of`). Cells are matched on workload, variant, config and batch."""

    want = cell_labels({label: workload_of(model) for label, model in models.items()})
    rows = []
    for campaign, g in raw.groupby("campaign", sort=True):
        try:
            got = measured_from_results(g)
        except ConfigError:  # a round whose cells all failed
            continue
        for r in got.itertuples():
            for label in want.get(cell_key_of_row(r), []):
                rows.append({"round": campaign, "model": label, "ms": r.ms})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index="round", columns="model", values="ms", aggfunc="median")


def paired_ratio(rounds: pd.DataFrame, a: str, b: str) -> dict[str, float] | None:
    """a / b per round (both measured in it) -> median, min, max over rounds; None when no round has both."""
    if a not in rounds or b not in rounds:
        return None
    r = (rounds[a] / rounds[b]).dropna()
    if not len(r):
        return None
    return {"median": float(r.median()), "min": float(r.min()), "max": float(r.max()), "rounds": len(r)}


CONTROL_LABEL = "(control)"


def normalized_latency(
    raw: pd.DataFrame, models: Mapping[str, Any], control: Any, reference_ms: float
) -> dict[str, dict[str, float]]:
    """label -> {"ms": median over rounds of model/control x reference_ms, "rounds": rounds with both, "drift":
    median control / reference_ms over those rounds}; labels never measured beside the control are absent."""
    rounds = per_round(raw, {**models, CONTROL_LABEL: control})
    out = {}
    for label in models:
        r = paired_ratio(rounds, label, CONTROL_LABEL)
        if r is None:
            continue
        both = rounds[[label, CONTROL_LABEL]].dropna()
        out[label] = {
            "ms": r["median"] * reference_ms,
            "rounds": r["rounds"],
            "drift": float(both[CONTROL_LABEL].median()) / reference_ms,
        }
    return out


def measure_models(
    name: str,
    models: Mapping[str, Any],
    serial: str,
    governor: str,
    settings: MeasureSettings,
    *,
    control: Any = None,
    reference_ms: float | None = None,
    on_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[pd.DataFrame, Path, Rounds]:
    """Run the models' campaign in `settings.rounds` rounds (see run_rounds; `control` is a model config; cells of
    `settings.repetitions` launches of `warmup` + `steps` steps, energy `settings.energy`) -> (DataFrame: model, ms,
    mj, n, variant, and with a control and reference: ms_normalized, drift (median control / reference); a
    directory `<results_root>/<name>` whose rounds.json lists the rounds; Rounds). Failed cells are absent from the
    frame (the campaign's status says why)."""

    by_model = {label: workload_of(model) for label, model in models.items()}
    plan = models_campaign(name, by_model, serial, governor, settings)
    got = run_rounds(
        plan,
        settings,
        control=workload_of(control) if control is not None else None,
        reference_ms=reference_ms,
        on_progress=on_progress,
        log=log,
    )
    m = measured_from_results(got.raw)
    want = cell_labels(by_model)
    m["model"] = [want.get(cell_key_of_row(r)) for r in m.itertuples()]
    m = m[m["model"].notna()].explode("model")
    if control is not None and got.reference_ms:
        norm = normalized_latency(got.raw, models, control, got.reference_ms)
        m["ms_normalized"] = [norm[k]["ms"] if k in norm else float("nan") for k in m["model"]]
        m["drift"] = [norm[k]["drift"] if k in norm else float("nan") for k in m["model"]]
    home = settings.results_root / plan.name  # index of the rounds; callers write their outputs here
    home.mkdir(parents=True, exist_ok=True)
    (home / "rounds.json").write_text(
        json.dumps(
            {
                "rounds": [{"results": d, "control_ms": c, "used": u} for d, c, u in got.controls]
                or [str(d) for d in got.dirs],
                "reference_ms": got.reference_ms,
                "disturbed": got.disturbed,
                "models": {k: str(v) if isinstance(v, (str, Path)) else v.to_dict() for k, v in models.items()},
            },
            indent=1,
        )
    )
    return m.reset_index(drop=True), home, got
