"""A model's resource: latency/energy = sum over its (layer, phase) keys from a table; FLOPs and memory exact.

The sum ignores what the table does not hold (pooling, loss, framework overhead between layers); whole-model
measurements validate it with `prediction_error` (nn-Meter reports 99 % of models within +-10 % on Pixel 4).
"""

from __future__ import annotations

import json as _json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from autlearn.profiler.errors import ConfigError, TableError
from autlearn.workloads import data
from autlearn.workloads.layers import flops, model_keys, model_layers, param_bytes
from autlearn.workloads.models import build_model
from autlearn.workloads.registry import canonical_config as canonical
from autlearn.workloads.registry import of_config

RESOURCE_KINDS = ("latency", "energy", "memory", "flops")
UNITS = {"latency": "ms", "energy": "mJ", "memory": "B", "flops": "FLOPs"}
TOLERANCE = 0.10


@dataclass(frozen=True)
class Resource:
    """Predicted per-training-step latency (ms) and energy (mJ) (None without a table / energy column), exact
    FLOPs per step and parameter memory (bytes)."""

    latency_ms: float | None
    energy_mj: float | None
    flops: int
    memory_bytes: int

    def value(self, kind: str) -> float:
        if kind not in RESOURCE_KINDS:
            raise ConfigError(f"unknown resource {kind!r}; valid: {', '.join(RESOURCE_KINDS)}", key="resource")
        v = {"latency": self.latency_ms, "energy": self.energy_mj, "memory": self.memory_bytes, "flops": self.flops}[
            kind
        ]
        if v is None:
            raise ConfigError(
                f"no {kind} prediction (needs a table{' with energy' if kind == 'energy' else ''})", key="resource"
            )
        return float(v)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "energy_mj": self.energy_mj,
            "flops": self.flops,
            "memory_bytes": self.memory_bytes,
        }


def model_resource(config: Any, table: Any = None, trainable: str = "head", head_rank: int | None = None) -> Resource:
    """Resource of one training step of `config` (TableError naming the first key the table lacks)."""
    keys = model_keys(config, trainable, head_rank)
    fl = sum(flops(k) for k in keys)
    mem = sum(param_bytes(layer.key) for layer in model_layers(config, trainable, head_rank))
    lat = en = None
    if table is not None:
        table.require(keys)
        lat = float(sum(table.latency_ms(k) for k in keys)) * float(table.meta.latency_scale) + float(
            table.meta.latency_offset_ms
        )
        if table.has_energy:
            en = float(sum(table.energy_mj(k) for k in keys))
    return Resource(lat, en, int(fl), int(mem))


def predict(config: Any, kind: str, table: Any = None, trainable: str = "head", head_rank: int | None = None) -> float:
    """One resource value; `table` is needed for latency/energy."""
    if kind in ("latency", "energy") and table is None:
        raise ConfigError(f"predicting {kind} needs a table", key="table")
    if kind == "energy" and not table.has_energy:
        raise TableError(
            f"table ({table.meta.source_device}) has no energy column: measured without a power "
            f"monitor; use a latency/memory/flops budget or an energy table"
        )
    return model_resource(config, table if kind in ("latency", "energy") else None, trainable, head_rank).value(kind)


@dataclass(frozen=True, eq=False)
class PredictionReport:
    """Per-model errors (`per_model`: model, predicted, measured, error = predicted/measured - 1, abs_error,
    within) and summary statistics over models."""

    per_model: pd.DataFrame
    tolerance: float
    n: int
    mean_abs_error: float
    median_abs_error: float
    max_abs_error: float
    rmspe: float
    within_fraction: float

    def summary(self) -> str:
        return (
            f"{self.n} models: mean |err| {self.mean_abs_error:.1%}, median {self.median_abs_error:.1%}, "
            f"max {self.max_abs_error:.1%}, RMSPE {self.rmspe:.1%}, {self.within_fraction:.0%} within "
            f"+-{self.tolerance:.0%}"
        )


