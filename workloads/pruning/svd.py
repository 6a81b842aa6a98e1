"""SVD rank reduction (the paper's other compression, for the LSTM family's dense layers).

`svd_linear(linear, r)` = Linear(in -> r) then Linear(r -> out) with W ~ U_r S_r V_r^T (sqrt(S) split over both
factors; the first factor's bias is zero, the second keeps the original bias). Full rank reproduces the layer.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.layers import FC_STEP, channel_options
from autlearn.workloads.pruning.budget import Budget, UnreachableBudget
from autlearn.workloads.registry import of_config
from autlearn.workloads.resource import predict


def svd_linear(linear: Any, rank: int) -> Any:
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    out_f, in_f = linear.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ConfigError(f"rank must be in [1, {min(out_f, in_f)}], got {rank}", key="rank")
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(linear.weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        first = nn.Linear(in_f, rank, bias=True)
        second = nn.Linear(rank, out_f, bias=linear.bias is not None)
        first.weight.copy_((root[:, None] * vh[:rank]).float())
        first.bias.zero_()
        second.weight.copy_((u[:, :rank] * root[None, :]).float())
        if linear.bias is not None:
            second.bias.copy_(linear.bias)
    seq = nn.Sequential(first, second)
    for p in seq.parameters():
        p.requires_grad_(linear.weight.requires_grad)
    return seq


def factorize_head(model: Any, rank: int) -> Any:
    """Copy of a model whose `head` Linear is replaced by its rank-`rank` SVD factorisation."""
    m = copy.deepcopy(model)
    m.head = svd_linear(model.head, rank)
    return m


def smallest_rank_value(config: Any, kind: str, table: Any, step: int = FC_STEP, trainable: str = "head") -> float:
    """The smallest `kind` value any head rank (or the dense head) reaches for a WordLSTMConfig."""

    ranks = channel_options(min(config.hidden_size, config.vocab_size), step)
    return min(
        [predict(config, kind, table, trainable)]
        + [predict(config, kind, table, trainable, head_rank=r) for r in ranks]
    )


def rank_for_budget(config: Any, table: Any, budget: Budget, step: int = FC_STEP, trainable: str = "head") -> int:
    """Largest head rank (multiple of `step` below min(H, V), or full) whose predicted resource meets `budget`
    for a WordLSTMConfig; UnreachableBudget with the smallest reachable value otherwise."""

    if of_config(config).strategy != "svd":
        raise ConfigError("SVD head compression applies to the LSTM family", key="model")
    full = predict(config, budget.kind, table, trainable)
    if full <= budget.value:
        return cast(int, min(config.hidden_size, config.vocab_size))
    vals = {
        r: predict(config, budget.kind, table, trainable, head_rank=r)
        for r in channel_options(min(config.hidden_size, config.vocab_size), step)
    }
    ok = [r for r, v in vals.items() if v <= budget.value]
    if not ok:
        raise UnreachableBudget(budget, min(min(vals.values()), full))  # = smallest_rank_value, computed
    return max(ok)
