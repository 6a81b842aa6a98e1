"""Results directory -> report model -> one self-contained HTML file (+ `report.json`).

    data = load_campaign_data("results/paper")            # IO: engine.store readers; ReportError if not results
    report = build_report(data, ReportOptions(), other)   # pure: tables, comparisons, figures (plotly)
    page = render_html(report)                            # pure: str; plotly.js inlined once, no URLs to load
    doc = report_json(report)                             # pure: JSON-able summary
    write_report("results/paper", "out.html")             # all of the above; writes out.html + report.json

Numbers are never relabelled: a cell's labels (virtual, modeled, measured, ...) follow it into every table, and
the page opens with a sentence when any of it is virtual or modeled. What is missing (planned cells not run,
failed and skipped cells with their reasons, stale cells, figures without data) is said, not dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from autlearn.engine.campaign_config import DeviceRef, parse_campaign, serial_of_label
from autlearn.engine.store import (
    MANIFEST,
    SchemaError,
    atomic_write,
    energy_reason,
    load_results,
    load_status,
    load_summaries,
    one_line,
)
from autlearn.profiler import stats
from autlearn.profiler.errors import UserError
from autlearn.profiler.stats import ratio_ci
from autlearn.reports import figures as F
from autlearn.reports.model import (
    SIGNIFICANCE_TEST,
    CampaignData,
    CellRow,
    Comparison,
    DeviceInfo,
    EnergyRow,
    FigureSlot,
    NoteGroup,
    Outcome,
    Report,
    ReportOptions,
)
from autlearn.reports.render import render

DEFAULT_BASELINE = "unoptimized"  # the compiler claim: optimized variants vs the unoptimized build
PAPER_PAIRS = (("full", "compressed"), ("full", "cached"))  # Fig. 8: compression and caching vs full
SIZE_BUDGET = (
    10 * 1024 * 1024
)  # mail attachments: 10 MB passes common providers (Gmail 25, Outlook 20); plotly.js is ~4.8 MB
SERIES_POINTS_TOTAL = 20_000  # per-step samples drawn over all cells (subsampled beyond)
SERIES_POINTS_CELL = 400
TRACE_POINTS = 1_500  # power samples drawn per trace (bucket means)
TRACE_CELLS = 12  # power traces drawn at most
REPORT_SCHEMA = "autlearn.report/1"


class ReportError(UserError):
    """The directory is not an autlearn campaign results directory, or a report option does not fit it."""


# ---------------------------------------------------------------------------------------------------------- loading
def load_campaign_data(path: str | Path) -> CampaignData:
    """Read one campaign's results directory (read-only). ReportError when it is not one."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"no such directory: {p}")
    if not p.is_dir():
        raise ReportError(f"not a directory: {p}")
    if not (p / MANIFEST).is_file():
        children = sorted(c.parent.name for c in p.glob(f"*/{MANIFEST}"))
        hint = f"; it holds campaigns {', '.join(children[:8])}: pass one, e.g. {p / children[0]}" if children else ""
        raise ReportError(f"not an autlearn results directory (no {MANIFEST}): {p}{hint}")
    try:
        status = load_status(p)  # validates the manifest and schema version first
        manifest = json.loads((p / MANIFEST).read_text())
        raw = load_results(p)
        summaries = load_summaries(p)
    except SchemaError:
        raise
    except (OSError, ValueError, KeyError) as exc:  # pyarrow errors are ValueErrors/OSErrors
        raise ReportError(f"unreadable results in {p}: {exc}") from None
    traces, problems = {}, []
    tdir = p / "traces"
    if tdir.is_dir() and not summaries.empty:
        for cid in summaries["cell_id"]:
            f = tdir / f"{cid}.parquet"
            if not f.is_file():
                continue
            try:
                t = pd.read_parquet(f, columns=["t", "current", "voltage"])
            except (OSError, ValueError, KeyError) as exc:
                problems.append(f"power trace {f.name} unreadable: {exc}")
                continue
            traces[cid] = t
    return CampaignData(
        root=p,
        name=str(manifest.get("name") or p.name),
        manifest=manifest,
        raw=raw,
        summaries=summaries,
        status=status,
        traces=traces,
        problems=tuple(problems),
    )


# ---------------------------------------------------------------------------------------------------------- helpers
def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _s(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else str(x)


def _json_map(x: Any) -> dict[str, Any]:
    if isinstance(x, Mapping):
        return dict(x)
    try:
        v = json.loads(x) if isinstance(x, str) and x else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _labels(x: Any) -> tuple[str, ...]:
    return tuple(sorted(lb for lb in _s(x).split(",") if lb))


def _bool(x: Any) -> bool | None:
    return None if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)) else bool(x)


def _device_title(d: DeviceInfo) -> str:
    tag = " [virtual]" if d.virtual else ""
    return f"{d.model or 'unknown model'} ({d.serial}){tag}"


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _shown(x: Any) -> str:
    """A results value as table text: numbers to 4 digits, JSON maps as `key: value, ...` (nested ones in braces)."""
    if isinstance(x, str) and x[:1] in ("{", "["):
        try:
            x = json.loads(x)
        except ValueError:
            return str(x)
    if isinstance(x, Mapping):
        return ", ".join(f"{k}: {'{' + _shown(v) + '}' if isinstance(v, Mapping) else _shown(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple, np.ndarray)):
        return ", ".join(_shown(v) for v in x)
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, float, np.integer, np.floating)):
        return "" if not math.isfinite(float(x)) else _fmt(float(x))
    return _s(x)


def _mark(significant: bool, p: float) -> str:
    """The significance mark of a comparison, in tables and on bars."""
    return "*" if significant else "n.s." if math.isfinite(p) else ""


# ---------------------------------------------------------------------------------------------------------- building
def _cases(summ: pd.DataFrame) -> pd.Series:
    """Readable workload label per row: the model, plus config / batch / affinity where the campaign varies them."""
    multi_cfg = summ.groupby("workload")["config"].nunique() > 1
    multi_batch = summ.groupby("workload")["batch"].nunique() > 1
    multi_aff = summ["affinity"].nunique() > 1

    def one(r: pd.Series) -> str:
        s = str(r["workload"])
        cfg = _json_map(r.get("config"))
        if multi_cfg.get(r["workload"], False) and cfg:
            s += " " + ",".join(f"{k}={v}" for k, v in sorted(cfg.items()))
        if multi_batch.get(r["workload"], False):
            s += f" b{r['batch']}"
        if multi_aff:
            s += f" @{r['affinity']}"
        return s

    return summ.apply(one, axis=1) if len(summ) else pd.Series([], dtype=str)


