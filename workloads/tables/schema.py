"""Per-layer latency/energy tables: one per device x governor x tool version (NetAdapt's LUT, nn-Meter's kernels).

A `Table` is a DataFrame with the `LayerKey` columns plus
  median_ms, ci_low_ms, ci_high_ms   median step-phase latency and a 95 % CI of the median (distribution-free
                                     order-statistic interval, scipy.stats.binom; NaN for interpolated rows)
  n                                  repetitions measured (0 for interpolated rows)
  energy_mj                          median energy (optional column; NaN when not measured)
  source                             "measured" | "interpolated" | "fitted" (a smoothed table, see `smooth`)
  measured_ms                        the measured median of a key (NaN where nothing was measured); in a smoothed
                                     table median_ms is the fit and this column keeps what was measured
and a `TableMeta` (device, virtual flag, governor requested/applied, tool versions, schema version) stored as
Parquet schema metadata (key `autlearn.table`) or as a leading `# autlearn.table: {json}` line in CSV.

Grid points that were not measured are interpolated per layer family over (c_in, c_out) with
`scipy.interpolate.RBFInterpolator` (thin-plate spline + polynomial tail, exact at measured points, clipped to the
family's measured range), NetAdapt style, and marked "interpolated". Measuring on a phone is the campaign engine's
job: it compiles and runs
`layer_workloads(...)` and hands the per-repetition samples to `table_from_measurements`. `measure_on_host` times
single-layer PyTorch steps on this machine: such tables are labelled `source_device = "host (not a phone)"`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from autlearn.profiler.errors import ConfigError, TableError
from autlearn.profiler.stats import median_ci
from autlearn.profiler.versions import stored_version, tool_versions
from autlearn.workloads.layers import KEY_COLUMNS, LayerKey, key_from_mapping
from autlearn.workloads.tables.interp import interpolate

SCHEMA_VERSION = 2  # 2: source "fitted", column measured_ms (version-1 tables still load)
META_KEY = b"autlearn.table"
HOST_DEVICE = "host (not a phone)"
SOURCES = ("measured", "interpolated", "fitted")
VALUE_COLUMNS = ("median_ms", "ci_low_ms", "ci_high_ms", "n", "energy_mj", "source", "measured_ms")


@dataclass(frozen=True)
class TableMeta:
    """Where and how a table was measured. `source_device` is the phone model or HOST_DEVICE."""

    source_device: str
    device_serial: str = ""
    device_model: str = ""
    virtual: bool = False
    governor_requested: str = ""
    governor_applied: str = ""
    autlearn_version: str = ""
    tvm_version: str = ""
    torch_version: str = ""
    measurement_tool: str = ""  # e.g. "torch-host", "tvm-runner"
    model: str = ""  # model family the grid was made for
    model_config: str = "{}"  # JSON of the config's to_dict()
    created: str = ""
    notes: str = ""
    labels: str = ""  # comma-joined result labels of the measurements: virtual, modeled, ...
    energy_method: str = ""  # how per-layer energy was attributed (empty: no energy)
    latency_scale: float = 1.0  # whole-model latency = scale x sum of layers + offset (1, 0: uncalibrated)
    latency_offset_ms: float = 0.0
    calibration: str = ""  # JSON: how scale and offset were fitted (models, device, errors)
    control_ms: float = 0.0  # median step of the control model while measuring (0: none); later
    control_config: str = ""  #   measurements use rounds whose control is within tolerance of it
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_running_tools(cls, **kw: Any) -> TableMeta:
        v = tool_versions()
        kw.setdefault("autlearn_version", v["autlearn"])
        kw.setdefault("tvm_version", v["tvm"])
        kw.setdefault("torch_version", v["torch"])
        kw.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> TableMeta:
        try:
            d = json.loads(text)
        except (ValueError, TypeError) as e:
            raise TableError(f"table metadata is not JSON ({e})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or "source_device" not in d:
            raise TableError("table metadata lacks source_device")
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("autlearn_version", "tvm_version", "torch_version"):  # older tables said "unknown" for a missing tool
            if isinstance(kw.get(k), str):
                kw[k] = stored_version(kw[k])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def config_dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.model_config or "{}"))


def _empty_frame() -> pd.DataFrame:
    cols = {c: pd.Series(dtype="object" if c in ("type", "phase") else "int64") for c in KEY_COLUMNS}
    cols.update(
        median_ms=pd.Series(dtype=float),
        ci_low_ms=pd.Series(dtype=float),
        ci_high_ms=pd.Series(dtype=float),
        n=pd.Series(dtype="int64"),
        energy_mj=pd.Series(dtype=float),
        source=pd.Series(dtype="object"),
        measured_ms=pd.Series(dtype=float),
    )
    return pd.DataFrame(cols)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (*KEY_COLUMNS, "median_ms", "source") if c not in df.columns]
    if missing:
        raise TableError(f"table lacks columns {missing}")
    df = df.copy()
    for c in ("ci_low_ms", "ci_high_ms", "energy_mj"):
        if c not in df.columns:
            df[c] = np.nan
    if "n" not in df.columns:
        df["n"] = 0
    if "measured_ms" not in df.columns:  # version-1 tables: the measured rows' median is what was measured
        df["measured_ms"] = df["median_ms"].where(df["source"] == "measured")
    bad = sorted(set(df["source"]) - set(SOURCES))
    if bad:
        raise TableError(f"unknown source values {bad}; valid: {', '.join(SOURCES)}")
    for c in KEY_COLUMNS:
        df[c] = df[c].astype(str) if c in ("type", "phase") else df[c].astype("int64")
    df["n"] = df["n"].astype("int64")
    for c in ("median_ms", "ci_low_ms", "ci_high_ms", "energy_mj", "measured_ms"):
        df[c] = df[c].astype(float)
    dup = df.duplicated(list(KEY_COLUMNS))
    if dup.any():
        raise TableError(f"table has {int(dup.sum())} duplicate layer keys, e.g. {key_from_mapping(df[dup].iloc[0])}")
    return df[[*KEY_COLUMNS, *VALUE_COLUMNS]].sort_values(list(KEY_COLUMNS)).reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class Table:
    """Per-layer latency (and optionally energy) of one device x governor x tool version."""

    df: pd.DataFrame
    meta: TableMeta

    def __post_init__(self) -> None:
        object.__setattr__(self, "df", _normalise(self.df))

    @cached_property
    def _index(self) -> dict[LayerKey, tuple[float, float]]:
        d = self.df
        return {key_from_mapping(r): (float(r["median_ms"]), float(r["energy_mj"])) for r in d.to_dict("records")}

    def __len__(self) -> int:
        return len(self.df)

    def __contains__(self, key: LayerKey) -> bool:
        return key in self._index

    @property
    def keys(self) -> tuple[LayerKey, ...]:
        return tuple(self._index)

    @property
    def has_energy(self) -> bool:
        return bool(self.df["energy_mj"].notna().any())

    def _get(self, key: LayerKey) -> tuple[float, float]:
        try:
            return self._index[key]
        except KeyError:
            raise TableError(
                f"layer key not in table ({self.meta.source_device}): {key}; rebuild the table for this model/grid",
                key=key,
            ) from None

    def latency_ms(self, key: LayerKey) -> float:
        return self._get(key)[0]

    def energy_mj(self, key: LayerKey) -> float:
        e = self._get(key)[1]
        if math.isnan(e):
            raise TableError(f"table has no energy for {key} (measured without a power monitor?)", key=key)
        return e

    def missing(self, keys: Iterable[LayerKey]) -> tuple[LayerKey, ...]:
        return tuple(k for k in keys if k not in self._index)

    def require(self, keys: Iterable[LayerKey]) -> None:
        """TableError naming the first key the table lacks."""
        miss = self.missing(keys)
        if miss:
            raise TableError(
                f"{len(miss)} layer key(s) not in table, first: {miss[0]}; rebuild the table for this model/grid",
                key=miss[0],
            )

    def counts(self) -> dict[str, int]:
        return {s: int((self.df["source"] == s).sum()) for s in SOURCES}

    def complete(self, grid: Iterable[LayerKey]) -> Table:
        """A table covering `grid`: missing keys interpolated within their family (marked interpolated)."""
        miss = self.missing(grid)
        if not miss:
            return self
        rows = interpolate(self.df, miss)
        df = pd.concat([self.df, rows], ignore_index=True) if len(self.df) else rows
        return Table(df, self.meta)

    # ----------------------------------------------------------------------------------------- files

    def to_arrow(self) -> Any:  # a pyarrow.Table (pyarrow ships no types)

        t = pa.Table.from_pandas(self.df, preserve_index=False)
        return t.replace_schema_metadata({**(t.schema.metadata or {}), META_KEY: self.meta.to_json().encode()})

    def save(self, path: str | Path) -> Path:
        """Write Parquet (`.parquet`) or CSV (`.csv`, metadata as a leading comment line)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".csv":
            with p.open("w") as f:
                f.write(f"# {META_KEY.decode()}: {self.meta.to_json()}\n")
                self.df.to_csv(f, index=False)
        elif p.suffix in (".parquet", ".pq"):
            pq.write_table(self.to_arrow(), p)
        else:
            raise ConfigError(f"unknown table format {p.suffix!r}; use .parquet or .csv", key="path")
        return p


