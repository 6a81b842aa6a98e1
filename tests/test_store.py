"""Results store: atomic cells, resume/stale semantics, schema versions, metadata-aware pooling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from autlearn.engine import store as store_mod
from autlearn.engine.campaign_config import DeviceRef, cell_id, parse_campaign
from autlearn.engine.store import (
    CellMeta,
    IncompatibleRuns,
    Sample,
    SchemaError,
    Store,
    bad_cell_lines,
    load_results,
    load_status,
    load_summaries,
    pooled_summary,
)
from autlearn.profiler.steps import parse_run_output

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = parse_campaign(
    {
        "name": "t",
        "warmup": 2,
        "steps": 6,
        "repetitions": 2,
        "workload": [{"model": "lstm", "variants": ["full", "compressed"], "batch": [1]}],
        "governors": ["interactive", "powersave"],
    }
)
DEVICES = [DeviceRef("emu-1", "Pixel 4", True), DeviceRef("emu-2", "Pixel 4", True)]


def meta_for(cell, artifact="art-1", **over):
    base = dict(
        campaign="t",
        cell_id=cell_id(cell, artifact),
        spec_key=cell.spec_key,
        device_serial=cell.device_serial,
        device_model=cell.device_model,
        device_virtual=cell.device_virtual,
        workload=cell.workload,
        variant=cell.variant,
        batch=cell.batch,
        governor_requested=cell.governor,
        governor_applied={"interactive": "schedutil"}.get(cell.governor, cell.governor),
        governor_reason="nearest",
        affinity=cell.affinity,
        artifact_hash=artifact,
        labels=("virtual", "modeled"),
        warmup_steps=cell.warmup,
        energy_source=cell.energy,
        freqs_start_khz=(("policy0", 1804800),),
        temp_start_c=31.5,
        temp_end_c=38.0,
        throttled=False,
        battery_pct=88.0,
        tool_versions=(("autlearn", "0.1.0"), ("tvm", "0.27.0")),
    )
    base.update(over)
    return CellMeta(**base)


def steps_for(cell, median_ns=1_000_000, seed=0):
    r = np.random.default_rng(seed)
    return [
        Sample(
            rep,
            i,
            i < cell.warmup,
            int(r.normal(median_ns, median_ns * 0.01)),
            2.3 - 0.01 * i,
            (("forward", 400_000), ("backward", 500_000)),
        )
        for rep in range(cell.repetitions)
        for i in range(cell.warmup + cell.steps)
    ]


def run_plan(tmp_path, artifact="art-1", only=None):
    st = Store.open(tmp_path, CAMPAIGN)
    cells = CAMPAIGN.plan(DEVICES)
    st.set_plan((cell_id(c, artifact), c.spec_key) for c in cells)
    for c in cells[:only]:
        if not st.finished(cell_id(c, artifact)):
            st.write_cell(meta_for(c, artifact), steps_for(c))
    return st, cells


def test_write_and_load_in_one_call(tmp_path):
    st, cells = run_plan(tmp_path)
    assert len(cells) == 8
    df = load_results(tmp_path / "t")
    assert len(df) == 8 * 2 * (2 + 6)  # one row per step per repetition, warm-up steps included and flagged
    assert df["warmup"].sum() == 8 * 2 * 2
    for col in (
        "device_serial",
        "device_model",
        "device_virtual",
        "governor_requested",
        "governor_applied",
        "freqs_start_khz",
        "temp_start_c",
        "temp_end_c",
        "throttled",
        "battery_pct",
        "artifact_hash",
        "tool_versions",
        "labels",
        "phase_forward_ns",
        "loss",
    ):
        assert col in df.columns, col
    assert set(df["labels"]) == {"modeled,virtual"}
    assert json.loads(df["tool_versions"].iloc[0]) == {"autlearn": "0.1.0", "tvm": "0.27.0"}
    assert len(load_results(tmp_path)) == len(df)  # the results root works too
    summ = load_summaries(tmp_path / "t")
    assert len(summ) == 8 and (summ["n"] == 12).all()
    assert (summ["ci_low_ns"] <= summ["median_ns"]).all() and (summ["median_ns"] <= summ["ci_high_ns"]).all()
    manifest = json.loads((tmp_path / "t" / "campaign.json").read_text())
    assert manifest["schema_version"] == store_mod.SCHEMA_VERSION and manifest["spec"] == CAMPAIGN.to_dict()


def test_crash_before_rename_leaves_no_partial_cell(tmp_path, monkeypatch):
    st = Store.open(tmp_path, CAMPAIGN)
    c = CAMPAIGN.plan(DEVICES)[0]
    m = meta_for(c)

    def boom(src, dst):
        raise OSError("disk pulled")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError):
        st.write_cell(m, steps_for(c))
    monkeypatch.undo()
    assert not st.finished(m.cell_id)
    assert list((tmp_path / "t" / "cells").iterdir()) == []  # no partial file, no temp left
    assert load_results(tmp_path / "t").empty


def test_hard_kill_between_temp_write_and_rename(tmp_path):
    """A process killed (os._exit) right before os.replace leaves only an ignored temp file."""
    src = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from test_store import CAMPAIGN, DEVICES, meta_for, steps_for
        from autlearn.engine.store import Store
        st = Store.open({str(tmp_path)!r}, CAMPAIGN)
        c = CAMPAIGN.plan(DEVICES)[0]
        os.replace = lambda a, b: os._exit(9)
        st.write_cell(meta_for(c), steps_for(c))
    """)
    p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)
    assert p.returncode == 9, p.stderr
    cells = tmp_path / "t" / "cells"
    leftovers = list(cells.iterdir())
    assert leftovers and all(f.name.startswith(".") and f.name.endswith(".tmp") for f in leftovers)
    st = Store.open(tmp_path, CAMPAIGN)
    c = CAMPAIGN.plan(DEVICES)[0]
    assert not st.finished(cell_id(c, "art-1"))
    assert load_results(tmp_path / "t").empty
    assert st.sweep(min_age_s=0) == len(leftovers) and list(cells.iterdir()) == []


