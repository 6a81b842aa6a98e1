"""PyTorch workloads (the "cloud side"): word prediction LSTM and MobileNetV1, for transfer learning.
The families themselves (configs, model classes) live in `autlearn.workloads.registry`; this module is their front door.

Every model is `head(features(x))`: `features` is the frozen backbone, `head` the trainable last layer (an
`nn.Linear` named `head`). Configs are frozen dataclasses; `to_dict()` is stable (sorted, plain types) for hashing.
Weights come from a seed only (no pretrained download): the backbone is a deterministic random network.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import registry

__all__ = ["build_model", "make_config"]


def __getattr__(name: str) -> Any:
    if name == "MODELS":  # the registered families, computed when asked (autlearn.workloads.registry.names())
        return registry.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """('width=0.25', 'channels=[8,16]') -> {'width': 0.25, 'channels': [8, 16]}: KEY=VALUE config overrides, each
    VALUE parsed as JSON when it parses, else kept as the string. ConfigError (key "set") on an item without '='."""
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", key="set")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def make_config(model: str, **overrides: Any) -> Any:
    """Config for `model` with keyword overrides; unknown model or key -> ConfigError naming valid values."""
    return registry.get(model).make_config(**overrides)


def build_model(config: Any) -> Any:  # a torch.nn.Module with `features` and `head` (dynamic attributes)
    """Deterministically initialised `torch.nn.Module` for a config (eval mode, backbone frozen)."""
    import torch  # torch takes seconds to import; only this path needs it

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        m = registry.of_config(config).build(config)
    m.eval()
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return m
