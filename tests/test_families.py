"""The model-family registry: a third family registered here (a 2-layer MLP, this file only) is accepted by config
validation, campaign validation, the layer grid / resource model, compile + one host step and the pruning search
with a strategy of its own, with no edit elsewhere. Also: lookups, errors, the canonical config form."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from autlearn.profiler.errors import ConfigError
from autlearn.workloads import registry
from autlearn.workloads.compressed import export, load_compressed
from autlearn.workloads.layers import channel_options
from autlearn.workloads.models import build_model
from autlearn.workloads.pruning.budget import Budget
from autlearn.workloads.pruning.importance import lowest
from autlearn.workloads.pruning.search import SearchSettings, netadapt, search, smallest_reachable
from autlearn.workloads.pruning.strategy import Strategy
from autlearn.workloads.resource import predict


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 8
    hidden: int = 16
    num_classes: int = 4
    batch: int = 2
    seed: int = 0

    @property
    def feature_dim(self) -> int:
        return self.hidden

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_features)

    def to_dict(self):
        return {"model": "mlp", **dict(sorted(asdict(self).items()))}

    def key(self) -> str:
        return registry.config_key(self)


def _build(cfg):
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(cfg.in_features, cfg.hidden), nn.ReLU())
            self.head = nn.Linear(cfg.hidden, cfg.num_classes)

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(self.features(x))

    return MLP()


def _example(cfg):
    import torch

    return torch.zeros(cfg.input_shape, dtype=torch.float32)


def _layers(cfg, body, head_rank):
    from autlearn.workloads.layers import PHASES, Layer, LayerKey

    return (
        Layer("body.0", LayerKey("fc", 1, 1, 1, 1, 1, cfg.in_features, cfg.hidden, cfg.batch), body),
        Layer("head", LayerKey("fc", 1, 1, 1, 1, 1, cfg.hidden, cfg.num_classes, cfg.batch), PHASES),
    )


def _grid(cfg, trainable, conv_step, fc_step):
    from dataclasses import replace

    from autlearn.workloads.layers import channel_options, model_keys

    return {k for h in channel_options(cfg.hidden, conv_step) for k in model_keys(replace(cfg, hidden=h), trainable)}


def _dataset(cfg, per_class=None):
    from autlearn.workloads.data import Dataset

    rng = np.random.default_rng(cfg.seed)
    y = np.arange(32) % cfg.num_classes
    x = (rng.normal(size=(32, cfg.in_features)) + y[:, None]).astype(np.float32)
    return Dataset(x, y.astype(np.int64), cfg.num_classes, "random", True)


@dataclass(frozen=True)
class HiddenUnits:
    """The MLP's pruning strategy: drop the lowest-importance hidden units (rows of body.0, columns of head)."""

    name: str = "hidden-units"

    def layers(self, cfg, step=None):
        return {"body.0": channel_options(cfg.hidden, step or 8)}

    def with_channels(self, cfg, channels):
        (hidden,) = channels
        return replace(cfg, hidden=int(hidden))

    def prune(self, model, cfg, layer, k, importance):
        sd = model.state_dict()
        drop = set(lowest(importance(sd["body.0.weight"]), k).tolist())
        keep = [i for i in range(cfg.hidden) if i not in drop]
        new = self.with_channels(cfg, [len(keep)])
        m = build_model(new)
        m.load_state_dict(
            {
                "body.0.weight": sd["body.0.weight"][keep],
                "body.0.bias": sd["body.0.bias"][keep],
                "head.weight": sd["head.weight"][:, keep],
                "head.bias": sd["head.bias"],
            }
        )
        return new, m

    def export(self, base, cfg, out_dir, state, **fields):
        return export(MLP, base, cfg, out_dir, state, **fields)

    def compressor(self, cfg, table, out, options, console):
        return netadapt(cfg, table, out, options, console)


MLP = registry.Family(
    name="mlp",
    config_cls=MLPConfig,
    build=_build,
    example_input=_example,
    default_lr=0.1,
    layers=_layers,
    grid=_grid,
    dataset=_dataset,
    batch=lambda cfg, i=0: _dataset(cfg).batch(i, cfg.batch, cfg.seed),
    strategy=HiddenUnits(),
    compressed_keys=("hidden",),
)


@pytest.fixture
def mlp():
    registry.register(MLP)
    try:
        yield MLP
    finally:
        registry.unregister("mlp")


def test_builtins_and_lookups():
    from autlearn.workloads.families.lstm import WordLSTMConfig
    from autlearn.workloads.families.mobilenet import MobileNetConfig
    from autlearn.workloads.models import make_config

    assert registry.names()[:2] == ("mobilenet", "lstm")
    assert registry.get("lstm").config_cls is WordLSTMConfig
    assert registry.of_config(make_config("mobilenet", width=0.25)).config_cls is MobileNetConfig
    with pytest.raises(ConfigError, match="unknown model 'resnet'; valid: mobilenet, lstm") as e:
        registry.get("resnet")
    assert e.value.key == "model"
    with pytest.raises(ConfigError, match="not a model config"):
        registry.of_config(object())
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(registry.get("lstm"))


