"""Layers of a workload as table keys, the grid of keys a latency/energy table must cover, and exact FLOPs/memory.

A `LayerKey` identifies one layer *shape* in one training *phase*; two layers with the same shape share a table
entry (NetAdapt's look-up table, nn-Meter's kernel configs). Pure functions; no torch import.

Conventions (chosen to match `torch.utils.flop_counter.FlopCounterMode`, which the tests check against):
  * FLOPs = 2 x multiply-accumulates of the conv/matmul ops. Bias adds, activations, pooling, the LSTM cell's
    element-wise gate math and the loss are not counted.
  * backward = gradient w.r.t. the input AND the weights (2 x forward; LSTM: minus the gradient w.r.t. the zero
    initial hidden state). (A compiled step that trains only the
    head skips the head's input gradient; the table measures what the runtime does, FLOPs stay a proxy.)
  * update = plain SGD, `w -= lr * g`: 2 FLOPs per parameter.
  * memory = parameter bytes (float32, weights + biases). Activations and optimizer state are not counted.
Conv layers use padding kernel // 2 (as MobileNetV1 here). An `fc` layer has in_h = in_w = kernel = stride = 1.
An `lstm` key has c_in = input size, c_out = hidden size, in_h = sequence length (in_w = 1); an `embedding` key has
c_in = vocabulary size, c_out = embedding dim, in_h = sequence length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from autlearn.profiler.errors import ConfigError
from autlearn.workloads.registry import of_config

LAYER_TYPES = ("conv", "dwconv", "fc", "lstm", "embedding")
PHASES = ("forward", "backward", "update")
TRAINABLE = ("head", "all")
CONV_STEP = 8  # channel granularity of conv grids (and of pruning), as NetAdapt
FC_STEP = 128  # coarser granularity of FC/LSTM dims (SVD ranks)
FLOAT_BYTES = 4
# LayerKey.family: (type, kernel, stride, in_h, in_w, batch, phase, group class)
FamilyKey = tuple[str, int, int, int, int, int, str, int]


@dataclass(frozen=True, order=True)
class LayerKey:
    type: str
    kernel: int
    stride: int
    groups: int
    in_h: int
    in_w: int
    c_in: int
    c_out: int
    batch: int
    phase: str = "forward"

    def __post_init__(self) -> None:
        if self.type not in LAYER_TYPES:
            raise ConfigError(f"unknown layer type {self.type!r}; valid: {', '.join(LAYER_TYPES)}", key="type")
        if self.phase not in PHASES:
            raise ConfigError(f"unknown phase {self.phase!r}; valid: {', '.join(PHASES)}", key="phase")
        for f in fields(self):
            if f.name not in ("type", "phase"):
                v = getattr(self, f.name)
                if int(v) != v or int(v) < 1:
                    raise ConfigError(f"must be a positive int, got {v!r}", key=f.name)
                object.__setattr__(self, f.name, int(v))
        if self.type == "dwconv" and not (self.groups == self.c_in == self.c_out):
            raise ConfigError(f"dwconv needs groups == c_in == c_out, got {self}", key="groups")
        if self.type == "conv" and (self.c_in % self.groups or self.c_out % self.groups):
            raise ConfigError(f"groups {self.groups} must divide c_in and c_out", key="groups")

    @property
    def out_h(self) -> int:
        if self.type in ("conv", "dwconv"):
            return (self.in_h + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        return self.in_h

    @property
    def out_w(self) -> int:
        if self.type in ("conv", "dwconv"):
            return (self.in_w + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        return self.in_w

    @property
    def family(self) -> FamilyKey:
        """Everything but the channel counts: keys of one family differ only in (c_in, c_out) and are
        interpolated together. Depthwise convs vary in one dimension (groups == c_in == c_out)."""
        return (
            self.type,
            self.kernel,
            self.stride,
            self.in_h,
            self.in_w,
            self.batch,
            self.phase,
            1 if self.type == "conv" and self.groups == 1 else (0 if self.type == "dwconv" else self.groups),
        )

    def with_phase(self, phase: str) -> LayerKey:
        return replace(self, phase=phase)

    def with_channels(self, c_in: int, c_out: int) -> LayerKey:
        g = c_in if self.type == "dwconv" else self.groups
        return replace(self, c_in=c_in, c_out=c_out, groups=g)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.type}(k={self.kernel},s={self.stride},g={self.groups},{self.in_h}x{self.in_w},"
            f"{self.c_in}->{self.c_out},b={self.batch},{self.phase})"
        )


KEY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LayerKey))

_KEY_RE = re.compile(
    r"^(?P<type>[a-z]+)\(k=(?P<kernel>[0-9]+),s=(?P<stride>[0-9]+),g=(?P<groups>[0-9]+),(?P<in_h>[0-9]+)x"
    r"(?P<in_w>[0-9]+),(?P<c_in>[0-9]+)->(?P<c_out>[0-9]+),b=(?P<batch>[0-9]+),(?P<phase>[a-z]+)\)$"
)


def parse_key(text: str) -> LayerKey:
    """Inverse of `str(LayerKey)` (how layer suites name their runner phases); ConfigError if it is not one."""
    m = _KEY_RE.match(text.strip())
    if not m:
        raise ConfigError(f"not a layer key: {text!r}", key="phase")
    d = m.groupdict()
    kw: dict[str, Any] = {c: (d[c] if c in ("type", "phase") else int(d[c])) for c in d}
    return LayerKey(**kw)


def key_from_mapping(row: Any) -> LayerKey:
    """LayerKey from a dict / pandas row holding KEY_COLUMNS."""
    kw: dict[str, Any] = {c: (str(row[c]) if c in ("type", "phase") else int(row[c])) for c in KEY_COLUMNS}
    return LayerKey(**kw)


# ---------------------------------------------------------------------------------------------- formulas


def macs(key: LayerKey) -> int:
    """Multiply-accumulates of the layer's forward pass."""
    b = key.batch
    if key.type in ("conv", "dwconv"):
        return b * key.out_h * key.out_w * key.c_out * (key.c_in // key.groups) * key.kernel * key.kernel
    if key.type == "fc":
        return b * key.in_h * key.in_w * key.c_in * key.c_out
    if key.type == "lstm":  # per step: x @ W_ih^T (4H x I) and h @ W_hh^T (4H x H)
        return b * key.in_h * 4 * key.c_out * (key.c_in + key.c_out)
    return 0  # embedding: a gather


def num_params(key: LayerKey) -> int:
    if key.type in ("conv", "dwconv"):
        return key.c_out * (key.c_in // key.groups) * key.kernel * key.kernel + key.c_out
    if key.type == "fc":
        return key.c_in * key.c_out + key.c_out
    if key.type == "lstm":  # W_ih, W_hh, b_ih, b_hh
        return 4 * key.c_out * (key.c_in + key.c_out) + 8 * key.c_out
    return key.c_in * key.c_out


def flops(key: LayerKey) -> int:
    """FLOPs of the key's phase (see module docstring for the conventions)."""
    if key.phase == "forward":
        return 2 * macs(key)
    if key.phase == "backward":
        if key.type == "lstm":  # no gradient w.r.t. the (zero) initial hidden state
            return 4 * macs(key) - 2 * key.batch * 4 * key.c_out * key.c_out
        return 4 * macs(key)
    return 2 * num_params(key)


def param_bytes(key: LayerKey) -> int:
    """Parameter memory of the layer (float32); the same for every phase."""
    return FLOAT_BYTES * num_params(key)


# ---------------------------------------------------------------------------------------------- model layers


@dataclass(frozen=True)
class Layer:
    """One layer of a model: `key` (phase "forward") and the phases a training step runs for it."""

    name: str
    key: LayerKey
    phases: tuple[str, ...]

    def keys(self) -> tuple[LayerKey, ...]:
        return tuple(self.key.with_phase(p) for p in self.phases)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a conv with padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _phases(trainable: bool) -> tuple[str, ...]:
    return PHASES if trainable else ("forward",)


def model_layers(config: Any, trainable: str = "head", head_rank: int | None = None) -> tuple[Layer, ...]:
    """The layers of a model config (its family's `layers`) in execution order. trainable="head" (the on-device
    transfer-learning step: backbone forward only, head forward/backward/update) or "all". `head_rank`
    (LSTM family) replaces the dense head by its rank-r SVD factorisation fc(H->r), fc(r->V)."""

    if trainable not in TRAINABLE:
        raise ConfigError(f"unknown trainable {trainable!r}; valid: {', '.join(TRAINABLE)}", key="trainable")
    family = of_config(config)
    if head_rank is None:
        head_rank = getattr(config, "head_rank", 0) or None
    return tuple(family.layers(config, _phases(trainable == "all"), head_rank))


def model_keys(config: Any, trainable: str = "head", head_rank: int | None = None) -> tuple[LayerKey, ...]:
    """Every (layer, phase) key a training step of the model runs, in order (duplicates kept: each counts)."""
    return tuple(k for layer in model_layers(config, trainable, head_rank) for k in layer.keys())


def channel_options(c: int, step: int = CONV_STEP) -> tuple[int, ...]:
    """Channel counts reachable from `c` by removing `step` at a time: c, c - step, ... > 0, ascending."""
    if c < 1 or step < 1:
        raise ConfigError(f"channels and step must be >= 1, got {c}, {step}", key="step")
    return tuple(range(c, 0, -step))[::-1]


def table_grid(
    config: Any, trainable: str = "head", conv_step: int = CONV_STEP, fc_step: int = FC_STEP
) -> tuple[LayerKey, ...]:
    """Sorted, de-duplicated keys a table must cover so that every model the pruner can reach from `config`
    (its family's `grid`; MobileNet: any layer's output channels reduced in steps of `conv_step`; LSTM: the head
    factorised at any rank in steps of `fc_step`) has a prediction."""

    return tuple(sorted(set(of_config(config).grid(config, trainable, conv_step, fc_step))))


def unique_shapes(keys: Iterable[LayerKey]) -> tuple[LayerKey, ...]:
    """The distinct layer shapes (phase "forward") among keys: what has to be compiled/measured once."""
    return tuple(sorted({k.with_phase("forward") for k in keys}))
