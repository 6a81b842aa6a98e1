"""Model families: everything that differs between workload models, behind one registry.

A `Family` names its config class and the functions the rest of autlearn needs (model builder, example input,
layers as table keys, table grid, data, compression) and its pruning strategy (autlearn.workloads.pruning.strategy:
prunable layers, pruned configs and models, compressed-model export). Code elsewhere looks a family up
(`get(name)`, `of_config(cfg)`) instead of branching on names or config classes, so a new family is one module
plus `register(family)`. Importing this package is cheap: the built-in families (mobilenet, lstm) are imported on
the first registry access and import torch only inside their functions.

`canonical_config` / `config_key` are the one canonical form of a model config (or of a campaign workload's config
mapping): JSON with sorted keys, tuples as lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autlearn.profiler.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from autlearn.workloads.pruning.strategy import Strategy

LAYER_SUITE = "layers"  # the campaign pseudo-model of per-layer suites (autlearn.workloads.layer_suite); not a family


@dataclass(frozen=True)
class Family:
    """One model family. Config objects are frozen dataclasses with `to_dict()` (holding "model": name) and
    `key()`, plus `batch`, `seed`, `num_classes`, `feature_dim` and `input_shape`. The built model has
    `features(x)` (frozen backbone) and `head` (the trainable last layer)."""

    name: str
    config_cls: type
    build: Callable[[Any], Any]  # config -> torch.nn.Module (autlearn.workloads.models.build_model seeds)
    example_input: Callable[[Any], Any]  # config -> torch tensor of input_shape (torch.export)
    default_lr: float  # SGD learning rate of compiled programs
    # (config, backbone phases, head_rank) -> Layers
    # Any, not workloads.layers.Layer / workloads.data.Dataset: those modules look families up in this registry
    layers: Callable[[Any, tuple[str, ...], int | None], tuple[Any, ...]]  # -> autlearn.workloads.layers.Layer
    grid: Callable[[Any, str, int, int], Any]  # (config, trainable, conv_step, fc_step) -> LayerKeys
    dataset: Callable[[Any, int | None], Any]  # (config, per_class) -> autlearn.workloads.data.Dataset
    batch: Callable[[Any, int], tuple[np.ndarray, np.ndarray]]  # (config, index) -> (x, y) batch of the embedded data
    compress: Callable[[Any], Any] | None = None  # default config of the `compressed` variant
    strategy: Strategy | None = None  # how its models are pruned and exported (None: not compressible)
    compressed_keys: tuple[str, ...] = ()  # config keys a compression changes (compressed_config)
    validation_configs: Callable[[Any, int, int], dict[str, Any]] | None = None  # whole models a table can predict
    # (config, LEAF path) -> batch 0 (x, y)
    load_data: Callable[[Any, Path], tuple[np.ndarray, np.ndarray]] | None = None

    def make_config(self, **overrides: Any) -> Any:
        """Config with keyword overrides (lists become tuples); unknown key -> ConfigError naming the valid ones."""
        valid = {f.name for f in fields(self.config_cls)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ConfigError(f"unknown {self.name} config keys {bad}; valid: {', '.join(sorted(valid))}", key="config")
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        for k, v in overrides.items():
            _check_type(self.config_cls, k, v)
        return replace(self.config_cls(), **overrides)

    def base_config(self, config: Any) -> dict[str, Any]:
        """`config.to_dict()` without "model" and the keys compression changes: build_program's `config`."""
        return {k: v for k, v in config.to_dict().items() if k not in ("model", *self.compressed_keys)}

    def compressed_config(self, config: Any) -> dict[str, Any]:
        """The overrides that make a base config into `config` (build_program's `compressed_config`)."""
        d = config.to_dict()
        return {k: d.get(k, getattr(config, k)) for k in self.compressed_keys}


# What a phone can train: a step keeps weights, gradients and activations in memory, and phones have 4-16 GB.
MAX_PARAMS = 200_000_000  # 0.8 GB of float32 weights (x2-3 with gradients and optimizer state)


def check_bounds(config: Any, bounds: Mapping[str, int], params: int) -> None:
    """Each bounded field of `config` within its stated ceiling and the model's parameter count within MAX_PARAMS:
    one ConfigError naming the key (checked when the campaign is validated, before a results directory exists)."""
    for key, top in bounds.items():
        value = getattr(config, key)
        if value > top:
            raise ConfigError(
                f"must be <= {top:,} (the ceiling for a model trained on a phone), got {value:,}", key=key
            )
    if params > MAX_PARAMS:
        raise ConfigError(
            f"the model would have {params:,} parameters; the ceiling is {MAX_PARAMS:,} (what a phone "
            "can train in memory)",
            key="model",
        )


