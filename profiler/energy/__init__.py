"""Energy measurement: sources (Monsoon, fuel gauge, models) produce a `PowerTrace`; `align` maps training steps
onto a trace and integrates energy per step.

Labels say where numbers come from, and are never upgraded: `measured` (real hardware), `simulated` (the simulated
Monsoon), `modeled` (a power model, e.g. for virtual phones), `virtual` (taken on a virtual phone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

LABELS = frozenset({"measured", "simulated", "modeled", "virtual"})


@dataclass(frozen=True, eq=False)
class PowerTrace:
    """Samples of one supply rail. `t` in seconds from the first sample (monotonic, gaps where samples were
    dropped), `current` in A (positive = drawn by the phone), `voltage` in V. `t0_host` is the host
    `time.monotonic()` of t=0 when known (Monsoon), `t0_device` the device clock of t=0 (fuel gauge)."""

    t: np.ndarray
    current: np.ndarray
    voltage: np.ndarray
    source: str  # "monsoon" | "fuelgauge" | a model name
    serial: str
    labels: tuple[str, ...]
    dropped: int = 0  # samples the instrument reported lost inside the trace
    sample_rate: float | None = None  # nominal Hz (None if irregular)
    t0_host: float | None = None
    t0_device: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)  # how the trace was obtained / what was inferred

    def __post_init__(self) -> None:
        arrays = [np.asarray(a, dtype=np.float64) for a in (self.t, self.current, self.voltage)]
        if not (arrays[0].ndim == 1 and arrays[0].shape == arrays[1].shape == arrays[2].shape):
            raise ValueError(f"t/current/voltage must be 1-D and equally long: {[a.shape for a in arrays]}")
        if arrays[0].size > 1 and np.any(np.diff(arrays[0]) <= 0):
            raise ValueError("t must be strictly increasing")
        unknown = set(self.labels) - LABELS
        if unknown or not self.labels:
            raise ValueError(f"labels must be a non-empty subset of {sorted(LABELS)}: {self.labels}")
        for name, a in zip(("t", "current", "voltage"), arrays):
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    @property
    def power(self) -> np.ndarray:
        return cast(np.ndarray, self.current * self.voltage)

    @property
    def duration(self) -> float:
        return float(self.t[-1] - self.t[0]) if self.t.size else 0.0

    def energy_j(self) -> float:
        """Trapezoidal integral of V*I over the whole trace."""
        return float(np.trapezoid(self.power, self.t)) if self.t.size > 1 else 0.0

    def mean_power_w(self) -> float:
        return self.energy_j() / self.duration if self.duration > 0 else float("nan")

    def __len__(self) -> int:
        return int(self.t.size)


@runtime_checkable
class EnergySource(Protocol):
    """Something that records a PowerTrace between start() and stop(). close() is idempotent and must leave the
    hardware as it was found (e.g. USB passthrough restored), also after an error."""

    def start(self) -> None: ...

    def stop(self) -> PowerTrace: ...

    def close(self) -> None: ...
