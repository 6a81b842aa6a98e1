"""Tables fitted to data: interpolation (re-exported from interp), robust per-family smoothing, the measurement
subset of a grid, and calibration against whole models measured on the device."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

from autlearn.profiler.errors import ConfigError, TableError
from autlearn.workloads.layers import FamilyKey, LayerKey, flops, key_from_mapping
from autlearn.workloads.tables.interp import interpolate
from autlearn.workloads.tables.schema import Table


def _feature_names(measured: Sequence[LayerKey]) -> tuple[str, ...]:
    """Columns of one family's smoothing model: 1, c_in, c_out (those that vary among the measured keys; a
    depthwise conv has one channel count) and the phase's FLOPs; (1, FLOPs) or (FLOPs) with few points."""
    names = ["one"]
    if len({k.c_in for k in measured}) > 1:
        names.append("c_in")
    if measured[0].type != "dwconv":
        if len({k.c_out for k in measured}) > 1:
            names.append("c_out")
        names.append("flops")
    if len(measured) < 2 * len(names):
        names = ["one", "flops"] if len(measured) >= 4 else ["flops"]
    return tuple(names)


def _features(keys: Sequence[LayerKey], names: Sequence[str]) -> np.ndarray:
    col = {"one": lambda k: 1.0, "c_in": lambda k: k.c_in, "c_out": lambda k: k.c_out, "flops": flops}
    return np.array([[float(col[n](k)) for n in names] for k in keys]).reshape(len(keys), len(names))


def _smooth_family(measured: list[LayerKey], y: np.ndarray, want: list[LayerKey]) -> tuple[np.ndarray, np.ndarray]:
    """(fit at `want`, relative residuals at the measured points): non-negative coefficients, so the fit never
    decreases when a channel count grows; soft-L1 loss, so one slow measurement moves it little."""

    names = _feature_names(measured)
    xm, xw = _features(measured, names), _features(want, names)
    scale = np.maximum(np.abs(xm).max(0), 1e-12)
    a, b = xm / scale, xw / scale
    f_scale = max(0.1 * float(np.median(y)), 1e-9)
    p0 = np.full(a.shape[1], float(np.median(y)) / a.shape[1])
    fit = least_squares(lambda p: a @ p - y, p0, bounds=(0.0, np.inf), loss="soft_l1", f_scale=f_scale)
    at_points = a @ fit.x
    return b @ fit.x, y / np.maximum(at_points, 1e-12) - 1


def smooth(table: Table) -> tuple[Table, dict[str, Any]]:
    """A copy of `table` whose every value is a robust per-family fit of its measured rows (source "fitted").

    A table measured once per key is noisy (here ~10-20 % per key, a few keys 2-6x: a slow launch), and
    interpolation exact at measured points keeps that noise; a greedy search then prefers the layers whose
    savings the noise overstates (the winner's curse) and may cut 200 channels where 8 would do, because a
    non-monotone row reaches the target only far down. The fit is latency ~ a + b c_in + c c_out + d FLOPs with
    a..d >= 0 per family (type, kernel, stride, input size, batch, phase), so it is monotone in both channel counts.
    `measured_ms` keeps what was measured; the returned dict summarises the residuals per family."""

    if (table.df["source"] == "fitted").any():
        raise TableError("the table is already smoothed (source 'fitted'); smooth the measured table")
    df = table.df.copy()
    keys = [key_from_mapping(r) for r in df.to_dict("records")]
    fams: dict[FamilyKey, list[int]] = {}
    for i, k in enumerate(keys):
        fams.setdefault(k.family, []).append(i)
    measured = (df["source"] == "measured").to_numpy()
    resid_all: list[float] = []
    per_family: list[dict[str, Any]] = []
    for fam, idx in fams.items():
        m_idx = [i for i in idx if measured[i] and np.isfinite(df.at[i, "median_ms"])]
        if not m_idx:
            raise TableError(f"no measured point in the family of {keys[idx[0]]}: cannot smooth", key=keys[idx[0]])
        for col in ("median_ms", "energy_mj"):
            e_idx = [i for i in m_idx if np.isfinite(df.at[i, col])]
            if not e_idx:
                continue
            pred, resid = _smooth_family(
                [keys[i] for i in e_idx], df.loc[e_idx, col].to_numpy(float), [keys[i] for i in idx]
            )
            df.loc[idx, col] = pred
            if col == "median_ms":
                resid_all.extend(resid)
                per_family.append(
                    {
                        "family": "/".join(map(str, fam)),
                        "measured": len(e_idx),
                        "median_abs_residual": float(np.median(np.abs(resid))),
                        "max_abs_residual": float(np.max(np.abs(resid))),
                    }
                )
    df["source"] = "fitted"
    r = np.abs(np.array(resid_all))
    info = {
        "method": "per family: latency = a + b c_in + c c_out + d FLOPs, a..d >= 0, soft-L1 (scipy "
        "least_squares); energy likewise",
        "families": len(per_family),
        "measured_points": int(len(r)),
        "median_abs_residual": float(np.median(r)),
        "share_within_20pct": float(np.mean(r <= 0.2)),
        "max_abs_residual": float(r.max()),
        "worst_families": sorted(per_family, key=lambda d: -d["median_abs_residual"])[:5],
    }
    notes = (table.meta.notes + "; " if table.meta.notes else "") + "smoothed: " + json.dumps(info, sort_keys=True)
    return Table(df, replace(table.meta, notes=notes)), info


