"""Battery fuel gauge: parse what device_scripts/fuelgauge.sh printed into a PowerTrace, inferring the vendor's
unit and sign, and decide (from probe facts) whether the gauge can be trusted at all.

All functions are pure. Android documents current_now in uA with positive = charging, but vendors differ
(mA; positive = discharging), so both are inferred per device and recorded in `PowerTrace.info`:
  * unit: the median |current_now| read as uA and as mA; whichever lands in a phone's plausible battery current
    range (3 mA .. 8 A) wins; if both do (raw 3000..8000) uA is assumed (documented unit) and flagged ambiguous.
  * sign: while the battery discharges (status Discharging / Not charging and no charger online) the current
    leaves the battery; the sign of the median raw value then tells the convention. With only charging samples
    the opposite relation is used. Without either, Android's convention (negative = discharging) is assumed.
  * voltage_now: uV (documented), mV or V, from magnitude.
A fuel gauge says nothing useful while a charger feeds the phone (the charger powers the load), hence
`decide_fuelgauge`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autlearn.profiler.energy import PowerTrace
from autlearn.profiler.errors import EnergyError, ParseError

_PLAUSIBLE_A = (0.003, 8.0)
_DISCHARGING = {"discharging", "not charging"}
_CHARGING = {"charging"}


@dataclass(frozen=True)
class GaugeSample:
    t: float  # device clock, s
    current_raw: int | None
    voltage_raw: int | None
    charge_counter: int | None  # uAh
    usb_online: bool | None
    ac_online: bool | None
    status: str | None


@dataclass(frozen=True)
class GaugeLog:
    clock: str  # realtime | uptime
    interval_s: float | None
    samples: tuple[GaugeSample, ...]
    end_reason: str | None  # duration | stopfile | None (output cut short)


def _num(s: str) -> int | None:
    return None if s == "NA" else int(s)


def _flag(s: str) -> bool | None:
    return None if s == "NA" else s.strip() not in ("0", "")


def parse_log(text: str) -> GaugeLog:
    """Parse fuelgauge.sh output. Unknown lines are an error (the script's output is ours)."""
    clock, interval, end, samples = "unknown", None, None, []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("# autlearn-fuelgauge"):
            kv = dict(re.findall(r"(\w+)=(\S+)", line))
            clock = kv.get("clock", clock)
            interval = float(kv["interval"]) if "interval" in kv else None
        elif line.startswith("# end"):
            end = dict(re.findall(r"(\w+)=(\S+)", line)).get("reason")
        elif line.startswith("S "):
            parts = line.split(" ", 7)
            if len(parts) < 7:
                raise ParseError("fuel gauge sample line has too few fields", line)
            try:
                samples.append(
                    GaugeSample(
                        t=float(parts[1].replace(",", ".")),
                        current_raw=_num(parts[2]),
                        voltage_raw=_num(parts[3]),
                        charge_counter=_num(parts[4]),
                        usb_online=_flag(parts[5]),
                        ac_online=_flag(parts[6]),
                        status=(parts[7].strip() or None) if len(parts) > 7 and parts[7].strip() != "NA" else None,
                    )
                )
            except ValueError as e:
                raise ParseError(f"bad fuel gauge sample ({e})", line) from None
        else:
            raise ParseError("unexpected line in fuel gauge output", line)
    return GaugeLog(clock, interval, tuple(samples), end)


@dataclass(frozen=True)
class Calibration:
    """How raw values map to amps/volts on this device: A = raw * current_scale * discharge_sign."""

    current_unit: str  # "uA" | "mA"
    current_scale: float
    discharge_sign: int  # +1: raw > 0 while discharging; -1: raw < 0 while discharging (Android docs)
    voltage_unit: str  # "uV" | "mV" | "V"
    voltage_scale: float
    notes: tuple[str, ...]


def infer_calibration(samples: Sequence[GaugeSample]) -> Calibration:
    cur = np.array([s.current_raw for s in samples if s.current_raw is not None], dtype=np.float64)
    if cur.size == 0:
        raise EnergyError("fuel gauge reported no current_now values")
    notes = []
    med = float(np.median(np.abs(cur[cur != 0]))) if np.any(cur != 0) else 0.0
    as_ua, as_ma = med * 1e-6, med * 1e-3
    lo, hi = _PLAUSIBLE_A
    ok_ua, ok_ma = lo <= as_ua <= hi, lo <= as_ma <= hi
    if ok_ua and not ok_ma:
        unit = "uA"
    elif ok_ma and not ok_ua:
        unit = "mA"
    elif ok_ua and ok_ma:
        unit = "uA"
        notes.append(f"current unit ambiguous (median |raw| {med:.0f}); assumed uA as documented")
    else:
        unit = "uA"
        notes.append(f"median |current_now| {med:.0f} is implausible as uA and as mA; assumed uA")
    notes.append(f"current unit {unit}: median |raw| {med:.0f} = {as_ua if unit == 'uA' else as_ma:.3f} A")

    def online(s: GaugeSample) -> bool:
        return bool(s.usb_online) or bool(s.ac_online)

    dis = [
        s.current_raw
        for s in samples
        if s.current_raw is not None and s.status and s.status.lower() in _DISCHARGING and not online(s)
    ]
    chg = [s.current_raw for s in samples if s.current_raw is not None and s.status and s.status.lower() in _CHARGING]
    if dis and np.median(dis) != 0:
        sign = 1 if np.median(dis) > 0 else -1
        notes.append(f"sign from {len(dis)} discharging samples: raw {'>' if sign > 0 else '<'} 0 while discharging")
    elif chg and np.median(chg) != 0:
        sign = -1 if np.median(chg) > 0 else 1
        notes.append(f"sign from {len(chg)} charging samples: raw {'>' if sign < 0 else '<'} 0 while charging")
    else:
        sign = -1
        notes.append("sign assumed (no discharging/charging samples): negative while discharging (Android docs)")

    volt = np.array([s.voltage_raw for s in samples if s.voltage_raw is not None], dtype=np.float64)
    vmed = float(np.median(volt)) if volt.size else 0.0
    if vmed > 100_000:
        vunit, vscale = "uV", 1e-6
    elif vmed > 1_000:
        vunit, vscale = "mV", 1e-3
    elif vmed > 1:
        vunit, vscale = "V", 1.0
    else:
        raise EnergyError("fuel gauge reported no usable voltage_now values")
    if vunit != "uV":
        notes.append(f"voltage_now in {vunit} (median raw {vmed:.0f})")
    return Calibration(unit, 1e-6 if unit == "uA" else 1e-3, sign, vunit, vscale, tuple(notes))


def to_trace(
    log: GaugeLog | str,
    *,
    serial: str = "",
    labels: tuple[str, ...] = ("measured",),
    calibration: Calibration | None = None,
) -> PowerTrace:
    """PowerTrace from fuel gauge output (current positive = drawn from the battery). Pass `calibration` to reuse
    one inferred earlier on the same device (e.g. from a longer idle run). On virtual phones use
    labels=("virtual", "modeled")."""
    if isinstance(log, str):
        log = parse_log(log)
    samples = [s for s in log.samples if s.current_raw is not None and s.voltage_raw is not None]
    if len(samples) < 2:
        raise EnergyError(f"fuel gauge gave {len(samples)} usable samples; need at least 2", serial=serial)
    cal = calibration or infer_calibration(samples)
    t_dev = np.array([s.t for s in samples])
    keep = np.concatenate([[True], np.diff(t_dev) > 0])  # identical timestamps (coarse /proc/uptime): keep first
    t_dev = t_dev[keep]
    samples = [s for s, k in zip(samples, keep) if k]
    current = np.array([s.current_raw for s in samples], dtype=np.float64) * cal.current_scale * cal.discharge_sign
    voltage = np.array([s.voltage_raw for s in samples], dtype=np.float64) * cal.voltage_scale
    info = {
        "clock": log.clock,
        "current_unit": cal.current_unit,
        "discharge_sign": cal.discharge_sign,
        "voltage_unit": cal.voltage_unit,
        "inference": cal.notes,
        "end_reason": log.end_reason,
        "charging_samples": sum(
            1 for s in samples if (s.status or "").lower() in _CHARGING or s.usb_online or s.ac_online
        ),
    }
    cc = [(s.t, s.charge_counter) for s in samples if s.charge_counter is not None]
    if len(cc) >= 2 and cc[-1][0] > cc[0][0]:
        # cross-check: charge counter (uAh) drop vs integrated current
        info["charge_counter_mean_a"] = (cc[0][1] - cc[-1][1]) * 3.6e-3 / (cc[-1][0] - cc[0][0])
    rate = 1.0 / float(np.median(np.diff(t_dev)))
    return PowerTrace(
        t=t_dev - t_dev[0],
        current=current,
        voltage=voltage,
        source="fuelgauge",
        serial=serial,
        labels=labels,
        dropped=0,
        sample_rate=rate,
        t0_device=float(t_dev[0]),
        info=info,
    )


# ------------------------------------------------------------------------------------------------------------
# may we use the fuel gauge?

# (power_supply-relative node, value that suspends charging, value that resumes it)
SUSPEND_SWITCHES = (
    ("battery/input_suspend", "1", "0"),  # Qualcomm: cut charger input, phone runs on battery, USB data stays
    ("battery/charging_enabled", "0", "1"),
    ("battery/battery_charging_enabled", "0", "1"),
    ("battery/batt_slate_mode", "1", "0"),  # Samsung
    ("battery/store_mode", "1", "0"),  # Samsung (limits charge; weaker)
)


@dataclass(frozen=True)
class ChargeFacts:
    """Probe facts that matter for the fuel gauge. `switches`: SUSPEND_SWITCHES nodes that exist on the device."""

    status: str | None
    usb_online: bool | None
    ac_online: bool | None = None
    wireless_online: bool | None = None
    adb_transport: str = "usb"  # usb | wifi | unknown
    rooted: bool = False
    switches: tuple[str, ...] = ()


@dataclass(frozen=True)
class FuelGaugeDecision:
    allowed: bool  # measuring may proceed now (after `suspend`, if given)
    reason: str
    suspend: tuple[str, str, str] | None = None  # (node, suspend value, resume value) to write as root
    action: str = "none"  # none | suspend_charging | unplug_charger | refuse


def decide_fuelgauge(f: ChargeFacts) -> FuelGaugeDecision:
    """Refuse while a charger feeds the phone, unless charging can be suspended (root + a known switch) or the
    cable can be pulled because adb runs over Wi-Fi."""
    charger = [name for name, on in (("USB", f.usb_online), ("AC", f.ac_online), ("wireless", f.wireless_online)) if on]
    status = (f.status or "").lower()
    if not charger and status not in _CHARGING and status != "full":
        return FuelGaugeDecision(True, f"on battery (status {f.status or 'unknown'}, no charger online)")
    what = "+".join(charger) or f"status {f.status}"
    if f.rooted:
        for node, off, on in SUSPEND_SWITCHES:
            if node in f.switches:
                return FuelGaugeDecision(
                    True,
                    f"charger online ({what}); charging will be suspended via {node}",
                    suspend=(node, off, on),
                    action="suspend_charging",
                )
    if f.adb_transport == "wifi":
        return FuelGaugeDecision(
            False,
            f"charger online ({what}) but adb runs over Wi-Fi: unplug the charger and measure again",
            action="unplug_charger",
        )
    hint = "no known charging switch on this device" if f.rooted else "charging can only be suspended with root"
    return FuelGaugeDecision(
        False,
        f"the phone is charging ({what}): the fuel gauge would measure the charger, "
        f"not the workload; {hint}. Use adb over Wi-Fi and unplug, or a Monsoon",
        action="refuse",
    )


def charge_facts(
    battery_status: str | None,
    supplies: dict[str, bool | None],
    *,
    adb_transport: str,
    rooted: bool,
    nodes: Sequence[str],
) -> ChargeFacts:
    """ChargeFacts from probe values: `supplies` maps power_supply names (usb, ac, wireless, ...) to online;
    `nodes` lists power_supply-relative nodes that exist (e.g. 'battery/input_suspend')."""
    known = {n for n, _, _ in SUSPEND_SWITCHES}
    return ChargeFacts(
        status=battery_status,
        usb_online=supplies.get("usb"),
        ac_online=supplies.get("ac"),
        wireless_online=supplies.get("wireless"),
        adb_transport=adb_transport,
        rooted=rooted,
        switches=tuple(n for n in nodes if n in known),
    )