def _cell_rows(data: CampaignData) -> tuple[list[CellRow], dict[str, np.ndarray], dict[str, np.ndarray]]:
    summ = data.summaries
    if summ.empty:
        return [], {}, {}
    raw = data.raw
    timed = raw[~raw["warmup"].astype(bool)] if not raw.empty else raw
    times = {cid: g["step_ns"].to_numpy(float) for cid, g in timed.groupby("cell_id")} if len(timed) else {}
    energy: dict[str, np.ndarray] = {}
    power: dict[str, float] = {}
    if len(timed) and "energy_j" in timed:
        for cid, g in timed[timed["energy_j"].notna()].groupby("cell_id"):
            energy[cid] = g["energy_j"].to_numpy(float)
            secs = g["step_ns"].to_numpy(float).sum() / 1e9
            power[cid] = float(energy[cid].sum() / secs) if secs > 0 else float("nan")
    cases = _cases(summ)
    # per-step flags (any flagged step flags its cell), when the results carry them
    step_flags: dict[str, str] = {}
    if len(raw) and "flagged" in raw:
        for cid, g in raw[raw["flagged"].map(_bool).eq(True)].groupby("cell_id"):
            why = g["flag_reason"].map(_s) if "flag_reason" in g else pd.Series([], dtype=str)
            step_flags[str(cid)] = "; ".join(dict.fromkeys(w for w in why if w)) or "flagged"
    extra_cols = [c for c in summ.columns if str(c).startswith("freq_")]
    rows = []
    for (_, r), case in zip(summ.iterrows(), cases):
        cid = str(r["cell_id"])
        flags = [_s(r.get("flag_reason")) or "flagged"] if _bool(r.get("flagged")) else []
        flags += [step_flags[cid]] if cid in step_flags else []
        flags += ["throttled"] if _bool(r.get("throttled")) and not any("throttl" in f for f in flags) else []
        e = energy.get(cid)
        # summarize takes any 1-D run of numbers (autlearn.profiler.stats._Samples); its annotation says Sequence
        es = stats.summarize(cast(Sequence[float], e)) if e is not None and len(e) else None
        rows.append(
            CellRow(
                cell_id=cid,
                device_serial=_s(r.get("device_serial")),
                device_model=_s(r.get("device_model")),
                workload=_s(r.get("workload")),
                case=case,
                variant=_s(r.get("variant")),
                batch=int(r.get("batch") or 0),
                governor=_s(r.get("governor_requested")),
                governor_applied=_s(r.get("governor_applied")),
                governor_reason=_s(r.get("governor_reason")),
                affinity=_s(r.get("affinity")),
                labels=_labels(r.get("labels")),
                n=int(r.get("n") or 0),
                median_ms=_f(r.get("median_ns")) / 1e6,
                ci_low_ms=_f(r.get("ci_low_ns")) / 1e6,
                ci_high_ms=_f(r.get("ci_high_ns")) / 1e6,
                cv=_f(r.get("cv")),
                warnings=tuple(w for w in _s(r.get("warnings")).split("; ") if w),
                energy_source=_s(r.get("energy_source")) or "none",
                energy_n=es.n if es else 0,
                energy_median_j=es.median if es else float("nan"),
                energy_ci_low_j=es.ci_low if es else float("nan"),
                energy_ci_high_j=es.ci_high if es else float("nan"),
                mean_power_w=power.get(cid, float("nan")),
                temp_start_c=_f(r.get("temp_start_c")),
                temp_end_c=_f(r.get("temp_end_c")),
                throttled=_bool(r.get("throttled")),
                started_at=_f(r.get("started_at")),
                finished_at=_f(r.get("finished_at")),
                harness_s=_f(r.get("harness_s")),
                wait_s=_f(r.get("wait_s")),
                energy_reason="" if es else energy_reason(_s(r.get("energy_note"))),
                flagged=bool(flags),
                flag_reason="; ".join(dict.fromkeys(flags)),
                extra=tuple((str(k), _shown(r.get(k))) for k in extra_cols),
            )
        )
    rows.sort(key=lambda c: (c.device_serial, c.case, c.variant, c.governor, c.started_at))
    return rows, times, energy


def _devices(data: CampaignData, cells: Sequence[CellRow]) -> list[DeviceInfo]:
    facts = (
        cast(Mapping[str, Any], data.manifest.get("devices"))
        if isinstance(data.manifest.get("devices"), Mapping)
        else {}
    )
    summ = data.summaries
    st = data.status[~data.status["stale"].astype(bool)] if len(data.status) else data.status
    serials = list(
        dict.fromkeys(
            [c.device_serial for c in cells] + [s for s in (serial_of_label(x) for x in st.get("label", [])) if s]
        )
    )
    out = []
    for serial in serials:
        mine = [c for c in cells if c.device_serial == serial]
        rows = summ[summ["device_serial"] == serial] if len(summ) else summ
        f = cast(Mapping[str, Any], facts.get(serial)) if isinstance(facts.get(serial), Mapping) else {}
        first = rows.iloc[-1] if len(rows) else {}
        tools = _json_map(first.get("tool_versions")) if len(rows) else {}

        def fact(key: str, column: str, f: Mapping[str, Any] = f, first: Any = first, rows: pd.DataFrame = rows) -> str:
            return _s(f.get(key)) or (_s(first.get(column)) if len(rows) else "") or "not recorded"

        android = _s(f.get("android")) or _s(tools.get("android")) or fact("android", "device_android")
        labels = sorted({lb for c in mine for lb in c.labels})
        virtual = _bool(first.get("device_virtual")) if len(rows) else _bool(f.get("virtual"))
        gov = tuple(dict.fromkeys((c.governor, c.governor_applied or "not applied", c.governor_reason) for c in mine))
        sts = st[st["label"].map(serial_of_label) == serial] if len(st) else st
        out.append(
            DeviceInfo(
                serial=serial,
                model=mine[0].device_model if mine else _s(f.get("model")) or "unknown",
                virtual=virtual,
                soc=fact("soc", "device_soc"),
                android=android,
                root=fact("root", "device_root"),
                governors=gov,
                energy_sources=tuple(sorted({c.energy_source for c in mine})),
                labels=tuple(labels),
                cells_ok=len(mine),
                cells_failed=int((sts["status"] == "failed").sum()) if len(sts) else 0,
                cells_skipped=int((sts["status"] == "skipped").sum()) if len(sts) else 0,
            )
        )
    return out


def _pairs(baseline: str, variants: Iterable[str]) -> list[tuple[str, str]]:
    vs = list(variants)
    pairs = [(baseline, v) for v in vs if v != baseline and baseline in vs]
    pairs += [p for p in PAPER_PAIRS if p[0] in vs and p[1] in vs and p not in pairs]
    return pairs


