"""Word-LSTM family: config, model, layers, table grid, data (embedded Shakespeare) and SVD of the dense head (its
pruning strategy, autlearn.workloads.pruning.svd.SVDHead).

Torch is imported inside functions only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import data
from autlearn.workloads.layers import FC_STEP, PHASES, Layer, LayerKey, model_keys
from autlearn.workloads.pruning.svd import SVDHead, head_ranks
from autlearn.workloads.registry import Family, check_bounds, config_key

if TYPE_CHECKING:
    from autlearn.workloads.data import Dataset

LSTM_BOUNDS = {
    "vocab_size": 1_000_000,
    "embed_dim": 8192,
    "hidden_size": 8192,
    "num_layers": 16,
    "seq_len": 4096,
    "batch": 4096,
}


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
        check_bounds(
            self,
            LSTM_BOUNDS,
            self.vocab_size * (self.embed_dim + self.hidden_size + 1)
            + self.num_layers * 4 * (self.embed_dim + 2 * self.hidden_size) * self.hidden_size,
        )
        if not 0 <= int(self.head_rank) <= min(self.hidden_size, self.vocab_size):
            raise ConfigError(
                f"must be in [0, {min(self.hidden_size, self.vocab_size)}] (0 = dense), got {self.head_rank}",
                key="head_rank",
            )

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
            del d["head_rank"]  # dense: the same dict (and key) as before head_rank existed
        return {"model": "lstm", **dict(sorted(d.items()))}

    def key(self) -> str:
        return config_key(self)


_CLASS: list[type] = []  # built lazily so importing this module does not import torch


def build(cfg: WordLSTMConfig) -> Any:
    if not _CLASS:
        _CLASS.append(_lstm_cls())
    return _CLASS[0](cfg)


def _lstm_cls() -> type:
    import torch  # torch takes seconds to import; only this path needs it
    from torch import nn  # torch takes seconds to import; only this path needs it

    class WordLSTM(nn.Module):
        def __init__(self, cfg: WordLSTMConfig):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
            # One single-layer nn.LSTM per layer: TVM's importer handles single-layer LSTMs only.
            sizes = [cfg.embed_dim] + [cfg.hidden_size] * cfg.num_layers
            self.lstm = nn.ModuleList(nn.LSTM(a, cfg.hidden_size, batch_first=True) for a in sizes[:-1])
            if cfg.head_rank:
                self.head: nn.Module = nn.Sequential(
                    nn.Linear(cfg.hidden_size, cfg.head_rank), nn.Linear(cfg.head_rank, cfg.vocab_size)
                )
            else:
                self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            h: torch.Tensor = self.embed(x)
            for layer in self.lstm:
                h, _ = layer(h)
            # Positive index: TVM 0.27 imports `h[:, -1]` as take(-1, mode="fast"), which reads out of bounds.
            return h[:, h.shape[1] - 1, :]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return cast(torch.Tensor, self.head(self.features(x)))

    return WordLSTM


def example_input(cfg: WordLSTMConfig) -> Any:
    import torch  # torch takes seconds to import; only this path needs it

    return torch.zeros(cfg.input_shape, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------- layers


def layers(config: WordLSTMConfig, body: tuple[str, ...], head_rank: int | None) -> tuple[Layer, ...]:
    """`head_rank` replaces the dense head by its rank-r SVD factorisation fc(H->r), fc(r->V)."""

    b, t = config.batch, config.seq_len
    out = [Layer("embed", LayerKey("embedding", 1, 1, 1, t, 1, config.vocab_size, config.embed_dim, b), body)]
    sizes = [config.embed_dim] + [config.hidden_size] * config.num_layers
    for i, (a, hdim) in enumerate(zip(sizes[:-1], sizes[1:])):
        out.append(Layer(f"lstm.{i}", LayerKey("lstm", 1, 1, 1, t, 1, a, hdim, b), body))
    hs, v = config.hidden_size, config.vocab_size
    if head_rank is None:
        out.append(Layer("head", LayerKey("fc", 1, 1, 1, 1, 1, hs, v, b), PHASES))
    else:
        if not 1 <= int(head_rank) <= min(hs, v):
            raise ConfigError(f"must be in [1, {min(hs, v)}], got {head_rank}", key="head_rank")
        r = int(head_rank)
        out.append(Layer("head.0", LayerKey("fc", 1, 1, 1, 1, 1, hs, r, b), PHASES))
        out.append(Layer("head.1", LayerKey("fc", 1, 1, 1, 1, 1, r, v, b), PHASES))
    return tuple(out)


def grid(config: WordLSTMConfig, trainable: str, conv_step: int, fc_step: int) -> set[LayerKey]:
    """The dense model and the head factorised at any rank in steps of `fc_step`."""

    keys = set(model_keys(config, trainable))
    for r in head_ranks(config, fc_step):
        keys.update(model_keys(config, trainable, head_rank=r))
    return keys


def compress(config: WordLSTMConfig) -> WordLSTMConfig:
    """Default compressed config: half the hidden units."""
    return replace(config, hidden_size=max(8, config.hidden_size // 2))


def validation_configs(config: WordLSTMConfig, n: int, seed: int) -> dict[str, Any]:
    """The dense head, then the head at ranks spread over the reachable range (`head_rank` in the config)."""

    ranks = head_ranks(config)
    idx = np.unique(np.linspace(0, len(ranks) - 1, max(1, n - 1)).round().astype(int))
    picks = [None] + [int(ranks[i]) for i in idx]
    return {"dense" if r is None else f"rank-{r}": replace(config, head_rank=r or 0) for r in picks[:n]}


# ---------------------------------------------------------------------------------------------- data


def dataset(cfg: WordLSTMConfig, per_class: int | None = None) -> Dataset:
    """The embedded Shakespeare excerpt as (seq_len words -> next word) windows; `per_class` does not apply."""

    return data.default_words(cfg.vocab_size, cfg.seq_len)


def batch(cfg: WordLSTMConfig, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return dataset(cfg).batch(index, cfg.batch, cfg.seed)


def load_data(cfg: WordLSTMConfig, path: Path) -> tuple[np.ndarray, np.ndarray]:

    return data.load_shakespeare(path, cfg.vocab_size, cfg.seq_len).batch(0, cfg.batch, cfg.seed)


FAMILY = Family(
    name="lstm",
    config_cls=WordLSTMConfig,
    build=build,
    example_input=example_input,
    default_lr=0.5,  # the random frozen LSTM's features are small: larger step
    layers=layers,
    grid=grid,
    dataset=dataset,
    batch=batch,
    compress=compress,
    strategy=SVDHead(FC_STEP),
    compressed_keys=("head_rank",),
    validation_configs=validation_configs,
    load_data=load_data,
)
