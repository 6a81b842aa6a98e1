"""Budget-constrained compression (AutLearn's pruner): L2 filter pruning of MobileNetV1 driven by per-layer
latency/energy tables (NetAdapt-style search), SVD rank reduction for the LSTM family. No torch import here."""

from autlearn.workloads.pruning.budget import Budget, UnreachableBudget, parse_budget
from autlearn.workloads.pruning.importance import Importance, L2FilterImportance, RandomImportance, get_importance

__all__ = [
    "Budget",
    "UnreachableBudget",
    "parse_budget",
    "Importance",
    "L2FilterImportance",
    "RandomImportance",
    "get_importance",
]
