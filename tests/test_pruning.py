"""Budgets, L2 filter pruning (physical, equivalence-checked), SVD, and the NetAdapt-style search (Pareto, resume)."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from autlearn.profiler.errors import ConfigError, TableError, UserError
from autlearn.workloads.families.mobilenet import (
    filter_scores,
    min_channels,
    producer,
    prune_channels,
    prune_smallest,
    thin_to,
    uniform_channels,
    with_channels,
    zero_channels,
)
from autlearn.workloads.layers import flops, table_grid
from autlearn.workloads.models import build_model, make_config
from autlearn.workloads.pruning.budget import Budget, UnreachableBudget, parse_budget
from autlearn.workloads.pruning.importance import RandomImportance
from autlearn.workloads.pruning.search import SearchSettings, load_compressed, search
from autlearn.workloads.pruning.svd import factorize_head, rank_for_budget, svd_linear
from autlearn.workloads.pruning.train import trainable_init
from autlearn.workloads.resource import model_resource, predict
from autlearn.workloads.tables import Table, TableMeta

TINY = dict(channels=(8, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), num_classes=10)


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("latency=40ms", "latency", 40.0),
        ("latency=1.5s", "latency", 1500.0),
        ("latency=250us", "latency", 0.25),
        ("energy=5mJ", "energy", 5.0),
        ("energy=0.2J", "energy", 200.0),
        ("flops=2M", "flops", 2e6),
        ("flops=1.5GFLOPs", "flops", 1.5e9),
        ("flops=12345", "flops", 12345.0),
        ("memory=100KB", "memory", 1e5),
        ("memory=1MiB", "memory", 1024.0**2),
        (" Memory = 64 kib ", "memory", 65536.0),
    ],
)
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))
    assert parse_budget(str(b)) == b


@pytest.mark.parametrize(
    "bad",
    ["latency", "latency=fast", "latency=40", "speed=3ms", "energy=5ms", "memory=-3KB", "flops=2X", "latency=0ms", ""],
)
def test_bad_budget_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        parse_budget(bad)


@pytest.fixture(scope="module")
def tiny():
    cfg = make_config("mobilenet", **TINY)
    return cfg, build_model(cfg)


def _input(cfg, n=3):
    return torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layer", [0, 5, 13])
def test_l2_pruning_removes_the_smallest_filters_and_matches_zeroed_channels(tiny, layer):
    cfg, net = tiny
    net = trainable_init(build_model(cfg), _input(cfg), seed=layer)  # build_model's init collapses the signal
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    w = net.state_dict()[f"{producer(layer)}.weight"]
    c = w.shape[0]
    # Give the filters known, distinct norms: filter i scaled to norm (perm[i] + 1).
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(layer))
    with torch.no_grad():
        w.mul_((perm + 1).float().view(-1, 1, 1, 1) / w.reshape(c, -1).norm(dim=1).view(-1, 1, 1, 1))
    k = 8 if c == 16 else 3
    new_cfg, pruned, removed = prune_smallest(net, cfg, layer, k)
    assert sorted(removed.tolist()) == sorted(torch.nonzero(perm < k).flatten().tolist())
    assert new_cfg.layer_channels[layer] == c - k and new_cfg.layer_channels[:layer] == cfg.layer_channels[:layer]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in net.parameters())
    x = _input(cfg)
    with torch.no_grad():
        ref = zero_channels(net, cfg, layer, removed)(x)
        out = pruned(x)
        changed = net(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, ref, atol=1e-5)  # the zeroed channels did matter
    assert [n for n, p in pruned.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


def test_random_importance_and_thinning(tiny):
    cfg, net = tiny
    s1, s2 = RandomImportance(3)(net.body[0][0].weight), RandomImportance(3)(net.body[0][0].weight)
    assert np.array_equal(s1, s2)
    assert np.allclose(filter_scores(net, 0), net.body[0][0].weight.reshape(8, -1).norm(dim=1).detach().numpy())
    ch = uniform_channels(cfg, 0.5)
    assert ch == (8,) + (8,) * 13
    tcfg, tnet = thin_to(net, cfg, ch)
    assert tcfg.layer_channels == ch and tnet(_input(tcfg)).shape == (3, 10)
    with pytest.raises(ConfigError):
        prune_channels(net, cfg, 0, list(range(8)))


def test_svd_full_rank_reproduces_the_layer_and_truncation_is_optimal():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40)
    x = torch.randn(5, 24)
    with torch.no_grad():
        torch.testing.assert_close(svd_linear(lin, 24)(x), lin(x), rtol=1e-4, atol=1e-5)
        r = 6
        approx = svd_linear(lin, r)
        w_r = approx[1].weight @ approx[0].weight
        s = torch.linalg.svdvals(lin.weight)
        assert torch.linalg.norm(lin.weight - w_r) == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-4)
    lcfg = make_config("lstm", vocab_size=200, hidden_size=32, embed_dim=16, seq_len=4, batch=2)
    net = build_model(lcfg)
    ids = torch.randint(0, 200, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(factorize_head(net, 32)(ids), net(ids), rtol=1e-4, atol=1e-5)
    assert model_resource(lcfg, head_rank=8).memory_bytes < model_resource(lcfg).memory_bytes
    assert rank_for_budget(lcfg, None, Budget("flops", predict(lcfg, "flops", head_rank=16) + 1), step=8) == 16
    with pytest.raises(UnreachableBudget):
        rank_for_budget(lcfg, None, Budget("flops", 10.0), step=8)


def synthetic_table(cfg, energy=True) -> Table:
    """A smooth table over the tiny model's grid: latency ~ FLOPs + per-layer overhead (no measurement)."""
    rows = []
    for k in table_grid(cfg):
        ms = 0.002 + flops(k) / 2e7
        rows.append(
            {
                **k.to_dict(),
                "median_ms": ms,
                "ci_low_ms": ms,
                "ci_high_ms": ms,
                "n": 5,
                "energy_mj": 3 * ms if energy else np.nan,
                "source": "measured",
            }
        )
    return Table(pd.DataFrame(rows), TableMeta.for_running_tools(source_device="synthetic (test)"))


