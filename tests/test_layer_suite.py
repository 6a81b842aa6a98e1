"""Layer suites (device per-layer tables), their results -> tables, calibration, validation models, the LSTM
head_rank config, compressed.json build arguments and the campaign's `layers` workload.

Two TVM programs are compiled (module-scoped): a small layer suite and a compressed LSTM with loaded weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autlearn.engine.campaign_config import parse_campaign
from autlearn.profiler.errors import ConfigError, TableError, UserError
from autlearn.workloads.families.lstm import WordLSTMConfig
from autlearn.workloads.layer_suite import DEFAULT_LR, build_suite_program, suite_count, suite_keys
from autlearn.workloads.layers import (
    KEY_COLUMNS,
    LAYER_TYPES,
    PHASES,
    LayerKey,
    channel_options,
    flops,
    model_keys,
    parse_key,
    table_grid,
)
from autlearn.workloads.models import build_model, make_config
from autlearn.workloads.resource import canonical_config, measured_from_results, model_resource, validation_configs
from autlearn.workloads.tables import (
    Table,
    TableMeta,
    calibrate,
    layer_workloads,
    load_table,
    measurements_from_results,
    tables_from_results,
)

TINY = dict(channels=(8, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), num_classes=10)
SMALL_LSTM = dict(vocab_size=300, embed_dim=16, hidden_size=256, seq_len=4, batch=2)
LSTM_BUILD = dict(vocab_size=64, embed_dim=16, hidden_size=32, seq_len=4, batch=2)


@pytest.fixture(scope="module")
def tiny_cfg():
    return make_config("mobilenet", **TINY)


@pytest.fixture(scope="module")
def tiny_grid(tiny_cfg):
    return table_grid(tiny_cfg)


# ---------------------------------------------------------------------------------------------- 1. parse_key


@st.composite
def layer_keys(draw):
    t = draw(st.sampled_from(LAYER_TYPES))
    pos = st.integers(1, 4096)
    phase = draw(st.sampled_from(PHASES))
    kernel, stride, in_h, in_w, batch = (draw(pos) for _ in range(5))
    if t == "dwconv":
        c = draw(pos)
        return LayerKey(t, kernel, stride, c, in_h, in_w, c, c, batch, phase)
    if t == "conv":
        g = draw(st.integers(1, 64))
        return LayerKey(
            t, kernel, stride, g, in_h, in_w, g * draw(st.integers(1, 64)), g * draw(st.integers(1, 64)), batch, phase
        )
    return LayerKey(t, kernel, stride, draw(pos), in_h, in_w, draw(pos), draw(pos), batch, phase)


@settings(max_examples=300, deadline=None)
@given(layer_keys())
def test_parse_key_inverts_str_for_any_key(key):
    assert parse_key(str(key)) == key
    assert parse_key(f"  {key}\n") == key


def test_parse_key_inverts_str_over_model_grids(tiny_cfg):
    lstm = make_config("lstm", **SMALL_LSTM)
    keys = [*table_grid(tiny_cfg), *table_grid(tiny_cfg, "all"), *table_grid(lstm), *table_grid(lstm, "all")]
    assert {k.type for k in keys} == set(LAYER_TYPES)
    assert {k.phase for k in keys} == set(PHASES)
    for k in keys:
        assert parse_key(str(k)) == k
    # distinct keys have distinct names (the runner's phase names must not collide)
    assert len({str(k) for k in keys}) == len(set(keys))


GOOD = "conv(k=3,s=2,g=1,8x8,2->8,b=2,forward)"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "conv",
        "forward",
        GOOD.replace("conv", "pool"),
        GOOD.replace("forward", "train"),
        GOOD.replace("k=3", "k=0"),
        GOOD.replace("k=3", "k=-3"),
        GOOD.replace("k=3", "k=3.5"),
        GOOD.upper(),
        GOOD + "x",
        "x" + GOOD,
        GOOD.replace("8x8", "8*8"),
        GOOD.replace(",b=2", ""),
        GOOD.replace("->", "-"),
        "dwconv(k=3,s=1,g=4,8x8,8->8,b=1,forward)",  # dwconv needs groups == channels
        "conv(k=1,s=1,g=3,8x8,8->8,b=1,forward)",  # groups must divide channels
        "phase_" + GOOD + "_ns",
    ],
)
def test_parse_key_rejects_malformed(bad):
    assert parse_key(GOOD) == LayerKey("conv", 3, 2, 1, 8, 8, 2, 8, 2)
    with pytest.raises(ConfigError):
        parse_key(bad)


# ---------------------------------------------------------------------------------------------- 2. suite_keys


@pytest.mark.parametrize("trainable", ["head", "all"])
def test_suite_keys_partition_the_grid_by_shape(tiny_cfg, trainable):
    grid = table_grid(tiny_cfg, trainable)
    chunks = [suite_keys(grid, s, 3) for s in range(3)]
    sets = [set(c) for c in chunks]
    for i in range(3):
        assert len(sets[i]) == len(chunks[i]) > 0  # no duplicates, none empty
        for j in range(i + 1, 3):
            assert not sets[i] & sets[j]
    assert set().union(*sets) == set(grid)
    assert sum(map(len, chunks)) == len(grid)
    where = {}
    for i, c in enumerate(chunks):
        for k in c:
            where.setdefault(k.with_phase("forward"), set()).add(i)
    assert all(len(v) == 1 for v in where.values())  # every phase of a shape in one chunk
    # the FC head's phases are all there, together
    fc = [k for k in grid if k.type == "fc"]
    for k in fc:
        i = next(iter(where[k.with_phase("forward")]))
        assert {k.with_phase(p) for p in PHASES} <= sets[i]
    # round-robin over shapes: chunk shape counts differ by at most one
    n_shapes = [len({k.with_phase("forward") for k in c}) for c in chunks]
    assert max(n_shapes) - min(n_shapes) <= 1
    assert sum(n_shapes) == len(where)
    assert list(chunks[0]) == sorted(chunks[0])
    assert set(suite_keys(grid, 0, 1)) == set(grid)


@pytest.mark.parametrize("suite,suites", [(3, 3), (-1, 3), (0, 0), (5, 2)])
def test_suite_out_of_range(tiny_grid, suite, suites):
    with pytest.raises(ConfigError) as e:
        suite_keys(tiny_grid, suite, suites)
    assert e.value.key == "suite"


def test_suite_count():
    assert (suite_count(10, 4), suite_count(8, 4), suite_count(0, 4), suite_count(5, 0)) == (3, 2, 1, 5)


# ---------------------------------------------------------------------------------------------- 3. the suite program

CONV = LayerKey("conv", 3, 2, 1, 8, 8, 2, 8, 2)
DW = LayerKey("dwconv", 3, 1, 8, 4, 4, 8, 8, 2)
FC = LayerKey("fc", 1, 1, 1, 1, 1, 16, 10, 3)
SUITE_KEYS = (CONV, DW, *(FC.with_phase(p) for p in PHASES))
SUITE_LR = 0.25


@pytest.fixture(scope="module")
def suite_run():
    from autlearn.workloads.compile import target_for_abi
    from autlearn.workloads.program import run_on_host

    program = build_suite_program(SUITE_KEYS, "x86_64", lr=SUITE_LR, database=None, seed=0)
    records = run_on_host(program, 1, target_for_abi("x86_64"))
    return program, records


def test_suite_phases_are_layer_keys(suite_run):
    program, records = suite_run
    assert {parse_key(p) for p in program.phases} == set(SUITE_KEYS)
    assert len(program.phases) == len(SUITE_KEYS)
    assert [parse_key(p) for p in program.meta["layer_keys"]] == [parse_key(c.phase) for c in program.calls]
    assert program.meta["model"] == "layers" and program.meta["variant"] == "full"
    assert program.meta["lr"] == SUITE_LR and program.meta["tuning"] == "untuned"
    (rec,) = records
    assert {parse_key(p) for p in rec["phases_ns"]} == set(SUITE_KEYS)
    assert all(v > 0 for v in rec["phases_ns"].values())
    assert rec["loss"] == 0.0


def _calls(program):
    return {parse_key(c.phase): c for c in program.calls}


@pytest.mark.parametrize("key", [CONV, DW, FC])
def test_suite_forward_matches_torch(suite_run, key):
    program, records = suite_run
    out = records[-1]["tensors"]
    (w,) = [w for w in layer_workloads(SimpleNamespace(seed=0), SUITE_KEYS) if w.key == key]
    call = _calls(program)[key]
    np.testing.assert_array_equal(program.tensors[call.args[0]], w.example.numpy())
    with torch.no_grad():
        want = w.module.eval()(w.example).numpy()
    got = out[call.outs[0]]
    assert got.shape == want.shape
    if key.type != "fc":
        assert got.shape == (key.batch, key.c_out, key.out_h, key.out_w)
        assert (got >= 0).all() and (got > 0).any()  # ReLU fused, not identity
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_suite_fc_backward_and_update_match_torch(suite_run):
    program, records = suite_run
    out = records[-1]["tensors"]
    calls = _calls(program)
    bwd, upd = calls[FC.with_phase("backward")], calls[FC.with_phase("update")]
    x_name, dy_name, w_name = bwd.args
    (w,) = [w for w in layer_workloads(SimpleNamespace(seed=0), SUITE_KEYS) if w.key == FC]
    np.testing.assert_array_equal(program.tensors[w_name], w.module.weight.detach().numpy())
    dy = torch.from_numpy(program.tensors[dy_name])
    assert float(dy.abs().sum()) > 0
    x = w.example.clone().requires_grad_(True)
    (w.module(x) * dy).sum().backward()
    dx, dw, db = (out[n] for n in bwd.outs)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, w.module.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, w.module.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    # update: p - lr * g, written back to the params (one step from the initial values)
    assert upd.outs == upd.args[:2]
    for p_name, g in zip(upd.outs, (w.module.weight.grad, w.module.bias.grad)):
        want = program.tensors[p_name] - SUITE_LR * g.numpy()
        assert not np.allclose(want, program.tensors[p_name])
        np.testing.assert_allclose(out[p_name], want, rtol=1e-4, atol=1e-5)


def test_suite_rejects_non_fc_training_and_empty():
    with pytest.raises(ConfigError) as e:
        build_suite_program([CONV, CONV.with_phase("backward")], "x86_64", database=None)
    assert e.value.key == "trainable"
    with pytest.raises(ConfigError):
        build_suite_program([DW.with_phase("update")], "x86_64", database=None)
    with pytest.raises(ConfigError):
        build_suite_program([], "x86_64", database=None)
    assert DEFAULT_LR > 0


# ---------------------------------------------------------------------------------------------- 4. results -> tables

K_CONV = LayerKey("conv", 1, 1, 1, 4, 4, 8, 16, 1)
K_FC = LayerKey("fc", 1, 1, 1, 1, 1, 16, 10, 1)
K_FCB = K_FC.with_phase("backward")


def _pc(key):
    return f"phase_{key}_ns"


def _raw_results():
    """Rows shaped like autlearn.engine.store results: two devices, three (serial, governor) groups, layer cells with
    different key sets, warm-up rows and a whole-model cell whose numbers must not leak in."""
    rows = []
    expected = {}  # (serial, gov, key) -> list of (ms, mj)

    def add(serial, model, virtual, gov, applied, labels, esrc, cell, phases, energy, warm_scale=1.0):
        for rep in range(2):
            for step in range(4):
                warm = step == 0
                ns = {k: (base + 100_000 * rep + 10_000 * step) * (1000 if warm else 1) for k, base in phases.items()}
                step_ns = sum(ns.values()) + 50_000
                e = (0.002 * (1 + rep) + 0.0001 * step) if energy else None
                row = {
                    "workload": "layers",
                    "variant": "full",
                    "warmup": warm,
                    "device_serial": serial,
                    "device_model": model,
                    "device_virtual": virtual,
                    "governor_requested": gov,
                    "governor_applied": applied,
                    "labels": labels,
                    "energy_source": esrc,
                    "cell_id": cell,
                    "repetition": rep,
                    "step": step,
                    "step_ns": step_ns,
                    "energy_j": e,
                    "config": json.dumps({"family": "mobilenet"}),
                    "batch": 1,
                }
                row.update({_pc(k): v for k, v in ns.items()})
                rows.append(row)
                if not warm:
                    for k, v in ns.items():
                        expected.setdefault((serial, gov, k), []).append(
                            (v / 1e6, e * 1e3 * v / step_ns if energy else math.nan)
                        )

    add(
        "emu-1",
        "Virtual Phone",
        True,
        "performance",
        "performance",
        "virtual",
        "fuelgauge",
        "c2",
        {K_FCB: 300_000},
        energy=True,
    )
    add(
        "emu-1",
        "Virtual Phone",
        True,
        "performance",
        "performance",
        "modeled,virtual",
        "fuelgauge",
        "c1",
        {K_CONV: 1_000_000, K_FC: 200_000},
        energy=True,
    )
    add(
        "emu-1",
        "Virtual Phone",
        True,
        "powersave",
        "powersave",
        "virtual",
        "fuelgauge",
        "c3",
        {K_CONV: 3_000_000, K_FC: 900_000},
        energy=True,
    )
    add(
        "R58M",
        "SM-G991B",
        False,
        "schedutil",
        "schedutil",
        "",
        "none",
        "c4",
        {K_CONV: 500_000, K_FC: 100_000, K_FCB: 150_000},
        energy=False,
    )
    # a whole-model cell: its own phase names (not layer keys) and a layer-key column with absurd values
    for step in range(3):
        rows.append(
            {
                "workload": "lstm",
                "variant": "full",
                "warmup": False,
                "device_serial": "emu-1",
                "device_model": "Virtual Phone",
                "device_virtual": True,
                "governor_requested": "performance",
                "governor_applied": "performance",
                "labels": "virtual",
                "energy_source": "fuelgauge",
                "cell_id": "w1",
                "repetition": 0,
                "step": step,
                "step_ns": 9e9,
                "energy_j": 9.0,
                "config": json.dumps({"hidden_size": 32}),
                "batch": 1,
                "phase_forward_backward_ns": 8e9,
                "phase_update_ns": 1e9,
                _pc(K_CONV): 7e9,
            }
        )
    df = pd.DataFrame(rows)
    df["governor_applied"] = df["governor_applied"].astype("string")
    return df, expected


def test_measurements_from_results_parses_layer_phases():
    raw, expected = _raw_results()
    m = measurements_from_results(raw)
    assert len(m) == sum(len(v) for v in expected.values())
    assert set(m["cell_id"]) == {"c1", "c2", "c3", "c4"}
    assert set(KEY_COLUMNS) <= set(m.columns) and {"ms", "mj"} <= set(m.columns)
    for (serial, gov, key), samples in expected.items():
        sel = m[(m["device_serial"] == serial) & (m["governor_requested"] == gov)]
        sel = sel[np.logical_and.reduce([sel[c] == getattr(key, c) for c in KEY_COLUMNS])]
        assert sorted(sel["ms"]) == pytest.approx(sorted(s[0] for s in samples))
        if serial == "R58M":
            assert sel["mj"].isna().all()
        else:
            assert sorted(sel["mj"]) == pytest.approx(sorted(s[1] for s in samples))
    assert m["ms"].max() < 10  # neither warm-up (x1000) nor the whole-model cell's 7 s


def test_tables_from_results_one_table_per_device_and_governor():
    raw, expected = _raw_results()
    tables = tables_from_results(raw, model="mobilenet")
    assert set(tables) == {("emu-1", "performance"), ("emu-1", "powersave"), ("R58M", "schedutil")}
    for (serial, gov), t in tables.items():
        want = {k: v for (s, g, k), v in expected.items() if (s, g) == (serial, gov)}
        assert set(t.keys) == set(want)
        for k, samples in want.items():
            assert t.latency_ms(k) == pytest.approx(float(np.median([s[0] for s in samples])))
            row = t.df[np.logical_and.reduce([t.df[c] == getattr(k, c) for c in KEY_COLUMNS])].iloc[0]
            assert row["n"] == len(samples) == 6
            assert row["source"] == "measured"
            assert row["ci_low_ms"] <= row["median_ms"] <= row["ci_high_ms"]
            if t.has_energy:
                assert t.energy_mj(k) == pytest.approx(float(np.median([s[1] for s in samples])))
        assert t.meta.device_serial == serial and t.meta.governor_requested == gov
        assert t.meta.model == "mobilenet"
    perf, ps, sched = tables["emu-1", "performance"], tables["emu-1", "powersave"], tables["R58M", "schedutil"]
    assert perf.meta.governor_applied == "performance" and ps.meta.governor_applied == "powersave"
    assert perf.meta.labels == "modeled,virtual" and ps.meta.labels == "virtual" and sched.meta.labels == ""
    assert perf.meta.virtual is True and sched.meta.virtual is False
    assert perf.meta.source_device == "Virtual Phone" and sched.meta.source_device == "SM-G991B"
    assert perf.has_energy and "fuelgauge" in perf.meta.energy_method
    assert not sched.has_energy and sched.meta.energy_method == ""
    with pytest.raises(TableError):
        sched.energy_mj(K_CONV)
    # energy apportioned by time: within one step, a call's share of the step's energy is its share of step_ns
    assert perf.energy_mj(K_CONV) > perf.energy_mj(K_FC)


def test_tables_refuse_to_pool_cells_of_other_tools_or_artifacts():
    raw, _ = _raw_results()
    raw["tool_versions"] = '{"tvm": "0.27"}'
    raw["artifact_hash"] = raw["cell_id"]
    tables_from_results(raw)  # poolable as it is
    other = raw.copy()
    other.loc[other["cell_id"] == "c2", "tool_versions"] = '{"tvm": "0.28"}'
    with pytest.raises(TableError, match="emu-1 / performance: refusing to pool .*tool_versions"):
        tables_from_results(other)
    again = raw[raw["cell_id"] == "c1"].assign(cell_id="c5", artifact_hash="rebuilt")  # same keys, new build
    with pytest.raises(TableError, match="different artifacts"):
        tables_from_results(pd.concat([raw, again], ignore_index=True))


def test_tables_from_results_completes_over_a_grid():
    raw, _ = _raw_results()
    narrow = K_FC.with_channels(8, 10)
    tables = tables_from_results(raw, grid=[K_CONV, K_FC, narrow])
    t = tables["R58M", "schedutil"]
    assert t.counts() == {"measured": 3, "interpolated": 1, "fitted": 0}
    assert tables["emu-1", "powersave"].counts() == {"measured": 2, "interpolated": 1, "fitted": 0}
    # one measured point in the family: scaled by the FLOPs ratio
    assert t.latency_ms(narrow) == pytest.approx(t.latency_ms(K_FC) * flops(narrow) / flops(K_FC))
    # a grid key whose family was never measured (FC backward on powersave) cannot be interpolated
    with pytest.raises(TableError):
        tables_from_results(raw, grid=[K_CONV, K_FC, K_FCB.with_channels(8, 10)])


def test_tables_from_results_without_layer_rows():
    raw, _ = _raw_results()
    with pytest.raises(TableError):
        tables_from_results(raw[raw["workload"] != "layers"])
    with pytest.raises(TableError):
        measurements_from_results(raw[(raw["workload"] == "lstm") | raw["warmup"]])
    with pytest.raises(TableError):
        measurements_from_results(raw.iloc[:0])


# ---------------------------------------------------------------------------------------------- 5. calibration


def _synthetic_table(grid, scale_ms=1e6):
    rows = [{**k.to_dict(), "median_ms": flops(k) / scale_ms + 0.01, "n": 5, "source": "measured"} for k in grid]
    return Table(pd.DataFrame(rows), TableMeta.for_running_tools(source_device="Test Phone", model="mobilenet"))


def test_calibrate_scales_whole_model_latency(tiny_cfg, tiny_grid, tmp_path):
    t = _synthetic_table(tiny_grid)
    models = validation_configs(tiny_cfg, n=5)
    names = sorted(models)
    pred = [model_resource(models[n], t).latency_ms for n in names]
    ratios = [1.1, 1.5, 1.2, 1.3, 1.25]
    measured = [p * r for p, r in zip(pred, ratios)]
    ct, fit = calibrate(t, pred, measured, {"device": "Test Phone"}, method="ratio")
    assert fit["scale"] == pytest.approx(1.25) and ct.meta.latency_scale == pytest.approx(1.25)
    assert fit["models"] == 5 and fit["device"] == "Test Phone"
    assert json.loads(ct.meta.calibration)["scale"] == pytest.approx(1.25)
    loo = [np.median(np.delete(ratios, i)) / ratios[i] - 1 for i in range(5)]
    assert fit["loo_max_abs_error"] == pytest.approx(max(abs(x) for x in loo))
    assert fit["loo_mean_abs_error"] == pytest.approx(np.mean(np.abs(loo)))
    assert t.meta.latency_scale == 1.0  # the input table is not modified
    for n, p in zip(names, pred):
        assert model_resource(models[n], ct).latency_ms == pytest.approx(1.25 * p)
    # re-calibrating from the calibrated table's own predictions fits the same scale (not 1.25 x 1.25)
    pred2 = [model_resource(models[n], ct).latency_ms for n in names]
    ct2, fit2 = calibrate(ct, pred2, measured, method="ratio")
    assert fit2["scale"] == pytest.approx(1.25)
    # files keep the scale
    for suffix in (".parquet", ".csv"):
        back = load_table(ct.save(tmp_path / f"t{suffix}"))
        assert back.meta.latency_scale == pytest.approx(1.25)
        assert back.meta.calibration == ct.meta.calibration
        assert model_resource(models[names[0]], back).latency_ms == pytest.approx(1.25 * pred[0])


def test_affine_calibration_removes_a_fixed_cost_per_layer_call(tiny_cfg, tiny_grid, tmp_path):
    # A sum of single-layer calls pays the per-call cost once per layer, a whole model once: measured = 2 x sum -
    # 0.6 ms (+-0.2 % noise, one slow outlier; the lab fitted 1.5 x sum - 0.9 ms). A ratio cannot fit that;
    # Theil-Sen can, and ignores the outlier.
    t = _synthetic_table(tiny_grid)
    models = validation_configs(tiny_cfg, n=10)
    names = sorted(models)
    pred = np.array([model_resource(models[n], t).latency_ms for n in names])
    noise = np.random.default_rng(0).uniform(-0.002, 0.002, len(pred))
    measured = (2.0 * pred - 0.6) * (1 + noise)
    measured[3] *= 1.5
    ct, fit = calibrate(t, pred, measured)
    assert fit["scale"] == pytest.approx(2.0, rel=0.05) and fit["offset_ms"] == pytest.approx(-0.6, abs=0.03)
    assert (ct.meta.latency_scale, ct.meta.latency_offset_ms) == (fit["scale"], fit["offset_ms"])
    assert fit["loo_within_10pct"] >= 0.9 and "Theil-Sen" in fit["method"]
    _, ratio = calibrate(t, pred, measured, method="ratio")
    assert ratio["loo_within_10pct"] < 0.9 and ratio["loo_mean_abs_error"] > fit["loo_mean_abs_error"]
    for n, p in zip(names, pred):
        assert model_resource(models[n], ct).latency_ms == pytest.approx(fit["scale"] * p + fit["offset_ms"])
    # re-calibrating a calibrated table starts from the raw sums; the file keeps both parameters
    _, again = calibrate(ct, [model_resource(models[n], ct).latency_ms for n in names], measured)
    assert again["scale"] == pytest.approx(fit["scale"]) and again["offset_ms"] == pytest.approx(fit["offset_ms"])
    back = load_table(ct.save(tmp_path / "t.parquet"))
    assert back.meta.latency_offset_ms == pytest.approx(fit["offset_ms"])
    # the control measured beside the models becomes the calibrated copy's reference; the table's is kept
    ref, fit_c = calibrate(replace(t, meta=replace(t.meta, control_ms=2.0)), pred, measured, control_ms=1.5)
    assert ref.meta.control_ms == 1.5 and (fit_c["control_ms"], fit_c["table_control_ms"]) == (1.5, 2.0)
    assert ct.meta.control_ms == t.meta.control_ms and "control_ms" not in fit  # none given: unchanged
    # a line falling with the sum (nonsense for latency) falls back to the ratio
    _, falling = calibrate(t, pred, 2.0 - pred)
    assert falling["offset_ms"] == 0.0 and "median" in falling["method"]
    with pytest.raises(TableError, match="unknown calibration"):
        calibrate(t, pred, measured, method="spline")


@pytest.mark.parametrize(
    "pred,meas",
    [
        ([1.0, 2.0], [1.0, 2.0]),
        ([], []),
        ([1.0, 2.0, 3.0], [1.0, 2.0]),
        ([1.0, 0.0, 3.0], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0], [1.0, -2.0, 3.0]),
        ([1.0, 2.0, math.nan], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0], [1.0, math.inf, math.inf]),
    ],
)
def test_calibrate_needs_three_positive_finite_models(tiny_grid, pred, meas):
    with pytest.raises(TableError):
        calibrate(_synthetic_table(tiny_grid), pred, meas)


# ---------------------------------------------------------------------------------------------- 6. validation models


def test_validation_configs_mobilenet(tiny_cfg, tiny_grid):
    a = validation_configs(tiny_cfg, n=6, seed=3)
    b = validation_configs(tiny_cfg, n=6, seed=3)
    assert len(a) == 6
    assert list(a) == list(b) and all(a[n] == b[n] for n in a)
    chans = [c.layer_channels for c in a.values()]
    assert len(set(chans)) == 6
    assert tiny_cfg.layer_channels in chans  # the unpruned model is one of them
    grid = set(tiny_grid)
    for c in a.values():
        assert c.num_classes == tiny_cfg.num_classes and c.image_size == tiny_cfg.image_size
        assert all(ch in channel_options(orig) for ch, orig in zip(c.layer_channels, tiny_cfg.layer_channels))
        assert set(model_keys(c)) <= grid  # the table can predict it
    assert len(validation_configs(tiny_cfg, n=2)) == 2
    with pytest.raises(ConfigError):
        validation_configs(tiny_cfg, n=0)


def test_validation_configs_lstm():
    cfg = make_config("lstm", **SMALL_LSTM)
    v = validation_configs(cfg, n=3)
    assert v["dense"] == cfg and v["dense"].head_rank == 0
    ranks = [c.head_rank for n, c in v.items() if n != "dense"]
    assert ranks and all(r > 0 for r in ranks) and len(set(ranks)) == len(ranks)
    assert set(ranks) <= set(channel_options(256, 128))
    grid = set(table_grid(cfg))
    for name, c in v.items():
        assert name == ("dense" if not c.head_rank else f"rank-{c.head_rank}")
        assert replace(c, head_rank=0) == cfg
        assert set(model_keys(c)) <= grid
    assert list(validation_configs(cfg, n=3)) == list(v)


def test_measured_from_results_medians_per_config():
    cfg_a = {"width": 0.5, "channels": [8, 16]}
    cfg_b = {"hidden_size": 32}
    rows = []
    for i, ns in enumerate([5e6, 1e6, 2e6, 4e6]):
        rows.append(
            {
                "workload": "mobilenet",
                "variant": "full",
                "config": json.dumps(cfg_a),
                "batch": 1,
                "governor_requested": "performance",
                "warmup": False,
                "step_ns": ns,
                "energy_j": 0.001 * (i + 1),
            }
        )
    rows.append(
        {
            "workload": "mobilenet",
            "variant": "full",
            "config": json.dumps(cfg_a),
            "batch": 1,
            "governor_requested": "performance",
            "warmup": True,
            "step_ns": 9e12,
            "energy_j": 99.0,
        }
    )
    for ns in (3e6, 7e6, 5e6):
        rows.append(
            {
                "workload": "lstm",
                "variant": "compressed",
                "config": json.dumps(cfg_b),
                "batch": 4,
                "governor_requested": "schedutil",
                "warmup": False,
                "step_ns": ns,
                "energy_j": None,
            }
        )
    for ns in (1e3, 1e3, 1e3):
        rows.append(
            {
                "workload": "layers",
                "variant": "full",
                "config": json.dumps(cfg_a),
                "batch": 1,
                "governor_requested": "performance",
                "warmup": False,
                "step_ns": ns,
                "energy_j": 1.0,
            }
        )
    raw = pd.DataFrame(rows)
    m = measured_from_results(raw)
    assert len(m) == 2 and "layers" not in set(m["workload"])
    a = m[m["workload"] == "mobilenet"].iloc[0]
    assert a["ms"] == pytest.approx(3.0) and a["n"] == 4
    assert a["mj"] == pytest.approx(2.5)
    assert a["config"] == canonical_config(cfg_a) == '{"channels": [8, 16], "width": 0.5}'
    assert a["governor"] == "performance" and a["batch"] == 1
    b = m[m["workload"] == "lstm"].iloc[0]
    assert b["ms"] == pytest.approx(5.0) and math.isnan(b["mj"]) and b["variant"] == "compressed"
    assert canonical_config({"b": (1, 2), "a": 1}) == '{"a": 1, "b": [1, 2]}'
    assert list(measured_from_results(raw, "lstm")["workload"]) == ["lstm"]
    with pytest.raises(ConfigError):
        measured_from_results(raw[raw["workload"] == "layers"])


# ---------------------------------------------------------------------------------------------- 7. head_rank


def test_lstm_head_rank_config():
    dense = make_config("lstm")
    assert set(dense.to_dict()) == {
        "model",
        "vocab_size",
        "embed_dim",
        "hidden_size",
        "num_layers",
        "seq_len",
        "batch",
        "seed",
    }
    assert "head_rank" not in WordLSTMConfig(head_rank=0).to_dict()
    r8 = make_config("lstm", head_rank=8)
    assert r8.to_dict()["head_rank"] == 8 and r8.key() != dense.key()
    assert replace(r8, head_rank=0).key() == dense.key()
    for bad in (-1, 257):  # min(hidden 256, vocab 10000) = 256
        with pytest.raises(ConfigError) as e:
            make_config("lstm", head_rank=bad)
        assert e.value.key == "head_rank"
    assert make_config("lstm", head_rank=256).head_rank == 256


def test_lstm_head_rank_model_and_keys():
    cfg = make_config("lstm", **LSTM_BUILD)
    for r in (1, 8, 32):
        rc = replace(cfg, head_rank=r)
        m = build_model(rc)
        assert isinstance(m.head, torch.nn.Sequential) and len(m.head) == 2
        assert all(isinstance(h, torch.nn.Linear) for h in m.head)
        assert (m.head[0].in_features, m.head[0].out_features) == (32, r)
        assert (m.head[1].in_features, m.head[1].out_features) == (r, 64)
        assert all(p.requires_grad for p in m.head.parameters())
        assert not any(p.requires_grad for n, p in m.named_parameters() if not n.startswith("head."))
        assert model_keys(rc) == model_keys(cfg, head_rank=r) != model_keys(cfg)
        # factorised head (H x r + r x V weights) is cheaper than the dense one (H x V) iff r (H + V) < H V
        assert (model_resource(rc).memory_bytes < model_resource(cfg).memory_bytes) == (r * (32 + 64) < 32 * 64)
        assert (model_resource(rc).flops < model_resource(cfg).flops) == (r * (32 + 64) < 32 * 64)
    assert isinstance(build_model(cfg).head, torch.nn.Linear)


# ---------------------------------------------------------------------------------------------- 8. compressed.json


def _write_compressed(d, **over):
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.pt").write_bytes(b"weights")
    doc = {
        "format": "autlearn.compressed/1",
        "model": "mobilenet",
        "variant": "compressed",
        "build_program": {
            "model": "mobilenet",
            "variant": "compressed",
            "config": {"num_classes": 10},
            "compressed_config": {"channels": list(TINY["channels"])},
        },
        "state_dict": "model.pt",
        **over,
    }
    p = d / "compressed.json"
    p.write_text(json.dumps(doc))
    return p


def test_compressed_build_args(tmp_path, monkeypatch):
    from autlearn.workloads.artifact import input_files
    from autlearn.workloads.pruning.search import compressed_build_args

    p = _write_compressed(tmp_path / "pt")
    monkeypatch.chdir(tmp_path)
    args = compressed_build_args("pt/compressed.json", "mobilenet")  # relative path in
    assert args["config"] == {"num_classes": 10}
    assert args["compressed_config"] == {"channels": list(TINY["channels"])}
    assert args["state_dict"] == str((tmp_path / "pt" / "model.pt").resolve())
    assert compressed_build_args(p, None)["state_dict"] == args["state_dict"]
    files = input_files({"compressed": str(p)})
    assert [f.resolve() for f in files] == [p.resolve(), (tmp_path / "pt" / "model.pt").resolve()]
    assert input_files({"width": 0.5}) == []


@pytest.mark.parametrize("case", ["missing", "not-json", "format", "weights", "model", "no-build"])
def test_compressed_build_args_errors(tmp_path, case):
    from autlearn.workloads.pruning.search import compressed_build_args

    d = tmp_path / case
    if case == "missing":
        p = d / "compressed.json"
    elif case == "not-json":
        p = _write_compressed(d)
        p.write_text("{not json")
    elif case == "format":
        p = _write_compressed(d, format="autlearn.compressed/0")
    elif case == "weights":
        p = _write_compressed(d)
        (d / "model.pt").unlink()
    elif case == "model":
        p = _write_compressed(d, model="lstm")
    else:
        p = _write_compressed(d, build_program={"config": {}})
    with pytest.raises(UserError) as e:
        compressed_build_args(p, "mobilenet")
    assert str(p) in str(e.value)
    if case == "weights":
        assert str(d / "model.pt") in str(e.value)


# ---------------------------------------------------------------------------------------------- 9. compressed LSTM


@pytest.fixture(scope="module")
def lstm_compressed(tmp_path_factory):
    from autlearn.workloads.compile import build_program

    d = tmp_path_factory.mktemp("lstm")
    # weights from another seed: a program that ignored the state dict would give another loss
    net = build_model(make_config("lstm", head_rank=8, seed=5, **LSTM_BUILD))
    sd = d / "model.pt"
    torch.save(net.state_dict(), sd)
    program = build_program(
        "lstm", "compressed", "x86_64", compressed_config={"head_rank": 8}, state_dict=sd, database=None, **LSTM_BUILD
    )
    return program, net, d


def test_compressed_lstm_loss_matches_torch(lstm_compressed):
    from autlearn.workloads.compile import target_for_abi
    from autlearn.workloads.program import run_on_host

    program, net, _ = lstm_compressed
    assert program.meta["config"]["head_rank"] == 8 and program.meta["state_dict"] == "model.pt"
    assert program.meta["trainable"] == ["head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
    np.testing.assert_array_equal(program.tensors["head.0.weight"], net.head[0].weight.detach().numpy())
    records = run_on_host(program, 2, target_for_abi("x86_64"))
    x, y = torch.from_numpy(program.tensors["x"]), torch.from_numpy(program.tensors["y"])
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(net(x), y))
        seeded = float(
            torch.nn.functional.cross_entropy(build_model(make_config("lstm", head_rank=8, **LSTM_BUILD))(x), y)
        )
    assert abs(want - seeded) > 1e-3  # the check below can tell the weights apart
    assert records[0]["loss"] == pytest.approx(want, abs=1e-4)
    assert records[1]["loss"] < records[0]["loss"]  # a training step on the same batch lowers the loss


@pytest.mark.parametrize("other", [dict(head_rank=4), dict(head_rank=0), dict(head_rank=8, hidden_size=16)])
def test_compressed_lstm_state_dict_of_another_config(tmp_path, other):
    from autlearn.workloads.compile import build_program

    sd = tmp_path / "other.pt"
    torch.save(build_model(make_config("lstm", **{**LSTM_BUILD, **other})).state_dict(), sd)
    with pytest.raises(ConfigError) as e:
        build_program(
            "lstm",
            "compressed",
            "x86_64",
            compressed_config={"head_rank": 8},
            state_dict=sd,
            database=None,
            **LSTM_BUILD,
        )
    assert e.value.key == "state_dict"


# ---------------------------------------------------------------------------------------------- 10. campaigns


def test_campaign_layers_workload_allows_only_full():
    with pytest.raises(ConfigError) as e:
        parse_campaign({"name": "t", "workload": [{"model": "layers", "variants": ["compressed"]}]})
    assert e.value.key == "workload[0].variants[0]" and "workload[0].variants[0]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_campaign(
            {"name": "t", "workload": [{"model": "lstm"}, {"model": "layers", "variants": ["full", "cached"]}]}
        )
    assert e.value.key == "workload[1].variants[1]"
    c = parse_campaign(
        {
            "name": "t",
            "workload": [
                {"model": "layers", "variants": ["full"], "config": {"family": "mobilenet", "suite": 1, "suites": 3}}
            ],
        }
    )
    (w,) = c.workloads
    assert w.model == "layers" and w.variants == ("full",)
    assert dict(w.config) == {"family": "mobilenet", "suite": 1, "suites": 3}
    assert parse_campaign({"name": "t", "workload": [{"model": "layers"}]}).workloads[0].variants == ("full",)


def test_build_any_program_layers_rejects_other_variants():
    from autlearn.workloads.artifact import build_any_program

    with pytest.raises(ConfigError) as e:
        build_any_program("layers", "compressed", "x86_64")
    assert e.value.key == "variant"


def test_prune_lstm_cli_writes_compilable_svd_models(tmp_path):
    """`autlearn prune --model lstm` (FLOPs budgets: exact, no table) writes compressed.json + weights per budget
    that `build_any_program` compiles with the factorised head (head_rank in the config)."""
    from click.testing import CliRunner

    from autlearn.cli.prune import prune
    from autlearn.workloads.artifact import build_any_program
    from autlearn.workloads.pruning.search import compressed_build_args
    from autlearn.workloads.resource import predict

    kw = dict(vocab_size=1024, embed_dim=16, hidden_size=256, seq_len=4, batch=2)
    sets = [a for k, v in kw.items() for a in ("--set", f"{k}={v}")]
    cfg = make_config("lstm", **kw)
    dense, r128 = predict(cfg, "flops"), predict(replace(cfg, head_rank=128), "flops")
    tight, loose = f"flops={(dense + r128) / 2:.0f}", f"flops={dense * 2:.0f}"
    r = CliRunner().invoke(
        prune, ["--model", "lstm", "--budget", tight, "--budget", loose, "--out", str(tmp_path), *sets]
    )
    assert r.exit_code == 0, r.output
    from autlearn.workloads.pruning.budget import parse_budget

    docs = {str(parse_budget(json.loads(p.read_text())["budget"])): p for p in tmp_path.glob("lstm/*/compressed.json")}
    tight, loose = str(parse_budget(tight)), str(parse_budget(loose))
    assert set(docs) == {tight, loose}
    assert json.loads(docs[loose].read_text())["head_rank"] == 0  # the dense head meets the loose budget
    doc = json.loads(docs[tight].read_text())
    assert doc["head_rank"] == 128 and doc["value"] == pytest.approx(r128)
    assert compressed_build_args(docs[tight], "lstm")["compressed_config"] == {"head_rank": 128}
    prog = build_any_program("lstm", "compressed", "x86_64", compressed=str(docs[tight]))
    assert prog.meta["config"]["head_rank"] == 128
    assert prog.meta["trainable"] == ["head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]
