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
family's measured range), NetAdapt style, and marked "interpolated". Measuring on a phone is the campaign engine's job: it compiles and runs
`layer_workloads(...)` and hands the per-repetition samples to `table_from_measurements`. `measure_on_host` times
single-layer PyTorch steps on this machine: such tables are labelled `source_device = "host (not a phone)"`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from profiler.errors import ConfigError, TableError
from profiler.stats import median_ci
from profiler.versions import stored_version, tool_versions
from workloads.layers import KEY_COLUMNS, LayerKey, flops, key_from_mapping

SCHEMA_VERSION = 2      # 2: source "fitted", column measured_ms (version-1 tables still load)
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
    measurement_tool: str = ""        # e.g. "torch-host", "tvm-runner"
    model: str = ""                   # model family the grid was made for
    model_config: str = "{}"          # JSON of the config's to_dict()
    created: str = ""
    notes: str = ""
    labels: str = ""                  # comma-joined result labels of the measurements: virtual, modeled, ...
    energy_method: str = ""           # how per-layer energy was attributed (empty: no energy)
    latency_scale: float = 1.0        # whole-model latency = scale x sum of layers + offset (1, 0: uncalibrated)
    latency_offset_ms: float = 0.0
    calibration: str = ""             # JSON: how scale and offset were fitted (models, device, errors)
    control_ms: float = 0.0           # median step of the control model while measuring (0: none); later
    control_config: str = ""          #   measurements use rounds whose control is within tolerance of it
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_running_tools(cls, **kw: Any) -> "TableMeta":
        v = tool_versions()
        kw.setdefault("autlearn_version", v["autlearn"])
        kw.setdefault("tvm_version", v["tvm"])
        kw.setdefault("torch_version", v["torch"])
        kw.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TableMeta":
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
        return json.loads(self.model_config or "{}")


def _empty_frame() -> pd.DataFrame:
    cols = {c: pd.Series(dtype="object" if c in ("type", "phase") else "int64") for c in KEY_COLUMNS}
    cols.update(median_ms=pd.Series(dtype=float), ci_low_ms=pd.Series(dtype=float),
                ci_high_ms=pd.Series(dtype=float), n=pd.Series(dtype="int64"),
                energy_mj=pd.Series(dtype=float), source=pd.Series(dtype="object"),
                measured_ms=pd.Series(dtype=float))
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
    if "measured_ms" not in df.columns:       # version-1 tables: the measured rows' median is what was measured
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
            raise TableError(f"layer key not in table ({self.meta.source_device}): {key}; "
                             f"rebuild the table for this model/grid", key=key) from None

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
            raise TableError(f"{len(miss)} layer key(s) not in table, first: {miss[0]}; rebuild the table "
                             f"for this model/grid", key=miss[0])

    def counts(self) -> dict[str, int]:
        return {s: int((self.df["source"] == s).sum()) for s in SOURCES}

    def complete(self, grid: Iterable[LayerKey]) -> "Table":
        """A table covering `grid`: missing keys interpolated within their family (marked interpolated)."""
        miss = self.missing(grid)
        if not miss:
            return self
        rows = interpolate(self.df, miss)
        df = pd.concat([self.df, rows], ignore_index=True) if len(self.df) else rows
        return Table(df, self.meta)

    # ----------------------------------------------------------------------------------------- files

    def to_arrow(self):
        import pyarrow as pa

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
            import pyarrow.parquet as pq

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
                meta = TableMeta.from_json(first[len(prefix):])
                df = pd.read_csv(f)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

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
        raise TableError(f"{p}: schema version {meta.schema_version} is newer than this autlearn's "
                         f"({SCHEMA_VERSION}); upgrade autlearn")
    run = tool_versions()
    diffs = [f"{name} {have} (running {run[name]})" for name, have in
             (("autlearn", meta.autlearn_version), ("tvm", meta.tvm_version)) if have != run[name]]
    if diffs and not allow_version_mismatch:
        raise TableError(f"{p}: table was measured with another tool version: {', '.join(diffs)}; re-measure it "
                         f"or allow the mismatch (allow_version_mismatch=True / --allow-version-mismatch)")
    try:
        return Table(df, meta)
    except TableError as e:
        raise TableError(f"{p}: {e}", key=e.key) from None


# ---------------------------------------------------------------------------------------------- statistics


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
        rows.append({**key.to_dict(), "median_ms": med, "ci_low_ms": lo, "ci_high_ms": hi,
                     "n": int(np.isfinite(g["ms"].to_numpy(float)).sum()), "energy_mj": e, "source": "measured"})
    return Table(pd.DataFrame(rows) if rows else _empty_frame(), meta)