def _compare(
    key: str,
    a: CellRow,
    b: CellRow,
    xa: np.ndarray | None,
    xb: np.ndarray | None,
    opts: ReportOptions,
    notes: tuple[str, ...] = (),
) -> Comparison | None:
    if xa is None or xb is None or not len(xa) or not len(xb):
        return None
    # compare takes arrays too (autlearn.profiler.stats._Samples); its annotation says Sequence
    c = stats.compare(cast(Sequence[float], xa), cast(Sequence[float], xb), alpha=opts.alpha, min_ratio=opts.min_ratio)
    lo, hi = ratio_ci(xa, xb)
    return Comparison(
        key=key,
        device_serial=b.device_serial,
        case=b.case,
        governor=b.governor,
        baseline=a.variant,
        candidate=b.variant,
        baseline_cell=a.cell_id,
        candidate_cell=b.cell_id,
        baseline_median_ms=c.baseline_median / 1e6,
        candidate_median_ms=c.candidate_median / 1e6,
        speedup=c.ratio,
        ci_low=lo,
        ci_high=hi,
        p_value=c.p_value,
        verdict=c.verdict,
        claim=c.verdict != "same",
        significant=c.significant,
        reason=c.reason,
        labels=tuple(sorted(set(a.labels) | set(b.labels))),
        notes=notes,
    )


def _variant_comparisons(
    cells: Sequence[CellRow],
    times: Mapping[str, np.ndarray],
    baseline: str,
    variants: Sequence[str],
    opts: ReportOptions,
) -> list[Comparison]:
    groups: dict[tuple[str, str, str], dict[str, CellRow]] = {}
    for c in cells:
        groups.setdefault((c.device_serial, c.case, c.governor), {})[c.variant] = c  # latest wins
    out = []
    for (serial, case, gov), by_variant in groups.items():
        for base, cand in _pairs(baseline, variants):
            if base in by_variant and cand in by_variant:
                a, b = by_variant[base], by_variant[cand]
                cmp = _compare(f"{serial} / {case} / {gov}", a, b, times.get(a.cell_id), times.get(b.cell_id), opts)
                if cmp:
                    out.append(cmp)
    return out


def _energy_rows(
    cells: Sequence[CellRow], energy: Mapping[str, np.ndarray], baseline_gov: str, opts: ReportOptions
) -> list[EnergyRow]:
    groups: dict[tuple[str, str, str], dict[str, CellRow]] = {}
    for c in cells:
        if c.cell_id in energy:
            groups.setdefault((c.device_serial, c.case, c.variant), {})[c.governor] = c
    out = []
    for (serial, case, variant), by_gov in groups.items():
        base = by_gov.get(baseline_gov)
        for gov, c in by_gov.items():
            p, sig = float("nan"), False
            if base is None:
                er = pr = lo = hi = float("nan")
            else:
                if c is not base:
                    t = stats.compare(
                        cast(Sequence[float], energy[base.cell_id]),
                        cast(Sequence[float], energy[c.cell_id]),
                        alpha=opts.alpha,
                        min_ratio=opts.min_ratio,
                    )
                    p, sig = t.p_value, t.significant
                eb = energy[base.cell_id]
                er = float(np.median(energy[c.cell_id]) / np.median(eb)) if np.median(eb) > 0 else float("nan")
                lo, hi = ratio_ci(energy[c.cell_id], eb) if c is not base else (1.0, 1.0)
                pr = c.mean_power_w / base.mean_power_w if base.mean_power_w > 0 else float("nan")
            out.append(
                EnergyRow(
                    serial,
                    case,
                    variant,
                    gov,
                    c.governor_applied,
                    er,
                    lo,
                    hi,
                    pr,
                    tuple(sorted(set(c.labels) | set(base.labels if base else ()))),
                    p,
                    sig,
                )
            )
    return out


def _plan_labels(data: CampaignData, serials: Iterable[str]) -> dict[str, str]:
    """spec_key -> readable cell label, by expanding the recorded campaign spec over the devices we know of."""
    try:
        camp = parse_campaign(data.manifest.get("spec") or {})
        return {c.spec_key: c.label for c in camp.plan([DeviceRef(s) for s in serials])}
    except Exception:  # an old/foreign spec: fall back to spec keys (the report must still be written)
        return {}


def _outcomes(data: CampaignData, cells: Sequence[CellRow]) -> tuple[list[Outcome], dict[str, int]]:
    plan = {str(k): str(v) for k, v in (data.manifest.get("plan") or {}).items()}
    st = data.status
    seen = set(st["cell_id"]) if len(st) else set()
    with_data = {c.cell_id for c in cells}
    sel = (
        ((data.manifest.get("spec") or {}).get("devices") or {})
        if isinstance(data.manifest.get("spec"), Mapping)
        else {}
    )
    serials = (
        {c.device_serial for c in cells}
        | {serial_of_label(x) for x in st.get("label", [])}
        | set(sel.get("serials") or [])
        | set(sel.get("energy") or {})
    ) - {""}
    labels = _plan_labels(data, sorted(serials)) if plan else {}
    plan_keys = set(plan.values())
    out: list[Outcome] = []
    for _, r in st.iterrows():
        cid, label, key = str(r["cell_id"]), _s(r["label"]), _s(r["spec_key"])
        if bool(r["stale"]):
            why = "artifact changed since" if key in plan_keys else "not in the current plan"
            out.append(Outcome(cid, "stale", f"{why} (was {r['status']}); left out", label, key))
        elif r["status"] in ("failed", "skipped", "interrupted"):
            out.append(Outcome(cid, str(r["status"]), one_line(_s(r["reason"])), label, key))
        elif cid not in with_data:
            out.append(Outcome(cid, "no data", "status ok but its samples are missing", label, key))
    not_run = [
        Outcome(cid, "not run", "planned, no result yet", labels.get(key, ""), key)
        for cid, key in plan.items()
        if cid not in seen
    ]
    out += sorted(not_run, key=lambda o: (not o.label, o.label, o.cell_id))  # named ones first
    stat: Callable[[str], int] = lambda s: sum(1 for o in out if o.status == s)  # noqa: E731
    counts = {
        "planned": len(plan),
        "ok": len(with_data),
        "failed": stat("failed"),
        "skipped": stat("skipped"),
        "not run": stat("not run") + stat("interrupted"),
        "stale": stat("stale"),
        "no data": stat("no data"),
    }
    return out, counts


