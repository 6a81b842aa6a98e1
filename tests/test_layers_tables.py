"""Layer keys, exact FLOPs/memory formulas, per-layer tables (statistics, interpolation, files, validation)."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autlearn.profiler.errors import ConfigError, TableError
from autlearn.workloads.layers import (
    KEY_COLUMNS,
    LayerKey,
    channel_options,
    flops,
    model_keys,
    model_layers,
    param_bytes,
    table_grid,
)
from autlearn.workloads.models import build_model, make_config
from autlearn.workloads.resource import model_resource, prediction_error
from autlearn.workloads.tables import (
    HOST_DEVICE,
    SCHEMA_VERSION,
    Table,
    TableMeta,
    layer_workloads,
    load_table,
    measure_on_host,
    median_ci,
    sample_grid,
    smooth,
    table_from_measurements,
)

TINY = dict(channels=(8, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), num_classes=10)


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize(
    "key",
    [
        LayerKey("conv", 3, 2, 1, 28, 28, 3, 16, 2),
        LayerKey("conv", 1, 1, 1, 7, 7, 24, 40, 3),
        LayerKey("dwconv", 3, 2, 32, 14, 14, 32, 32, 2),
        LayerKey("fc", 1, 1, 1, 1, 1, 64, 10, 5),
        LayerKey("lstm", 1, 1, 1, 6, 1, 12, 20, 4),
    ],
)
def test_flops_match_torch_flop_counter(key):
    (w,) = layer_workloads(make_config("mobilenet"), [key])
    x = w.example.clone().requires_grad_(True)
    if key.type == "lstm":  # the fused CPU LSTM kernel is invisible to the counter: unroll LSTMCell instead
        cell = nn.LSTMCell(key.c_in, key.c_out)

        class Unrolled(nn.Module):
            def __init__(self):
                super().__init__()
                self.cell = cell

            def forward(self, seq):
                h = c = torch.zeros(seq.shape[0], key.c_out)
                outs = []
                for t in range(seq.shape[1]):
                    h, c = self.cell(seq[:, t], (h, c))
                    outs.append(h)
                return torch.stack(outs, 1)

        w = replace(w, module=Unrolled())
    assert _counted(lambda: w.module(x)) == flops(key)
    out = w.module(x)
    back = _counted(lambda: out.sum().backward())
    if key.type != "dwconv":  # torch's conv-backward formula ignores groups (overcounts by ~groups/2)
        assert back == flops(key.with_phase("backward"))
    if key.type != "lstm":
        assert flops(key.with_phase("backward")) == 2 * flops(key)
    n = sum(p.numel() for p in w.module.parameters())
    assert flops(key.with_phase("update")) == 2 * n
    assert param_bytes(key) == 4 * n


def test_embedding_formula_and_key_validation():
    k = LayerKey("embedding", 1, 1, 1, 10, 1, 500, 32, 4)
    assert flops(k) == 0 and param_bytes(k) == 4 * 500 * 32
    with pytest.raises(ConfigError):
        LayerKey("pool", 1, 1, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ConfigError):
        LayerKey("dwconv", 3, 1, 4, 8, 8, 8, 8, 1)  # groups must equal channels
    with pytest.raises(ConfigError):
        LayerKey("conv", 3, 1, 1, 8, 8, 0, 8, 1)


@pytest.mark.parametrize(
    "model,over",
    [
        ("mobilenet", TINY),
        ("mobilenet", dict(width=0.25)),
        ("lstm", dict(vocab_size=300, hidden_size=32, embed_dim=16)),
    ],
)
def test_model_layers_match_the_torch_model(model, over):
    cfg = make_config(model, **over)
    net = build_model(cfg)
    res = model_resource(cfg)
    assert res.memory_bytes == 4 * sum(p.numel() for p in net.parameters())
    x = torch.zeros(cfg.input_shape, dtype=torch.int64 if model == "lstm" else torch.float32)
    with torch.no_grad():
        fwd = _counted(lambda: net(x))
    counted = [k for k in model_keys(cfg, "all") if k.phase == "forward" and k.type != "lstm"]  # see above
    assert sum(flops(k) for k in counted) == fwd
    if model == "mobilenet":
        convs = [m for m in net.body.modules() if isinstance(m, nn.Conv2d)]
        layers = model_layers(cfg)
        assert [(c.in_channels, c.out_channels, c.groups, c.stride[0]) for c in convs] == [
            (ly.key.c_in, ly.key.c_out, ly.key.groups, ly.key.stride) for ly in layers[:-1]
        ]
        assert layers[-1].phases == ("forward", "backward", "update") and layers[0].phases == ("forward",)


def test_grid_covers_every_reachable_model():
    cfg = make_config("mobilenet", **TINY)
    grid = set(table_grid(cfg))
    assert set(model_keys(cfg)) <= grid
    pruned = replace(cfg, channels=(8,) * 14)
    assert set(model_keys(pruned)) <= grid
    assert channel_options(24) == (8, 16, 24) and channel_options(20) == (4, 12, 20)
    lstm = make_config("lstm", vocab_size=300, hidden_size=256)
    lgrid = set(table_grid(lstm))
    assert set(model_keys(lstm, head_rank=128)) <= lgrid


def test_median_ci_is_an_order_statistic_interval():
    med, lo, hi = median_ci(list(range(1, 21)))
    assert med == 10.5 and (lo, hi) == (6.0, 15.0)  # binomial(20, 1/2): ranks 6 and 15
    assert median_ci([3.0, 1.0, 2.0])[1:] == (1.0, 3.0)  # too few samples: [min, max]


def _meta(**kw) -> TableMeta:
    return TableMeta.for_running_tools(source_device="synthetic (test)", **kw)


def _smooth(k: LayerKey) -> float:
    return 0.02 + 3e-5 * k.c_in * k.c_out + 1e-3 * k.c_in + 5e-4 * k.c_out


def test_interpolation_marks_and_reproduces_a_held_out_point():
    base = LayerKey("conv", 1, 1, 1, 4, 4, 8, 8, 1)
    keys = [base.with_channels(a, b) for a in range(8, 129, 8) for b in range(8, 129, 8)]
    held = base.with_channels(72, 56)
    rows = [
        {**k.to_dict(), "rep": r, "ms": _smooth(k) * (1 + 0.001 * (r - 1)), "mj": 2 * _smooth(k)}
        for k in keys
        if k != held
        for r in range(3)
    ]
    t = table_from_measurements(pd.DataFrame(rows), _meta())
    assert held not in t and t.counts() == {"measured": len(keys) - 1, "interpolated": 0, "fitted": 0}
    full = t.complete(keys)
    row = full.df.set_index(list(KEY_COLUMNS)).loc[tuple(held.to_dict().values())]
    assert row["source"] == "interpolated" and row["n"] == 0 and math.isnan(row["ci_low_ms"])
    assert full.latency_ms(held) == pytest.approx(_smooth(held), rel=0.02)
    assert full.energy_mj(held) == pytest.approx(2 * _smooth(held), rel=0.02)
    assert full.counts() == {"measured": len(keys) - 1, "interpolated": 1, "fitted": 0}
    # a sparse measurement of the family (every 2nd count + extremes) still predicts the rest within 5 %
    sub = set(sample_grid(keys, 2))
    sparse = table_from_measurements(
        pd.DataFrame([r for r in rows if LayerKey(**{c: r[c] for c in KEY_COLUMNS}) in sub]), _meta()
    ).complete(keys)
    errs = [abs(sparse.latency_ms(k) / _smooth(k) - 1) for k in keys]
    assert max(errs) < 0.05


def test_smooth_is_monotone_robust_and_keeps_what_was_measured(tmp_path):
    # a family measured once per key: 10 % noise, one launch 5x slow, one key 3x fast (a bad timer read)
    base = LayerKey("conv", 1, 1, 1, 4, 4, 8, 8, 1)
    keys = [base.with_channels(a, b) for a in range(8, 129, 8) for b in range(8, 129, 8)]
    rng = np.random.default_rng(0)
    true = {k: 0.01 + 2e-6 * k.c_in * k.c_out for k in keys}
    slow, fast = base.with_channels(64, 64), base.with_channels(120, 128)
    ms = {k: true[k] * (5 if k == slow else 1 / 3 if k == fast else rng.uniform(0.9, 1.1)) for k in keys}
    measured = [k for k in keys if k.c_in % 16 == 0 or k.c_in in (8, 120)]  # the rest interpolated
    t = table_from_measurements(pd.DataFrame([{**k.to_dict(), "ms": ms[k]} for k in measured]), _meta()).complete(keys)
    s, info = smooth(t)
    assert s.counts() == {"measured": 0, "interpolated": 0, "fitted": len(keys)}
    assert s.latency_ms(slow) == pytest.approx(true[slow], rel=0.1)
    assert s.latency_ms(fast) == pytest.approx(true[fast], rel=0.1)
    assert max(abs(s.latency_ms(k) / true[k] - 1) for k in keys) < 0.1
    for k in keys:  # never faster with more channels (the raw table is: around both outliers)
        for bigger in (k.with_channels(k.c_in + 8, k.c_out), k.with_channels(k.c_in, k.c_out + 8)):
            if bigger in s:
                assert s.latency_ms(bigger) >= s.latency_ms(k)
    assert t.latency_ms(slow) > t.latency_ms(slow.with_channels(72, 64))
    # what was measured stays in the table; the residuals are reported; a second smoothing is refused
    row = s.df.set_index(list(KEY_COLUMNS)).loc[tuple(slow.to_dict().values())]
    assert row["measured_ms"] == pytest.approx(ms[slow]) and row["median_ms"] < row["measured_ms"] / 3
    assert np.isnan(
        s.df.set_index(list(KEY_COLUMNS)).loc[tuple(base.with_channels(24, 8).to_dict().values()), "measured_ms"]
    )
    assert info["measured_points"] == len(measured) and info["max_abs_residual"] > 3
    assert "smoothed" in s.meta.notes
    back = load_table(s.save(tmp_path / "s.parquet"))
    pd.testing.assert_frame_equal(back.df, s.df)
    with pytest.raises(TableError, match="already smoothed"):
        smooth(back)


def test_version_1_table_loads_with_measured_values(tmp_path):
    t = _table()
    p = tmp_path / "v1.csv"
    t.save(p)
    lines = p.read_text().splitlines()
    old = pd.read_csv(tmp_path / "v1.csv", skiprows=1).drop(columns=["measured_ms"])
    meta = json.loads(lines[0].split(": ", 1)[1])
    meta["schema_version"] = 1
    p.write_text(f"# autlearn.table: {json.dumps(meta)}\n" + old.to_csv(index=False))
    back = load_table(p)
    assert back.meta.schema_version == 1
    assert back.df["measured_ms"].tolist() == back.df["median_ms"].tolist()


def test_interpolation_needs_a_measured_family_member():
    t = table_from_measurements(
        pd.DataFrame([{**LayerKey("fc", 1, 1, 1, 1, 1, 8, 10, 1).to_dict(), "ms": 1.0}]), _meta()
    )
    with pytest.raises(TableError, match="no measured point"):
        t.complete([LayerKey("conv", 1, 1, 1, 4, 4, 8, 8, 1)])
    one = t.complete([LayerKey("fc", 1, 1, 1, 1, 1, 16, 10, 1)])  # single point: FLOPs scaling
    assert one.latency_ms(LayerKey("fc", 1, 1, 1, 1, 1, 16, 10, 1)) == pytest.approx(2.0)


def _table() -> Table:
    keys = [LayerKey("fc", 1, 1, 1, 1, 1, c, 10, 1, p) for c in (8, 16) for p in ("forward", "backward")]
    df = pd.DataFrame([{**k.to_dict(), "rep": r, "ms": 1.0 + r} for k in keys for r in range(5)])
    return table_from_measurements(
        df, _meta(device_serial="S1", governor_requested="performance", governor_applied="performance")
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_files_round_trip_with_metadata(tmp_path, suffix):
    t = _table()
    p = t.save(tmp_path / f"t{suffix}")
    back = load_table(p)
    assert back.meta == t.meta and back.meta.governor_applied == "performance"
    pd.testing.assert_frame_equal(back.df, t.df)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = json.loads(pq.read_schema(p).metadata[b"autlearn.table"])
        assert meta["schema_version"] == SCHEMA_VERSION and meta["device_serial"] == "S1"


def test_version_mismatch_is_refused_unless_allowed(tmp_path):
    t = _table()
    old = Table(t.df, replace(t.meta, tvm_version="0.1.0"))
    p = old.save(tmp_path / "old.parquet")
    with pytest.raises(TableError, match="tvm 0.1.0"):
        load_table(p)
    assert len(load_table(p, allow_version_mismatch=True)) == len(t)
    with pytest.raises(TableError, match="not an autlearn table"):
        t.df.to_parquet(tmp_path / "plain.parquet")
        load_table(tmp_path / "plain.parquet")


def test_unknown_key_names_the_key():
    t = _table()
    k = LayerKey("fc", 1, 1, 1, 1, 1, 24, 10, 1)
    with pytest.raises(TableError) as e:
        t.latency_ms(k)
    assert str(k) in str(e.value) and e.value.key == k
    with pytest.raises(TableError, match="no energy"):
        t.energy_mj(LayerKey("fc", 1, 1, 1, 1, 1, 8, 10, 1))
    cfg = make_config("mobilenet", **TINY)
    with pytest.raises(TableError, match="not in table"):
        model_resource(cfg, t)


def test_host_measurement_is_labelled_host_and_workloads_have_the_right_shapes():
    cfg = make_config("mobilenet", **TINY)
    keys = [k for k in table_grid(cfg) if k.c_in == 8 and k.c_out in (8, 10, 16)][:4]
    for w in layer_workloads(cfg, keys):
        out = w.module(w.example)
        if w.key.type in ("conv", "dwconv"):
            assert tuple(out.shape) == (w.key.batch, w.key.c_out, w.key.out_h, w.key.out_w)
        else:
            assert out.shape[-1] == w.key.c_out
    from autlearn.workloads.tables import host_meta

    df = measure_on_host(cfg, keys, reps=3, warmup=1, inner=1)
    t = table_from_measurements(df, host_meta("mobilenet", cfg))
    assert t.meta.source_device == HOST_DEVICE and t.meta.measurement_tool == "torch-host"
    assert set(t.keys) == set(keys) and (t.df["n"] == 3).all() and (t.df["median_ms"] > 0).all()
    assert (t.df["ci_low_ms"] <= t.df["median_ms"]).all()


def test_prediction_error_summary():
    rep = prediction_error({"a": 10.5, "b": 8.0, "c": 30.0}, {"a": 10.0, "b": 10.0, "c": 30.0})
    assert rep.n == 3 and rep.max_abs_error == pytest.approx(0.2)
    assert rep.within_fraction == pytest.approx(2 / 3)
    assert list(rep.per_model["model"]) == ["a", "b", "c"]
    with pytest.raises(ConfigError):
        prediction_error({"a": 1.0}, {"b": 1.0})


def _old_version(tmp_path):
    """The synthetic table as if measured by another autlearn version."""
    from dataclasses import replace

    t = _table()
    return Table(t.df, replace(t.meta, autlearn_version="0.0.1")).save(tmp_path / "old.parquet")


def test_cli_show_export_and_one_line_errors(tmp_path, capsys):
    from autlearn.cli.main import main

    p = _table().save(tmp_path / "t.parquet")
    assert main(["tables", "show", str(p)]) == 0
    assert "synthetic (test)" in capsys.readouterr().out
    assert main(["tables", "export", str(p), "--csv", str(tmp_path / "t.csv")]) == 0
    assert len(load_table(tmp_path / "t.csv")) == len(_table())
    assert main(["tables", "smooth", str(p), "--out", str(tmp_path / "s.parquet")]) == 0
    assert load_table(tmp_path / "s.parquet").counts()["fitted"] == len(_table())
    capsys.readouterr()
    for table, noted in ((p, True), (tmp_path / "s.parquet", False)):  # (this fc-only table fits no model)
        assert main(["prune", "--table", str(table), "--budget", "latency=4ms", "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert ("not smoothed" in err) == noted and err.count("autlearn: error: ") == 1, err
    for argv in (
        ["prune", "--budget", "latency=fast", "--out", str(tmp_path / "o")],
        ["prune", "--budget", "latency=4ms", "--out", str(tmp_path / "o")],
        ["tables", "show", str(tmp_path / "missing.parquet")],
        ["tables", "build", "--out", str(tmp_path / "x.parquet")],
        ["prune", "--table", str(_old_version(tmp_path)), "--budget", "latency=4ms", "--out", str(tmp_path / "o")],
        ["tables", "validate", str(_old_version(tmp_path))],
        ["tables", "smooth", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "s2.parquet")],
        ["tables", "smooth", str(p), "--out", str(p)],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("autlearn: error: ") and err.count("\n") == 1


def test_old_missing_tool_word_reads_as_the_current_one():
    from autlearn.profiler.versions import MISSING

    meta = TableMeta.from_json(json.dumps({"source_device": "x", "tvm_version": "unknown", "torch_version": "2.1"}))
    assert (meta.tvm_version, meta.torch_version) == (MISSING, "2.1")
