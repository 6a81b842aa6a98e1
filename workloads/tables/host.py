"""Single-layer workloads of a grid and the PyTorch host profiler: tables measured on THIS machine, labelled
`source_device = HOST_DEVICE` (not a phone)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from autlearn.workloads.layers import LayerKey
from autlearn.workloads.registry import canonical_config
from autlearn.workloads.tables.fit import sample_grid
from autlearn.workloads.tables.schema import HOST_DEVICE, Table, TableMeta, table_from_measurements

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)
class LayerWorkload:
    """One single-layer model to compile and measure: `module(example)` runs the layer (conv/dwconv include the
    fused ReLU, as deployed); `phases` are the table phases to time for it."""

    key: LayerKey  # phase "forward"
    phases: tuple[str, ...]
    module: Any  # torch.nn.Module
    example: Any  # torch.Tensor input

    @property
    def name(self) -> str:
        k = self.key
        return f"{k.type}_k{k.kernel}s{k.stride}g{k.groups}_{k.in_h}x{k.in_w}_{k.c_in}x{k.c_out}_b{k.batch}"


def _layer_module(key: LayerKey) -> tuple[torch.nn.Module, torch.Tensor]:
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    mod: nn.Module
    if key.type in ("conv", "dwconv"):
        mod = nn.Sequential(
            nn.Conv2d(key.c_in, key.c_out, key.kernel, key.stride, key.kernel // 2, groups=key.groups, bias=True),
            nn.ReLU(),
        )
        ex = torch.randn(key.batch, key.c_in, key.in_h, key.in_w)
    elif key.type == "fc":
        mod = nn.Linear(key.c_in, key.c_out)
        ex = (
            torch.randn(key.batch, key.c_in)
            if key.in_h * key.in_w == 1
            else torch.randn(key.batch, key.in_h * key.in_w, key.c_in)
        )
    elif key.type == "lstm":

        class LSTMOut(nn.Module):  # output sequence only (what the next layer consumes)
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(key.c_in, key.c_out, batch_first=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return cast(torch.Tensor, self.lstm(x)[0])

        mod = LSTMOut()
        ex = torch.randn(key.batch, key.in_h, key.c_in)
    else:
        mod = nn.Embedding(key.c_in, key.c_out)
        ex = torch.randint(0, key.c_in, (key.batch, key.in_h))
    return mod, ex


def layer_workloads(config: Any, grid: Iterable[LayerKey]) -> tuple[LayerWorkload, ...]:
    """The single-layer models the campaign engine compiles and measures to fill a table for `grid` (one per
    distinct layer shape; weights seeded from `config.seed`)."""
    import torch  # torch takes seconds to import; only this path needs it

    phases: dict[LayerKey, set[str]] = {}
    for k in grid:
        phases.setdefault(k.with_phase("forward"), set()).add(k.phase)
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(getattr(config, "seed", 0))
        for k in sorted(phases):
            mod, ex = _layer_module(k)
            out.append(LayerWorkload(k, tuple(p for p in ("forward", "backward", "update") if p in phases[k]), mod, ex))
    return tuple(out)


def _phase_timers(w: LayerWorkload, inner: int, lr: float = 0.05) -> dict[str, Callable[[], float]]:
    """phase -> callable timing one repetition (ms, mean over `inner` calls) of that phase with PyTorch eager."""
    import torch  # torch takes seconds to import; only this path needs it

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


def measure_on_host(
    config: Any,
    keys: Iterable[LayerKey],
    reps: int = 5,
    warmup: int = 1,
    inner: int = 3,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Per-repetition samples of single-layer PyTorch training phases on THIS HOST (not a phone): one row per
    (key, rep) with `ms`. Repetitions are interleaved (round r times every key once), so load from other
    processes spreads over all keys instead of biasing the ones measured during a busy moment. `threads` pins
    torch's intra-op threads while measuring (restored after)."""
    import torch  # torch takes seconds to import; only this path needs it

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
        source_device=HOST_DEVICE,
        device_serial="host",
        device_model=f"host {platform.machine()} ({platform.processor() or platform.system()})",
        virtual=False,
        governor_requested="n/a (host)",
        governor_applied="n/a (host)",
        measurement_tool="torch-host",
        model=model,
        model_config=canonical_config(config),
        notes=notes,
    )


def build_host_table(
    model: str,
    config: Any,
    grid: Sequence[LayerKey],
    every: int = 2,
    reps: int = 5,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Table:
    """Measure a subset of `grid` (`sample_grid(grid, every)`) on this host and interpolate the rest."""
    sub = sample_grid(grid, every)
    df = measure_on_host(config, sub, reps=reps, threads=threads, progress=progress)
    meta = host_meta(
        model,
        config,
        notes=f"measured {len(sub)} of {len(grid)} grid keys (every {every}), "
        f"{reps} interleaved reps, {threads} thread(s); PyTorch eager, not TVM",
    )
    return table_from_measurements(df, meta).complete(grid)