def _body_rms(net, x):
    out = []
    with torch.no_grad():
        for layer in net.body:
            x = layer(x)
            out.append(float(x.pow(2).mean().sqrt()))
    return out


def test_trainable_init_counts_the_taps_inside_the_input():
    # 3x3 depthwise at 1x1 input: one tap in bounds, so He fan-in 1 (std sqrt(2)), not 9 (std 0.47).
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, 1, 1, groups=64), torch.nn.Conv2d(64, 64, 1))
    trainable_init(net, torch.zeros(1, 64, 1, 1), seed=0)
    assert float(net[0].weight.detach().std()) == pytest.approx(2**0.5, rel=0.15)
    assert float(net[1].weight.detach().std()) == pytest.approx((2 / 64) ** 0.5, rel=0.15)
    assert not net[0].bias.any()
    # At 28x28 a narrow MobileNet keeps its signal through the 1x1 and 2x2 blocks (all 9 taps counted: ~0.01).
    cfg = make_config("mobilenet", channels=(8, 16, 16, 32, 32, 32, 40, 32, 32, 32, 32, 40, 56, 40), num_classes=62)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    kept = [(r := _body_rms(trainable_init(build_model(cfg), x, seed=k), x))[-1] / r[0] for k in range(6)]
    assert float(np.median(kept)) > 0.1