def _state(counts: Mapping[str, int], stated: int) -> tuple[str, bool]:
    """One sentence, and whether the campaign is complete: every planned cell finished or was skipped for a stated
    reason (`stated` of the skipped: an unrooted phone cannot set a governor, so that cell is done, not missing)."""
    planned, ok, skipped = counts["planned"], counts["ok"], counts["skipped"]
    unstated = skipped - stated
    complete = (
        ok + stated >= planned
        and ok + stated > 0
        and not (counts["failed"] or unstated or counts["not run"] or counts["no data"])
    )
    flagged = counts.get("flagged", 0)
    tail = f" {flagged} finished cell(s) flagged (marked rows in the cell table)." if flagged else ""
    if not planned and not ok and not counts["failed"] and not skipped:
        return (
            "No results at all: the campaign has no recorded plan and no finished cells (has `autlearn run` started?).",
            False,
        )
    if complete and not ok:
        return f"Complete, without measurements: all {stated} planned cells were skipped for stated reasons.", True
    if not ok:
        return (
            f"None of the {planned} planned cells has finished yet: {counts['failed']} failed, "
            f"{skipped} skipped, {counts['not run']} not run.",
            False,
        )
    if complete and stated:
        return (
            f"Complete: {ok} of {planned} planned cells finished, the other {stated} skipped for stated reasons "
            f"(below).{tail}",
            True,
        )
    if complete:
        return f"Complete: all {ok} cells finished.{tail}", True
    return (
        f"Incomplete: {ok} of {planned or ok} planned cells finished"
        + (f", {stated} skipped for a stated reason" if stated else "")
        + f"; {counts['failed']} failed, "
        + (f"{unstated} skipped without a reason, " if unstated else "")
        + f"{counts['not run']} not run yet. The figures show finished cells only.{tail}",
        False,
    )


# ---------------------------------------------------------------------------------------------------------- figures
def sig_legend(alpha: float) -> str:
    """What the marks on bars and in tables mean (figures, tables and report.json say the same)."""
    return f"* significant: {SIGNIFICANCE_TEST} test, p < α = {alpha:g}; n.s.: not significant"


def _hover_cmp(c: Comparison) -> str:
    tag = "" if c.claim else " — no claim"
    return (
        f"{c.candidate} vs {c.baseline} ({c.case}, {c.governor}): {c.speedup:.3g}x "
        f"[{_fmt(c.ci_low, 3)}, {_fmt(c.ci_high, 3)}] — {c.reason}{tag}"
    )


