"""The unmodified `monsoon` driver against the simulated monitor (testbed/monsoon_sim.py)."""

from __future__ import annotations

import numpy as np
import pytest

from autlearn.profiler.energy import EnergySource
from autlearn.profiler.energy.monsoon import MonsoonSource, MonsoonWindow, list_monitors
from autlearn.profiler.errors import EnergyError, UserError
from autlearn.testbed.monsoon_sim import (
    DropBurst,
    SimBackend,
    SimFleet,
    SimMonitor,
    installed,
    passthrough_mode,
    read_state,
    schedule_energy_j,
)

SCHEDULE = ((0.1, 500.0), (0.5, 80.0), (1.0, 1200.0), (0.5, 20.0))  # (s, mA); the first 0.1 s is settling


def test_driver_in_process_reads_serial_voltage_and_calibrated_current():
    from Monsoon import HVPM, pmapi
    from Monsoon import sampleEngine as se

    backend = SimBackend([SimMonitor(4242, profile=((0.2, 80.0), (0.2, 1200.0))), SimMonitor(777)])
    with installed(backend):
        assert sorted(pmapi.USB_protocol().enumerateDevices()) == ["4242", "777"]
        mon = HVPM.Monsoon()
        mon.setup_usb("777", pmapi.USB_protocol())
    assert mon.getSerialNumber() == 777
    mon.setVout(4.0)
    assert backend.device(777).vout == pytest.approx(4.0)
    eng = se.SampleEngine(mon, errorMode=se.ErrorHandlingModes.off)
    eng.ConsoleOutput(False)
    eng.startSampling(1500)
    _, main, _, _, volts, _ = eng.getSamples()
    assert np.allclose(volts, 4.0)
    assert np.allclose(main[:900], 100.0, rtol=1e-3)  # SimMonitor's default profile: 100 mA on 777
    assert backend.device(4242).k == 0  # the other monitor was not touched


def test_sim_rejects_duplicate_serials():
    with pytest.raises(ValueError, match="distinct"):
        SimBackend([SimMonitor(1), SimMonitor(1)])


def test_known_profile_energy_and_passthrough_restored(tmp_path):
    fleet = SimFleet((SimMonitor(4242, profile=SCHEDULE),), state_dir=str(tmp_path))
    assert list_monitors(fleet) == ("4242",)
    src = MonsoonSource(4242, MonsoonWindow(voltage=4.0, settle_s=0.1, duration_s=2.0), backend=fleet)
    assert isinstance(src, EnergySource)
    src.start()
    trace = src.stop()
    assert trace.serial == "4242" and trace.labels == ("simulated",) and trace.dropped == 0
    assert trace.sample_rate == 5000 and trace.duration == pytest.approx(2.0)
    assert np.allclose(trace.voltage, 4.0)
    m0 = trace.info["monitor_t0_s"]
    true = schedule_energy_j(SCHEDULE, 4.0, m0, m0 + 2.0)
    assert true == pytest.approx(5.0, rel=1e-3)
    assert trace.energy_j() == pytest.approx(true, rel=0.005)
    # passthrough: on before, off during the window, on again afterwards
    modes = [e["value"] for e in read_state(tmp_path, 4242)["log"] if e["event"] == "passthrough"]
    assert modes == [0, 1]
    assert passthrough_mode(tmp_path, 4242) == 1 and src.restored_passthrough == "on"


def test_two_monitors_at_once_keep_their_serials_and_data(tmp_path):
    fleet = SimFleet(
        (SimMonitor(1111, profile=((5.0, 300.0),)), SimMonitor(2222, profile=((5.0, 50.0),))), state_dir=str(tmp_path)
    )
    a = MonsoonSource(1111, MonsoonWindow(voltage=3.8, settle_s=0.05, duration_s=0.5), backend=fleet)
    b = MonsoonSource(2222, MonsoonWindow(voltage=4.2, settle_s=0.05, duration_s=0.5), backend=fleet)
    a.start()
    b.start()
    ta, tb = a.stop(), b.stop()
    assert (ta.serial, tb.serial) == ("1111", "2222")
    assert np.mean(ta.current) == pytest.approx(0.300, rel=1e-3)
    assert np.mean(tb.current) == pytest.approx(0.050, rel=1e-3)
    assert np.allclose(ta.voltage, 3.8, atol=1e-3) and np.allclose(tb.voltage, 4.2, atol=1e-3)
    assert passthrough_mode(tmp_path, 1111) == passthrough_mode(tmp_path, 2222) == 1


def test_dropped_burst_is_counted_and_leaves_a_gap(tmp_path):
    fleet = SimFleet((SimMonitor(4242, profile=SCHEDULE, drops=(DropBurst(1.0, 250),)),), state_dir=str(tmp_path))
    with MonsoonSource(4242, MonsoonWindow(voltage=4.0, settle_s=0.1, duration_s=2.0), backend=fleet) as src:
        trace = src.stop()
    assert trace.dropped == 250
    dt = np.diff(trace.t)
    assert np.count_nonzero(dt > 1.5 / 5000) == 1 and dt.max() == pytest.approx(251 / 5000)
    assert len(trace) == 2.0 * 5000 + 1 - 250
    m0 = trace.info["monitor_t0_s"]
    # the gap lies inside the 1200 mA plateau, so interpolating across it loses nothing
    assert trace.energy_j() == pytest.approx(schedule_energy_j(SCHEDULE, 4.0, m0, m0 + 2.0), rel=0.005)


def test_passthrough_restored_after_exception_in_window(tmp_path):
    fleet = SimFleet((SimMonitor(4242, profile=SCHEDULE),), state_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="workload crashed"):
        with MonsoonSource(4242, MonsoonWindow(voltage=4.0, settle_s=0.1, passthrough="off"), backend=fleet):
            assert passthrough_mode(tmp_path, 4242) == 0
            raise RuntimeError("workload crashed")
    assert passthrough_mode(tmp_path, 4242) == 1
    events = [e["event"] for e in read_state(tmp_path, 4242)["log"]]
    assert events.index("stop") < len(events) - 1 and events[-1] == "passthrough"


def test_wait_for_adb_hook_runs_after_restore(tmp_path):
    fleet = SimFleet((SimMonitor(4242),), state_dir=str(tmp_path))
    seen = []
    src = MonsoonSource(
        4242,
        MonsoonWindow(settle_s=0.0, duration_s=0.1),
        backend=fleet,
        wait_for_adb=lambda: seen.append(passthrough_mode(tmp_path, 4242)),
    )
    src.start()
    src.stop()
    src.close()  # idempotent
    assert seen == [1]


@pytest.mark.parametrize("monitors, listed", [((SimMonitor(1111), SimMonitor(2222)), "1111, 2222"), ((), "none")])
def test_missing_or_wrong_serial_is_a_user_error(tmp_path, monitors, listed):
    fleet = SimFleet(monitors, state_dir=str(tmp_path))
    src = MonsoonSource(9999, backend=fleet)
    with pytest.raises(EnergyError) as err:
        src.start()
    assert isinstance(err.value, UserError)
    assert "9999" in str(err.value) and listed in str(err.value)
    assert err.value.serial == "9999" and err.value.found == tuple(m for m in listed.split(", ") if m != "none")