SETTINGS = SearchSettings(
    init_reduction=0.02, short_steps=2, long_steps=4, pretrain_steps=4, batch_size=16, per_class=6
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    cfg = make_config("mobilenet", **TINY)
    table = synthetic_table(cfg)
    r0 = predict(cfg, "latency", table)
    rmin = predict(with_channels(cfg, min_channels(cfg)), "latency", table)
    budgets = (Budget("latency", rmin + 0.6 * (r0 - rmin)), Budget("latency", rmin + 0.25 * (r0 - rmin)))
    out = tmp_path_factory.mktemp("search")
    (res,) = search(cfg, table, budgets, out, SETTINGS)
    return cfg, table, budgets, out, res


def test_search_meets_budgets_and_is_pareto_consistent(searched):
    cfg, table, budgets, out, res = searched
    assert res.kind == "latency" and not res.unmet and len(res.points) == 2
    for p in res.points:
        assert p.value <= p.budget.value
        assert predict(with_channels(cfg, p.channels), "latency", table) == pytest.approx(p.value)
    its = res.iterations
    for p in res.points:  # select="first": each budget's own snapshot
        assert p.iteration == next(it.index for it in its if it.value <= p.budget.value)
    assert its[0].layer is None and all(a.value > b.value for a, b in zip(its, its[1:]))
    first = next(it for it in its if it.index == 1)
    assert first.target == pytest.approx(
        max(its[0].value * (1 - SETTINGS.init_reduction), max(b.value for b in budgets))
    )
    # the export is what build_program("mobilenet", "compressed", ...) takes, and carries the weights
    doc = json.loads(open(res.points[0].export).read())
    assert doc["build_program"]["compressed_config"]["channels"] == list(res.points[0].channels)
    assert doc["table"]["source_device"] == "synthetic (test)" and doc["accuracy_data"]["synthetic"]
    c2, m2 = load_compressed(res.points[0].export)
    assert c2.layer_channels == res.points[0].channels
    assert m2(_input(c2)).shape == (3, 10)


def test_best_val_selection_may_pick_a_smaller_budgets_model(searched, tmp_path):
    """select="best-val" chooses among the stored long-fine-tuned snapshots (no search rerun: the selection is
    not in the fingerprint); a smaller snapshot that validates better then serves the larger budget too."""
    import shutil

    cfg, table, budgets, out, res = searched
    shutil.copytree(out, tmp_path / "s")
    lo, hi = sorted(res.points, key=lambda p: p.budget.value)
    assert lo.iteration != hi.iteration
    fj = tmp_path / "s" / "latency" / "final" / f"iter_{lo.iteration:04d}.json"
    rec = json.loads(fj.read_text())
    fj.write_text(json.dumps({**rec, "accuracy": hi.accuracy + 0.5}))  # the smaller model validates better
    seen = []
    (bv,) = search(cfg, table, budgets, tmp_path / "s", replace(SETTINGS, select="best-val"), on_iteration=seen.append)
    assert not seen
    assert [p.iteration for p in sorted(bv.points, key=lambda p: p.budget.value)] == [lo.iteration] * 2
    (first,) = search(cfg, table, budgets, tmp_path / "s", SETTINGS)
    assert sorted(p.iteration for p in first.points) == sorted([lo.iteration, hi.iteration])
    with pytest.raises(ConfigError, match="select"):
        replace(SETTINGS, select="best")


def test_proposals_of_an_iteration_share_their_batches(searched, tmp_path, monkeypatch):
    """Common random numbers: every proposal of an iteration is fine-tuned on the same batch order (the ranking is
    decided by the pruned layer, not by the draw), and iterations draw new batches."""
    from autlearn.workloads.pruning import search as search_mod

    cfg, table, budgets, _, _ = searched
    real, seeds, per_iter = search_mod.fine_tune, [], []

    def spy(model, split, steps, lr=2e-3, batch=32, seed=0):
        if steps == SETTINGS.short_steps:
            seeds.append(seed)
        return real(model, split, steps, lr, batch, seed)

    monkeypatch.setattr(search_mod, "fine_tune", spy)  # as the search calls it
    search(
        cfg,
        table,
        budgets,
        tmp_path,
        SETTINGS,
        on_iteration=lambda it: (per_iter.append((it.proposals, list(seeds))), seeds.clear()),
    )
    tried = [(n, got) for n, got in per_iter[1:]]
    assert tried and all(len(got) == n for n, got in tried)
    assert any(n > 1 for n, _ in tried)
    assert all(len(set(got)) == 1 for _, got in tried)
    assert len({got[0] for _, got in tried}) == len(tried)


def test_resume_after_interruption_gives_the_same_result(searched, tmp_path, monkeypatch):
    cfg, table, budgets, out, res = searched

    class Crash(Exception):
        pass

    def crash_at_2(it):
        if it.index == 2:
            raise Crash

    with pytest.raises(Crash):
        search(cfg, table, budgets, tmp_path, SETTINGS, on_iteration=crash_at_2)
    assert not (tmp_path / "latency" / "pareto.json").exists()
    (again,) = search(cfg, table, budgets, tmp_path, SETTINGS)
    assert [(p.channels, p.accuracy, p.value) for p in again.points] == [
        (p.channels, p.accuracy, p.value) for p in res.points
    ]
    assert [i.channels for i in again.iterations] == [i.channels for i in res.iterations]
    with pytest.raises(ConfigError, match="other arguments"):
        search(cfg, table, budgets, tmp_path, replace(SETTINGS, short_steps=3))
    monkeypatch.setattr("autlearn.workloads.pruning.search.INIT_VERSION", "another init")  # pretrained otherwise
    with pytest.raises(ConfigError, match="other arguments"):
        search(cfg, table, budgets, tmp_path, SETTINGS)


def test_new_budgets_keep_the_chain_up_to_the_first_changed_target(searched, tmp_path):
    import shutil

    cfg, table, budgets, out, res = searched
    shutil.copytree(out, tmp_path / "s")
    lo = min(b.value for b in budgets)
    lower = lo - 0.3 * (lo - predict(with_channels(cfg, min_channels(cfg)), "latency", table))
    seen = []
    (ext,) = search(
        cfg, table, [*budgets, Budget("latency", lower)], tmp_path / "s", SETTINGS, on_iteration=seen.append
    )
    old = [(i.channels, i.target) for i in res.iterations]
    assert [(i.channels, i.target) for i in ext.iterations][: len(old)] == old  # nothing redone
    assert seen and all(i.index >= len(old) for i in seen)  # only the extension ran
    assert ext.points[0].value <= lower
    # a budget between the unpruned model and iteration 1's (unclamped) target changes that target: the chain is
    # cut there and regrown
    its = res.iterations
    assert its[1].target not in [b.value for b in budgets]
    mid = Budget("latency", (its[0].value + its[1].target) / 2)
    cut = 1
    seen.clear()
    (again,) = search(cfg, table, [*budgets, mid], tmp_path / "s", SETTINGS, on_iteration=seen.append)
    assert seen[0].index == cut and seen[0].target == pytest.approx(mid.value)
    assert [i.channels for i in again.iterations][:cut] == [i.channels for i in res.iterations][:cut]
    assert {str(p.budget) for p in again.points} == {str(b) for b in [*budgets, mid]}
    assert all(p.value <= p.budget.value for p in again.points)


def test_unreachable_and_unpredictable_budgets(searched, tmp_path):
    cfg, table, *_ = searched
    small = predict(with_channels(cfg, min_channels(cfg)), "latency", table)
    with pytest.raises(UnreachableBudget) as e:
        search(cfg, table, [Budget("latency", small * 0.5)], tmp_path, SETTINGS)
    assert isinstance(e.value, UserError) and "smallest reachable" in str(e.value)
    assert e.value.smallest == pytest.approx(small)
    with pytest.raises(TableError, match="no energy"):
        search(cfg, synthetic_table(cfg, energy=False), [Budget("energy", 1.0)], tmp_path, SETTINGS)
    with pytest.raises(UnreachableBudget, match="memory"):
        search(cfg, None, [parse_budget("memory=1KB")], tmp_path, SETTINGS)


def test_svd_strategy_prunes_the_head_and_runs_through_the_search(tmp_path):
    """The LSTM family's strategy: the head's rank is its one prunable layer; pruning re-factorises the current
    head (a factorised head pruned further equals the dense head truncated there), and the generic search runs."""
    from autlearn.workloads.pruning.svd import SVDHead
    from autlearn.workloads.registry import get

    st = get("lstm").strategy
    assert isinstance(st, SVDHead) and st.name == "svd"
    lcfg = make_config("lstm", vocab_size=200, hidden_size=32, embed_dim=16, seq_len=4, batch=2)
    assert st.layers(lcfg, 8) == {"head": (8, 16, 24, 32)}
    net = build_model(lcfg)
    ids = torch.randint(0, 200, (3, 4), generator=torch.Generator().manual_seed(0))
    c16, m16 = st.prune(net, lcfg, 0, 16, RandomImportance())
    assert c16.head_rank == 16 and st.layers(c16, 8) == {"head": (8, 16)}
    assert st.with_channels(c16, (32,)) == lcfg  # full rank is the dense head
    c8, m8 = st.prune(m16, c16, 0, 8, RandomImportance())
    with torch.no_grad():
        torch.testing.assert_close(m16(ids), factorize_head(net, 16)(ids), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m8(ids), factorize_head(net, 8)(ids), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        st.prune(m8, c8, 0, 8, RandomImportance())

    budget = Budget("flops", predict(replace(lcfg, head_rank=16), "flops"))
    settings = replace(SETTINGS, per_class=None, max_iterations=5)
    (res,) = search(lcfg, None, [budget], tmp_path, settings)
    (point,) = res.points
    assert point.value <= budget.value and point.channels[0] <= 16
    doc = json.loads(open(point.export).read())
    assert doc["head_rank"] == point.channels[0]
    assert doc["build_program"]["compressed_config"] == {"head_rank": point.channels[0]}
    c2, m2 = load_compressed(point.export)
    assert c2.head_rank == point.channels[0] and m2(ids).shape == (3, 200)
