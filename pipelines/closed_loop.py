"""The closed pruning loop on a phone: prune, measure each model through campaigns, prune further where a model
measured over its budget (the rule itself, without a device, is autlearn.workloads.pruning.loop)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from autlearn.engine.settings import MeasureSettings
from autlearn.pipelines.measure import measure_models
from autlearn.pipelines.tables import config_from
from autlearn.profiler.errors import ConfigError
from autlearn.workloads.pruning.budget import Budget
from autlearn.workloads.pruning.loop import Attempt, close_loop, verdict_values
from autlearn.workloads.pruning.strategy import Compressor


@dataclass(frozen=True)
class MeasuredLoop:
    """The closed loop's outcome on a device: final attempt per budget, every attempt, and what judged them."""

    final: tuple[Attempt, ...]
    history: tuple[Attempt, ...]
    serial: str
    governor: str
    judged_on: str  # control-normalized | raw
    measured_csv: Path
    loop_csv: Path


VERDICTS = ("normalized", "raw")  # what a latency verdict is on (LoopSettings.verdict_on)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop closes: `device` is the serial of the phone measuring the models (None: no loop, prune only);
    a budget its model measured over is searched again at most `corrections` times, to a target `margin` below
    the budget; a latency verdict is on the control-normalized latency (`verdict_on="normalized"`, when the
    table has a control reference) or on the raw median ("raw")."""

    device: str | None = None
    corrections: int = 2
    margin: float = 0.05
    verdict_on: str = "normalized"

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 0.5:
            raise ConfigError(f"must be in [0, 0.5), got {self.margin}", key="margin")
        if self.corrections < 0:
            raise ConfigError(f"must be >= 0, got {self.corrections}", key="corrections")
        if self.verdict_on not in VERDICTS:
            raise ConfigError(f"must be one of {', '.join(VERDICTS)}, got {self.verdict_on!r}", key="verdict_on")


def measure_closed_loop(
    budgets: Sequence[Budget],
    compressor: Compressor,
    table: Any,
    out: Path,
    settings: MeasureSettings,
    loop: LoopSettings,
    *,
    emit: Callable[[str], None] = lambda m: None,
    on_progress: Callable[[Any], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> MeasuredLoop:
    """Prune (`compressor`), measure each model on `loop.device` (the table's governor) through campaigns
    (`settings`; its energy is replaced: a source only when an energy budget needs one), prune further where a
    model measured over its budget (`close_loop`); writes OUT/measured.csv and OUT/loop.csv."""

    serial = loop.device
    if not serial:
        raise ConfigError("the closed loop needs the device that measures the models", key="device")
    governor = table.meta.governor_requested if table is not None else "schedutil"
    # Timing without a power source polling the phone unless an energy budget needs one (the sampler's own
    # work competes with the runner; on the 2-core lab host it visibly slows steps).
    settings = replace(settings, energy="auto" if any(b.kind == "energy" for b in budgets) else "none")
    control = None
    if table is not None and table.meta.model:
        control = config_from(table.meta.model, table.meta)
    reference = (table.meta.control_ms or None) if table is not None else None
    judged_on = "control-normalized" if loop.verdict_on == "normalized" and control is not None and reference else "raw"
    if loop.verdict_on == "normalized" and judged_on == "raw":
        emit("note: the table has no control reference; latency budgets are judged on the raw median")

    def measure(exports: dict[str, str], k: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        got, rdir, rr = measure_models(
            f"pruned-{out.name}-{k}",
            {label: Path(p) for label, p in exports.items()},
            serial,
            governor,
            settings,
            control=control,
            reference_ms=reference,
            on_progress=on_progress,
            log=log,
        )
        emit(f"rounds: {rr.summary()}")
        values = verdict_values(got, exports, judged_on)
        info = {
            "device": serial,
            "governor": governor,
            "results": str(rdir),
            "rounds": rr.summary(),
            "disturbed": rr.disturbed,
        }
        return values, info

    final, history = close_loop(
        budgets,
        compressor.propose,
        measure,
        corrections=loop.corrections,
        margin=loop.margin,
        smallest=compressor.smallest,
        emit=emit,
    )
    if not any(a.export for a in final):
        raise ConfigError("no model met any budget: nothing to measure", key="budget")
    measured_csv, loop_csv = out / "measured.csv", out / "loop.csv"
    pd.DataFrame([a.row() for a in final]).to_csv(measured_csv, index=False)
    pd.DataFrame([a.row() for a in history]).to_csv(loop_csv, index=False)
    return MeasuredLoop(tuple(final), tuple(history), serial, governor, judged_on, measured_csv, loop_csv)