# ---------------------------------------------------------------------------------------------- interpolation


def _fit_predict(known: pd.DataFrame, col: str, want: list[LayerKey]) -> np.ndarray:
    """Predict `col` for `want` (one family) from the family's known rows."""
    from scipy.interpolate import RBFInterpolator

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
    return np.clip(pred, float(np.min(y)), float(np.max(y)))


def interpolate(df: pd.DataFrame, keys: Sequence[LayerKey]) -> pd.DataFrame:
    """Rows (source "interpolated") for `keys` from the measured rows of their families in `df`."""
    known = df[df["source"] == "measured"] if len(df) else df
    fam_of = known.apply(lambda r: key_from_mapping(r).family, axis=1) if len(known) else pd.Series(dtype=object)
    by_family: dict[tuple, list[LayerKey]] = {}
    for k in keys:
        by_family.setdefault(k.family, []).append(k)
    rows = []
    for fam, want in by_family.items():
        kf = known[fam_of == fam] if len(known) else known
        if len(kf) == 0:
            raise TableError(f"no measured point in the family of {want[0]} (type/kernel/stride/size/batch/phase): "
                             f"cannot interpolate; measure at least one", key=want[0])
        ms = _fit_predict(kf, "median_ms", want)
        mj = _fit_predict(kf, "energy_mj", want)
        for w, a, e in zip(want, ms, mj):
            rows.append({**w.to_dict(), "median_ms": float(a), "ci_low_ms": math.nan, "ci_high_ms": math.nan,
                         "n": 0, "energy_mj": float(e), "source": "interpolated"})
    return pd.DataFrame(rows)


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
    from scipy.optimize import least_squares

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
    from dataclasses import replace

    if (table.df["source"] == "fitted").any():
        raise TableError("the table is already smoothed (source 'fitted'); smooth the measured table")
    df = table.df.copy()
    keys = [key_from_mapping(r) for r in df.to_dict("records")]
    fams: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        fams.setdefault(k.family, []).append(i)
    measured = (df["source"] == "measured").to_numpy()
    resid_all, per_family = [], []
    for fam, idx in fams.items():
        m_idx = [i for i in idx if measured[i] and np.isfinite(df.at[i, "median_ms"])]
        if not m_idx:
            raise TableError(f"no measured point in the family of {keys[idx[0]]}: cannot smooth", key=keys[idx[0]])
        for col in ("median_ms", "energy_mj"):
            e_idx = [i for i in m_idx if np.isfinite(df.at[i, col])]
            if not e_idx:
                continue
            pred, resid = _smooth_family([keys[i] for i in e_idx], df.loc[e_idx, col].to_numpy(float),
                                         [keys[i] for i in idx])
            df.loc[idx, col] = pred
            if col == "median_ms":
                resid_all.extend(resid)
                per_family.append({"family": "/".join(map(str, fam)), "measured": len(e_idx),
                                   "median_abs_residual": float(np.median(np.abs(resid))),
                                   "max_abs_residual": float(np.max(np.abs(resid)))})
    df["source"] = "fitted"
    r = np.abs(np.array(resid_all))
    info = {"method": "per family: latency = a + b c_in + c c_out + d FLOPs, a..d >= 0, soft-L1 (scipy "
                      "least_squares); energy likewise", "families": len(per_family),
            "measured_points": int(len(r)), "median_abs_residual": float(np.median(r)),
            "share_within_20pct": float(np.mean(r <= 0.2)), "max_abs_residual": float(r.max()),
            "worst_families": sorted(per_family, key=lambda d: -d["median_abs_residual"])[:5]}
    notes = (table.meta.notes + "; " if table.meta.notes else "") + "smoothed: " + json.dumps(info, sort_keys=True)
    return Table(df, replace(table.meta, notes=notes)), info


def sample_grid(grid: Sequence[LayerKey], every: int = 2) -> tuple[LayerKey, ...]:
    """A measurement subset of `grid`: per family, every `every`-th channel count along each dimension plus the
    extremes (so interpolation stays inside the measured hull). every=1 -> the whole grid."""
    if every < 1:
        raise ConfigError(f"must be >= 1, got {every}", key="every")
    if every == 1:
        return tuple(grid)
    fams: dict[tuple, list[LayerKey]] = {}
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


# ---------------------------------------------------------------------------------------------- workloads


