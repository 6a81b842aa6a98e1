"""SVD rank reduction (the paper's other compression, for the LSTM family's dense layers).

`svd_linear(linear, r)` = Linear(in -> r) then Linear(r -> out) with W ~ U_r S_r V_r^T (sqrt(S) split over both
factors; the first factor's bias is zero, the second keeps the original bias). Full rank reproduces the layer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

from profiler.errors import ConfigError
from workloads.layers import FC_STEP, channel_options
from workloads.pruning.budget import Budget, UnreachableBudget


def svd_linear(linear: Any, rank: int) -> Any:
    import torch
    from torch import nn

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
    from workloads.resource import predict

    ranks = channel_options(min(config.hidden_size, config.vocab_size), step)
    return min([predict(config, kind, table, trainable)]
               + [predict(config, kind, table, trainable, head_rank=r) for r in ranks])


def rank_for_budget(config: Any, table: Any, budget: Budget, step: int = FC_STEP,
                    trainable: str = "head") -> int:
    """Largest head rank (multiple of `step` below min(H, V), or full) whose predicted resource meets `budget`
    for a WordLSTMConfig; UnreachableBudget with the smallest reachable value otherwise."""
    from workloads.models import WordLSTMConfig
    from workloads.resource import predict

    if not isinstance(config, WordLSTMConfig):
        raise ConfigError("SVD head compression applies to the LSTM family", key="model")
    full = predict(config, budget.kind, table, trainable)
    if full <= budget.value:
        return min(config.hidden_size, config.vocab_size)
    vals = {r: predict(config, budget.kind, table, trainable, head_rank=r)
            for r in channel_options(min(config.hidden_size, config.vocab_size), step)}
    ok = [r for r, v in vals.items() if v <= budget.value]
    if not ok:
        raise UnreachableBudget(budget, min(min(vals.values()), full))   # = smallest_rank_value, computed
    return max(ok)


def prune_lstm(config: Any, table: Any, budgets: Any, out: Path, emit: Callable[[str], None] = lambda m: None
               ) -> dict[str, str]:
    """LSTM family: SVD rank of the dense head per budget (weights: the seed model's head factorised, no
    fine-tune), written as `compressed.json` + `model.pt` under out/lstm/<budget> -> {str(budget): compressed.json}."""
    from dataclasses import replace

    import torch

    from workloads.models import build_model
    from workloads.pruning.compressed import write_compressed
    from workloads.resource import model_resource

    net = build_model(replace(config, head_rank=0))
    exports: dict[str, str] = {}
    full = min(config.hidden_size, config.vocab_size)
    for b in budgets:
        r = rank_for_budget(replace(config, head_rank=0), table, b)
        rank = 0 if r >= full else r                     # the dense head already meets the budget
        d = Path(out) / "lstm" / b.slug
        d.mkdir(parents=True, exist_ok=True)
        torch.save((factorize_head(net, rank) if rank else net).state_dict(), d / "model.pt")
        pcfg = replace(config, head_rank=rank)
        predicted = model_resource(pcfg, table)
        base = {k: v for k, v in config.to_dict().items() if k not in ("model", "head_rank")}
        path = write_compressed(
            d, model="lstm", config=pcfg, base=base, compressed_config={"head_rank": rank}, budget=b,
            predicted=predicted.to_dict(),
            value=predicted.value(b.kind) if (table is not None or b.kind in ("flops", "memory")) else None,
            table=table, extra={"head_rank": rank, "note": "head factorised by SVD (no fine-tune)"})
        emit(f"{b}: head rank {rank or 'dense'} -> {path}")
        exports[str(b)] = str(path)
    return exports
