"""Pluggable filter importance (Torch-Pruning style). An `Importance` scores the output channels of a conv weight
(c_out, c_in/groups, k, k) or linear weight (out, in); the pruner removes the lowest-scoring channels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from autlearn.profiler.errors import ConfigError


@runtime_checkable
class Importance(Protocol):
    @property
    def name(self) -> str: ...  # read-only: the importances are frozen dataclasses

    def __call__(self, weight: Any) -> np.ndarray:
        """One score per output channel (higher = more important)."""


@dataclass(frozen=True)
class L2FilterImportance:
    """L2 norm of each filter (the paper's and NetAdapt's magnitude criterion)."""

    name: str = "l2"

    def __call__(self, weight: Any) -> np.ndarray:
        w = weight.detach().reshape(weight.shape[0], -1).double()
        return cast(np.ndarray, w.norm(dim=1).numpy())


@dataclass(frozen=True)
class RandomImportance:
    """Random scores (ablation baseline); deterministic for a seed and a weight shape."""

    seed: int = 0
    name: str = "random"

    def __call__(self, weight: Any) -> np.ndarray:
        rng = np.random.default_rng([self.seed, *weight.shape])
        return cast(np.ndarray, rng.random(weight.shape[0]))


IMPORTANCES: dict[str, Callable[[], Importance]] = {"l2": L2FilterImportance, "random": RandomImportance}


def get_importance(name: str) -> Importance:
    if name not in IMPORTANCES:
        raise ConfigError(f"unknown importance {name!r}; valid: {', '.join(IMPORTANCES)}", key="importance")
    return IMPORTANCES[name]()


def lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k lowest scores (ties: lower index first), sorted ascending."""
    order = np.lexsort((np.arange(len(scores)), scores))
    return np.sort(order[:k])