@dataclass(frozen=True, eq=False)
class LayerWorkload:
    """One single-layer model to compile and measure: `module(example)` runs the layer (conv/dwconv include the
    fused ReLU, as deployed); `phases` are the table phases to time for it."""

    key: LayerKey               # phase "forward"
    phases: tuple[str, ...]
    module: Any                 # torch.nn.Module
    example: Any                # torch.Tensor input

    @property
    def name(self) -> str:
        k = self.key
        return f"{k.type}_k{k.kernel}s{k.stride}g{k.groups}_{k.in_h}x{k.in_w}_{k.c_in}x{k.c_out}_b{k.batch}"


def _layer_module(key: LayerKey):
    import torch
    from torch import nn

    if key.type in ("conv", "dwconv"):
        mod = nn.Sequential(nn.Conv2d(key.c_in, key.c_out, key.kernel, key.stride, key.kernel // 2,
                                      groups=key.groups, bias=True), nn.ReLU())
        ex = torch.randn(key.batch, key.c_in, key.in_h, key.in_w)
    elif key.type == "fc":
        mod = nn.Linear(key.c_in, key.c_out)
        ex = torch.randn(key.batch, key.c_in) if key.in_h * key.in_w == 1 else \
            torch.randn(key.batch, key.in_h * key.in_w, key.c_in)
    elif key.type == "lstm":
        class LSTMOut(nn.Module):   # output sequence only (what the next layer consumes)
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(key.c_in, key.c_out, batch_first=True)

            def forward(self, x):
                return self.lstm(x)[0]

        mod = LSTMOut()
        ex = torch.randn(key.batch, key.in_h, key.c_in)
    else:
        mod = nn.Embedding(key.c_in, key.c_out)
        ex = torch.randint(0, key.c_in, (key.batch, key.in_h))
    return mod, ex


def layer_workloads(config: Any, grid: Iterable[LayerKey]) -> tuple[LayerWorkload, ...]:
    """The single-layer models the campaign engine compiles and measures to fill a table for `grid` (one per
    distinct layer shape; weights seeded from `config.seed`)."""
    import torch

    phases: dict[LayerKey, set[str]] = {}
    for k in grid:
        phases.setdefault(k.with_phase("forward"), set()).add(k.phase)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(getattr(config, "seed", 0))
        for k in sorted(phases):
            mod, ex = _layer_module(k)
            out.append(LayerWorkload(k, tuple(p for p in ("forward", "backward", "update") if p in phases[k]),
                                     mod, ex))
    return tuple(out)


def _phase_timers(w: LayerWorkload, inner: int, lr: float = 0.05) -> dict[str, Callable[[], float]]:
    """phase -> callable timing one repetition (ms, mean over `inner` calls) of that phase with PyTorch eager."""
    import torch

    mod, ex = w.module, w.example
    train = "backward" in w.phases or "update" in w.phases
    params = list(mod.parameters())
    for p in params:
        p.requires_grad_(train)
    x = ex.clone().requires_grad_(True) if (train and ex.is_floating_point()) else ex

    def fwd() -> float:
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            if train:
                mod(x)
            else:
                with torch.no_grad():
                    mod(x)
        return (time.perf_counter_ns() - t0) / inner / 1e6

    def bwd() -> float:
        total = 0
        for _ in range(inner):
            out = mod(x).sum()
            t0 = time.perf_counter_ns()
            out.backward()
            total += time.perf_counter_ns() - t0
        return total / inner / 1e6

    def upd() -> float:
        if any(p.grad is None for p in params):
            mod(x).sum().backward()
        t0 = time.perf_counter_ns()
        with torch.no_grad():
            for _ in range(inner):
                for p in params:
                    p.add_(p.grad, alpha=-lr)
        return (time.perf_counter_ns() - t0) / inner / 1e6

    fns = {"forward": fwd, "backward": bwd, "update": upd}
    return {ph: fns[ph] for ph in w.phases}


