"""Issue 34: frequency telemetry per cell; throttled cells flagged and redone (Jetpack Microbenchmark style).

Pure parts first (time_in_state deltas -> mean frequency, the verdict, the campaign setting, the store's columns,
the virtual phone's time_in_state), then one campaign on a `hot` virtual phone heated past its trip point."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from autlearn.engine import store as store_mod
from autlearn.engine.campaign import run_campaign
from autlearn.engine.campaign_config import Cooldown, DeviceRef, Throttle, cell_id, load_campaign, parse_campaign
from autlearn.engine.store import CellMeta, Sample, Store, load_summaries
from autlearn.engine.worker import Progress, started_cool
from autlearn.pipelines.artifact_cache import artifact_provider
from autlearn.profiler.device import Device
from autlearn.profiler.errors import ConfigError
from autlearn.profiler.telemetry import (
    BELOW,
    COOLING,
    Flag,
    combine,
    judge,
    mean_frequency_khz,
    parse_reading,
    parse_time_in_state,
    window,
)
from autlearn.reports.build import build_report, load_campaign_data
from autlearn.testbed.dvfs import DvfsModel
from autlearn.testbed.profiles import load_profile
from autlearn.testbed.rootfs import build_rootfs

CACHE = Path(os.environ.get("AUTLEARN_TEST_CACHE_DIR") or Path.home() / ".cache" / "autlearn-test") / "artifacts"


# ------------------------------------------------------------------------------------------------------ pure
def test_mean_frequency_from_time_in_state_deltas():
    before = "300000 100\n1000000 50\n2000000 0\n"
    after = "300000 110\n1000000 50\n2000000 30\n"  # 10 units at 300 MHz, 30 at 2 GHz
    assert mean_frequency_khz(before, after) == pytest.approx((300000 * 10 + 2000000 * 30) / 40)
    # as probe.sh prints a node (lines joined by spaces); a frequency the first read lacked counts from 0
    assert mean_frequency_khz("300000 5", "300000 5 2500000 4") == pytest.approx(2500000)
    assert mean_frequency_khz(before, before) is None  # no time passed
    assert mean_frequency_khz(after, before) is None  # a counter went backwards: stats reset, CPU hotplug
    assert mean_frequency_khz(before, "") is None
    assert parse_time_in_state("300000 1 bad 2 1000000 3 7") == ((300000, 1), (1000000, 3))


def _reading(tis: dict[str, str], *, gov="performance", cur=None, cooling=(0, 0), temp_mc=38000) -> str:
    """`probe.sh telemetry` output of a two-policy phone (legacy-like tables). SYNTHETIC."""
    lines = ["probe.version=1", "uptime=100.00"]
    for name, cpus, lo, hi in (("policy0", "0-3", 300000, 1900800), ("policy4", "4-7", 300000, 2457600)):
        lines += [
            f"policy.{name}.related_cpus={cpus}",
            f"policy.{name}.scaling_governor={gov}",
            f"policy.{name}.scaling_cur_freq={(cur or {}).get(name, hi)}",
            f"policy.{name}.scaling_min_freq={lo}",
            f"policy.{name}.scaling_max_freq={hi}",
            f"policy.{name}.cpuinfo_min_freq={lo}",
            f"policy.{name}.cpuinfo_max_freq={hi}",
        ]
        if name in tis:
            lines.append(f"policy.{name}.time_in_state={tis[name]}")
    lines += ["thermal.thermal_zone0.type=tsens_tz_sensor0", f"thermal.thermal_zone0.temp={temp_mc}"]
    lines += ["thermal.thermal_zone1.type=battery", "thermal.thermal_zone1.temp=29000"]
    for i, (kind, state, top) in enumerate(
        (("thermal-cpufreq-0", cooling[0], 21), ("thermal-cpufreq-4", cooling[1], 30), ("battery", 3, 5))
    ):
        lines += [f"cooling.cooling_device{i}.type={kind}", f"cooling.cooling_device{i}.cur_state={state}"]
        lines.append(f"cooling.cooling_device{i}.max_state={top}")
    return "\n".join([*lines, "probe.end=1"]) + "\n"


def _tis(little: tuple[int, int], big: tuple[int, int]) -> dict[str, str]:
    """time_in_state of both policies: (units at the lowest frequency, units at the highest)."""
    return {"policy0": f"300000 {little[0]} 1900800 {little[1]}", "policy4": f"300000 {big[0]} 2457600 {big[1]}"}


def test_the_verdict_follows_the_governor_and_the_thermal_evidence():
    cold = parse_reading(_reading(_tis((0, 0), (0, 0))))
    at_max = parse_reading(_reading(_tis((0, 50), (0, 50))))
    w = window(cold, at_max)
    assert [(p.name, p.mean_khz, p.source) for p in w.policies] == [
        ("policy0", 1900800, "time_in_state"),
        ("policy4", 2457600, "time_in_state"),
    ]
    assert judge(combine([w]), "performance") == ()
    # one launch of two spent half its time at the lowest frequency: flagged on the worst launch, not the mean
    half = parse_reading(_reading(_tis((25, 75), (0, 100))))
    cell = combine([w, window(at_max, half)])
    assert cell.policies[0].mean_khz == pytest.approx((1900800 * 75 + 300000 * 25) / 100)
    assert judge(cell, "performance") == (Flag(BELOW, "policy0 1100 MHz < 1901 MHz of performance (max)"),)
    assert judge(cell, "schedutil") == ()  # a governor picks its own frequency: only thermal evidence counts
    pinned = combine([window(at_max, half)])
    assert judge(pinned, "userspace", pinned=(("policy0", 1100000), ("policy4", 2457600))) == ()  # the pins asked it
    # powersave asks for the minimum: a mean at the maximum is off it
    assert str(judge(combine([w]), "powersave")[0]).startswith("frequency above its governor (policy0 1901 MHz > 300")
    # cooling (CPU devices only: the battery's is not a CPU throttle) and temperature, for any governor
    hot = parse_reading(_reading(_tis((0, 50), (0, 50)), cooling=(0, 4), temp_mc=47500))
    cell = combine([window(cold, hot)])
    assert cell.cooling == (("thermal-cpufreq-0", 0, 21), ("thermal-cpufreq-4", 4, 30))
    assert [str(f) for f in judge(cell, "schedutil")] == ["throttled: CPU cooling engaged (thermal-cpufreq-4 4/30)"]
    hot_flag = judge(cell, "schedutil", max_temp_c=45.0)[1]
    assert str(hot_flag) == "throttled: temperature limit reached (47.5 C, limit 45.0 C)"
    # no time_in_state: the two scaling_cur_freq samples, said so
    a = parse_reading(_reading({}, cur={"policy0": 1900800, "policy4": 300000}))
    b = parse_reading(_reading({}, cur={"policy0": 1900800, "policy4": 2457600}))
    s = window(a, b)
    assert s.source == "sampled" and s.policies[1].mean_khz == pytest.approx((300000 + 2457600) / 2)


@pytest.mark.parametrize("shell", ["mksh", "sh"])
def test_probe_script_prints_telemetry(tmp_path, shell):
    """`probe.sh telemetry`: policies with time_in_state, thermal zones and cooling devices; no props, no battery."""
    if not shutil.which(shell):
        pytest.skip(f"{shell} not installed")
    sysfs = tmp_path / "sys"
    files = {
        "devices/system/cpu/cpufreq/policy0/related_cpus": "0 1 2 3",
        "devices/system/cpu/cpufreq/policy0/scaling_governor": "performance",
        "devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq": "1900800",
        "devices/system/cpu/cpufreq/policy0/stats/time_in_state": "300000 7\n1900800 93",
        "class/thermal/thermal_zone0/type": "cpu-0-0 'usr'",
        "class/thermal/thermal_zone0/temp": "41000",
        "class/thermal/cooling_device0/type": "thermal-cpufreq-0",
        "class/thermal/cooling_device0/cur_state": "2",
        "class/power_supply/battery/capacity": "55",
    }
    for name, value in files.items():
        (sysfs / name).parent.mkdir(parents=True, exist_ok=True)
        (sysfs / name).write_text(value + "\n")
    script = Path(__file__).parents[1] / "device_scripts" / "probe.sh"
    env = dict(os.environ, AUTLEARN_SYSFS=str(sysfs))
    out = subprocess.run([shell, str(script), "telemetry"], env=env, capture_output=True, text=True, timeout=30)
    r = parse_reading(out.stdout)
    assert r.time_in_state == (("policy0", ((300000, 7), (1900800, 93))),)
    assert r.facts.policies[0].governor == "performance" and r.facts.max_temp_c == 41.0
    assert [(c.type, c.cur_state) for c in r.cpu_cooling] == [("thermal-cpufreq-0", 2)]
    assert r.facts.battery is None and "prop." not in out.stdout
    # the other modes print no time_in_state
    out = subprocess.run([shell, str(script), "dynamic"], env=env, capture_output=True, text=True, timeout=30)
    assert parse_reading(out.stdout).time_in_state == () and parse_reading(out.stdout).facts.battery is not None


def test_a_cell_that_started_cool_is_not_redone():
    """It throttled on its own heat: a redo from the same start would throttle again."""
    cool = parse_reading(_reading({}, temp_mc=39000)).facts
    assert started_cool(cool, Cooldown(max_temp_c=40.0, zones="tsens*"))
    assert not started_cool(cool, Cooldown(max_temp_c=38.0, zones="tsens*"))  # warmer than the campaign asks
    assert not started_cool(cool, Cooldown(max_temp_c=40.0, zones="*cpu*"))  # no zone of the cooldown: unknown
    engaged = parse_reading(_reading({}, temp_mc=39000, cooling=(1, 0))).facts
    assert not started_cool(engaged, Cooldown(max_temp_c=40.0, zones="tsens*"))


def test_the_throttle_setting_is_validated():
    base = {"name": "x", "workload": [{"model": "lstm"}]}
    assert parse_campaign(base).throttle == Throttle(retries=2, cooldown_s=0.0, max_temp_c=None)
    c = parse_campaign({**base, "throttle": {"retries": 0, "cooldown_s": 30, "max_temp_c": 60}})
    assert c.throttle == Throttle(0, 30.0, 60.0) and parse_campaign(c.to_dict()) == c
    for bad, key in (
        ({"retries": -1}, "throttle.retries"),
        ({"retries": 1.5}, "throttle.retries"),
        ({"cooldown_s": "long"}, "throttle.cooldown_s"),
        ({"max_temp_c": 500}, "throttle.max_temp_c"),
        ({"retry": 2}, "throttle.retry"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_campaign({**base, "throttle": bad})
        assert info.value.key == key


def test_cells_store_telemetry_columns(tmp_path):
    campaign = parse_campaign({"name": "t", "workload": [{"model": "lstm"}], "governors": ["performance"]})
    (cell,) = campaign.plan([DeviceRef("emu-1", "Pixel 4", True)])
    meta = CellMeta(
        campaign="t",
        cell_id=cell_id(cell, "art"),
        spec_key=cell.spec_key,
        device_serial="emu-1",
        device_model="Pixel 4",
        device_virtual=True,
        workload="lstm",
        variant="full",
        batch=1,
        governor_requested="performance",
        governor_applied="performance",
        affinity="all",
        artifact_hash="art",
        labels=("virtual",),
        freq_mhz=(("policy0", 1900.8), ("policy4", 2208.0)),
        telemetry_source="time_in_state",
        launch_max_temp_c=46.0,
        cooling_max=(("thermal-cpufreq-4", 3),),
        flagged=True,
        flag_reason=COOLING,
        flag_detail=f"{COOLING} (thermal-cpufreq-4 3/30)",
        attempts=3,
        redo_reasons=("a", "b"),
    )
    store = Store.open(tmp_path, campaign)
    store.write_cell(meta, [Sample(0, i, False, 1_000_000 + i) for i in range(3)])
    (row,) = load_summaries(tmp_path / "t").to_dict("records")
    assert (row["freq_policy0_mhz"], row["freq_policy4_mhz"]) == (1900.8, 2208.0) and "freq_mhz" not in row
    assert row["flagged"] and row["flag_reason"].startswith("throttled") and row["attempts"] == 3
    assert json.loads(row["redo_reasons"]) == ["a", "b"] and json.loads(row["cooling_max"]) == {"thermal-cpufreq-4": 3}
    # columns added, none changed: the results schema stays (a directory of cells without them loads beside these)
    assert store_mod.SCHEMA_VERSION == 1 and Store.open(tmp_path, campaign).finished(meta.cell_id)


def test_virtual_phone_counts_time_in_state(tmp_path):
    p = load_profile("legacy")
    build_rootfs(tmp_path, p, "legacy-1")
    pol = tmp_path / "sys/devices/system/cpu/cpufreq/policy4"
    (pol / "scaling_governor").write_text("performance\n")
    m = DvfsModel(p, tmp_path)
    m.step(0.02, [0.0, 0.0], 0.0)  # the governor's frequency applies from the next tick on
    first = (pol / "stats/time_in_state").read_text()
    for _ in range(10):
        m.step(0.05, [0.0, 1.0], 0.5)
    last = (pol / "stats/time_in_state").read_text()
    assert mean_frequency_khz(first, last) == pytest.approx(p.clusters[1].freqs_khz[-1])
    assert sum(t for _, t in parse_time_in_state(last)) in (51, 52)  # 0.52 s in 10 ms units (float sums)
    assert DvfsModel(p, tmp_path).tis_s[1] == pytest.approx(m.tis_s[1], abs=0.01)  # a restarted model counts on


# ------------------------------------------------------------------------------------------------ on a phone
# four busy shells, one per big CPU, until told to stop: they keep the phone at its trip point whatever the governor
HEAT = 'for i in 1 2 3 4; do while [ ! -e "$TMPDIR/heat.stop" ]; do :; done & done; wait'


def _campaign(tmp_path: Path, name: str, serial: str, governor: str, retries: int) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'name = "{name}"\nwarmup = 1\nsteps = 3\nrepetitions = 1\nenergy = "none"\n'
        f'[devices]\nserials = ["{serial}"]\n[[workload]]\nmodel = "lstm"\nvariants = ["full"]\nbatch = [16]\n'
        f'[governors]\nintents = ["{governor}"]\n[cooldown]\nmax_temp_c = 95\ntimeout_s = 30\nzones = "*"\n'
        f"[throttle]\nretries = {retries}\ncooldown_s = 4.0\n"
    )
    return p


def _shell(serial: str, cmd: str) -> None:
    with contextlib.suppress(Exception):  # the heater's end is checked through the phone's sysfs, not here
        Device(serial).shell(cmd, timeout=120)


def _heat(phone, stop: Path) -> threading.Thread:
    """Heat the phone past its trip point until `stop` exists; returns once CPU cooling is engaged."""
    stop.unlink(missing_ok=True)
    heater = threading.Thread(target=_shell, args=(phone.serial, HEAT), daemon=True)
    heater.start()
    states = [phone.root / f"sys/class/thermal/cooling_device{i}/cur_state" for i in (0, 1)]
    deadline = time.monotonic() + 20
    while not all(int(s.read_text()) > 0 for s in states):
        assert time.monotonic() < deadline, "the hot phone did not throttle under a busy shell"
        time.sleep(0.1)
    return heater


def test_throttled_cell_is_flagged_and_redone(lab_factory, runner_cache, tmp_path):
    """The `hot` phone trips at 45 C, 7 C above idle: a busy shell at its maximum heats it there within a second, and
    so does the harness's own shell work (at 40 C/W). Pinned at 500 MHz, a short cell heats it by a few degrees: heated
    by busy shells as the campaign starts, its first attempt runs throttled; the heat stops when the worker says it
    redoes the cell, and the redo, after the cooldown, runs at its pin."""
    _, (phone,) = lab_factory(["hot"])
    top = {f"freq_policy{c.cpus[0]}_mhz": c.freqs_khz[-1] / 1e3 for c in load_profile("hot").clusters}
    stop = phone.root / "data/local/tmp/heat.stop"
    heater = _heat(phone, stop)
    progress = Progress(on_change=lambda s: stop.touch() if "redoing" in progress.state.get(s, "") else None)
    try:
        c = load_campaign(_campaign(tmp_path, "throttle", phone.serial, "userspace@500MHz", retries=2))
        out = run_campaign(c, tmp_path / "results", artifact_provider(CACHE), threads=1, progress=progress)
    finally:
        stop.touch()
        heater.join(10)
    assert out.ok == 1, out
    (row,) = load_summaries(out.results_dir).to_dict("records")
    print({k: v for k, v in row.items() if k.startswith(("freq", "flag", "attempts", "redo", "cooling", "launch"))})
    # the first attempt was flagged (CPU cooling engaged) and redone; the redo ran at its pins, unthrottled
    assert row["attempts"] == 2 and not row["flagged"] and row["flag_reason"] == row["flag_detail"] == ""
    (why,) = json.loads(row["redo_reasons"])  # each kind of evidence, with the numbers
    assert f"{COOLING} (thermal-cpufreq-0 " in why, why
    assert row["telemetry_source"] == "time_in_state"
    pins = json.loads(row["pinned_khz"])
    assert set(pins) == {"policy0", "policy4"}
    for policy, khz in pins.items():
        assert row[f"freq_{policy}_mhz"] == pytest.approx(khz / 1e3, rel=0.02), (policy, row[f"freq_{policy}_mhz"])
    assert set(json.loads(row["cooling_max"]).values()) == {0} and not row["throttled"]
    harness = json.loads(row["harness"])
    assert {"telemetry", "redo", "redo_cooldown"} <= set(harness) and harness["redo_cooldown"] >= 4.0

    # performance, no retries: the throttled cell is kept with its flag and reasons, and the report reads them
    heater = _heat(phone, stop)
    try:
        c = load_campaign(_campaign(tmp_path, "kept", phone.serial, "performance", retries=0))
        out = run_campaign(c, tmp_path / "results", artifact_provider(CACHE), threads=1)
    finally:
        stop.touch()
        heater.join(10)
    (row,) = load_summaries(out.results_dir).to_dict("records")
    assert row["flagged"] and row["attempts"] == 1 and json.loads(row["redo_reasons"]) == []
    assert row["flag_reason"] == f"{BELOW}; {COOLING}" and f"{COOLING} (thermal-cpufreq-0 " in row["flag_detail"]
    assert row["freq_policy0_mhz"] < 0.97 * top["freq_policy0_mhz"]
    (cell,) = build_report(load_campaign_data(out.results_dir)).cells
    assert cell.flagged and cell.flag_reason == row["flag_reason"]
    assert {k for k, _ in cell.extra} == set(top)