def prediction_error(
    predicted: Mapping[str, float], measured: Mapping[str, float], tolerance: float = TOLERANCE
) -> PredictionReport:
    """Compare predicted vs measured whole-model values (same names; measured > 0)."""
    names = sorted(set(predicted) & set(measured))
    extra = sorted(set(predicted) ^ set(measured))
    if extra:
        raise ConfigError(f"models without both a prediction and a measurement: {extra}", key="models")
    if not names:
        raise ConfigError("no models to compare", key="models")
    rows = []
    for n in names:
        p, m = float(predicted[n]), float(measured[n])
        if not (m > 0 and math.isfinite(m) and math.isfinite(p)):
            raise ConfigError(f"{n}: measured must be > 0 and both finite, got {p}, {m}", key="measured")
        err = p / m - 1
        rows.append(
            {
                "model": n,
                "predicted": p,
                "measured": m,
                "error": err,
                "abs_error": abs(err),
                "within": abs(err) <= tolerance,
            }
        )
    df = pd.DataFrame(rows)
    a = df["abs_error"].to_numpy()
    return PredictionReport(
        df,
        tolerance,
        len(df),
        float(a.mean()),
        float(np.median(a)),
        float(a.max()),
        float(np.sqrt((a**2).mean())),
        float(df["within"].mean()),
    )


def measure_models_on_host(
    configs: Mapping[str, Any], steps: int = 20, warmup: int = 5, threads: int = 1, lr: float = 0.05
) -> dict[str, float]:
    """Median ms of one transfer-learning training step per model on THIS HOST with PyTorch eager (backbone
    forward without grad, head forward/backward/SGD update). Steps are interleaved across models (round r runs
    every model once) so load from other processes hits all of them alike. A host proxy, not a phone."""

    import torch  # torch takes seconds to import; only this path needs it

    x: np.ndarray | torch.Tensor  # a config's batch: numpy, then as the tensors each step uses
    y: np.ndarray | torch.Tensor
    state = {}
    for name, cfg in configs.items():
        m = build_model(cfg)
        x, y = data.default_batch(cfg)
        state[name] = (m, torch.from_numpy(x), torch.from_numpy(y), list(m.head.parameters()))
    times: dict[str, list[float]] = {n: [] for n in configs}
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        for i in range(warmup + steps):
            for name, (m, x, y, params) in state.items():
                t0 = time.perf_counter_ns()
                with torch.no_grad():
                    f = m.features(x)
                loss = torch.nn.functional.cross_entropy(m.head(f), y)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.add_(g, alpha=-lr)
                if i >= warmup:
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        torch.set_num_threads(old)
    return {n: float(np.median(t)) for n, t in times.items()}


# ---------------------------------------------------------------------------------------------- validation


def validation_configs(config: Any, n: int = 12, seed: int = 0) -> dict[str, Any]:
    """`n` whole models the table can predict (every one reachable by the pruner; the family's
    `validation_configs`): MobileNet -> uniform thinning (fractions 1, 3/4, 1/2, 1/4) then random per-layer channel
    counts; LSTM -> the head at ranks spread over the reachable range (`head_rank` in the config). Names are stable
    for a given (config, n, seed)."""

    if n < 1:
        raise ConfigError(f"must be >= 1, got {n}", key="models")
    fam = of_config(config)
    if fam.validation_configs is None:
        return {"full": config}
    return fam.validation_configs(config, n, seed)


def canonical_config(config: Mapping[str, Any]) -> str:
    """The JSON form a campaign workload's config takes in results (sorted keys, tuples as lists);
    `autlearn.workloads.registry.canonical_config`."""

    return canonical(config)


def measured_from_results(raw: pd.DataFrame, workload: str | None = None) -> pd.DataFrame:
    """Pure parser: whole-model cells of campaign results -> one row per (workload, config, batch, governor) with
    the median step latency (ms) and median per-step energy (mJ; NaN without a source) over timed steps.
    `config` is `canonical_config` of the cell's workload config."""

    df = raw[~raw["warmup"].astype(bool) & (raw["workload"] != "layers")]
    if workload is not None:
        df = df[df["workload"] == workload]
    if len(df) == 0:
        raise ConfigError("the results hold no timed steps of whole-model cells", key="results")
    rows = []
    for (wl, variant, cfg_json, batch, gov), g in df.groupby(
        ["workload", "variant", "config", "batch", "governor_requested"], sort=True
    ):
        e = g["energy_j"].astype(float)
        rows.append(
            {
                "workload": wl,
                "variant": variant,
                "config": canonical_config(_json.loads(cfg_json)),
                "batch": int(batch),
                "governor": gov,
                "ms": float(np.median(g["step_ns"])) / 1e6,
                "mj": float(np.nanmedian(e)) * 1e3 if e.notna().any() else math.nan,
                "n": len(g),
            }
        )
    return pd.DataFrame(rows)
