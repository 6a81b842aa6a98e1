"""The report model: plain frozen dataclasses that reports.build fills and reports.render draws (its own module
so the two do not import each other)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

SIGNIFICANCE_TEST = "Mann-Whitney U, two-sided"  # autlearn.profiler.stats.compare, on the timed steps


@dataclass(frozen=True)
class ReportOptions:
    baseline: str | None = None  # variant; None: DEFAULT_BASELINE when the campaign has it
    baseline_governor: str | None = None  # None: the campaign's first governor intent present in the results
    alpha: float = 0.05
    min_ratio: float = 1.05


@dataclass(frozen=True)
class CampaignData:
    """What one results directory holds (see autlearn.engine.store)."""

    root: Path
    name: str
    manifest: Mapping[str, Any]
    raw: pd.DataFrame  # load_results: one row per step (stale cells left out)
    summaries: pd.DataFrame  # load_summaries: one row per finished cell
    status: pd.DataFrame  # load_status: one row per recorded outcome
    traces: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # cell_id -> t, current, voltage
    problems: tuple[str, ...] = ()  # unreadable side files (traces), said in the report


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    model: str
    virtual: bool | None
    soc: str
    android: str
    root: str
    governors: tuple[tuple[str, str, str], ...]  # (requested, applied, reason)
    energy_sources: tuple[str, ...]
    labels: tuple[str, ...]
    cells_ok: int
    cells_failed: int
    cells_skipped: int


@dataclass(frozen=True)
class CellRow:
    cell_id: str
    device_serial: str
    device_model: str
    workload: str
    case: str  # workload + config / batch / affinity when the campaign varies them
    variant: str
    batch: int
    governor: str  # requested
    governor_applied: str
    governor_reason: str
    affinity: str
    labels: tuple[str, ...]
    n: int
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    cv: float
    warnings: tuple[str, ...]
    energy_source: str
    energy_n: int
    energy_median_j: float
    energy_ci_low_j: float
    energy_ci_high_j: float
    mean_power_w: float
    temp_start_c: float
    temp_end_c: float
    throttled: bool | None
    started_at: float
    finished_at: float
    harness_s: float = float("nan")  # the harness's own time in the cell beyond its steps (autlearn.engine.campaign)
    wait_s: float = float("nan")  # waited for the virtual lab's host CPUs (autlearn.profiler.hostcpu), not harness
    energy_reason: str = ""  # why it has no energy (autlearn.engine.store.energy_reason), "" when it has some
    flagged: bool = False  # the results flag the cell (a `flagged` column, or `throttled`): a marked row
    flag_reason: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # (column, shown value): the results' freq_* columns, when present


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline within one group; `speedup` = median(baseline) / median(candidate)."""

    key: str  # readable group (device / case / governor ...)
    device_serial: str
    case: str
    governor: str
    baseline: str
    candidate: str
    baseline_cell: str
    candidate_cell: str
    baseline_median_ms: float
    candidate_median_ms: float
    speedup: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str  # faster | slower | same
    claim: bool  # passed both the test and the minimum ratio
    significant: bool  # p_value < alpha (SIGNIFICANCE_TEST), whatever the ratio
    reason: str
    labels: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnergyRow:
    device_serial: str
    case: str
    variant: str
    governor: str
    governor_applied: str
    energy_ratio: float  # median energy per step / the baseline governor's
    energy_ci_low: float
    energy_ci_high: float
    power_ratio: float
    labels: tuple[str, ...]
    p_value: float = float("nan")  # energy per step vs the baseline governor's (SIGNIFICANCE_TEST)
    significant: bool = False


@dataclass(frozen=True)
class Outcome:
    """A cell that did not produce results: failed, skipped, not run (planned), stale, or ok without data."""

    cell_id: str
    status: str
    reason: str
    label: str
    spec_key: str


@dataclass(frozen=True)
class NoteGroup:
    """One note for many alike items (untuned artifacts, skipped or flagged cells): a sentence, and the items as a
    table the page folds away (<details>)."""

    key: str  # tuning | skipped | flagged
    text: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FigureSlot:
    key: str
    section: str
    title: str
    figure: Any = None  # plotly Figure, or None with a `note` saying why there is none
    note: str = ""


@dataclass(frozen=True)
class Report:
    campaign: str
    description: str
    source: str
    generated_at: float
    options: ReportOptions
    baseline: str
    baseline_governor: str
    counts: tuple[tuple[str, int], ...]  # planned, ok, failed, skipped, not run, stale
    state: str  # one sentence: complete / partial / nothing
    complete: bool  # every planned cell finished or was skipped for a stated reason, none failed
    labels: tuple[tuple[str, int], ...]  # label -> cells carrying it
    devices: tuple[DeviceInfo, ...]
    cells: tuple[CellRow, ...]
    comparisons: tuple[Comparison, ...]
    energy: tuple[EnergyRow, ...]
    outcomes: tuple[Outcome, ...]
    figures: tuple[FigureSlot, ...]
    notes: tuple[str, ...]
    note_groups: tuple[NoteGroup, ...] = ()  # shown under the state line, each folded
    other: str = ""  # --compare: the before campaign
    campaign_diff: tuple[Comparison, ...] = ()
    unmatched: tuple[tuple[str, str], ...] = ()  # (side, cell label) without a partner

    @property
    def drawn_figures(self) -> int:
        return sum(1 for f in self.figures if f.figure is not None)
