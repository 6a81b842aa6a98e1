"""SVD rank reduction of a model's dense `head` (the paper's other compression; the LSTM family's strategy).

`svd_linear(linear, r)` = Linear(in -> r) then Linear(r -> out) with W ~ U_r S_r V_r^T (sqrt(S) split over both
factors; the first factor's bias is zero, the second keeps the original bias). Full rank reproduces the layer.

`SVDHead` is the pruning strategy for any family whose config has `head_rank` (0 = dense; r = the head built as
Linear(feature_dim -> r), Linear(r -> num_classes)): one prunable layer, the head's rank. `autlearn prune` picks
the largest rank per budget from the table, with the seed model's head factorised and no fine-tune
(`prune_to_budgets`); the NetAdapt search can also run on it (`prune` re-factorises the current head).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.compressed import export
from autlearn.workloads.layers import FC_STEP, channel_options
from autlearn.workloads.models import build_model
from autlearn.workloads.pruning.budget import Budget, UnreachableBudget
from autlearn.workloads.pruning.importance import Importance
from autlearn.workloads.pruning.strategy import Compressor
from autlearn.workloads.registry import of_config
from autlearn.workloads.resource import model_resource, predict


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


def dense_linear(head: Any) -> Any:
    """A Linear head, or the single Linear equal to a factorised one (Sequential(Linear, Linear))."""
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    if isinstance(head, nn.Linear):
        return head
    first, second = head[0], head[1]
    lin = nn.Linear(first.in_features, second.out_features, bias=True)
    with torch.no_grad():
        lin.weight.copy_(second.weight @ first.weight)
        b = second.weight @ first.bias
        lin.bias.copy_(b + second.bias if second.bias is not None else b)
    lin.weight.requires_grad_(first.weight.requires_grad)
    lin.bias.requires_grad_(first.weight.requires_grad)
    return lin


def factorize_head(model: Any, rank: int) -> Any:
    """Copy of a model whose `head` (dense or factorised) is replaced by its rank-`rank` SVD factorisation."""
    m = copy.deepcopy(model)
    m.head = svd_linear(dense_linear(model.head), rank)
    return m


def full_rank(config: Any) -> int:
    """The head's full rank, min(feature_dim, num_classes); ConfigError for a config without `head_rank`."""
    if not hasattr(config, "head_rank"):
        raise ConfigError(f"SVD head compression needs a config with head_rank, not {type(config).__name__}", "model")
    return min(int(config.feature_dim), int(config.num_classes))


def head_ranks(config: Any, step: int = FC_STEP) -> tuple[int, ...]:
    """The ranks the head can be factorised at: the full rank and every `step` below it, ascending."""
    return channel_options(full_rank(config), step)


def smallest_rank_value(config: Any, kind: str, table: Any, step: int = FC_STEP, trainable: str = "head") -> float:
    """The smallest `kind` value any head rank (or the config's own head) reaches."""

    return min(
        [predict(config, kind, table, trainable)]
        + [predict(config, kind, table, trainable, head_rank=r) for r in head_ranks(config, step)]
    )


def rank_for_budget(config: Any, table: Any, budget: Budget, step: int = FC_STEP, trainable: str = "head") -> int:
    """Largest head rank (full, or full minus multiples of `step`) whose predicted resource meets `budget` (the
    config's own head: full rank); UnreachableBudget with the smallest reachable value otherwise."""

    ranks = head_ranks(config, step)
    full = predict(config, budget.kind, table, trainable)
    if full <= budget.value:
        return full_rank(config)
    vals = {r: predict(config, budget.kind, table, trainable, head_rank=r) for r in ranks}
    ok = [r for r, v in vals.items() if v <= budget.value]
    if not ok:
        raise UnreachableBudget(budget, min(min(vals.values()), full))  # = smallest_rank_value, computed
    return max(ok)


@dataclass(frozen=True)
class SVDHead:
    """Pruning strategy: the rank of the dense head (module docstring)."""

    step: int = FC_STEP  # rank granularity when the caller gives none
    name: str = "svd"

    def layers(self, config: Any, step: int | None = None) -> Mapping[str, tuple[int, ...]]:
        full = full_rank(config)
        rank = int(config.head_rank) or full
        return {"head": tuple(r for r in head_ranks(config, step or self.step) if r < rank) + (rank,)}

    def with_channels(self, config: Any, channels: Sequence[int]) -> Any:
        (rank,) = channels
        return replace(config, head_rank=0 if int(rank) >= full_rank(config) else int(rank))

    def prune(self, model: Any, config: Any, layer: int, k: int, importance: Importance) -> tuple[Any, Any]:
        """The head at `k` lower rank, re-factorised from its current weights (singular values, not
        `importance`, decide what is kept)."""
        rank = int(config.head_rank) or full_rank(config)
        if layer != 0 or not 1 <= k < rank:
            raise ConfigError(f"SVD prunes layer 0 by 1..{rank - 1} ranks, got layer {layer}, {k}", key="layer")
        cfg = self.with_channels(config, (rank - k,))
        m = build_model(cfg)
        m.load_state_dict(factorize_head(model, rank - k).state_dict())
        return cfg, m

    def export(self, base: Any, config: Any, out_dir: Path, state: Any, **fields: Any) -> Path:
        return export(of_config(base), base, config, out_dir, state, head_rank=config.head_rank, **fields)

    def compressor(self, config: Any, table: Any, out: Path, options: Mapping[str, Any], console: Any) -> Compressor:
        """The head's rank per budget (`prune_to_budgets`); the search `options` do not apply."""
        return Compressor(
            lambda targets: prune_to_budgets(config, table, targets, Path(out), console.print, self),
            lambda kind: smallest_rank_value(config, kind, table, self.step),
        )


def prune_to_budgets(
    cfg: Any,
    table: Any,
    budgets: Iterable[Budget],
    out: Path,
    emit: Callable[[str], object],
    strategy: SVDHead = SVDHead(),
) -> dict[str, str]:
    """The head's SVD rank per budget (weights: the seed model's head factorised, no fine-tune), exported as
    `out/<family>/<budget>/compressed.json` + `model.pt` that campaigns compile (variant `compressed`)."""

    dense = replace(cfg, head_rank=0)
    net = build_model(dense)
    exports: dict[str, str] = {}
    full = full_rank(cfg)
    for b in budgets:
        r = rank_for_budget(dense, table, b, strategy.step)
        rank = 0 if r >= full else r  # the dense head already meets the budget
        pcfg = replace(cfg, head_rank=rank)
        predicted = model_resource(pcfg, table)
        path = strategy.export(
            cfg,
            pcfg,
            out / of_config(cfg).name / b.slug,
            factorize_head(net, rank) if rank else net,
            budget=str(b),
            kind=b.kind,
            budget_value=b.value,
            predicted=predicted.to_dict(),
            value=predicted.value(b.kind) if (table is not None or b.kind in ("flops", "memory")) else None,
            note="head factorised by SVD (no fine-tune)",
            table=(json.loads(table.meta.to_json()) if table is not None else None),
        )
        emit(f"{b}: head rank {rank or 'dense'} -> {path}")
        exports[str(b)] = str(path)
    return exports