def _figures(
    report_devices: Sequence[DeviceInfo],
    cells: Sequence[CellRow],
    comparisons: Sequence[Comparison],
    energy_rows: Sequence[EnergyRow],
    data: CampaignData,
    baseline: str,
    baseline_gov: str,
    variants: Sequence[str],
    opts: ReportOptions,
) -> list[FigureSlot]:
    slots: list[FigureSlot] = []
    dev_by = {d.serial: d for d in report_devices}
    with_cells = [d for d in report_devices if any(c.device_serial == d.serial for c in cells)]
    if not with_cells:
        slots.append(
            FigureSlot(
                "speedup", "time", "Training-time speedups", note="No finished cells: there is nothing to plot yet."
            )
        )
    rows: list[Comparison] | list[EnergyRow]  # a device's comparisons, then its energy rows
    for d in with_cells:
        rows = [c for c in comparisons if c.device_serial == d.serial]
        title = f"Speedup per training step — {_device_title(d)}"
        if not rows:
            why = (
                f"fewer than two of the compared variants finished on this device (pairs: "
                f"{', '.join(f'{b} vs {a}' for a, b in _pairs(baseline, variants)) or 'none in this campaign'})"
            )
            slots.append(FigureSlot(f"speedup:{d.serial}", "time", title, note=f"No speedups to show: {why}."))
            continue
        bars = [
            F.Bar(
                group=(c.case, c.governor),
                series=f"{c.candidate} vs {c.baseline}",
                value=c.speedup,
                low=c.ci_low,
                high=c.ci_high,
                claim=c.claim,
                hover=_hover_cmp(c),
                mark=_mark(c.significant, c.p_value),
            )
            for c in rows
        ]
        fig = F.bar_figure(  # log axis: a cached variant's ~800x would flatten every other bar on a linear one
            title,
            bars,
            y_title="speedup (× faster than baseline, log scale)",
            x_title=f"workload / governor — {sig_legend(opts.alpha)}; faded, hatched: no claim",
            log=True,
        )
        slots.append(FigureSlot(f"speedup:{d.serial}", "time", title, fig))

    # energy (Fig. 9)
    energy_devs = [d for d in with_cells if any(e.device_serial == d.serial for e in energy_rows)]
    if not energy_devs:
        slots.append(
            FigureSlot(
                "energy",
                "energy",
                "Energy per step and mean power by governor",
                note='No energy data: no cell used an energy source (campaign `energy = "none"` '
                "or no samples were attributed to steps)."
                if cells
                else "No finished cells: there is no energy data yet.",
            )
        )
    for d in energy_devs:
        rows = [e for e in energy_rows if e.device_serial == d.serial]
        modeled = " [modeled]" if any("modeled" in e.labels for e in rows) else ""
        title = f"Energy and power by governor — {_device_title(d)}{modeled}"
        if all(not math.isfinite(e.energy_ratio) for e in rows):
            slots.append(
                FigureSlot(
                    f"energy:{d.serial}",
                    "energy",
                    title,
                    note=f"The baseline governor {baseline_gov!r} has no energy data on this "
                    "device: nothing to normalise to.",
                )
            )
            continue

        def hover(e: EnergyRow, what: str, v: float, test: bool = False) -> str:
            applied = f" (applied: {e.governor_applied})" if e.governor_applied != e.governor else ""
            p = f" (p={e.p_value:.2g}, {SIGNIFICANCE_TEST})" if test and math.isfinite(e.p_value) else ""
            return f"{e.case} {e.variant}, {e.governor}{applied}: {what} {v:.3g}x {baseline_gov}{p}"

        ebars = [
            F.Bar(
                (e.case, e.variant),
                e.governor,
                e.energy_ratio,
                e.energy_ci_low,
                e.energy_ci_high,
                hover=hover(e, "energy/step", e.energy_ratio, test=True),
                mark=_mark(e.significant, e.p_value),
            )
            for e in rows
        ]
        pbars = [
            F.Bar((e.case, e.variant), e.governor, e.power_ratio, hover=hover(e, "mean power", e.power_ratio))
            for e in rows
        ]
        slots.append(
            FigureSlot(
                f"energy:{d.serial}",
                "energy",
                title,
                F.energy_figure(title, ebars, pbars, baseline=baseline_gov),
                note=f"Energy per step: {sig_legend(opts.alpha)} (vs {baseline_gov}). Mean power is one number "
                "per cell: no test.",
            )
        )
    no_energy = [d for d in with_cells if d not in energy_devs]
    if energy_devs and no_energy:
        slots.append(
            FigureSlot(
                "energy:none",
                "energy",
                "Devices without energy data",
                note="No energy source on "
                + ", ".join(_device_title(d) for d in no_energy)
                + ": no energy figure for them.",
            )
        )
    pts = [
        F.Point(
            c.median_ms,
            c.energy_median_j,
            c.governor,
            _device_title(dev_by[c.device_serial]),
            link=f"{c.device_serial}|{c.case}|{c.variant}",
            hover=f"{c.device_model} ({c.device_serial}) {c.case} {c.variant}, {c.governor}: "
            f"{c.median_ms:.4g} ms, {c.energy_median_j:.4g} J [{', '.join(c.labels)}]",
        )
        for c in cells
        if math.isfinite(c.energy_median_j) and math.isfinite(c.median_ms)
    ]
    modeled = " [modeled]" if any("modeled" in c.labels for c in cells if math.isfinite(c.energy_median_j)) else ""
    title = f"Time vs energy per step{modeled} (each point one cell; lines join a cell under different governors)"
    slots.append(
        FigureSlot(
            "tradeoff",
            "energy",
            title,
            F.scatter_figure(title, pts, x_title="median time per step (ms)", y_title="median energy per step (J)")
            if pts
            else None,
            note="" if pts else "No energy data: the time/energy trade-off needs an energy source.",
        )
    )

    # stability: per-step series, temperature and frequency, power traces
    raw = data.raw
    per_cell_budget = max(20, min(SERIES_POINTS_CELL, SERIES_POINTS_TOTAL // max(1, len(cells))))
    if raw.empty or not with_cells:
        slots.append(
            FigureSlot(
                "series", "stability", "Per-step training time", note="No finished cells: no per-step samples yet."
            )
        )
    by_cell = {cid: g for cid, g in raw.groupby("cell_id")} if len(raw) else {}
    cell_by = {c.cell_id: c for c in cells}
    c: CellRow | None  # each cell in turn, then (power traces) the cell of a trace, if any
    for d in with_cells:
        series = []
        subsampled = False
        for c in (c for c in cells if c.device_serial == d.serial):
            g = by_cell.get(c.cell_id)
            if g is None or g.empty:
                continue
            g = g.sort_values(["repetition", "step"])
            width = int(g["step"].max()) + 1
            x = (g["repetition"].to_numpy(int) * width + g["step"].to_numpy(int)).astype(float)
            y = g["step_ns"].to_numpy(float) / 1e6
            w = g["warmup"].to_numpy(bool)
            if len(x) > per_cell_budget:
                idx = np.unique(np.linspace(0, len(x) - 1, per_cell_budget).astype(int))
                x, y, w, subsampled = x[idx], y[idx], w[idx], True
            series.append(F.Series(f"{c.case} {c.variant} {c.governor}", x, y, w))
        title = f"Per-step time — {_device_title(d)}"
        note = f" (subsampled to ≤{per_cell_budget} points per cell)" if subsampled else ""
        slots.append(
            FigureSlot(
                f"series:{d.serial}",
                "stability",
                title + note,
                F.series_figure(
                    title,
                    series,
                    x_title="step (repetitions one after another; open markers: warm-up)",
                    y_title="time per step (ms)",
                )
                if series
                else None,
                note="" if series else "No per-step samples on disk for this device.",
            )
        )

    timed_at = any(c.started_at > 0 for c in cells)
    order = sorted(cells, key=lambda c: (c.started_at, c.device_serial))

    def xs(i: int, c: CellRow) -> tuple[object, object]:
        if timed_at and c.started_at > 0:
            fmt: Callable[[float], str] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))  # noqa: E731
            return fmt(c.started_at), fmt(c.finished_at if c.finished_at >= c.started_at else c.started_at)
        return i, i + 0.8

    x_title = "time (UTC)" if timed_at else "cell (campaign order)"
    segs = [
        F.Segment(
            _device_title(dev_by[c.device_serial]),
            *xs(i, c),
            c.temp_start_c,
            c.temp_end_c,
            hover=f"{c.case} {c.variant} {c.governor}",
        )
        for i, c in enumerate(order)
        if math.isfinite(c.temp_start_c) or math.isfinite(c.temp_end_c)
    ]
    title = "Temperature at the start and end of each cell"
    slots.append(
        FigureSlot(
            "temperature",
            "stability",
            title,
            F.segment_figure(title, segs, x_title=x_title, y_title="temperature (°C)", x_is_time=timed_at)
            if segs
            else None,
            note=""
            if segs
            else (
                "No temperatures recorded (thermal zones unreadable or not probed)."
                if cells
                else "No finished cells yet."
            ),
        )
    )
    summ = data.summaries
    freq_segs = []
    if len(summ):
        meta = {str(r["cell_id"]): r for _, r in summ.iterrows()}
        for i, c in enumerate(order):
            r = meta.get(c.cell_id)
            assert r is not None  # the cells are the summaries' rows
            f0, f1 = _json_map(r.get("freqs_start_khz")), _json_map(r.get("freqs_end_khz"))
            for pol in sorted(set(f0) | set(f1)):
                freq_segs.append(
                    F.Segment(
                        f"{_device_title(dev_by[c.device_serial])} {pol}",
                        *xs(i, c),
                        _f(f0.get(pol)) / 1e3,
                        _f(f1.get(pol)) / 1e3,
                        hover=f"{c.case} {c.variant} {c.governor}",
                    )
                )
    title = "CPU frequency at the start and end of each cell (per policy)"
    slots.append(
        FigureSlot(
            "frequency",
            "stability",
            title,
            F.segment_figure(title, freq_segs, x_title=x_title, y_title="frequency (MHz)", x_is_time=timed_at)
            if freq_segs
            else None,
            note="" if freq_segs else ("No CPU frequencies recorded." if cells else "No finished cells yet."),
        )
    )
    traces = []
    for cid, t in list(data.traces.items())[:TRACE_CELLS]:
        c = cell_by.get(cid)
        if c is None or t.empty:
            continue
        p = t["current"].to_numpy(float) * t["voltage"].to_numpy(float)
        tx, py = F.decimate(t["t"].to_numpy(float), p, TRACE_POINTS)
        traces.append(
            (f"{c.device_serial} {c.case} {c.variant} {c.governor} ({c.energy_source}) [{', '.join(c.labels)}]", tx, py)
        )
    more = len(data.traces) - TRACE_CELLS
    title = (
        "Power traces"
        + (f" (first {TRACE_CELLS} of {len(data.traces)} cells)" if more > 0 else "")
        + (f" (bucket means, ≤{TRACE_POINTS} points each)" if traces else "")
    )
    slots.append(
        FigureSlot(
            "traces",
            "stability",
            title,
            F.trace_figure(title, traces) if traces else None,
            note=""
            if traces
            else "No power traces saved (traces/<cell_id>.parquet appear when a "
            "power monitor such as a Monsoon recorded the cells).",
        )
    )
    return slots


def _pinned_khz(data: CampaignData) -> dict[str, dict[str, int]]:
    """Per cell id, the (policy -> kHz) it was pinned at (`pin:` entries, `userspace@FREQ`); only pinned cells."""
    summ = data.summaries
    if summ.empty or "pinned_khz" not in summ:
        return {}
    out = {}
    for _, r in summ.iterrows():
        pins = {str(k): int(v) for k, v in _json_map(r.get("pinned_khz")).items() if isinstance(v, int) and v > 0}
        if pins:
            out[str(r["cell_id"])] = pins
    return out


