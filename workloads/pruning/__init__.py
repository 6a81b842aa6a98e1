"""Budget-constrained compression (AutLearn's pruner): a NetAdapt-style search driven by per-layer latency/energy
tables over each family's pruning strategy (MobileNet: L2 filter pruning; LSTM: SVD rank of the head). No torch
import here."""

from autlearn.workloads.pruning.budget import Budget, UnreachableBudget, parse_budget
from autlearn.workloads.pruning.importance import Importance, L2FilterImportance, RandomImportance, get_importance
from autlearn.workloads.pruning.strategy import Compressor, Strategy

__all__ = [
    "Budget",
    "UnreachableBudget",
    "parse_budget",
    "Compressor",
    "Importance",
    "L2FilterImportance",
    "RandomImportance",
    "Strategy",
    "get_importance",
]