def measure_on_host(config: Any, keys: Iterable[LayerKey], reps: int = 5, warmup: int = 1, inner: int = 3,
                    threads: int = 1, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per-repetition samples of single-layer PyTorch training phases on THIS HOST (not a phone): one row per
    (key, rep) with `ms`. Repetitions are interleaved (round r times every key once), so load from other
    processes spreads over all keys instead of biasing the ones measured during a busy moment. `threads` pins
    torch's intra-op threads while measuring (restored after)."""
    import torch

    work = layer_workloads(config, keys)
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    rows: list[dict[str, Any]] = []
    try:
        timers = [(w, _phase_timers(w, inner)) for w in work]
        rounds = warmup + reps
        for r in range(rounds):
            for w, fns in timers:
                for ph, fn in fns.items():
                    ms = fn()
                    if r >= warmup:
                        rows.append({**w.key.with_phase(ph).to_dict(), "rep": r - warmup, "ms": ms})
            if progress:
                progress(r + 1, rounds)
    finally:
        torch.set_num_threads(old)
    return pd.DataFrame(rows)


def host_meta(model: str, config: Any, notes: str = "") -> TableMeta:
    return TableMeta.for_running_tools(
        source_device=HOST_DEVICE, device_serial="host", device_model=f"host {platform.machine()} "
        f"({platform.processor() or platform.system()})", virtual=False, governor_requested="n/a (host)",
        governor_applied="n/a (host)", measurement_tool="torch-host", model=model,
        model_config=json.dumps(config.to_dict(), sort_keys=True), notes=notes)


def build_host_table(model: str, config: Any, grid: Sequence[LayerKey], every: int = 2, reps: int = 5,
                     threads: int = 1, progress: Callable[[int, int], None] | None = None) -> Table:
    """Measure a subset of `grid` (`sample_grid(grid, every)`) on this host and interpolate the rest."""
    sub = sample_grid(grid, every)
    df = measure_on_host(config, sub, reps=reps, threads=threads, progress=progress)
    meta = host_meta(model, config, notes=f"measured {len(sub)} of {len(grid)} grid keys (every {every}), "
                                          f"{reps} interleaved reps, {threads} thread(s); PyTorch eager, not TVM")
    return table_from_measurements(df, meta).complete(grid)


# ---------------------------------------------------------------------------------------------- from campaigns

ENERGY_APPORTIONED = ("step energy apportioned to each layer call by its share of the step time (the runner "
                      "times calls, the power source integrates whole steps)")


def measurements_from_results(raw: pd.DataFrame) -> pd.DataFrame:
    """Pure parser: timed steps of layer-suite cells (campaign results, `profiler.store.load_results`) -> one row
    per (device, governor, layer key, sample) with `ms` and `mj` (NaN without energy). Phase columns are named
    `phase_<str(LayerKey)>_ns`; a step's energy is apportioned to its calls by time (ENERGY_APPORTIONED)."""
    from workloads.layers import parse_key

    if raw is None or len(raw) == 0 or "workload" not in raw:
        raise TableError("no campaign results to build a table from")
    df = raw[(raw["workload"] == "layers") & ~raw["warmup"].astype(bool)]
    if len(df) == 0:
        raise TableError("the results hold no timed steps of layer-suite cells (workload 'layers')")
    cols = [c for c in df.columns if c.startswith("phase_") and c.endswith("_ns") and df[c].notna().any()]
    keys = {c: parse_key(c[len("phase_"):-len("_ns")]) for c in cols}
    ids = ["device_serial", "device_model", "device_virtual", "governor_requested", "governor_applied", "labels",
           *(["affinity"] if "affinity" in df else []), "energy_source", "cell_id", "repetition", "step", "step_ns", "energy_j"]
    long = df[ids + cols].melt(id_vars=ids, value_vars=cols, var_name="phase_col", value_name="ns").dropna(
        subset=["ns"])
    kd = pd.DataFrame([keys[c].to_dict() for c in long["phase_col"]], index=long.index)
    out = pd.concat([long[ids], kd], axis=1)
    out["ms"] = long["ns"].astype(float) / 1e6
    share = long["ns"].astype(float) / long["step_ns"].astype(float)
    out["mj"] = long["energy_j"].astype(float) * 1e3 * share
    return out.reset_index(drop=True)


def tables_from_results(raw: pd.DataFrame, grid: Sequence[LayerKey] | None = None, *, model: str = "",
                        config: Any = None, notes: str = "") -> dict[tuple[str, str], Table]:
    """One Table per (device serial, governor requested) from layer-suite results; `grid` given -> completed by
    interpolation over it. Tool versions are the running ones (a table is built where it was measured)."""
    m = measurements_from_results(raw)
    out: dict[tuple[str, str], Table] = {}
    for (serial, gov), g in m.groupby(["device_serial", "governor_requested"], sort=True):
        if "affinity" in g and g["affinity"].nunique() > 1:
            raise TableError(f"{serial} / {gov}: layer cells ran under several CPU affinities "
                             f"({', '.join(sorted(map(str, g['affinity'].unique())))}); one table needs one")
        applied = ",".join(sorted({str(x) for x in g["governor_applied"].dropna()})) or "unknown"
        labels = ",".join(sorted({x for ls in g["labels"].dropna() for x in str(ls).split(",") if x}))
        has_energy = bool(g["mj"].notna().any())
        meta = TableMeta.for_running_tools(
            source_device=str(g["device_model"].iloc[0]) or str(serial), device_serial=str(serial),
            device_model=str(g["device_model"].iloc[0]), virtual=bool(g["device_virtual"].iloc[0]),
            governor_requested=str(gov), governor_applied=applied, measurement_tool="tvm-runner (layer suites)",
            model=model, model_config=json.dumps(config.to_dict(), sort_keys=True) if config is not None else "{}",
            notes=notes, labels=labels,
            energy_method=(f"{ENERGY_APPORTIONED}; source {','.join(sorted(set(g['energy_source'])))}"
                           if has_energy else ""))
        t = table_from_measurements(g, meta)
        out[(str(serial), str(gov))] = t.complete(grid) if grid is not None else t
    return out


CALIBRATIONS = ("affine", "ratio")


def _fit(base: np.ndarray, measured: np.ndarray, method: str) -> tuple[float, float, str]:
    """(scale, offset_ms, method used). affine: Theil-Sen line measured ~ scale * base + offset (robust to a slow
    round); it falls back to the ratio when the line is not increasing or predicts <= 0 within the data."""
    from scipy import stats

    if method == "affine" and len(np.unique(base)) >= 2:
        slope, intercept, _, _ = stats.theilslopes(measured, base)
        if slope > 0 and slope * base.min() + intercept > 0:
            return float(slope), float(intercept), "affine"
    return float(np.median(measured / base)), 0.0, "ratio"


def calibrate(table: Table, predicted_ms: Sequence[float], measured_ms: Sequence[float],
              info: dict[str, Any] | None = None, method: str = "affine",
              control_ms: float | None = None) -> tuple[Table, dict[str, Any]]:
    """A copy of `table` whose whole-model latency is fitted to whole models measured on the same device.

    A sum of per-layer measurements misses per-step work (pooling, loss, dispatch) and counts a fixed cost per
    layer call once per layer, which a whole model pays once: `affine` (default) fits measured = scale x sum +
    offset (Theil-Sen), `ratio` only the median measured/sum. Returns (table, fit); fit holds the parameters and
    leave-one-out errors (each model predicted by the fit to the others). `control_ms`: the control model's latency
    while those models were measured; it becomes the copy's control reference (the conditions its predictions
    were fitted to; the table's own reference is kept in the fit as `table_control_ms`)."""
    from dataclasses import replace

    if method not in CALIBRATIONS:
        raise TableError(f"unknown calibration {method!r}; valid: {', '.join(CALIBRATIONS)}")
    p = np.asarray(predicted_ms, float)
    m = np.asarray(measured_ms, float)
    if len(p) < 3 or len(p) != len(m) or not (np.all(np.isfinite(p) & (p > 0)) and np.all(np.isfinite(m) & (m > 0))):
        raise TableError("calibration needs >= 3 whole models with positive predicted and measured latency")
    base = (p - table.meta.latency_offset_ms) / table.meta.latency_scale     # calibrate from the raw layer sums
    scale, offset, used = _fit(base, m, method)
    loo = []
    for i in range(len(p)):
        s_i, o_i, _ = _fit(np.delete(base, i), np.delete(m, i), method)
        loo.append((s_i * base[i] + o_i) / m[i] - 1)
    loo_a = np.abs(np.array(loo))
    fit = {"method": {"affine": "Theil-Sen line measured = scale x sum of layers + offset over whole models",
                      "ratio": "median of measured/predicted over whole models"}[used],
           "scale": scale, "offset_ms": offset, "models": len(p),
           "loo_mean_abs_error": float(loo_a.mean()), "loo_max_abs_error": float(loo_a.max()),
           "loo_within_10pct": float(np.mean(loo_a <= 0.10)), **(info or {})}
    ref = table.meta.control_ms
    if control_ms is not None and control_ms > 0:
        fit.update(control_ms=float(control_ms), table_control_ms=ref)
        ref = float(control_ms)
    meta = replace(table.meta, latency_scale=scale, latency_offset_ms=offset, control_ms=ref,
                   calibration=json.dumps(fit, sort_keys=True))
    return Table(table.df, meta), fit
