"""Physical filter pruning of MobileNetV1 (`autlearn.workloads.models`): removing output channels of the stem or of a
pointwise conv also removes the matching depthwise-conv channels of the next block and the next pointwise conv's
(or the head's) input channels. The result is a smaller `MobileNetConfig.channels` plus the surviving weights.

Layer index i refers to `config.layer_channels[i]` (0 = stem conv, 1..13 = pointwise convs)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.layers import CONV_STEP, channel_options
from autlearn.workloads.models import build_model
from autlearn.workloads.pruning.importance import Importance, L2FilterImportance, lowest
from autlearn.workloads.registry import of_config


def _check(config: Any, layer: int) -> None:

    if of_config(config).strategy != "filter":
        raise ConfigError(f"filter pruning supports MobileNetConfig, got {type(config).__name__}", key="model")
    if not 0 <= layer < len(config.layer_channels):
        raise ConfigError(f"layer must be in [0, {len(config.layer_channels)}), got {layer}", key="layer")


def prunable_layers(config: Any) -> tuple[int, ...]:
    return tuple(range(len(config.layer_channels)))


def producer(layer: int) -> str:
    """State-dict prefix of the conv producing layer `layer`'s channels."""
    return "body.0.0" if layer == 0 else f"body.{2 * layer}.0"


def consumers(config: Any, layer: int) -> tuple[str | None, str]:
    """(depthwise conv prefix or None, next conv/head prefix) consuming the channels."""
    last = len(config.layer_channels) - 1
    if layer == last:
        return None, "head"
    return f"body.{2 * layer + 1}.0", f"body.{2 * layer + 2}.0"


def filter_scores(model: Any, layer: int, importance: Importance | None = None) -> np.ndarray:
    sd = model.state_dict()
    return (importance or L2FilterImportance())(sd[f"{producer(layer)}.weight"])


def min_channels(config: Any, step: int = CONV_STEP) -> tuple[int, ...]:
    """The smallest reachable channels: every layer at its smallest option (8 for multiples of 8)."""
    return tuple(channel_options(c, step)[0] for c in config.layer_channels)


def with_channels(config: Any, channels: Sequence[int]) -> Any:
    return replace(config, channels=tuple(int(c) for c in channels))


def prune_channels(model: Any, config: Any, layer: int, remove: Iterable[int]) -> tuple[Any, Any]:
    """Remove output channels `remove` of layer `layer` -> (new config, new model with copied weights)."""

    _check(config, layer)
    c = config.layer_channels[layer]
    rm = sorted(set(int(i) for i in remove))
    if any(i < 0 or i >= c for i in rm):
        raise ConfigError(f"channel indices must be in [0, {c}), got {rm}", key="remove")
    keep = [i for i in range(c) if i not in set(rm)]
    if not keep:
        raise ConfigError(f"cannot remove all {c} channels of layer {layer}", key="remove")
    chans = list(config.layer_channels)
    chans[layer] = len(keep)
    new_cfg = with_channels(config, chans)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    p = producer(layer)
    sd[f"{p}.weight"], sd[f"{p}.bias"] = sd[f"{p}.weight"][keep], sd[f"{p}.bias"][keep]
    dw, nxt = consumers(config, layer)
    if dw is not None:
        sd[f"{dw}.weight"], sd[f"{dw}.bias"] = sd[f"{dw}.weight"][keep], sd[f"{dw}.bias"][keep]
    sd[f"{nxt}.weight"] = sd[f"{nxt}.weight"][:, keep]
    new = build_model(new_cfg)
    new.load_state_dict(sd)
    return new_cfg, new


def prune_smallest(
    model: Any, config: Any, layer: int, k: int, importance: Importance | None = None
) -> tuple[Any, Any, np.ndarray]:
    """Remove the `k` lowest-importance (default: smallest-L2) filters of `layer` -> (config, model, removed)."""
    _check(config, layer)
    scores = filter_scores(model, layer, importance)
    rm = lowest(scores, k)
    cfg, m = prune_channels(model, config, layer, rm)
    return cfg, m, rm


def zero_channels(model: Any, config: Any, layer: int, channels: Sequence[int]) -> Any:
    """Copy of `model` whose channels of `layer` are zero as their consumer sees them (producer filter and bias
    and the depthwise filter and bias zeroed). Its outputs equal those of the pruned model (tests)."""

    import torch  # torch takes seconds to import; only this path needs it

    m = copy.deepcopy(model)
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    sd = m.state_dict()
    with torch.no_grad():
        for prefix in (producer(layer), consumers(config, layer)[0]):
            if prefix is not None:
                sd[f"{prefix}.weight"][idx] = 0
                sd[f"{prefix}.bias"][idx] = 0
    return m


def thin_to(model: Any, config: Any, channels: Sequence[int], importance: Importance | None = None) -> tuple[Any, Any]:
    """Prune every layer down to `channels` (keeping the highest-importance filters) -> (config, model)."""
    cfg, m = config, model
    for layer, target in enumerate(channels):
        c = cfg.layer_channels[layer]
        if target > c or target < 1:
            raise ConfigError(f"layer {layer}: target {target} not in [1, {c}]", key="channels")
        if target < c:
            cfg, m, _ = prune_smallest(m, cfg, layer, c - target, importance)
    return cfg, m


def uniform_channels(config: Any, fraction: float, step: int = CONV_STEP) -> tuple[int, ...]:
    """Width-multiplier-style thinning: every layer to the reachable count nearest `fraction` x its channels."""
    out = []
    for c in config.layer_channels:
        opts = np.array(channel_options(c, step))
        out.append(int(opts[np.argmin(np.abs(opts - fraction * c))]))
    return tuple(out)