def _pin_figures(
    report_devices: Sequence[DeviceInfo], cells: Sequence[CellRow], data: CampaignData
) -> list[FigureSlot]:
    """Frequency sweeps (issue 34): per device with frequency-pinned cells, median time per step and energy per step
    against the pinned frequency. One line per workload, variant and policy the pins vary (a policy pinned alike in
    every cell is its x only when no policy varies). Nothing when no cell was pinned."""
    pins = _pinned_khz(data)
    slots: list[FigureSlot] = []
    for d in report_devices:
        mine = [c for c in cells if c.device_serial == d.serial and c.cell_id in pins]
        if not mine:
            continue
        groups: dict[tuple[str, str], list[CellRow]] = {}
        for c in mine:
            groups.setdefault((c.case, c.variant), []).append(c)
        tpts, epts = [], []
        for (case, variant), cs in groups.items():
            policies = list(dict.fromkeys(pol for c in cs for pol in pins[c.cell_id]))
            swept = [pol for pol in policies if len({pins[c.cell_id].get(pol) for c in cs}) > 1] or policies
            for pol in swept:
                for c in cs:
                    khz = pins[c.cell_id].get(pol)
                    if khz is None:
                        continue
                    series, mhz = f"{case} {variant} — {pol}", khz / 1e3
                    where = (
                        f"{case} {variant}, {c.governor} (applied: {c.governor_applied or '–'}): {pol} at {mhz:g} MHz"
                    )
                    tpts.append(
                        F.SweepPoint(
                            series,
                            mhz,
                            c.median_ms,
                            c.ci_low_ms,
                            c.ci_high_ms,
                            hover=f"{where}: {_fmt(c.median_ms)} ms [{_fmt(c.ci_low_ms)}, {_fmt(c.ci_high_ms)}], "
                            f"n={c.n} [{', '.join(c.labels)}]",
                        )
                    )
                    if math.isfinite(c.energy_median_j):
                        epts.append(
                            F.SweepPoint(
                                series,
                                mhz,
                                c.energy_median_j,
                                c.energy_ci_low_j,
                                c.energy_ci_high_j,
                                hover=f"{where}: {_fmt(c.energy_median_j)} J [{_fmt(c.energy_ci_low_j)}, "
                                f"{_fmt(c.energy_ci_high_j)}] ({c.energy_source}) [{', '.join(c.labels)}]",
                            )
                        )
        x_title = "pinned frequency (MHz)" + (" — MODELED (virtual phone)" if d.virtual else "")
        held = (
            "x: the frequency each pinned policy was held at (the nearest the phone offers; each cell's governor "
            "reason says requested -> held)"
        )
        virtual = (
            " Virtual phone: the frequency is the model's, and time follows the host CPU share it sets "
            "(testbed/dvfs.py), not a phone's silicon."
            if d.virtual
            else ""
        )
        title = f"Time per step vs pinned frequency — {_device_title(d)}"
        slots.append(
            FigureSlot(
                f"pin-time:{d.serial}",
                "time",
                title,
                F.sweep_figure(title, tpts, x_title=x_title, y_title="median time per step (ms), 95% CI")
                if tpts
                else None,
                note=f"{held}; y: median time per step with its 95% CI.{virtual}"
                if tpts
                else "No pinned cell has timed steps.",
            )
        )
        modeled = " [modeled]" if any("modeled" in c.labels for c in mine if math.isfinite(c.energy_median_j)) else ""
        title = f"Energy per step vs pinned frequency — {_device_title(d)}{modeled}"
        slots.append(
            FigureSlot(
                f"pin-energy:{d.serial}",
                "energy",
                title,
                F.sweep_figure(title, epts, x_title=x_title, y_title="median energy per step (J), 95% CI")
                if epts
                else None,
                note=(
                    f"{held}; y: median gross energy per step with its 95% CI"
                    + (" (MODELED power)" if modeled else "")
                    + f".{virtual}"
                )
                if epts
                else "No energy data for the pinned cells: the sweep needs an energy source (campaign `energy`).",
            )
        )
    return slots


# ---------------------------------------------------------------------------------------------------------- compare
def _campaign_diff(
    data: CampaignData,
    cells: Sequence[CellRow],
    times: Mapping[str, np.ndarray],
    other: CampaignData,
    opts: ReportOptions,
) -> tuple[list[Comparison], list[tuple[str, str]], FigureSlot]:
    """Before (other) vs after (this): matching cells by device, workload, config, variant, batch, governor,
    affinity. `speedup` = median(before) / median(after)."""
    ocells, otimes, _ = _cell_rows(other)

    def key(c: CellRow, summ: pd.DataFrame) -> tuple[str, str, str, str, int, str, str]:
        r = summ[summ["cell_id"] == c.cell_id].iloc[0]
        return (c.device_serial, c.workload, _s(r.get("config")), c.variant, c.batch, c.governor, c.affinity)

    mine = {key(c, data.summaries): c for c in cells}
    theirs = {key(c, other.summaries): c for c in ocells}
    out, unmatched = [], []
    osum = {str(r["cell_id"]): r for _, r in other.summaries.iterrows()} if len(other.summaries) else {}
    msum = {str(r["cell_id"]): r for _, r in data.summaries.iterrows()} if len(data.summaries) else {}
    for k, after in mine.items():
        before = theirs.get(k)
        if before is None:
            unmatched.append(
                ("only in this campaign", f"{after.device_serial} {after.case} {after.variant} {after.governor}")
            )
            continue
        notes = tuple(
            f"{col} differs: {_s(osum[before.cell_id].get(col))} → {_s(msum[after.cell_id].get(col))}"
            for col in ("governor_applied", "artifact_hash", "pinned_khz", "warmup_steps", "labels", "tool_versions")
            if _s(osum[before.cell_id].get(col)) != _s(msum[after.cell_id].get(col))
        )
        cmp = _compare(
            f"{after.device_serial} / {after.case} / {after.variant} / {after.governor}",
            before,
            after,
            otimes.get(before.cell_id),
            times.get(after.cell_id),
            opts,
            notes,
        )
        if cmp:
            out.append(replace(cmp, baseline=f"before ({before.variant})", candidate=f"after ({after.variant})"))
    for k, before in theirs.items():
        if k not in mine:
            unmatched.append(
                (f"only in {other.name}", f"{before.device_serial} {before.case} {before.variant} {before.governor}")
            )
    title = f"This campaign vs {other.name}: speedup per matching cell"
    if out:
        bars = [
            F.Bar(
                (f"{c.device_serial} {c.case}", f"{c.candidate.split('(')[1][:-1]} {c.governor}"),
                "after vs before",
                c.speedup,
                c.ci_low,
                c.ci_high,
                c.claim,
                hover=f"{c.key}: {c.speedup:.3g}x [{_fmt(c.ci_low, 3)}, {_fmt(c.ci_high, 3)}] — {c.reason}",
                mark=_mark(c.significant, c.p_value),
            )
            for c in out
        ]
        slot = FigureSlot(
            "compare",
            "compare",
            title,
            F.bar_figure(
                title,
                bars,
                y_title="speedup (median before / median after, log scale)",
                x_title=f"cell — {sig_legend(opts.alpha)}; faded, hatched: no claim",
                log=True,
            ),
        )
    else:
        slot = FigureSlot("compare", "compare", title, note="No matching finished cells in the two campaigns.")
    return out, unmatched, slot


