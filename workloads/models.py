"""PyTorch workloads (the "cloud side"): word prediction LSTM and MobileNetV1, for transfer learning.

Every model is `head(features(x))`: `features` is the frozen backbone, `head` the trainable last layer (an
`nn.Linear` named `head`). Configs are frozen dataclasses; `to_dict()` is stable (sorted, plain types) for hashing.
Weights come from a seed only (no pretrained download): the backbone is a deterministic random network.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

from profiler.errors import ConfigError

# MobileNetV1 body: (output channels at width 1.0, stride) of the 13 depthwise-separable blocks.
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
MOBILENET_STEM = 32


def _round_channels(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def _hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MobileNetConfig:
    """MobileNetV1. `channels` lists the output channels of the 14 convs with weights chosen per layer: the stem
    conv and the 13 pointwise convs (each depthwise conv keeps its input's channels). Empty `channels` means
    "derived from `width`" (the classic width multiplier); set it explicitly to express a pruned model."""

    num_classes: int = 62          # FEMNIST
    in_channels: int = 1
    image_size: int = 28
    batch: int = 1                 # as in the paper
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
                raise ConfigError(f"needs {1 + len(MOBILENET_BLOCKS)} positive ints, got {self.channels}",
                                  key="channels")
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

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
        d["channels"] = list(self.layer_channels)   # resolved, so width=0.5 and its explicit list hash alike
        d["width"] = float(self.width)
        return {"model": "mobilenet", **dict(sorted(d.items()))}

    def key(self) -> str:
        return _hash(self.to_dict())


@dataclass(frozen=True)
class WordLSTMConfig:
    """Next-word prediction: embedding + stacked LSTM (2 layers) over `seq_len` words + dense over the vocabulary
    applied to the last time step. Only the dense layer is trainable. `head_rank` > 0 factorises the dense head
    as Linear(hidden -> r) then Linear(r -> vocab) (the SVD-compressed model; 0 = dense)."""

    vocab_size: int = 10_000
    embed_dim: int = 128
    hidden_size: int = 256
    num_layers: int = 2
    seq_len: int = 10
    batch: int = 16
    seed: int = 0
    head_rank: int = 0

    def __post_init__(self) -> None:
        for k in ("vocab_size", "embed_dim", "hidden_size", "num_layers", "seq_len", "batch"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, k)}", key=k)
        if not 0 <= int(self.head_rank) <= min(self.hidden_size, self.vocab_size):
            raise ConfigError(f"must be in [0, {min(self.hidden_size, self.vocab_size)}] (0 = dense), got "
                              f"{self.head_rank}", key="head_rank")

    @property
    def feature_dim(self) -> int:
        return self.hidden_size

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.seq_len)

    @property
    def num_classes(self) -> int:
        return self.vocab_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["head_rank"]:
            del d["head_rank"]    # dense: the same dict (and key) as before head_rank existed
        return {"model": "lstm", **dict(sorted(d.items()))}

    def key(self) -> str:
        return _hash(self.to_dict())


MODELS = ("mobilenet", "lstm")
CONFIGS: dict[str, type] = {"mobilenet": MobileNetConfig, "lstm": WordLSTMConfig}


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


def make_config(model: str, **overrides: Any):
    """Config for `model` with keyword overrides; unknown model or key -> ConfigError naming valid values."""
    if model not in CONFIGS:
        raise ConfigError(f"unknown model {model!r}; valid: {', '.join(MODELS)}", key="model")
    cls = CONFIGS[model]
    valid = set(cls.__dataclass_fields__)
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ConfigError(f"unknown {model} config keys {bad}; valid: {', '.join(sorted(valid))}", key="config")
    if "channels" in overrides and overrides["channels"] is not None:
        overrides["channels"] = tuple(overrides["channels"])
    return replace(cls(), **overrides)


def build_model(config):
    """Deterministically initialised `torch.nn.Module` for a config (eval mode, backbone frozen)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if isinstance(config, MobileNetConfig):
            m = _mobilenet_cls()(config)
        elif isinstance(config, WordLSTMConfig):
            m = _lstm_cls()(config)
        else:
            raise ConfigError(f"not a model config: {type(config).__name__}", key="config")
    m.eval()
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return m


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# Classes are built lazily so importing this module does not import torch.
_CLASSES: dict[str, type] = {}


def _mobilenet_cls():
    if "mobilenet" in _CLASSES:
        return _CLASSES["mobilenet"]
    import torch
    from torch import nn

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
                    nn.init.uniform_(mod.bias, -0.05, 0.05)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    _CLASSES["mobilenet"] = MobileNetV1
    return MobileNetV1


def _lstm_cls():
    if "lstm" in _CLASSES:
        return _CLASSES["lstm"]
    import torch
    from torch import nn

    class WordLSTM(nn.Module):
        def __init__(self, cfg: WordLSTMConfig):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
            # One single-layer nn.LSTM per layer: TVM's importer handles single-layer LSTMs only.
            sizes = [cfg.embed_dim] + [cfg.hidden_size] * cfg.num_layers
            self.lstm = nn.ModuleList(nn.LSTM(a, cfg.hidden_size, batch_first=True) for a in sizes[:-1])
            if cfg.head_rank:
                self.head = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.head_rank),
                                          nn.Linear(cfg.head_rank, cfg.vocab_size))
            else:
                self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            for layer in self.lstm:
                h, _ = layer(h)
            # Positive index: TVM 0.27 imports `h[:, -1]` as take(-1, mode="fast"), which reads out of bounds.
            return h[:, h.shape[1] - 1, :]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    _CLASSES["lstm"] = WordLSTM
    return WordLSTM
