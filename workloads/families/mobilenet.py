"""MobileNetV1 family: config, model, layers, table grid, data (FEMNIST-like images) and filter pruning.

Torch, the pruning search and data sets are imported inside functions only."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rich.console import Console
from rich.table import Table as RichTable

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import data
from autlearn.workloads.layers import CONV_STEP, PHASES, Layer, LayerKey, channel_options, conv_out, model_layers
from autlearn.workloads.pruning.budget import format_value
from autlearn.workloads.pruning.mobilenet import uniform_channels, with_channels
from autlearn.workloads.pruning.search import SearchSettings, search, smallest_reachable
from autlearn.workloads.registry import Compressor, Family, check_bounds, config_key

if TYPE_CHECKING:
    import numpy as np

    from autlearn.workloads.data import Dataset
    from autlearn.workloads.layers import Layer, LayerKey
    from autlearn.workloads.pruning.budget import Budget
    from autlearn.workloads.pruning.search import SearchSettings

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


def compressor(cfg: MobileNetConfig, table: Any, out: Path, options: dict[str, Any], console: Any) -> Compressor:
    """NetAdapt-style filter pruning (autlearn.workloads.pruning.search); `options` are SearchSettings fields."""

    settings = SearchSettings(**options)
    return Compressor(
        lambda targets: _search(cfg, table, targets, Path(out), settings, console),
        lambda kind: smallest_reachable(cfg, kind, table, settings),
    )


def _search(
    cfg: MobileNetConfig, table: Any, targets: Iterable[Budget], out: Path, settings: SearchSettings, console: Any
) -> dict[str, str]:

    with console.status("searching") as status:
        results = search(
            cfg,
            table,
            targets,
            out,
            settings,
            on_event=lambda m: (status.update(m), console.log(m) if "iteration" in m and "->" in m else None),
        )
    view = RichTable(title=f"Pareto set ({cfg.to_dict()['model']}, accuracy on held-out data)")
    for col in ("budget", "predicted", "accuracy", "channels", "export"):
        view.add_column(col)
    for r in results:
        for p in r.points:
            view.add_row(
                str(p.budget),
                format_value(p.budget.kind, p.value),
                f"{p.accuracy:.3f}",
                ",".join(map(str, p.channels)),
                p.export,
            )
        for b in r.unmet:
            view.add_row(str(b), "not met", "", "", "")
    Console().print(view)
    return {str(p.budget): p.export for r in results for p in r.points}


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
    strategy="filter",
    prunable=prunable,
    compressed_keys=("channels",),
    compressor=compressor,
    validation_configs=validation_configs,
    load_data=load_data,
)