# ---------------------------------------------------------------------------------------------------------- entry
def build_report(
    data: CampaignData,
    options: ReportOptions = ReportOptions(),
    other: CampaignData | None = None,
    *,
    now: float | None = None,
) -> Report:
    """The report model of one campaign (and, with `other`, its comparison against that earlier campaign)."""
    cells, times, energy = _cell_rows(data)
    spec = cast(Mapping[str, Any], data.manifest.get("spec")) if isinstance(data.manifest.get("spec"), Mapping) else {}
    spec_variants = [v for w in spec.get("workload") or [] if isinstance(w, Mapping) for v in w.get("variants") or []]
    variants = list(dict.fromkeys([*spec_variants, *(c.variant for c in cells)]))
    notes = list(data.problems)
    if options.baseline is not None and options.baseline not in variants:
        raise ReportError(
            f"--baseline {options.baseline!r} is not a variant of campaign {data.name!r} "
            f"(variants: {', '.join(variants) or 'none'})"
        )
    baseline = options.baseline or DEFAULT_BASELINE
    if options.baseline is None and variants and baseline not in variants:
        notes.append(
            f"The default baseline variant {baseline!r} is not in this campaign; only the paper's pairs "
            f"(compressed and cached vs full) are compared. Pick another with --baseline."
        )
    govs = [c.governor for c in cells]
    spec_govs = (
        [str(g) for g in ((spec.get("governors") or {}).get("intents") or [])]
        if isinstance(spec.get("governors"), Mapping)
        else []
    )
    if options.baseline_governor is not None and options.baseline_governor not in set(govs) | set(spec_govs):
        raise ReportError(
            f"--baseline-governor {options.baseline_governor!r} is not a governor of campaign "
            f"{data.name!r} (governors: {', '.join(dict.fromkeys(spec_govs + govs)) or 'none'})"
        )
    baseline_gov = options.baseline_governor or next((g for g in spec_govs if g in govs), govs[0] if govs else "")
    comparisons = _variant_comparisons(cells, times, baseline, variants, options)
    energy_rows = _energy_rows(cells, energy, baseline_gov, options)
    outcomes, counts = _outcomes(data, cells)
    counts["flagged"] = sum(c.flagged for c in cells)
    state, complete = _state(counts, sum(1 for o in outcomes if o.status == "skipped" and o.reason))
    devices = _devices(data, cells)
    figures = _figures(devices, cells, comparisons, energy_rows, data, baseline, baseline_gov, variants, options)
    figures += _pin_figures(devices, cells, data)  # frequency sweeps: only when cells were pinned
    label_counts: dict[str, int] = {}
    for c in cells:
        for lb in c.labels:
            label_counts[lb] = label_counts.get(lb, 0) + 1
    diff: list[Comparison]
    unmatched: list[tuple[str, str]]
    diff, unmatched = [], []
    if other is not None:
        diff, unmatched, slot = _campaign_diff(data, cells, times, other, options)
        figures.append(slot)
    groups = [g for g in (_skip_group(outcomes), _flag_group(cells), _tuning_group(data)) if g is not None]
    if data.raw.attrs.get("stale"):
        notes.append(f"{len(data.raw.attrs['stale'])} stale cell(s) (from an older artifact or plan) are left out.")
    return Report(
        campaign=data.name,
        description=_s(spec.get("description")),
        source=str(data.root),
        generated_at=time.time() if now is None else now,
        options=options,
        baseline=baseline,
        baseline_governor=baseline_gov,
        counts=tuple(counts.items()),
        state=state,
        complete=complete,
        labels=tuple(sorted(label_counts.items())),
        devices=tuple(devices),
        cells=tuple(cells),
        comparisons=tuple(comparisons),
        energy=tuple(energy_rows),
        outcomes=tuple(outcomes),
        figures=tuple(figures),
        notes=tuple(notes),
        note_groups=tuple(groups),
        other=other.name if other is not None else "",
        campaign_diff=tuple(diff),
        unmatched=tuple(unmatched),
    )


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'' if k == 1 else 's'}"


def _by_reason(items: Iterable[tuple[str, str, str]]) -> tuple[dict[str, int], tuple[tuple[str, ...], ...]]:
    """(reason, device, cell) -> cells per reason, and table rows (reason, device, cells, which) per reason and
    device."""
    by: dict[tuple[str, str], list[str]] = {}
    for why, dev, cell in items:
        by.setdefault((why, dev), []).append(cell)
    per_reason: dict[str, int] = {}
    for (why, _), cs in by.items():
        per_reason[why] = per_reason.get(why, 0) + len(cs)
    rows = tuple((why, dev, str(len(cs)), ", ".join(sorted(cs))) for (why, dev), cs in sorted(by.items()))
    return per_reason, rows


def _reasons_text(per_reason: Mapping[str, int], most: int = 3) -> str:
    top = sorted(per_reason.items(), key=lambda kv: -kv[1])
    more = f"; and {_n(len(top) - most, 'other reason')}" if len(top) > most else ""
    return "; ".join(f"{k} × {why}" for why, k in top[:most]) + more


def _skip_group(outcomes: Sequence[Outcome]) -> NoteGroup | None:
    """Skipped cells, grouped by reason and device. A stated reason makes the cell done (see _state)."""
    skipped = [o for o in outcomes if o.status == "skipped"]
    if not skipped:
        return None

    def where(o: Outcome) -> tuple[str, str, str]:
        dev = serial_of_label(o.label)
        return (o.reason or "(no reason recorded)", dev or "?", o.label[len(dev) + 1 :] if dev else o.spec_key)

    per_reason, rows = _by_reason(where(o) for o in skipped)
    stated = sum(1 for o in skipped if o.reason)
    done = (
        "each for a stated reason, so counted as done"
        if stated == len(skipped)
        else f"{stated} for a stated reason (counted as done), {len(skipped) - stated} without one"
    )
    return NoteGroup(
        "skipped",
        f"{_n(len(skipped), 'planned cell')} skipped, {done}: {_reasons_text(per_reason)}.",
        ("reason", "device", "cells", "which"),
        rows,
    )


def _flag_group(cells: Sequence[CellRow]) -> NoteGroup | None:
    """Cells the results flag (throttled, frequency off its plan ...): counted, grouped, their rows marked."""
    flagged = [c for c in cells if c.flagged]
    if not flagged:
        return None
    per_reason, rows = _by_reason(
        (c.flag_reason, c.device_serial, f"{c.case} {c.variant} {c.governor}") for c in flagged
    )
    return NoteGroup(
        "flagged",
        f"{_n(len(flagged), 'finished cell')} flagged by the results: {_reasons_text(per_reason)}. Their numbers "
        "are shown, in marked rows of the cell table; read them with the flag in mind.",
        ("flag", "device", "cells", "which"),
        rows,
    )


