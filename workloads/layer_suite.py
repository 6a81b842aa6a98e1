"""Single-layer training workloads compiled together: one artifact ("suite") times many table keys per step.

A suite is a `TrainingProgram` whose calls are the table's (layer shape, phase) pairs; every call's phase name is
the `LayerKey` itself (`str(key)`, parsed back by `autlearn.workloads.layers.parse_key`), so the runner's per-phase
timings *are* the table's samples and the results store needs no side mapping. Per layer shape:

  forward   `y = layer(x, *params)` (conv/dwconv with the fused ReLU, as deployed)
  backward  `(dx, dW, db) = grads(x, dy, W)` written out for FC layers (the layers a transfer-learning step
            trains), so it is the backward pass alone, not a recomputed forward
  update    SGD `p -= lr * g`

Only FC layers get backward/update on a device: the suite measures what the transfer-learning step runs (trainable
= "head"); a table for trainable = "all" is host-only (`autlearn.workloads.tables.measure_on_host`).
The grid is split into `suites` chunks (`suite_keys`) so one artifact stays small enough to compile quickly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.compile import (
    _import,
    base_abi,
    optimize,
    target_dict,
    target_for_abi,
    target_key,
    triple_for_abi,
    tuning_database,
)
from autlearn.workloads.layers import LayerKey, table_grid
from autlearn.workloads.models import make_config
from autlearn.workloads.program import Call, TrainingProgram
from autlearn.workloads.tables import layer_workloads, sample_grid

if TYPE_CHECKING:
    from autlearn.workloads.program import TrainingProgram

SUITE_MODEL = "layers"
DEFAULT_LR = 0.01


def suite_keys(grid: Sequence[LayerKey], suite: int, suites: int) -> tuple[LayerKey, ...]:
    """Keys of chunk `suite` of `suites`: layer shapes dealt round-robin (sorted), every phase of a shape kept
    together, so chunks have similar mixes of small and large layers."""
    if not (suites >= 1 and 0 <= suite < suites):
        raise ConfigError(f"suite must be in [0, {suites}), got {suite}", key="suite")
    shapes = sorted({k.with_phase("forward") for k in grid})
    mine = set(shapes[suite::suites])
    return tuple(sorted(k for k in grid if k.with_phase("forward") in mine))


def _fc_backward(key: LayerKey) -> Any:
    """(x, dy, W) -> (dx, dW, db) of y = x @ W.T + b."""
    from tvm import relax  # tvm takes seconds to import; only this path needs it

    f32 = "float32"
    x = relax.Var("x", relax.TensorType((key.batch, key.c_in), f32))
    dy = relax.Var("dy", relax.TensorType((key.batch, key.c_out), f32))
    w = relax.Var("w", relax.TensorType((key.c_out, key.c_in), f32))
    bb = relax.BlockBuilder()
    with bb.function("bwd", [x, dy, w]):
        with bb.dataflow():
            dx = bb.emit(relax.op.matmul(dy, w))
            dw = bb.emit(relax.op.matmul(relax.op.permute_dims(dy), x))
            db = bb.emit(relax.op.sum(dy, axis=[0]))
            out = bb.emit_output(relax.Tuple([dx, dw, db]))
        bb.emit_func_output(out)
    return bb.get()["bwd"]


def _sgd(shapes: Sequence[tuple[int, ...]], lr: float) -> Any:
    """(*params, *grads) -> new params."""
    from tvm import relax  # tvm takes seconds to import; only this path needs it

    ps = [relax.Var(f"p{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    gs = [relax.Var(f"g{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    bb = relax.BlockBuilder()
    lr_c = relax.const(np.float32(lr))
    with bb.function("sgd", [*ps, *gs]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.subtract(p, relax.op.multiply(lr_c, g))) for p, g in zip(ps, gs)]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()["sgd"]


def build_suite_program(
    keys: Sequence[LayerKey],
    abi: str,
    *,
    family: str = "",
    config: dict[str, Any] | None = None,
    suite: int = 0,
    suites: int = 1,
    lr: float = DEFAULT_LR,
    database: Any = "default",
    seed: int = 0,
) -> TrainingProgram:
    """Compile the single-layer workloads of `keys` (all phases of each shape) into one TrainingProgram."""

    import torch  # torch takes seconds to import; only this path needs it
    import tvm  # tvm takes seconds to import; only this path needs it

    t0 = time.perf_counter()
    if not keys:
        raise ConfigError("a layer suite needs at least one layer key", key="keys")
    for k in keys:
        if k.phase != "forward" and k.type != "fc":
            raise ConfigError(
                f"device tables time backward/update for FC layers only (the trainable head); "
                f"got {k}. Use trainable='head' or a host table",
                key="trainable",
            )
    target = target_for_abi(abi)

    funcs: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    calls: list[Call] = []
    rng = np.random.default_rng(seed)
    for i, w in enumerate(layer_workloads(SimpleNamespace(seed=seed), keys)):
        k = w.key
        names = [n for n, _ in w.module.named_parameters()]
        fwd, values = _import(w.module.eval(), w.example, names)
        tag = f"L{i}"
        funcs[f"{tag}_forward"] = fwd.with_attr("global_symbol", f"{tag}_forward")
        ex = w.example.numpy() if isinstance(w.example, torch.Tensor) else np.asarray(w.example)
        tensors[f"{tag}.x"] = np.ascontiguousarray(ex)
        pn = [f"{tag}.p{j}" for j in range(len(values))]
        tensors.update({n: np.ascontiguousarray(v) for n, v in zip(pn, values)})
        with torch.no_grad():
            y = w.module(w.example)
        tensors[f"{tag}.y"] = np.zeros(tuple(y.shape), "float32")
        calls.append(Call(str(k.with_phase("forward")), f"{tag}_forward", (f"{tag}.x", *pn), (f"{tag}.y",)))
        if "backward" in w.phases or "update" in w.phases:
            # FC: params are (weight (c_out, c_in), bias (c_out,)).
            funcs[f"{tag}_backward"] = _fc_backward(k).with_attr("global_symbol", f"{tag}_backward")
            funcs[f"{tag}_update"] = _sgd([v.shape for v in values], lr).with_attr("global_symbol", f"{tag}_update")
            tensors[f"{tag}.dy"] = rng.standard_normal(tuple(y.shape)).astype("float32")
            gn = [f"{tag}.g{j}" for j in range(len(values))]
            tensors[f"{tag}.dx"] = np.zeros_like(tensors[f"{tag}.x"], dtype="float32")
            tensors.update({n: np.zeros_like(v) for n, v in zip(gn, values)})
            if "backward" in w.phases:
                calls.append(
                    Call(
                        str(k.with_phase("backward")),
                        f"{tag}_backward",
                        (f"{tag}.x", f"{tag}.dy", pn[0]),
                        (f"{tag}.dx", *gn),
                    )
                )
            if "update" in w.phases:
                calls.append(Call(str(k.with_phase("update")), f"{tag}_update", (*pn, *gn), tuple(pn)))
    tensors["loss"] = np.zeros((), "float32")  # the runner reports a loss; a suite has none (stays 0)
    mod = tvm.IRModule(funcs)
    stats: dict[str, Any] = {}
    db = tuning_database(abi) if database == "default" else database
    mod = optimize(mod, target, db, stats)
    meta = {
        "model": SUITE_MODEL,
        "variant": "full",
        "abi": base_abi(abi),
        "target_id": abi,
        "target": json.dumps(target_dict(abi), sort_keys=True),
        "triple": triple_for_abi(abi),
        "target_key": target_key(abi),
        "config": {"family": family, **(config or {}), "suite": suite, "suites": suites},
        "family": family,
        "suite": suite,
        "suites": suites,
        "lr": lr,
        "layer_keys": [str(c.phase) for c in calls],
        "tuning": (
            {"database": db["key"], "digest": db["digest"], "tuned_kernels": stats.get("tuned_kernels", 0)}
            if db is not None
            else "untuned"
        ),
        "compile_s": round(time.perf_counter() - t0, 3),
        "phase_names": "str(LayerKey)",
    }
    return TrainingProgram(mod=mod, tensors=tensors, calls=tuple(calls), meta=meta)


def suite_for_config(config: Any, every: int, suite: int, suites: int, trainable: str = "head") -> tuple[LayerKey, ...]:
    """The keys suite `suite` of `suites` measures for a model config: `sample_grid(table_grid(config), every)`."""

    if trainable != "head":
        raise ConfigError("device tables measure the transfer-learning step (trainable='head')", key="trainable")
    return suite_keys(sample_grid(table_grid(config, trainable), every), suite, suites)


def suite_count(n_shapes: int, per_suite: int) -> int:
    return max(1, math.ceil(n_shapes / max(1, per_suite)))


def suite_program(
    abi: str,
    *,
    family: str = "mobilenet",
    every: int = 2,
    suite: int = 0,
    suites: int = 1,
    trainable: str = "head",
    lr: float = DEFAULT_LR,
    database: Any = "default",
    **model_config: Any,
) -> TrainingProgram:
    """The program a campaign's `model = "layers"` workload runs: suite `suite` of `suites` of the sampled grid of
    `family` with `model_config` (the config a table is built for)."""

    cfg = make_config(family, **model_config)
    keys = suite_for_config(cfg, int(every), int(suite), int(suites), trainable)
    if not keys:
        raise ConfigError(f"suite {suite} of {suites} is empty: fewer layer shapes than suites", key="suites")
    return build_suite_program(
        keys,
        abi,
        family=family,
        config={**cfg.to_dict(), "every": int(every)},
        suite=int(suite),
        suites=int(suites),
        lr=lr,
        seed=cfg.seed,
        database=database,
    )
