"""Issue 7 on the virtual lab: per-layer tables measured through the campaign engine on one phone under two
governors, the resource model validated on 12 whole models, and pruned models for three budgets compiled and
measured through a campaign; a model over its budget is pruned further (closed loop) until each meets it.
Real adb, real artifacts, real runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from autlearn.workloads.layers import table_grid
from autlearn.workloads.models import make_config
from autlearn.workloads.tables import load_table, sample_grid

# Batch 16: at batch 1 this tiny model's step (~0.1 ms) varies +-30 % between runner launches on a shared host.
# 56x56 input: at 28x28 the fixed cost per layer call dominates and pruning spans only ~12 % of the step, about the
# resource model's error, so budgets inside that span are not reachable on the device.
TINY = dict(channels=(8, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16), num_classes=10, batch=16, image_size=56)
SETS = [
    "--set",
    f"channels={json.dumps(list(TINY['channels']))}",
    "--set",
    "num_classes=10",
    "--set",
    "batch=16",
    "--set",
    "image_size=56",
]
CACHE = Path(os.environ.get("AUTLEARN_TEST_CACHE_DIR") or Path.home() / ".cache" / "autlearn-test")
pytestmark = pytest.mark.slow


def autlearn(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, AUTLEARN_CACHE_DIR=str(CACHE), PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "autlearn", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def governors(phone) -> list[str]:
    base = Path(phone.root) / "sys/devices/system/cpu/cpufreq"
    return [(d / "scaling_governor").read_text().strip() for d in sorted(base.glob("policy*"))]


@pytest.fixture(scope="module")
def legacy(lab):
    return next(p for p in lab if p.profile == "legacy")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tables-device")


@pytest.fixture(scope="module")
def tables(legacy, work):
    before = governors(legacy)
    r = autlearn(
        "tables",
        "build",
        "--device",
        legacy.serial,
        "--governors",
        "interactive,powersave",
        *SETS,
        "--every",
        "1",
        "--reps",
        "1",
        "--rounds",
        "2",
        "--steps",
        "10",
        "--results",
        str(work / "results"),
        "--artifacts",
        str(CACHE / "artifacts"),
        "--out",
        str(work / "tables"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert governors(legacy) == before  # the phone's governors are restored
    return {load_table(p).meta.governor_requested: p for p in sorted((work / "tables").glob("*.parquet"))}


def test_tables_for_one_device_and_two_governors(tables, legacy):
    cfg = make_config("mobilenet", **TINY)
    grid = table_grid(cfg)
    assert set(tables) == {"interactive", "powersave"}
    for gov, path in tables.items():
        t = load_table(path)
        m = t.meta
        assert (m.device_serial, m.governor_applied, m.virtual) == (legacy.serial, gov, True)
        assert "virtual" in m.labels.split(",") and m.measurement_tool.startswith("tvm-runner")
        assert not t.missing(grid)  # every key the pruner can reach
        measured = t.df[t.df["source"] == "measured"]
        assert len(measured) == len(sample_grid(grid, 1))  # every 1: all measured, none interpolated
        assert (measured["n"] == 20).all() and (measured["median_ms"] > 0).all()  # 2 rounds x 1 launch x 10 steps
        assert (measured["ci_low_ms"] <= measured["median_ms"]).all()
        assert (measured["median_ms"] <= measured["ci_high_ms"]).all()
        fc = measured[measured["type"] == "fc"]
        assert set(fc["phase"]) == {"forward", "backward", "update"}  # the trained head: three phases
        assert set(measured[measured["type"] != "fc"]["phase"]) == {"forward"}  # the frozen backbone
        assert m.model == "mobilenet" and json.loads(m.model_config)["channels"] == list(TINY["channels"])


def test_smoothed_device_table_is_monotone_and_keeps_the_measurements(tables, work):
    out = work / "smoothed.parquet"
    r = autlearn("tables", "smooth", str(tables["interactive"]), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fitted from" in r.stdout and "residual" in r.stdout
    raw, s = load_table(tables["interactive"]).df, load_table(out).df
    assert (s["source"] == "fitted").all() and len(s) == len(raw)
    cols = ["type", "kernel", "stride", "groups", "in_h", "in_w", "c_in", "c_out", "batch", "phase"]
    both = raw.merge(s, on=cols, suffixes=("_raw", ""))
    assert (both["measured_ms"] == both["median_ms_raw"]).all()  # what was measured is kept
    for _, g in s[s["type"] == "conv"].groupby(["kernel", "stride", "in_h", "in_w", "c_in", "phase"]):
        assert g.sort_values("c_out")["median_ms"].is_monotonic_increasing  # more channels: never faster


@pytest.fixture(scope="module")
def validated(tables, legacy, work):
    cal = work / "calibrated.parquet"
    r = autlearn(
        "tables",
        "validate",
        str(tables["interactive"]),
        "--models",
        "12",
        "--rounds",
        "3",
        "--results",
        str(work / "results"),
        "--artifacts",
        str(CACHE / "artifacts"),
        "--out",
        str(work / "prediction_error.csv"),
        "--calibrate",
        str(cal),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r, pd.read_csv(work / "prediction_error.csv"), cal


def test_prediction_error_reported_on_twelve_whole_models(validated, tables):
    r, df, cal = validated
    lat = df[df["kind"] == "latency"]
    assert len(lat) == 12 and lat["model"].is_unique
    assert (lat["measured_ms"] > 0).all() and (lat["predicted_ms"] > 0).all()
    assert ((lat["predicted_ms"] / lat["measured_ms"] - 1 - lat["error"]).abs() < 1e-9).all()
    assert "12 models: mean |err|" in r.stdout
    t = load_table(cal)
    fit = json.loads(t.meta.calibration)
    assert fit["models"] == 12 and t.meta.latency_scale == pytest.approx(fit["scale"]) and fit["scale"] > 0
    assert t.meta.latency_offset_ms == pytest.approx(fit["offset_ms"])
    # the control measured beside these models (median of the rounds used) is the calibrated table's reference
    assert fit["control_ms"] > 0 and t.meta.control_ms == pytest.approx(fit["control_ms"])
    assert fit["table_control_ms"] == pytest.approx(load_table(tables["interactive"]).meta.control_ms)
    assert 0 <= fit["loo_within_10pct"] <= 1 and "leave-one-out" in r.stdout
    assert (fit["scale"] * lat["predicted_ms"] + fit["offset_ms"] > 0).all()  # the calibrated predictions


def test_pruned_models_for_three_budgets_meet_them_when_measured(validated, legacy, work):
    from autlearn.pipelines.tables import config_from
    from autlearn.workloads.pruning.search import smallest_reachable
    from autlearn.workloads.resource import predict

    _, _, cal = validated
    # Budgets inside the span the search can reach, in the calibrated table's own units: from the smallest
    # reachable model up to the full one, both as the calibrated table predicts them. Not from one validation
    # model's median (a host's fast/slow spells, launches of one artifact differing by up to 1.5x on a shared VM,
    # once put a budget under the smallest model's measured latency), nor from the control's reference (the
    # calibration's extrapolation once put 0.85 x reference under the smallest reachable prediction).
    table = load_table(cal)
    full = config_from(table.meta.model, table.meta)
    hi, lo = predict(full, "latency", table), smallest_reachable(full, "latency", table)
    assert lo < hi
    budgets = [lo + f * (hi - lo) for f in (0.85, 0.7, 0.55)]
    out = work / "pruned"
    r = autlearn(
        "prune",
        "--table",
        str(cal),
        *[a for b in budgets for a in ("--budget", f"latency={b:.6f}ms")],
        "--out",
        str(out),
        "--steps",
        "3",
        "--final-steps",
        "20",
        "--pretrain-steps",
        "20",
        "--measure-on",
        legacy.serial,
        "--measure-rounds",
        "7",
        "--results",
        str(work / "results"),
        "--artifacts",
        str(CACHE / "artifacts"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = pd.read_csv(out / "measured.csv")
    loop = pd.read_csv(out / "loop.csv")
    view = loop[
        [
            "budget",
            "loop_round",
            "search_target",
            "predicted",
            "measured_ms",
            "normalized_ms",
            "drift",
            "verdict",
            "rounds",
        ]
    ].to_string()
    assert len(m) == 3 and m["measured_ms"].notna().all() and m["normalized_ms"].notna().all(), view
    assert (m["predicted"] <= m["search_target"]).all() and (m["search_target"] <= m["budget_value"]).all()
    for row in m.itertuples():
        doc = json.loads(Path(row.export).read_text())
        assert doc["variant"] == "compressed" and Path(row.export).with_name("model.pt").is_file()
    # The closed loop: every budget ends with a model that measured under it; a model over its budget was searched
    # again to a lower target (loop.csv keeps every attempt). Measured = the control-normalized latency (per round
    # model / control x the table's control reference): the budgets come from an earlier campaign, and the host's
    # slow spells between campaigns (CI once ran these rounds ~1.3x slower throughout) would otherwise decide.
    assert (m["judged_on"] == "control-normalized").all() and (m["value"] == m["normalized_ms"]).all(), view
    met = (m["verdict"] == "met") & (m["value"] <= m["budget_value"])
    # A budget the smallest reachable model measures over is out of the device's reach: the loop pruned as far as
    # it can and says "exceeded" (CI once measured the smallest model at 0.83 ms normalized, 0.61 predicted, under
    # budgets of 0.77-0.81). Anything else must meet its budget, and the loosest budget always can.
    at_floor = m["search_target"] <= lo * (1 + 1e-6)
    assert (met | ((m["verdict"] == "exceeded") & at_floor)).all(), view
    assert met[m["budget_value"] == m["budget_value"].max()].all(), view
    for _budget, rows in loop.groupby("budget"):
        rows = rows.sort_values("loop_round")
        lowered = rows["search_target"].diff().fillna(0) != 0
        assert (rows["verdict"].shift()[lowered] == "exceeded").all(), view  # a target moves only after an excess
        assert rows["search_target"].is_monotonic_decreasing, view
    assert "met = the control-normalized latency" in r.stdout


LSTM = dict(vocab_size=1000, embed_dim=16, hidden_size=256, seq_len=4, batch=2)  # head ranks 128 and dense


def test_lstm_table_on_the_device_feeds_the_svd_search(legacy, work):
    from autlearn.workloads.pruning.svd import smallest_rank_value
    from autlearn.workloads.resource import predict

    before = governors(legacy)
    sets = [a for k, v in LSTM.items() for a in ("--set", f"{k}={v}")]
    r = autlearn(
        "tables",
        "build",
        "--model",
        "lstm",
        "--device",
        legacy.serial,
        "--governors",
        "powersave",
        *sets,
        "--every",
        "1",
        "--reps",
        "1",
        "--rounds",
        "1",
        "--steps",
        "5",
        "--energy",
        "none",
        "--results",
        str(work / "results"),
        "--artifacts",
        str(CACHE / "artifacts"),
        "--out",
        str(work / "lstm-tables"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert governors(legacy) == before
    [path] = sorted((work / "lstm-tables").glob("*.parquet"))
    t = load_table(path)
    cfg = make_config("lstm", **LSTM)
    assert t.meta.model == "lstm" and t.meta.virtual and t.meta.device_serial == legacy.serial
    assert not t.missing(table_grid(cfg))
    df = t.df
    assert (df["source"] == "measured").all() and (df["n"] == 5).all() and (df["median_ms"] > 0).all()
    assert set(df[df["type"] == "lstm"]["phase"]) == {"forward"}  # the frozen recurrent layers
    assert set(df[df["type"] == "fc"]["c_in"]) == {128, 256}  # dense head and its rank-128 factors
    # the SVD search on the measured table: the smallest reachable latency is met, a lower one is refused
    low = smallest_rank_value(cfg, "latency", t)
    out = work / "lstm-pruned"
    r = autlearn(
        "prune", "--model", "lstm", "--table", str(path), "--budget", f"latency={low * 1.001:.6f}ms", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [doc] = [json.loads(p.read_text()) for p in out.rglob("compressed.json")]
    assert doc["model"] == "lstm" and doc["head_rank"] in (0, 128) and doc["table"]["model"] == "lstm"
    assert doc["value"] == pytest.approx(
        predict(make_config("lstm", **LSTM, head_rank=doc["head_rank"]), "latency", t, "head")
    )
    assert doc["value"] <= doc["budget_value"] == pytest.approx(low * 1.001, rel=1e-4)
    r = autlearn(
        "prune",
        "--model",
        "lstm",
        "--table",
        str(path),
        "--budget",
        f"latency={low * 0.5:.6f}ms",
        "--out",
        str(work / "lstm-bad"),
    )
    assert "reachable" in one_error(r) or "smallest" in one_error(r)


def one_error(r: subprocess.CompletedProcess) -> str:
    """The single `autlearn: error:` line of a failed command (exit 1, no traceback)."""
    errors = [line for line in r.stderr.splitlines() if line.startswith("autlearn: error:")]
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return errors[0]


def test_bad_inputs_are_one_line_errors(tables, work):
    path = str(tables["interactive"])
    r = autlearn("prune", "--table", path, "--budget", "latency=0.0001ms", "--out", str(work / "bad"))
    assert "smallest" in one_error(r) or "reachable" in one_error(r)
    r = autlearn(
        "prune", "--table", path, "--set", "num_classes=20", "--budget", "latency=1ms", "--out", str(work / "bad2")
    )
    assert "not in table" in one_error(r)
    r = autlearn("tables", "build", "--device", "nope", "--host", *SETS, "--out", str(work / "x"))
    assert "--device" in one_error(r)
    r = autlearn("tables", "validate", path, "--models", "0")
    assert "models" in one_error(r)
