"""Tables from campaign results of layer-suite cells: a pure parser of the results frame and one Table per
(device, governor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from autlearn.profiler.errors import TableError
from autlearn.workloads.layers import LayerKey, parse_key
from autlearn.workloads.registry import canonical_config
from autlearn.workloads.tables.schema import Table, TableMeta, table_from_measurements

ENERGY_APPORTIONED = (
    "step energy apportioned to each layer call by its share of the step time (the runner "
    "times calls, the power source integrates whole steps)"
)


def measurements_from_results(raw: pd.DataFrame) -> pd.DataFrame:
    """Pure parser: timed steps of layer-suite cells (campaign results, `autlearn.engine.store.load_results`) -> one row
    per (device, governor, layer key, sample) with `ms` and `mj` (NaN without energy). Phase columns are named
    `phase_<str(LayerKey)>_ns`; a step's energy is apportioned to its calls by time (ENERGY_APPORTIONED)."""

    if raw is None or len(raw) == 0 or "workload" not in raw:
        raise TableError("no campaign results to build a table from")
    df = raw[(raw["workload"] == "layers") & ~raw["warmup"].astype(bool)]
    if len(df) == 0:
        raise TableError("the results hold no timed steps of layer-suite cells (workload 'layers')")
    cols = [c for c in df.columns if c.startswith("phase_") and c.endswith("_ns") and df[c].notna().any()]
    keys = {c: parse_key(c[len("phase_") : -len("_ns")]) for c in cols}
    ids = [
        "device_serial",
        "device_model",
        "device_virtual",
        "governor_requested",
        "governor_applied",
        "labels",
        *(["affinity"] if "affinity" in df else []),
        "energy_source",
        "cell_id",
        "repetition",
        "step",
        "step_ns",
        "energy_j",
    ]
    long = (
        df[ids + cols].melt(id_vars=ids, value_vars=cols, var_name="phase_col", value_name="ns").dropna(subset=["ns"])
    )
    kd = pd.DataFrame([keys[c].to_dict() for c in long["phase_col"]], index=long.index)
    out = pd.concat([long[ids], kd], axis=1)
    out["ms"] = long["ns"].astype(float) / 1e6
    share = long["ns"].astype(float) / long["step_ns"].astype(float)
    out["mj"] = long["energy_j"].astype(float) * 1e3 * share
    return out.reset_index(drop=True)


def tables_from_results(
    raw: pd.DataFrame, grid: Sequence[LayerKey] | None = None, *, model: str = "", config: Any = None, notes: str = ""
) -> dict[tuple[str, str], Table]:
    """One Table per (device serial, governor requested) from layer-suite results; `grid` given -> completed by
    interpolation over it. Tool versions are the running ones (a table is built where it was measured)."""
    m = measurements_from_results(raw)
    _check_poolable_cells(raw, m)
    out: dict[tuple[str, str], Table] = {}
    for (serial, gov), g in m.groupby(["device_serial", "governor_requested"], sort=True):
        if "affinity" in g and g["affinity"].nunique() > 1:
            raise TableError(
                f"{serial} / {gov}: layer cells ran under several CPU affinities "
                f"({', '.join(sorted(map(str, g['affinity'].unique())))}); one table needs one"
            )
        applied = ",".join(sorted({str(x) for x in g["governor_applied"].dropna()})) or "unknown"
        labels = ",".join(sorted({x for ls in g["labels"].dropna() for x in str(ls).split(",") if x}))
        has_energy = bool(g["mj"].notna().any())
        meta = TableMeta.for_running_tools(
            source_device=str(g["device_model"].iloc[0]) or str(serial),
            device_serial=str(serial),
            device_model=str(g["device_model"].iloc[0]),
            virtual=bool(g["device_virtual"].iloc[0]),
            governor_requested=str(gov),
            governor_applied=applied,
            measurement_tool="tvm-runner (layer suites)",
            model=model,
            model_config=canonical_config(config) if config is not None else "{}",
            notes=notes,
            labels=labels,
            energy_method=(
                f"{ENERGY_APPORTIONED}; source {','.join(sorted(set(g['energy_source'])))}" if has_energy else ""
            ),
        )
        t = table_from_measurements(g, meta)
        out[(str(serial), str(gov))] = t.complete(grid) if grid is not None else t
    return out


def _check_poolable_cells(raw: pd.DataFrame, m: pd.DataFrame) -> None:
    """A table pools the cells of one device and governor: they must share tool versions, and each layer key must
    come from one artifact (a rebuilt suite is a different measurement; suites of one table differ by design)."""
    if "workload" in raw:
        raw = raw[raw["workload"] == "layers"]
    cells = raw.drop_duplicates("cell_id").set_index("cell_id")
    if "tool_versions" in raw:
        for (serial, gov), g in raw.groupby(["device_serial", "governor_requested"], sort=True):
            if g["tool_versions"].nunique(dropna=False) > 1:
                raise TableError(
                    f"{serial} / {gov}: refusing to pool layer cells whose tool_versions differ "
                    f"({', '.join(sorted(map(str, g['tool_versions'].unique()))[:2])}); "
                    "use one campaign's results"
                )
    if "artifact_hash" in cells and len(m):
        arts = m["cell_id"].map(cells["artifact_hash"])
        keys = [
            c
            for c in m.columns
            if c
            not in (
                "cell_id",
                "repetition",
                "step",
                "step_ns",
                "energy_j",
                "ms",
                "mj",
                "labels",
                "energy_source",
                "governor_applied",
                "device_model",
                "device_virtual",
            )
        ]
        n = arts.groupby([m[k].astype(str) for k in keys]).nunique()
        if (n > 1).any():
            raise TableError(
                "refusing to pool one layer key measured by different artifacts "
                f"({int((n > 1).sum())} key(s)); use one campaign's results"
            )
