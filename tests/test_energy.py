"""Energy: PowerTrace, clock alignment + per-step integration, fuel gauge parsing/inference/refusal."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autlearn.profiler.energy import PowerTrace
from autlearn.profiler.energy.align import baseline_power, estimate_offset, integrate, step_energies
from autlearn.profiler.energy.fuelgauge import (
    ChargeFacts,
    charge_facts,
    decide_fuelgauge,
    infer_calibration,
    parse_log,
    to_trace,
)
from autlearn.profiler.errors import EnergyError, ParseError

SCRIPT = Path(__file__).resolve().parents[1] / "device_scripts" / "fuelgauge.sh"


def test_power_trace_is_frozen_and_validated():
    tr = PowerTrace(t=[0, 1, 2], current=[1, 1, 1], voltage=[4, 4, 4], source="x", serial="s", labels=("modeled",))
    assert tr.energy_j() == pytest.approx(8.0) and tr.mean_power_w() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        tr.current[0] = 2
    with pytest.raises(ValueError, match="labels"):
        PowerTrace(t=[0, 1], current=[1, 1], voltage=[4, 4], source="x", serial="s", labels=("guessed",))
    with pytest.raises(ValueError, match="increasing"):
        PowerTrace(t=[0, 0], current=[1, 1], voltage=[4, 4], source="x", serial="s", labels=("measured",))


# -- alignment ---------------------------------------------------------------------------------------------------


def test_offset_from_round_trips_keeps_fast_ones_and_bounds_error():
    rng = np.random.default_rng(1)
    true_offset = 1234.5678  # host = device + offset
    trips = []
    for k in range(40):
        hs = 10.0 + k * 0.1
        up, down = rng.uniform(0.0005, 0.02), rng.uniform(0.0005, 0.02)
        trips.append((hs, hs + up - true_offset, hs + up + down))
    est = estimate_offset(trips)
    assert est.error_s == pytest.approx(min(r - s for s, _, r in trips) / 2)
    assert abs(est.offset_s - true_offset) <= est.error_s
    assert est.samples == 40 and est.samples_used == 10


def test_integrate_handles_partial_samples():
    t = np.arange(0, 1.0001, 0.001)
    tr = PowerTrace(t=t, current=t, voltage=np.full_like(t, 2.0), source="x", serial="s", labels=("modeled",))
    # P = 2t; integral over [0.1234, 0.5678] = t^2
    assert float(integrate(tr, 0.1234, 0.5678)) == pytest.approx(0.5678**2 - 0.1234**2, rel=1e-9)


def test_step_energies_from_synthetic_trace_with_known_edges():
    rate = 5000.0
    t = np.arange(0, 6.0, 1 / rate)
    idle_w, volts = 0.6, 4.0
    steps_host = [(1.0, 1.7), (1.9, 2.4), (2.61, 3.5), (3.7, 4.05)]  # trace time (t0_host = 0 below)
    step_w = [3.0, 5.5, 2.2, 7.0]
    p = np.full_like(t, idle_w)
    for (a, b), w in zip(steps_host, step_w):
        p[(t >= a) & (t < b)] = w
    trace = PowerTrace(
        t=t,
        current=p / volts,
        voltage=np.full_like(t, volts),
        source="monsoon",
        serial="1",
        labels=("simulated",),
        sample_rate=rate,
        t0_host=100.0,
    )
    # device clock = host clock - 5000 s; round trips through a 2..6 ms link
    offset = 5000.0
    rng = np.random.default_rng(7)
    trips = [
        (h, h + d1 - offset, h + d1 + d2)
        for h, d1, d2 in zip(np.linspace(90, 99, 30), rng.uniform(0.001, 0.003, 30), rng.uniform(0.001, 0.003, 30))
    ]
    clock = estimate_offset(trips)
    steps_ns = [(int(round((a + 100.0 - offset) * 1e9)), int(round((b + 100.0 - offset) * 1e9))) for a, b in steps_host]
    base = baseline_power(trace, 0.1, 0.9)
    assert base == pytest.approx(idle_w)
    rep = step_energies(trace, steps_ns, clock, baseline_w=base)
    assert rep.labels == ("simulated",) and rep.alignment_error_s == clock.error_s <= 0.003
    for s, (a, b), w in zip(rep.steps, steps_host, step_w):
        assert s.gross_j == pytest.approx(w * (b - a), rel=0.01)
        assert s.net_j == pytest.approx((w - idle_w) * (b - a), rel=0.01)
        assert s.mean_w == pytest.approx(w, rel=0.01)
        assert 0 < s.uncertainty_j <= clock.error_s * max(step_w) + 1e-12 and s.gap_s == 0
    assert rep.total_gross_j == pytest.approx(sum(w * (b - a) for (a, b), w in zip(steps_host, step_w)), rel=0.01)
    with pytest.raises(ValueError, match="trace covers"):
        step_energies(trace, [(steps_ns[0][0], steps_ns[0][0] + int(10e9))], clock)


# -- fuel gauge --------------------------------------------------------------------------------------------------


def _log(rows, clock="realtime"):
    lines = [f"# autlearn-fuelgauge 1 clock={clock} interval=0.1 duration=1"]
    lines += [
        f"S {100 + i * 0.1:.6f} {cur} {volt} {cc} {usb} {ac} {status}"
        for i, (cur, volt, cc, usb, ac, status) in enumerate(rows)
    ]
    return "\n".join(lines + [f"# end reason=duration samples={len(rows)}"]) + "\n"


@pytest.mark.parametrize(
    "cur, volt, unit, sign, vunit",
    [
        (-385000, 3876000, "uA", -1, "uV"),  # Android docs: uA, negative while discharging
        (412000, 3900000, "uA", 1, "uV"),  # old Qualcomm: positive while discharging
        (-210, 3850000, "mA", -1, "uV"),  # vendor reporting mA
        (650, 3850, "mA", 1, "mV"),  # mA, positive while discharging, voltage in mV
    ],
)
def test_fuelgauge_unit_and_sign_inference(cur, volt, unit, sign, vunit):
    rows = [(cur + d, volt, 2400000 - 10 * i, 0, "NA", "Discharging") for i, d in enumerate((0, 3, -2, 1, 5))]
    tr = to_trace(_log(rows), serial="dev1")
    assert (tr.info["current_unit"], tr.info["discharge_sign"], tr.info["voltage_unit"]) == (unit, sign, vunit)
    scale = 1e-6 if unit == "uA" else 1e-3
    assert np.median(tr.current) == pytest.approx(abs(cur) * scale, rel=0.01)  # positive = drawn from battery
    assert np.median(tr.voltage) == pytest.approx(volt * (1e-6 if vunit == "uV" else 1e-3))
    assert tr.t[0] == 0 and tr.t0_device == pytest.approx(100.0) and tr.labels == ("measured",)
    assert tr.source == "fuelgauge" and tr.info["inference"]


def test_fuelgauge_sign_from_charging_samples_and_default():
    charging = [(500000, 4100000, 1, 1, "NA", "Charging")] * 3
    assert infer_calibration(parse_log(_log(charging)).samples).discharge_sign == -1
    unknown = [(300000, 4000000, 1, 0, "NA", "Unknown")] * 3
    cal = infer_calibration(parse_log(_log(unknown)).samples)
    assert cal.discharge_sign == -1 and any("assumed" in n for n in cal.notes)


def test_fuelgauge_parse_errors():
    with pytest.raises(ParseError):
        parse_log("garbage\n")
    with pytest.raises(EnergyError):
        to_trace(_log([(-1000, 4000000, 1, 0, 0, "Discharging")]))


@pytest.mark.parametrize(
    "facts, allowed, action",
    [
        (ChargeFacts("Discharging", usb_online=False), True, "none"),
        (ChargeFacts("Charging", usb_online=True), False, "refuse"),
        (ChargeFacts("Full", usb_online=True, rooted=True), False, "refuse"),  # rooted but no known switch
        (
            ChargeFacts("Charging", usb_online=True, rooted=True, switches=("battery/input_suspend",)),
            True,
            "suspend_charging",
        ),
        (ChargeFacts("Charging", usb_online=True, rooted=False, switches=("battery/input_suspend",)), False, "refuse"),
        (ChargeFacts("Charging", usb_online=True, adb_transport="wifi"), False, "unplug_charger"),
        (ChargeFacts("Not charging", usb_online=False, adb_transport="wifi"), True, "none"),
    ],
)
def test_fuelgauge_charging_decision(facts, allowed, action):
    d = decide_fuelgauge(facts)
    assert (d.allowed, d.action) == (allowed, action), d.reason
    if action == "suspend_charging":
        assert d.suspend == ("battery/input_suspend", "1", "0")
    if action == "refuse":
        assert "charg" in d.reason


def test_charge_facts_from_probe_values():
    f = charge_facts(
        "Charging",
        {"usb": True, "ac": False},
        adb_transport="usb",
        rooted=True,
        nodes=["battery/charging_enabled", "battery/temp"],
    )
    assert f.switches == ("battery/charging_enabled",)
    assert decide_fuelgauge(f).suspend == ("battery/charging_enabled", "0", "1")


@pytest.mark.parametrize("shell", ["mksh", "dash", "bash"])
def test_fuelgauge_script_output_parses(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    bat = tmp_path / "sys/class/power_supply/battery"
    bat.mkdir(parents=True)
    for name, value in (
        ("current_now", "-385000"),
        ("voltage_now", "3876000"),
        ("charge_counter", "2400000"),
        ("status", "Not charging"),
    ):
        (bat / name).write_text(value + "\n")
    (tmp_path / "sys/class/power_supply/usb").mkdir()
    (tmp_path / "sys/class/power_supply/usb/online").write_text("0\n")
    stop = tmp_path / "stop"
    proc = subprocess.Popen(
        [shell, str(SCRIPT), "0", "0.05", str(stop)],
        stdout=subprocess.PIPE,
        text=True,
        env={"AUTLEARN_SYSFS": str(tmp_path / "sys"), "PATH": "/usr/bin:/bin"},
    )
    import time

    time.sleep(0.4)
    stop.touch()
    out, _ = proc.communicate(timeout=10)
    log = parse_log(out)
    assert log.end_reason == "stopfile" and len(log.samples) >= 2
    assert log.samples[0].status == "Not charging" and log.samples[0].ac_online is None
    tr = to_trace(log)
    assert np.allclose(tr.current, 0.385) and np.allclose(tr.voltage, 3.876)