def test_import_is_cheap():
    code = (
        "import sys, workloads.registry as f, workloads.models, autlearn.engine.campaign_config; f.names(); "
        "print('torch' in sys.modules or 'tvm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_canonical_config_is_one_form():
    from autlearn.workloads.models import make_config
    from autlearn.workloads.resource import canonical_config

    cfg = make_config("mobilenet", width=0.25)
    assert registry.canonical_config(cfg) == json.dumps(cfg.to_dict(), sort_keys=True)
    assert cfg.key() == registry.config_key(cfg) == registry.config_key(cfg.to_dict())
    assert (
        canonical_config({"b": (1, 2), "a": 1})
        == registry.canonical_config({"b": (1, 2), "a": 1})
        == '{"a": 1, "b": [1, 2]}'
    )


def test_third_family_config_and_campaign(mlp):
    from autlearn.engine.campaign_config import MODELS, parse_campaign
    from autlearn.workloads.models import make_config

    assert "mlp" in registry.names() and "mlp" in MODELS
    assert make_config("mlp", hidden=24) == MLPConfig(hidden=24)
    with pytest.raises(ConfigError, match=r"unknown mlp config keys \['width'\]"):
        make_config("mlp", width=2)
    c = parse_campaign({"name": "t", "workload": [{"model": "mlp", "config": {"hidden": 24}}]})
    assert c.workloads[0].model == "mlp" and c.workloads[0].kwargs == {"hidden": 24}


def test_third_family_is_gone_after_unregister():
    from autlearn.engine.campaign_config import parse_campaign

    assert "mlp" not in registry.names()
    with pytest.raises(ConfigError):
        parse_campaign({"name": "t", "workload": [{"model": "mlp"}]})


def test_third_family_grid_and_resource(mlp):
    from autlearn.workloads.layers import flops, model_keys, table_grid
    from autlearn.workloads.resource import model_resource, validation_configs

    cfg = MLPConfig()
    keys = model_keys(cfg)
    assert [k.phase for k in keys] == ["forward", "forward", "backward", "update"]
    grid = table_grid(cfg, conv_step=8)
    assert set(keys) <= set(grid) and len(grid) == 8  # hidden 16 and 8: 2 x (body forward + 3 head phases)
    r = model_resource(cfg)
    assert r.flops == sum(flops(k) for k in keys) and r.memory_bytes == 4 * (8 * 16 + 16 + 16 * 4 + 4)
    assert validation_configs(cfg) == {"full": cfg}


def test_third_family_compiles_and_trains_on_host(mlp):
    from autlearn.workloads.compile import build_program
    from autlearn.workloads.program import run_on_host

    prog = build_program("mlp", "full", "x86_64", database=None)
    assert prog.meta["model"] == "mlp" and prog.meta["lr"] == 0.1 and prog.meta["config_key"] == MLPConfig().key()
    assert prog.tensors["x"].shape == (2, 8)
    rec = run_on_host(prog, steps=1)
    assert np.isfinite(rec[0]["loss"])
    assert not np.allclose(rec[-1]["tensors"]["head.weight"], prog.tensors["head.weight"])


def test_third_family_prunes_with_its_own_strategy(mlp, tmp_path):
    """The NetAdapt search runs the MLP through the strategy defined above (no pruning module knows it) and
    exports a compressed.json + weights that load as a smaller MLP; the CLI's compressor resumes that search."""
    import torch
    from rich.console import Console

    assert isinstance(MLP.strategy, Strategy)
    cfg = MLPConfig(hidden=32)
    settings = SearchSettings(
        init_reduction=0.2, short_steps=2, long_steps=2, pretrain_steps=2, batch_size=8, max_iterations=10
    )
    full, small = predict(cfg, "flops"), smallest_reachable(cfg, "flops", None, settings)
    assert small == predict(MLPConfig(hidden=8), "flops")
    budget = Budget("flops", (full + small) / 2)
    (res,) = search(cfg, None, [budget], tmp_path, settings)
    (point,) = res.points
    assert point.value <= budget.value < full and point.channels[0] in (8, 16)
    assert [it.channels for it in res.iterations][0] == (32,) and res.iterations[1].layer == 0
    doc = json.loads(Path(point.export).read_text())
    assert doc["model"] == "mlp" and doc["build_program"]["compressed_config"] == {"hidden": point.channels[0]}
    assert doc["build_program"]["config"] == {k: v for k, v in asdict(cfg).items() if k != "hidden"}
    loaded, net = load_compressed(point.export)
    assert loaded == MLPConfig(hidden=point.channels[0])
    assert net(torch.zeros(2, 8)).shape == (2, 4)

    comp = MLP.strategy.compressor(cfg, None, tmp_path, asdict(settings), Console(quiet=True))
    assert comp.propose([budget]) == {str(budget): point.export}  # resumed: the same model
    assert comp.smallest("flops") == small