def load_table(path: str | Path, allow_version_mismatch: bool = False) -> Table:
    """Read a table written by `Table.save`. A table from another autlearn/TVM version -> TableError unless
    `allow_version_mismatch`; a newer schema -> TableError."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{p}: no such table file")
    try:
        if p.suffix == ".csv":
            with p.open() as f:
                first = f.readline()
                prefix = f"# {META_KEY.decode()}: "
                if not first.startswith(prefix):
                    raise TableError(f"{p}: CSV lacks the '{prefix.strip()}' metadata line")
                meta = TableMeta.from_json(first[len(prefix) :])
                df = pd.read_csv(f)
        else:
            try:
                t = pq.read_table(p)
            except (pa.ArrowInvalid, OSError) as e:
                raise TableError(f"{p}: not a Parquet table ({e})") from None
            raw = (t.schema.metadata or {}).get(META_KEY)
            if raw is None:
                raise TableError(f"{p}: Parquet file has no {META_KEY.decode()} metadata (not an autlearn table)")
            meta = TableMeta.from_json(raw)
            df = t.to_pandas()
    except TableError as e:
        if str(p) in str(e):
            raise
        raise TableError(f"{p}: {e}", key=e.key) from None
    if meta.schema_version > SCHEMA_VERSION:
        raise TableError(
            f"{p}: schema version {meta.schema_version} is newer than this autlearn's "
            f"({SCHEMA_VERSION}); upgrade autlearn"
        )
    run = tool_versions()
    diffs = [
        f"{name} {have} (running {run[name]})"
        for name, have in (("autlearn", meta.autlearn_version), ("tvm", meta.tvm_version))
        if have != run[name]
    ]
    if diffs and not allow_version_mismatch:
        raise TableError(
            f"{p}: table was measured with another tool version: {', '.join(diffs)}; re-measure it "
            f"or allow the mismatch (allow_version_mismatch=True / --allow-version-mismatch)"
        )
    try:
        return Table(df, meta)
    except TableError as e:
        raise TableError(f"{p}: {e}", key=e.key) from None


# ---------------------------------------------------------------------------------------------- from samples


def table_from_measurements(df: pd.DataFrame, meta: TableMeta) -> Table:
    """Table from raw samples: one row per (layer key, repetition) with `ms` and optional `mj`."""
    missing = [c for c in (*KEY_COLUMNS, "ms") if c not in df.columns]
    if missing:
        raise TableError(f"measurements lack columns {missing}")
    if len(df) == 0:
        raise TableError("no measurements")
    rows = []
    for vals, g in df.groupby(list(KEY_COLUMNS), sort=True):
        key = key_from_mapping(dict(zip(KEY_COLUMNS, vals)))
        med, lo, hi = median_ci(g["ms"].to_numpy())
        if math.isnan(med):
            continue
        e = float(np.nanmedian(g["mj"].to_numpy(float))) if "mj" in g and g["mj"].notna().any() else math.nan
        rows.append(
            {
                **key.to_dict(),
                "median_ms": med,
                "ci_low_ms": lo,
                "ci_high_ms": hi,
                "n": int(np.isfinite(g["ms"].to_numpy(float)).sum()),
                "energy_mj": e,
                "source": "measured",
            }
        )
    return Table(pd.DataFrame(rows) if rows else _empty_frame(), meta)
