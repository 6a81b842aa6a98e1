"""Interpolation of unmeasured grid points within a layer family (NetAdapt style): pure DataFrame -> DataFrame,
so `Table.complete` (schema) can use it without importing the fitting module."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
from scipy.interpolate import RBFInterpolator

from autlearn.profiler.errors import TableError
from autlearn.workloads.layers import FamilyKey, LayerKey, flops, key_from_mapping


def _fit_predict(known: pd.DataFrame, col: str, want: list[LayerKey]) -> np.ndarray:
    """Predict `col` for `want` (one family) from the family's known rows."""

    k = known[known[col].notna()]
    if len(k) == 0:
        return np.full(len(want), np.nan)
    is_dw = want[0].type == "dwconv"
    dims = [c for c in (("c_in",) if is_dw else ("c_in", "c_out")) if k[c].nunique() > 1]
    y = k[col].to_numpy(float)
    if not dims:
        # One coordinate measured: scale the nearest measured point by the FLOPs ratio.
        ref = key_from_mapping(k.iloc[0])
        f0 = flops(ref)
        return np.array([y[0] * (flops(w) / f0 if f0 else 1.0) for w in want])
    x = k[dims].to_numpy(float)
    q = np.array([[getattr(w, d) for d in dims] for w in want], float)
    scale = np.maximum(np.abs(np.vstack([x, q])).max(0), 1.0)
    n, d = len(x), len(dims)
    degree = 2 if n >= (6 if d == 2 else 3) else (1 if n >= d + 1 else 0)
    try:
        f = RBFInterpolator(x / scale, y, kernel="thin_plate_spline" if degree >= 1 else "linear", degree=degree)
        pred = f(q / scale)
    except (np.linalg.LinAlgError, ValueError):
        f = RBFInterpolator(x / scale, y, kernel="linear", degree=0)
        pred = f(q / scale)
    # Noisy measurements make an exact interpolant overshoot: keep predictions within the family's measured range
    # (the grid sample always includes the extremes, so a monotone family is never clipped wrongly).
    return cast(np.ndarray, np.clip(pred, float(np.min(y)), float(np.max(y))))


def interpolate(df: pd.DataFrame, keys: Sequence[LayerKey]) -> pd.DataFrame:
    """Rows (source "interpolated") for `keys` from the measured rows of their families in `df`."""
    known = df[df["source"] == "measured"] if len(df) else df
    fam_of = known.apply(lambda r: key_from_mapping(r).family, axis=1) if len(known) else pd.Series(dtype=object)
    by_family: dict[FamilyKey, list[LayerKey]] = {}
    for k in keys:
        by_family.setdefault(k.family, []).append(k)
    rows = []
    for fam, want in by_family.items():
        kf = known[fam_of == fam] if len(known) else known
        if len(kf) == 0:
            raise TableError(
                f"no measured point in the family of {want[0]} (type/kernel/stride/size/batch/phase): "
                f"cannot interpolate; measure at least one",
                key=want[0],
            )
        ms = _fit_predict(kf, "median_ms", want)
        mj = _fit_predict(kf, "energy_mj", want)
        for w, a, e in zip(want, ms, mj):
            rows.append(
                {
                    **w.to_dict(),
                    "median_ms": float(a),
                    "ci_low_ms": math.nan,
                    "ci_high_ms": math.nan,
                    "n": 0,
                    "energy_mj": float(e),
                    "source": "interpolated",
                }
            )
    return pd.DataFrame(rows)
