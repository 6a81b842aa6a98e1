"""Resource budgets: `latency=40ms`, `energy=5mJ`, `flops=2M`, `memory=100KB` (SI prefixes; KiB/MiB are 1024-based).

Values are stored in base units: latency ms, energy mJ, memory bytes, FLOPs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autlearn.profiler.errors import ConfigError, UserError

# kind -> {unit (lower case): factor to the base unit}
UNITS: dict[str, dict[str, float]] = {
    "latency": {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3},
    "energy": {"uj": 1e-3, "µj": 1e-3, "mj": 1.0, "j": 1e3},
    "memory": {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3},
    "flops": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "flops": 1, "kflops": 1e3, "mflops": 1e6, "gflops": 1e9},
}
BASE_UNIT = {"latency": "ms", "energy": "mJ", "memory": "B", "flops": "FLOPs"}
_RE = re.compile(r"^\s*([a-z]+)\s*=\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zµ]*)\s*$", re.I)


class UnreachableBudget(UserError):
    """No model the pruner can reach meets the budget; `smallest` is the smallest reachable value."""

    def __init__(self, budget: Budget, smallest: float):
        self.budget, self.smallest = budget, smallest
        super().__init__(
            f"budget {budget} is below the smallest reachable model "
            f"({format_value(budget.kind, smallest)}: every prunable layer at its minimum channels)"
        )


@dataclass(frozen=True, order=True)
class Budget:
    kind: str
    value: float  # base unit (BASE_UNIT[kind])

    def __post_init__(self) -> None:
        if self.kind not in UNITS:
            raise ConfigError(f"unknown resource {self.kind!r}; valid: {', '.join(UNITS)}", key="budget")
        if not self.value > 0:
            raise ConfigError(f"must be > 0, got {self.value}", key="budget")

    def __str__(self) -> str:
        return f"{self.kind}={format_value(self.kind, self.value, compact=True)}"

    @property
    def slug(self) -> str:
        """File-name-safe label."""
        return re.sub(r"[^A-Za-z0-9.]+", "_", str(self))


def format_value(kind: str, value: float, compact: bool = False) -> str:
    sep = "" if compact else " "
    fmt = ".10g" if compact else ".4g"  # compact: round-trips through parse_budget
    if kind == "memory":
        for unit, f in (("MB", 1e6), ("KB", 1e3)):
            if value >= f:
                return f"{value / f:{fmt}}{sep}{unit}"
        return f"{value:{fmt}}{sep}B"
    if kind == "flops":
        for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if value >= f:
                return f"{value / f:{fmt}}{sep}{unit}"
        return f"{value:{fmt}}"
    return f"{value:{fmt}}{sep}{BASE_UNIT[kind]}"


def parse_budget(text: str) -> Budget:
    """'latency=40ms' -> Budget("latency", 40.0). Bad syntax, kind or unit -> ConfigError."""
    m = _RE.match(str(text))
    if not m:
        raise ConfigError(
            f"cannot parse {text!r}; expected KIND=VALUE[UNIT], e.g. latency=40ms, energy=5mJ, flops=2M, memory=100KB",
            key="budget",
        )
    kind, num, unit = m.group(1).lower(), float(m.group(2)), m.group(3).lower()
    if kind not in UNITS:
        raise ConfigError(f"unknown resource {kind!r} in {text!r}; valid: {', '.join(UNITS)}", key="budget")
    if unit not in UNITS[kind]:
        valid = ", ".join(u for u in UNITS[kind] if u) or "none"
        raise ConfigError(f"unknown {kind} unit {unit!r} in {text!r}; valid: {valid}", key="budget")
    return Budget(kind, num * UNITS[kind][unit])
