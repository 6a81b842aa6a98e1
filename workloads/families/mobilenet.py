"""MobileNetV1 family: config, model, layers, table grid, data (FEMNIST-like images) and filter pruning (its
pruning strategy, `FilterPruning`).

Torch is imported inside functions only."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import data
from autlearn.workloads.compressed import export
from autlearn.workloads.layers import CONV_STEP, PHASES, Layer, LayerKey, channel_options, conv_out, model_layers
from autlearn.workloads.models import build_model
from autlearn.workloads.pruning.importance import Importance, L2FilterImportance, lowest
from autlearn.workloads.pruning.search import netadapt
from autlearn.workloads.pruning.strategy import Compressor
from autlearn.workloads.registry import Family, check_bounds, config_key

if TYPE_CHECKING:
    from autlearn.workloads.data import Dataset

# MobileNetV1 body: (output channels at width 1.0, stride) of the 13 depthwise-separable blocks.
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
MOBILENET_STEM = 32


def _round_channels(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


MOBILENET_BOUNDS = {"num_classes": 100_000, "in_channels": 64, "image_size": 1024, "batch": 4096}
MAX_WIDTH, MAX_CHANNELS = 16.0, 16384


@dataclass(frozen=True)
class MobileNetConfig:
    """MobileNetV1. `channels` lists the output channels of the 14 convs with weights chosen per layer: the stem
    conv and the 13 pointwise convs (each depthwise conv keeps its input's channels). Empty `channels` means
    "derived from `width`" (the classic width multiplier); set it explicitly to express a pruned model."""

    num_classes: int = 62  # FEMNIST
    in_channels: int = 1
    image_size: int = 28
    batch: int = 1  # as in the paper
    width: float = 1.0
    channels: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise ConfigError(f"width must be > 0, got {self.width}", key="width")
        for k in ("num_classes", "in_channels", "image_size", "batch"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, k)}", key=k)
        if self.channels:
            if len(self.channels) != 1 + len(MOBILENET_BLOCKS) or min(self.channels) < 1:
                raise ConfigError(
                    f"needs {1 + len(MOBILENET_BLOCKS)} positive ints, got {self.channels}", key="channels"
                )
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.width > MAX_WIDTH or max(self.layer_channels) > MAX_CHANNELS:
            raise ConfigError(
                f"at most {MAX_CHANNELS} channels a layer (width <= {MAX_WIDTH}), got {max(self.layer_channels)}",
                key="channels" if self.channels else "width",
            )
        c = self.layer_channels
        check_bounds(
            self,
            MOBILENET_BOUNDS,
            9 * self.in_channels * c[0] + sum(9 * a + a * b for a, b in zip(c, c[1:])) + c[-1] * self.num_classes,
        )

    @property
    def layer_channels(self) -> tuple[int, ...]:
        if self.channels:
            return self.channels
        return tuple(_round_channels(c * self.width) for c in (MOBILENET_STEM, *(b[0] for b in MOBILENET_BLOCKS)))

    @property
    def feature_dim(self) -> int:
        return self.layer_channels[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.layer_channels)  # resolved, so width=0.5 and its explicit list hash alike
        d["width"] = float(self.width)
        return {"model": "mobilenet", **dict(sorted(d.items()))}

    def key(self) -> str:
        return config_key(self)


_CLASS: list[type] = []  # built lazily so importing this module does not import torch


def build(cfg: MobileNetConfig) -> Any:
    if not _CLASS:
        _CLASS.append(_mobilenet_cls())
    return _CLASS[0](cfg)


def _mobilenet_cls() -> type:
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
        # Conv with bias (BatchNorm of the frozen, eval-mode backbone folded in): what a deployed model runs.
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True), nn.ReLU())

    class MobileNetV1(nn.Module):
        def __init__(self, cfg: MobileNetConfig):
            super().__init__()
            ch = cfg.layer_channels
            layers = [conv_bn(cfg.in_channels, ch[0], 3, 2)]
            cin = ch[0]
            for (_, stride), cout in zip(MOBILENET_BLOCKS, ch[1:]):
                layers += [conv_bn(cin, cin, 3, stride, groups=cin), conv_bn(cin, cout, 1, 1)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(cin, cfg.num_classes)
            for mod in self.body.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                    assert mod.bias is not None  # conv_bn's convs have a bias
                    nn.init.uniform_(mod.bias, -0.05, 0.05)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return cast(torch.Tensor, self.body(x).mean(dim=(2, 3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return cast(torch.Tensor, self.head(self.features(x)))

    return MobileNetV1


def example_input(cfg: MobileNetConfig) -> Any:
    import torch  # torch takes seconds to import; only this path needs it

    return torch.zeros(cfg.input_shape, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- layers


def layers(config: MobileNetConfig, body: tuple[str, ...], head_rank: int | None) -> tuple[Layer, ...]:

    if head_rank is not None:
        raise ConfigError("head_rank applies to the LSTM family only", key="head_rank")
    b = config.batch
    ch = config.layer_channels
    h = config.image_size
    out = [Layer("body.0", LayerKey("conv", 3, 2, 1, h, h, config.in_channels, ch[0], b), body)]
    h = conv_out(h, 3, 2)
    cin = ch[0]
    for j, ((_, stride), cout) in enumerate(zip(MOBILENET_BLOCKS, ch[1:])):
        out.append(Layer(f"body.{1 + 2 * j}", LayerKey("dwconv", 3, stride, cin, h, h, cin, cin, b), body))
        h = conv_out(h, 3, stride)
        out.append(Layer(f"body.{2 + 2 * j}", LayerKey("conv", 1, 1, 1, h, h, cin, cout, b), body))
        cin = cout
    out.append(Layer("head", LayerKey("fc", 1, 1, 1, 1, 1, cin, config.num_classes, b), PHASES))
    return tuple(out)


def prunable(config: MobileNetConfig, step: int | None = None) -> dict[str, tuple[int, ...]]:
    """Filter pruning: the stem and every pointwise conv, each to its channels reduced in steps of `step`."""

    names = ["body.0"] + [f"body.{2 + 2 * j}" for j in range(len(MOBILENET_BLOCKS))]
    return {n: channel_options(c, step or CONV_STEP) for n, c in zip(names, config.layer_channels)}


def grid(config: MobileNetConfig, trainable: str, conv_step: int, fc_step: int) -> set[LayerKey]:
    """Any layer's output channels reduced in steps of `conv_step`."""

    keys: set[LayerKey] = set()
    opts = list(prunable(config, conv_step).values())
    ci = 0  # index into layer_channels of the current producer
    for layer in model_layers(config, trainable):
        k = layer.key
        if k.type == "conv" and k.kernel == 3:  # stem
            pairs = [(k.c_in, co) for co in opts[0]]
        elif k.type == "dwconv":
            pairs = [(c, c) for c in opts[ci]]
        elif k.type == "conv":
            pairs = [(a, co) for a in opts[ci] for co in opts[ci + 1]]
            ci += 1
        else:  # head
            pairs = [(a, k.c_out) for a in opts[-1]]
        for a, co in pairs:
            keys.update(k.with_channels(a, co).with_phase(p) for p in layer.phases)
    return keys


def compress(config: MobileNetConfig) -> MobileNetConfig:
    """Default compressed config: half width."""
    return replace(config, width=config.width * 0.5, channels=tuple(max(8, c // 2) for c in config.channels))


def validation_configs(config: MobileNetConfig, n: int, seed: int) -> dict[str, Any]:
    """Uniform thinning (fractions 1, 3/4, 1/2, 1/4) then random per-layer channel counts."""

    out: dict[str, Any] = {}
    for f in (1.0, 0.75, 0.5, 0.25):
        ch = uniform_channels(config, f)
        if len(out) < n and ch not in {c.layer_channels for c in out.values()}:
            out[f"uniform-{f:g}"] = with_channels(config, ch)
    rng = np.random.default_rng(seed)
    opts = list(prunable(config).values())
    tries = 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        ch = tuple(int(rng.choice(o)) for o in opts)
        if ch not in {c.layer_channels for c in out.values()}:
            out[f"random-{len(out):02d}"] = with_channels(config, ch)
    return out


# ---------------------------------------------------------------------------------------------- data


def dataset(cfg: MobileNetConfig, per_class: int | None = None) -> Dataset:
    """Synthetic FEMNIST-like glyphs at the config's image size (`per_class` glyphs per class; default 16)."""

    if per_class is None:
        ds = data.default_images(cfg.num_classes, cfg.seed)
    else:
        ds = data.synthetic_femnist(cfg.num_classes, per_class=int(per_class), seed=cfg.seed)
    if (cfg.image_size, cfg.in_channels) != (data.FEMNIST_SIZE, 1):
        ds = data.Dataset(
            data.resize_images(ds.x, cfg.image_size, cfg.in_channels), ds.y, ds.num_classes, ds.source, True
        )
    return ds


def batch(cfg: MobileNetConfig, index: int = 0) -> tuple[np.ndarray, np.ndarray]:

    # Resize only the batch, not the whole data set (224x224x3 copies would be large).
    x, y = data.default_images(cfg.num_classes, cfg.seed).batch(index, cfg.batch, cfg.seed)
    return data.resize_images(x, cfg.image_size, cfg.in_channels), y


def load_data(cfg: MobileNetConfig, path: Path) -> tuple[np.ndarray, np.ndarray]:

    x, y = data.load_femnist(path).batch(0, cfg.batch, cfg.seed)
    return data.resize_images(x, cfg.image_size, cfg.in_channels), y


# ---------------------------------------------------------------------------------------------- compression


@dataclass(frozen=True)
class FilterPruning:
    """Physical filter pruning (the family's pruning strategy): removing output channels of the stem or of a
    pointwise conv also removes the matching depthwise-conv channels of the next block and the next pointwise
    conv's (or the head's) input channels. Layer index i is `config.layer_channels[i]` (0 = stem conv, 1..13 =
    pointwise convs); `autlearn prune` runs the NetAdapt search."""

    name: str = "filter"

    def layers(self, config: Any, step: int | None = None) -> Mapping[str, tuple[int, ...]]:
        return prunable(config, step)

    def with_channels(self, config: Any, channels: Sequence[int]) -> Any:
        return with_channels(config, channels)

    def prune(self, model: Any, config: Any, layer: int, k: int, importance: Importance) -> tuple[Any, Any]:
        cfg, m, _ = prune_smallest(model, config, layer, k, importance)
        return cfg, m

    def export(self, base: Any, config: Any, out_dir: Path, state: Any, **fields: Any) -> Path:
        return export(FAMILY, base, config, out_dir, state, **fields)

    def compressor(self, config: Any, table: Any, out: Path, options: Mapping[str, Any], console: Any) -> Compressor:
        return netadapt(config, table, out, options, console)


def _check(config: Any, layer: int) -> None:
    if not isinstance(config, MobileNetConfig):
        raise ConfigError(f"filter pruning supports MobileNetConfig, got {type(config).__name__}", key="model")
    if not 0 <= layer < len(config.layer_channels):
        raise ConfigError(f"layer must be in [0, {len(config.layer_channels)}), got {layer}", key="layer")


def producer(layer: int) -> str:
    """State-dict prefix of the conv producing layer `layer`'s channels."""
    return "body.0.0" if layer == 0 else f"body.{2 * layer}.0"


def consumers(config: MobileNetConfig, layer: int) -> tuple[str | None, str]:
    """(depthwise conv prefix or None, next conv/head prefix) consuming the channels."""
    last = len(config.layer_channels) - 1
    if layer == last:
        return None, "head"
    return f"body.{2 * layer + 1}.0", f"body.{2 * layer + 2}.0"


def filter_scores(model: Any, layer: int, importance: Importance | None = None) -> np.ndarray:
    sd = model.state_dict()
    return (importance or L2FilterImportance())(sd[f"{producer(layer)}.weight"])


def min_channels(config: MobileNetConfig, step: int = CONV_STEP) -> tuple[int, ...]:
    """The smallest reachable channels: every layer at its smallest option (8 for multiples of 8)."""
    return tuple(channel_options(c, step)[0] for c in config.layer_channels)


def with_channels(config: MobileNetConfig, channels: Sequence[int]) -> MobileNetConfig:
    return replace(config, channels=tuple(int(c) for c in channels))


def prune_channels(model: Any, config: MobileNetConfig, layer: int, remove: Iterable[int]) -> tuple[Any, Any]:
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
    model: Any, config: MobileNetConfig, layer: int, k: int, importance: Importance | None = None
) -> tuple[Any, Any, np.ndarray]:
    """Remove the `k` lowest-importance (default: smallest-L2) filters of `layer` -> (config, model, removed)."""
    _check(config, layer)
    scores = filter_scores(model, layer, importance)
    rm = lowest(scores, k)
    cfg, m = prune_channels(model, config, layer, rm)
    return cfg, m, rm


def zero_channels(model: Any, config: MobileNetConfig, layer: int, channels: Sequence[int]) -> Any:
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


def thin_to(
    model: Any, config: MobileNetConfig, channels: Sequence[int], importance: Importance | None = None
) -> tuple[Any, Any]:
    """Prune every layer down to `channels` (keeping the highest-importance filters) -> (config, model)."""
    cfg, m = config, model
    for layer, target in enumerate(channels):
        c = cfg.layer_channels[layer]
        if target > c or target < 1:
            raise ConfigError(f"layer {layer}: target {target} not in [1, {c}]", key="channels")
        if target < c:
            cfg, m, _ = prune_smallest(m, cfg, layer, c - target, importance)
    return cfg, m


def uniform_channels(config: MobileNetConfig, fraction: float, step: int = CONV_STEP) -> tuple[int, ...]:
    """Width-multiplier-style thinning: every layer to the reachable count nearest `fraction` x its channels."""
    out = []
    for c in config.layer_channels:
        opts = np.array(channel_options(c, step))
        out.append(int(opts[np.argmin(np.abs(opts - fraction * c))]))
    return tuple(out)


FAMILY = Family(
    name="mobilenet",
    config_cls=MobileNetConfig,
    build=build,
    example_input=example_input,
    default_lr=0.05,
    layers=layers,
    grid=grid,
    dataset=dataset,
    batch=batch,
    compress=compress,
    strategy=FilterPruning(),
    compressed_keys=("channels",),
    validation_configs=validation_configs,
    load_data=load_data,
)
