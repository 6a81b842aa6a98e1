"""What a family plugs into the pruner (Torch-Pruning style: a generic structure, pluggable parts).

A `Strategy` names a family's prunable layers and their channel options, makes configs with other channel counts
(`with_channels`), removes channels of a trained model (`prune`), writes a pruned model (`export`: compressed.json
+ weights through autlearn.workloads.compressed) and says how `autlearn prune` compresses to budgets
(`compressor`: the NetAdapt search, autlearn.workloads.pruning.search.netadapt, or a strategy's own rule). A family
names its strategy in its registry entry (`Family.strategy`); the search only talks to this protocol.

Channel vectors list one count per prunable layer, in `layers` order; a layer index is a position in it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from autlearn.workloads.pruning.budget import Budget
from autlearn.workloads.pruning.importance import Importance


@dataclass(frozen=True)
class Compressor:
    """A strategy's budget-driven compression (`autlearn prune`): `propose(budgets)` -> {str(budget): path of a
    compressed.json}; `smallest(kind)` -> the smallest value of resource `kind` it can reach."""

    propose: Callable[[list[Budget]], dict[str, str]]
    smallest: Callable[[str], float]


@runtime_checkable
class Strategy(Protocol):
    @property
    def name(self) -> str: ...  # "filter", "svd", ...: for messages; read-only (strategies are frozen dataclasses)

    def layers(self, config: Any, step: int | None = None) -> Mapping[str, tuple[int, ...]]:
        """Prunable layer name -> its channel options in steps of `step` (None: the strategy's own), ascending,
        the last one the config's current count."""
        ...

    def with_channels(self, config: Any, channels: Sequence[int]) -> Any:
        """`config` with its prunable layers' channel counts set to `channels`."""
        ...

    def prune(self, model: Any, config: Any, layer: int, k: int, importance: Importance) -> tuple[Any, Any]:
        """Remove `k` channels of layer index `layer` (the lowest by `importance` where it applies) ->
        (config, model carrying the surviving weights)."""
        ...

    def export(self, base: Any, config: Any, out_dir: Path, state: Any, **fields: Any) -> Path:
        """Write `config` (pruned from `base`) with weights `state` (a torch module, state dict or state-dict
        file) as out_dir/compressed.json + model.pt; `fields` go into the document. Returns its path."""
        ...

    def compressor(self, config: Any, table: Any, out: Path, options: Mapping[str, Any], console: Any) -> Compressor:
        """`autlearn prune`'s compression of `config` to budgets (`options`: SearchSettings fields)."""
        ...


def channels(strategy: Strategy, config: Any) -> tuple[int, ...]:
    """The config's current channel vector."""
    return tuple(opts[-1] for opts in strategy.layers(config).values())


def min_channels(strategy: Strategy, config: Any, step: int | None = None) -> tuple[int, ...]:
    """The smallest reachable channel vector: every layer at its smallest option."""
    return tuple(opts[0] for opts in strategy.layers(config, step).values())