def _check_type(cls: type, key: str, value: Any) -> None:
    """A config value against its field's annotation (int, float, bool, str, tuple[int, ...], ...): a wrong type is
    one ConfigError naming the key, not a TypeError from deep inside a model builder."""

    hint = typing.get_type_hints(cls).get(key)
    want, args = typing.get_origin(hint) or hint, typing.get_args(hint)

    def ok(v: Any, t: Any) -> bool:
        if t is bool:
            return isinstance(v, bool)
        if t is int:
            return isinstance(v, int) and not isinstance(v, bool)
        if t is float:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if t is str:
            return isinstance(v, str)
        return True  # other annotations: the config's own checks decide

    if want is tuple:
        inner = args[0] if args else None
        good = isinstance(value, tuple) and (inner is None or all(ok(x, inner) for x in value))
        what = f"a list of {getattr(inner, '__name__', 'values')}"
    else:
        good, what = ok(value, want), getattr(want, "__name__", str(want))
    if not good:
        raise ConfigError(f"must be {what}, not {type(value).__name__} {value!r:.60}", key=key)


ENTRY_POINTS = "autlearn.families"
BUILTIN_ORDER = {"mobilenet": 0, "lstm": 1}
_REGISTRY: dict[str, Family] = {}
_BUILTINS_LOADED = False
_LOAD_LOCK = threading.RLock()  # campaigns validate in several threads: none may see a half-loaded registry
_LOADING: list[bool] = []  # non-empty while the lock's holder loads the plugins


def _registry() -> dict[str, Family]:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return _REGISTRY
    with _LOAD_LOCK:
        if _BUILTINS_LOADED or _LOADING:  # another thread loaded it meanwhile; or a family asks while it loads
            return _REGISTRY
        _LOADING.append(True)

        # Built in and third party alike, families are plugins (entry point group `autlearn.families`, a Family
        # object each): the registry never imports a family module by name, so families may use every generic
        # module (layers, data, resource, pruning) that asks the registry.
        try:
            for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: BUILTIN_ORDER.get(e.name, 99)):
                fam = ep.load()
                _REGISTRY.setdefault(fam.name, fam)
        finally:
            _LOADING.clear()
        _BUILTINS_LOADED = True
    return _REGISTRY


def register(family: Family) -> Family:
    """Add a family (ConfigError if its name or config class is taken). Returns it."""
    reg = _registry()
    if family.name in reg or family.name == LAYER_SUITE:
        raise ConfigError(f"model family {family.name!r} is already registered", key="model")
    if any(f.config_cls is family.config_cls for f in reg.values()):
        raise ConfigError(f"config class {family.config_cls.__name__} already has a family", key="model")
    reg[family.name] = family
    return family


def unregister(name: str) -> None:
    _registry().pop(name, None)


def names() -> tuple[str, ...]:
    """Registered family names in registration order (the built-ins first: mobilenet, lstm)."""
    return tuple(_registry())


def get(name: str) -> Family:
    reg = _registry()
    if name not in reg:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(reg)}", key="model")
    return reg[name]


def of_config(config: Any) -> Family:
    """The family of a config object; ConfigError for anything else."""
    for fam in _registry().values():
        if isinstance(config, fam.config_cls):
            return fam
    raise ConfigError(f"not a model config: {type(config).__name__}", key="config")


def campaign_models() -> tuple[str, ...]:
    """What a campaign workload's `model` may be: every family (sorted) and the layer-suite pseudo-model."""
    return (*sorted(names()), LAYER_SUITE)


# ---------------------------------------------------------------------------------------------- canonical form


def plain_config(config: Any) -> dict[str, Any]:
    """A config object (`to_dict()`) or mapping as a plain dict: tuples become lists."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def canonical_config(config: Any) -> str:
    """The canonical JSON of a config object or config mapping (sorted keys, tuples as lists)."""
    return json.dumps(plain_config(config), sort_keys=True)


def config_key(config: Any) -> str:
    """16-hex hash of `canonical_config` (a config's `key()`)."""
    return hashlib.sha256(canonical_config(config).encode()).hexdigest()[:16]


__all__ = [
    "Family",
    "LAYER_SUITE",
    "campaign_models",
    "canonical_config",
    "config_key",
    "get",
    "names",
    "of_config",
    "plain_config",
    "register",
    "unregister",
]