_TUNING_KINDS = {  # tool_versions["tuning"] (autlearn.pipelines.artifact_cache.tuning_label) -> what the note says
    "untuned (hand schedules)": "untuned (hand schedules only)",
    "not optimized": "not optimized (the unoptimized variant)",
}


def _tuning_group(data: CampaignData) -> NoteGroup | None:
    """One note for the compiled code of every artifact (the cells' tool versions record what tuned it): how many
    artifacts are untuned, not optimized or tuned, on how many phones; the artifacts themselves folded away."""
    s = data.summaries
    if not len(s) or "tool_versions" not in s:
        return None
    arts: dict[tuple[str, str, str, str], set[str]] = {}  # (tuning, case, variant, target) -> phones
    for case, (_, r) in zip(_cases(s), s.iterrows()):
        tools = _json_map(r.get("tool_versions"))
        if "tuning" in tools:
            key = (_s(tools["tuning"]), case, _s(r.get("variant")), _s(tools.get("target")) or "?")
            arts.setdefault(key, set()).add(_s(r.get("device_serial")))
    if not arts:
        return None

    def kind(tuning: str) -> str:
        return _TUNING_KINDS.get(tuning) or ("tuned (from a tuning database)" if tuning.startswith("tuned") else tuning)

    order = sorted(arts, key=lambda k: (not k[0].startswith("untuned"), k))  # untuned first: the researcher's caveat
    kinds: dict[str, list[tuple[str, str, str, str]]] = {}
    for k in order:
        kinds.setdefault(kind(k[0]), []).append(k)
    parts = [
        f"{name}: {_n(len(keys), 'artifact')} on {_n(len(set().union(*(arts[k] for k in keys))), 'phone')}"
        for name, keys in kinds.items()
    ]
    return NoteGroup(
        "tuning",
        "Compiled code — " + "; ".join(parts) + ".",
        ("tuning", "artifact", "target", "phones", "on"),
        tuple(
            (tuning, f"{case} {variant}", target, str(len(arts[k])), ", ".join(sorted(arts[k])))
            for k in order
            for tuning, case, variant, target in [k]
        ),
    )


_SUMMARY_FIELDS = (
    "n",
    "median_ms",
    "ci_low_ms",
    "ci_high_ms",
    "cv",
    "warnings",
    "energy_n",
    "energy_median_j",
    "energy_ci_low_j",
    "energy_ci_high_j",
    "mean_power_w",
    "harness_s",
    "wait_s",
)


def report_json(report: Report, *, html_bytes: int | None = None) -> dict[str, Any]:
    """JSON-able summary (NaN -> null); figures as title + drawn/note, not their data."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, np.integer, np.bool_)):
            return clean(x.item())
        return x

    doc: dict[str, Any] = clean(
        {
            "schema": REPORT_SCHEMA,
            "campaign": report.campaign,
            "description": report.description,
            "source": report.source,
            "generated_at": report.generated_at,
            "options": asdict(report.options),
            "baseline": report.baseline,
            "baseline_governor": report.baseline_governor,
            "state": report.state,
            "complete": report.complete,
            "significance": sig_legend(report.options.alpha),
            "counts": dict(report.counts),
            "labels": dict(report.labels),
            "devices": [asdict(d) for d in report.devices],
            "cells": [{k: v for k, v in asdict(c).items() if k not in _SUMMARY_FIELDS} for c in report.cells],
            "summaries": [{"cell_id": c.cell_id, **{k: getattr(c, k) for k in _SUMMARY_FIELDS}} for c in report.cells],
            "comparisons": [asdict(c) for c in report.comparisons],
            "energy": [asdict(e) for e in report.energy],
            "missing": [asdict(o) for o in report.outcomes if o.status in ("not run", "no data")],
            "failed": [asdict(o) for o in report.outcomes if o.status == "failed"],
            "skipped": [asdict(o) for o in report.outcomes if o.status == "skipped"],
            "stale": [asdict(o) for o in report.outcomes if o.status == "stale"],
            "figures": [
                {"key": f.key, "section": f.section, "title": f.title, "drawn": f.figure is not None, "note": f.note}
                for f in report.figures
            ],
            "drawn_figures": report.drawn_figures,
            "notes": list(report.notes),
            "note_groups": [asdict(g) for g in report.note_groups],
            "compare": None
            if not report.other
            else {
                "before": report.other,
                "after": report.campaign,
                "cells": [asdict(c) for c in report.campaign_diff],
                "unmatched": [{"side": s, "cell": c} for s, c in report.unmatched],
            },
            "html_bytes": html_bytes,
        }
    )
    return doc


def render_html(report: Report) -> str:
    """The self-contained HTML page (see autlearn.reports.render)."""
    return render(report)


@dataclass(frozen=True)
class WrittenReport:
    html: Path
    json: Path
    bytes: int
    figures: int
    notes: tuple[str, ...]
    over_budget: bool


def json_path_for(out: Path) -> Path:
    """`report.json` beside the HTML (`<stem>.json` when the HTML is not called report.html)."""
    return out.with_name("report.json") if out.name == "report.html" else out.with_suffix(".json")


def write_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    options: ReportOptions = ReportOptions(),
    compare_dir: str | Path | None = None,
) -> WrittenReport:
    """Build and write the HTML report (default `<results_dir>/report.html`) and its JSON summary."""
    data = load_campaign_data(results_dir)
    other = load_campaign_data(compare_dir) if compare_dir is not None else None
    report = build_report(data, options, other)
    page = render_html(report)
    out_p = Path(out) if out is not None else data.root / "report.html"
    blob = page.encode("utf-8")
    try:
        out_p.parent.mkdir(parents=True, exist_ok=True)

        atomic_write(out_p, lambda f: f.write(blob))
        jp = json_path_for(out_p)
        doc = json.dumps(report_json(report, html_bytes=len(blob)), indent=1, allow_nan=False)
        atomic_write(jp, lambda f: f.write(doc.encode()))
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out_p}: {exc.strerror or exc}") from None
    notes = (*(g.text for g in report.note_groups), *report.notes)  # the grouped ones once each, as on the page
    return WrittenReport(out_p, jp, len(blob), report.drawn_figures, notes, len(blob) > SIZE_BUDGET)


__all__ = [
    "CampaignData",
    "CellRow",
    "Comparison",
    "DeviceInfo",
    "EnergyRow",
    "FigureSlot",
    "Outcome",
    "Report",
    "ReportError",
    "ReportOptions",
    "WrittenReport",
    "build_report",
    "json_path_for",
    "load_campaign_data",
    "ratio_ci",
    "render_html",
    "report_json",
    "write_report",
]