def test_samples_without_status_are_not_finished(tmp_path, monkeypatch):
    """The status file is the commit point: a crash after the samples but before it means "run again"."""
    st = Store.open(tmp_path, CAMPAIGN)
    c = CAMPAIGN.plan(DEVICES)[0]
    monkeypatch.setattr(Store, "write_status", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        st.write_cell(meta_for(c), steps_for(c))
    monkeypatch.undo()
    assert (tmp_path / "t" / "cells" / f"{cell_id(c, 'art-1')}.parquet").exists()
    assert not st.finished(cell_id(c, "art-1")) and load_results(tmp_path / "t").empty


def test_resume_skips_finished_cells(tmp_path):
    st, cells = run_plan(tmp_path, only=3)
    done = [st.finished(cell_id(c, "art-1")) for c in cells]
    assert done == [True] * 3 + [False] * 5
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "t" / "cells").iterdir()}
    run_plan(tmp_path)  # resume
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # finished cells untouched
    assert len(load_summaries(tmp_path / "t")) == 8


@pytest.mark.parametrize(
    "damage",
    [
        "truncate",
        "garble",
        "swap",
        "delete",
        "status",
        "status:{}",
        "status:[]",
        "status:null",
        "status:[1, 2]",
        'status:"ok"',
        'status:{"status": "done"}',
    ],
)
def test_damaged_cell_files_are_named_left_out_and_redone(tmp_path, damage):
    st, cells = run_plan(tmp_path)
    ids = [cell_id(c, "art-1") for c in cells]
    victim, other = ids[2], ids[5]
    f = tmp_path / "t" / ("summary" if damage == "garble" else "cells") / f"{victim}.parquet"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "garble":
        data = bytearray(f.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = b"x" * 64
        f.write_bytes(bytes(data))
    elif damage == "swap":  # another cell's file copied over this one's: foreign data
        f.write_bytes((tmp_path / "t" / "cells" / f"{other}.parquet").read_bytes())
    elif damage == "delete":
        f.unlink()
    else:  # a garbled status file, or valid JSON of the wrong shape (issue 31)
        shape = damage.partition(":")[2] or "{garbled"
        (tmp_path / "t" / "status" / f"{victim}.json").write_text(shape)
    assert not st.finished(victim) and all(st.finished(c) for c in ids if c != victim)
    raw, summ = load_results(tmp_path / "t"), load_summaries(tmp_path / "t")
    for df in (raw, summ):
        assert victim not in set(df["cell_id"]) and set(df["cell_id"]) <= set(ids)
    assert len(bad_cell_lines(raw)) == 1 and victim in bad_cell_lines(raw)[0]
    assert raw["cell_id"].value_counts().max() == raw["cell_id"].value_counts().min()  # nothing duplicated
    status = load_status(tmp_path / "t").set_index("cell_id")
    assert status.loc[victim, "status"] == "failed" and status.loc[victim, "reason"]
    # --resume names what it redoes and why (run_campaign logs it)
    assert st.redo_reason(victim) and all(st.redo_reason(c) is None for c in ids if c != victim)
    run_plan(tmp_path)  # resume redoes exactly the damaged cell
    assert (
        st.finished(victim)
        and len(load_summaries(tmp_path / "t")) == 8
        and not bad_cell_lines(load_results(tmp_path / "t"))
    )


def test_changed_artifact_makes_old_cells_stale(tmp_path):
    run_plan(tmp_path, artifact="art-1")
    st, cells = run_plan(tmp_path, artifact="art-2", only=2)
    stale = st.stale()
    assert len(stale) == 8 and {s.reason for s in stale} == {"artifact changed"}
    df = load_results(tmp_path / "t")
    assert set(df["artifact_hash"]) == {"art-2"} and df["cell_id"].nunique() == 2  # not mixed in
    assert len(df.attrs["stale"]) == 8
    assert set(load_results(tmp_path / "t", include_stale=True)["artifact_hash"]) == {"art-1", "art-2"}
    status = load_status(tmp_path / "t")
    assert status["stale"].sum() == 8
    # a cell dropped from the campaign is stale for another reason
    st.set_plan([(cell_id(cells[0], "art-2"), cells[0].spec_key)])
    assert {s.reason for s in st.stale()} == {"artifact changed", "not in the current plan"}


def test_failed_and_skipped_cells_are_recorded_with_reason(tmp_path):
    st = Store.open(tmp_path, CAMPAIGN)
    a, b = (cell_id(c, "art-1") for c in CAMPAIGN.plan(DEVICES)[:2])
    st.write_status(a, "skipped", "NotRooted: cannot change cpufreq settings", spec_key="k")
    st.write_status(b, "failed", "DeviceUnreachable: emu-1 vanished")
    assert not st.finished(a) and not st.finished(b)
    assert st.status(a).status == "skipped" and "NotRooted" in st.status(a).reason
    s = load_status(tmp_path / "t")
    assert sorted(s["status"]) == ["failed", "skipped"]
    with pytest.raises(ValueError):
        st.write_status(a, "failed")  # a reason is required
    with pytest.raises(ValueError):
        st.write_status(a, "done", "x")


def test_newer_or_unknown_schema_is_refused(tmp_path):
    Store.open(tmp_path, CAMPAIGN)
    manifest = tmp_path / "t" / "campaign.json"
    doc = json.loads(manifest.read_text())
    for bad, match in (
        (store_mod.SCHEMA_VERSION + 1, "newer autlearn"),
        ("1", "unknown schema"),
        (None, "unknown schema"),
        (0, "unknown schema"),
    ):
        doc["schema_version"] = bad
        manifest.write_text(json.dumps(doc))
        with pytest.raises(SchemaError, match=match):
            load_results(tmp_path / "t")
        with pytest.raises(SchemaError, match=match):
            Store.open(tmp_path, CAMPAIGN)
    manifest.write_text("{not json")
    with pytest.raises(SchemaError, match="unreadable"):
        load_results(tmp_path / "t")
    with pytest.raises(SchemaError, match="no autlearn results"):
        load_results(tmp_path / "nothing-here")


def test_older_schema_is_migrated(tmp_path, monkeypatch):
    run_plan(tmp_path, only=1)
    seen = []
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(store_mod, "MIGRATIONS", {1: seen.append})
    assert len(load_results(tmp_path / "t")) == 16
    assert seen == [tmp_path / "t"]
    assert json.loads((tmp_path / "t" / "campaign.json").read_text())["schema_version"] == 2
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(store_mod, "MIGRATIONS", {})
    with pytest.raises(SchemaError, match="no migration from results schema 2"):
        Store.open(tmp_path, CAMPAIGN)


def test_pooling_refuses_mixed_fixed_metadata(tmp_path):
    st, cells = run_plan(tmp_path)
    df = load_results(tmp_path / "t")
    # the two phones are the same model with the same artifact: pooling over serials is allowed
    pooled = pooled_summary(df, ["workload", "variant", "governor_applied"])
    assert len(pooled) == 4 and (pooled["cells"] == 2).all()
    with pytest.raises(IncompatibleRuns, match="governor_applied"):
        pooled_summary(df, ["workload", "variant"])
    other = Store.open(tmp_path, parse_campaign({**CAMPAIGN.to_dict(), "name": "t2"}))
    c = cells[0]
    other.write_cell(meta_for(c, tool_versions=(("autlearn", "0.2.0"),), campaign="t2"), steps_for(c))
    both = load_results(tmp_path)
    with pytest.raises(IncompatibleRuns, match="tool_versions"):
        pooled_summary(both[both["cell_id"] == cell_id(c, "art-1")], ["workload", "variant", "governor_applied"])


def test_meta_validation():
    c = CAMPAIGN.plan(DEVICES)[0]
    with pytest.raises(ValueError, match="labels"):
        meta_for(c, labels=("guessed",))
    with pytest.raises(ValueError, match="cell_id"):
        meta_for(c, cell_id="../../etc")


def test_sample_from_parsed_runner_output():
    out = parse_run_output(
        '{"step": 0, "warmup": true, "phases_ns": {"fwd": 5, "bwd": 7}, "step_ns": 12, '
        '"loss": 0.5}\n{"step": 1, "warmup": false, "phases_ns": {"fwd": 4, "bwd": 6}, '
        '"step_ns": 10, "loss": 0.4}\n'
    )
    s = [Sample.from_step(x, repetition=1) for x in out.steps]
    assert (s[1].repetition, s[1].step, s[1].warmup, s[1].step_ns, s[1].phases_ns) == (
        1,
        1,
        False,
        10,
        (("bwd", 6), ("fwd", 4)),
    )


def test_store_open_requires_existing_dir_without_campaign(tmp_path):
    with pytest.raises(SchemaError):
        Store.open(tmp_path, name="missing")
    Store.open(tmp_path, CAMPAIGN)
    assert Store.open(tmp_path, name="t").name == "t"
    assert os.path.isdir(tmp_path / "t")