def sample_grid(grid: Sequence[LayerKey], every: int = 2) -> tuple[LayerKey, ...]:
    """A measurement subset of `grid`: per family, every `every`-th channel count along each dimension plus the
    extremes (so interpolation stays inside the measured hull). every=1 -> the whole grid."""
    if every < 1:
        raise ConfigError(f"must be >= 1, got {every}", key="every")
    if every == 1:
        return tuple(grid)
    fams: dict[FamilyKey, list[LayerKey]] = {}
    for k in grid:
        fams.setdefault(k.family, []).append(k)
    out = []
    for ks in fams.values():
        cins = sorted({k.c_in for k in ks})
        couts = sorted({k.c_out for k in ks})
        keep_in = set(cins[::-1][::every]) | {cins[0], cins[-1]}
        keep_out = set(couts[::-1][::every]) | {couts[0], couts[-1]}
        out += [k for k in ks if k.c_in in keep_in and k.c_out in keep_out]
    return tuple(sorted(out))


# ---------------------------------------------------------------------------------------------- calibration

CALIBRATIONS = ("affine", "ratio")


def _fit(base: np.ndarray, measured: np.ndarray, method: str) -> tuple[float, float, str]:
    """(scale, offset_ms, method used). affine: Theil-Sen line measured ~ scale * base + offset (robust to a slow
    round); it falls back to the ratio when the line is not increasing or predicts <= 0 within the data."""

    if method == "affine" and len(np.unique(base)) >= 2:
        slope, intercept, _, _ = stats.theilslopes(measured, base)
        if slope > 0 and slope * base.min() + intercept > 0:
            return float(slope), float(intercept), "affine"
    return float(np.median(measured / base)), 0.0, "ratio"


def calibrate(
    table: Table,
    predicted_ms: Sequence[float],
    measured_ms: Sequence[float],
    info: dict[str, Any] | None = None,
    method: str = "affine",
    control_ms: float | None = None,
) -> tuple[Table, dict[str, Any]]:
    """A copy of `table` whose whole-model latency is fitted to whole models measured on the same device.

    A sum of per-layer measurements misses per-step work (pooling, loss, dispatch) and counts a fixed cost per
    layer call once per layer, which a whole model pays once: `affine` (default) fits measured = scale x sum +
    offset (Theil-Sen), `ratio` only the median measured/sum. Returns (table, fit); fit holds the parameters and
    leave-one-out errors (each model predicted by the fit to the others). `control_ms`: the control model's latency
    while those models were measured; it becomes the copy's control reference (the conditions its predictions
    were fitted to; the table's own reference is kept in the fit as `table_control_ms`)."""

    if method not in CALIBRATIONS:
        raise TableError(f"unknown calibration {method!r}; valid: {', '.join(CALIBRATIONS)}")
    p = np.asarray(predicted_ms, float)
    m = np.asarray(measured_ms, float)
    if len(p) < 3 or len(p) != len(m) or not (np.all(np.isfinite(p) & (p > 0)) and np.all(np.isfinite(m) & (m > 0))):
        raise TableError("calibration needs >= 3 whole models with positive predicted and measured latency")
    base = (p - table.meta.latency_offset_ms) / table.meta.latency_scale  # calibrate from the raw layer sums
    scale, offset, used = _fit(base, m, method)
    loo = []
    for i in range(len(p)):
        s_i, o_i, _ = _fit(np.delete(base, i), np.delete(m, i), method)
        loo.append((s_i * base[i] + o_i) / m[i] - 1)
    loo_a = np.abs(np.array(loo))
    fit = {
        "method": {
            "affine": "Theil-Sen line measured = scale x sum of layers + offset over whole models",
            "ratio": "median of measured/predicted over whole models",
        }[used],
        "scale": scale,
        "offset_ms": offset,
        "models": len(p),
        "loo_mean_abs_error": float(loo_a.mean()),
        "loo_max_abs_error": float(loo_a.max()),
        "loo_within_10pct": float(np.mean(loo_a <= 0.10)),
        **(info or {}),
    }
    ref = table.meta.control_ms
    if control_ms is not None and control_ms > 0:
        fit.update(control_ms=float(control_ms), table_control_ms=ref)
        ref = float(control_ms)
    meta = replace(
        table.meta,
        latency_scale=scale,
        latency_offset_ms=offset,
        control_ms=ref,
        calibration=json.dumps(fit, sort_keys=True),
    )
    return Table(table.df, meta), fit


__all__ = ["CALIBRATIONS", "calibrate", "interpolate", "sample_grid", "smooth"]
