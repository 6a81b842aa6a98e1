"""The training-program contract shared by the compiler and the runners (see DEVELOPING.md).

A `TrainingProgram` is a Relax `IRModule` plus named initial tensors and an ordered tuple of `Call`s executed once
per training step. Each call invokes a Relax function with the named tensors `args` and writes its (flattened)
results to the named tensors `outs`, overwriting them; that is how updated weights feed the next step. The tensor
named `loss` is reported per step.

`mod` is already optimized by the compiler (fusion, schedules); building it only needs TVM's default *build*
pipeline (`tvm.relax.build(mod, target, relax_pipeline="default")`, see `build_executable`), so the host executor
here and the static on-device runner run identical kernels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autlearn.profiler.errors import ConfigError

LOSS = "loss"


@dataclass(frozen=True)
class Call:
    """One function invocation of a training step: `outs = func(*args)` (tensor names)."""

    phase: str
    func: str
    args: tuple[str, ...]
    outs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "func": self.func, "args": list(self.args), "outs": list(self.outs)}


@dataclass(frozen=True, eq=False)
class TrainingProgram:
    """A compiled training step.

    mod:     tvm.IRModule (Relax functions named by `calls[*].func`, plus optional extras such as `forward`).
    tensors: initial value of every named tensor, in a stable order (params, optimizer state, batch, labels, loss).
    calls:   the calls of one step, in order.
    meta:    JSON-serialisable facts: model, variant, abi, target, triple, config, phases, trainable, ...
    """

    mod: Any
    tensors: Mapping[str, np.ndarray]
    calls: tuple[Call, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        names = set(self.tensors)
        if LOSS not in names:
            raise ConfigError("program has no tensor named 'loss'", key="tensors")
        funcs = {gv.name_hint for gv in self.mod.get_global_vars()} if self.mod is not None else None
        for i, c in enumerate(self.calls):
            missing = [a for a in (*c.args, *c.outs) if a not in names]
            if missing:
                raise ConfigError(f"call {i} ({c.func}) names unknown tensors {missing}", key="calls")
            if funcs is not None and c.func not in funcs:
                raise ConfigError(f"call {i} names function {c.func!r} not in the module", key="calls")

    @property
    def phases(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.phase for c in self.calls))

    def manifest(self) -> dict[str, Any]:
        """JSON-able description (no tensor data): what a runner needs besides the compiled library."""
        return {
            "tensors": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.tensors.items()],
            "calls": [c.to_dict() for c in self.calls],
            "meta": dict(self.meta),
        }


def _flatten(value: Any) -> list[Any]:
    """VM results may be a tensor or (nested) tuples of tensors; flatten depth-first."""
    import tvm  # tvm takes seconds to import; only this path needs it

    if isinstance(value, tvm.runtime.Tensor):
        return [value]
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not hasattr(value, "numpy"):
        out: list[Any] = []
        for v in value:
            out.extend(_flatten(v))
        return out
    return [value]


def build_executable(program: TrainingProgram, target: Any = None, *, system_lib: bool = False) -> Any:
    """Build `program.mod` with TVM's default build pipeline (lowering only; optimization happened at compile)."""
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm import relax  # tvm takes seconds to import; only this path needs it

    target = target or program.meta.get("target") or {"kind": "llvm"}
    if isinstance(target, str) and target.lstrip().startswith("{"):
        target = json.loads(target)
    if isinstance(target, (str, dict)):
        target = tvm.target.Target(target)
    return relax.build(program.mod, target=target, relax_pipeline="default", system_lib=system_lib)


def set_num_threads(num_threads: int | None) -> None:
    """Size TVM's CPU thread pool (None: leave TVM_NUM_THREADS / the runtime's default)."""
    if not num_threads:
        return
    import tvm  # tvm takes seconds to import; only this path needs it
    import tvm_ffi  # tvm takes seconds to import; only this path needs it

    os.environ["TVM_NUM_THREADS"] = str(num_threads)  # read when the pool starts
    assert tvm.runtime is not None  # importing tvm registers the runtime's functions
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, int(num_threads))  # 1 = "big" cores (all on x86)


def run_on_host(
    program: TrainingProgram,
    steps: int,
    target: Any = None,
    *,
    warmup: int = 0,
    num_threads: int | None = None,
    executable: Any = None,
    tensors: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Reference executor: run `warmup + steps` training steps exactly as the on-device runner does.

    Returns one record per step, shaped like the runner's JSON lines:
    `{"step", "warmup", "phases_ns": {phase: ns}, "step_ns", "loss"}`. Pass `executable` to reuse a build and
    `tensors` to override initial values (e.g. another batch). Final tensor values are in the last record's
    `"tensors"` key (numpy), which the runner does not print.
    """
    import tvm  # tvm takes seconds to import; only this path needs it
    from tvm import relax  # tvm takes seconds to import; only this path needs it

    set_num_threads(num_threads)
    ex = executable if executable is not None else build_executable(program, target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    init = dict(program.tensors)
    if tensors:
        unknown = sorted(set(tensors) - set(init))
        if unknown:
            raise ConfigError(f"unknown tensors {unknown}", key="tensors")
        init.update(tensors)
    state = {k: tvm.runtime.tensor(np.require(v, requirements="C"), dev) for k, v in init.items()}
    funcs = {c.func: vm[c.func] for c in program.calls}
    records: list[dict[str, Any]] = []
    for i in range(warmup + steps):
        phases: dict[str, int] = {}
        t_step = time.perf_counter_ns()
        for c in program.calls:
            t0 = time.perf_counter_ns()
            res = _flatten(funcs[c.func](*[state[a] for a in c.args]))
            if len(res) != len(c.outs):
                raise ConfigError(f"{c.func} returned {len(res)} values for outs {list(c.outs)}", key="calls")
            for name, val in zip(c.outs, res):
                state[name] = val
            phases[c.phase] = phases.get(c.phase, 0) + time.perf_counter_ns() - t0
        step_ns = time.perf_counter_ns() - t_step
        records.append(
            {
                "step": i,
                "warmup": i < warmup,
                "phases_ns": phases,
                "step_ns": step_ns,
                "loss": float(state[LOSS].numpy().reshape(-1)[0]),
            }
        )
    if records:
        records[-1]["tensors"] = {k: v.numpy() for k, v in state.items()}
    return records
