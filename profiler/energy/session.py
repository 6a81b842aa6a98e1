"""Per-cell energy: what the campaign engine calls around the R runs of one cell.

    meter = open_meter("fuelgauge" | "monsoon:SERIAL" | "none", device, facts, lab_home=None)  # None for "none"
    reason = meter.precheck()          # None, or why the cell must be skipped (e.g. charging, no way to suspend)
    with meter:                        # prepares (suspends charging); restores in __exit__, also on exceptions
        meter.start()                  # starts sampling, then measures an idle baseline (~0.7 s)
        ... run the runner R times: steps with t_start_ns/t_end_ns (device CLOCK_MONOTONIC), meta clock pairs ...
        trace = meter.stop()           # PowerTrace
    energies, summary = meter.attribute(trace, steps, clock_pairs)   # J per step (net of baseline) | None

Clocks. Steps are in device CLOCK_MONOTONIC; each runner meta line carries {"mono_ns", "real_ns"} read back to back.
  * fuel gauge: fuelgauge.sh stamps samples with $EPOCHREALTIME (CLOCK_REALTIME) -> mono + (real - mono) from the
    pairs (median; their spread is part of the error bound). With the /proc/uptime fallback (CLOCK_BOOTTIME,
    10 ms) uptime = monotonic is assumed (no suspend during a cell) and 10 ms are added to the bound.
  * Monsoon: samples are on the host's CLOCK_MONOTONIC (trace.t0_host); host - device CLOCK_REALTIME comes from
    `adb shell` round trips before and after the cell (align.estimate_offset, bound = min RTT / 2), then the pair
    maps monotonic to realtime. On virtual phones host and device share the clock; it is measured all the same.
Per step energy (GROSS) = integral of the linearly interpolated power over the step window (align.step_energies);
when the median step is shorter than the source resolves (fuel gauge: its sample spacing; Monsoon: 0.2 ms; a
modeled power: its update period) each run's timed window / its steps, with a CI over runs (`CellEnergy.method`).
Net = gross - baseline W x duration, reported as net only (notes, `j_per_step_net_median`). The fuel gauge is coarse
(Android updates current_now every ~0.1-1 s, a virtual
phone every 20 ms): `CellEnergy.resolution_s` says how coarse the samples were.
Labels are never upgraded: `measured` (real phone, real instrument), `simulated` (the simulated Monsoon), `modeled`
(virtual phones' power model), `virtual`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, cast

import numpy as np
from scipy.stats import t as student_t

from autlearn.profiler import knobs
from autlearn.profiler.device import Device, quote
from autlearn.profiler.energy import PowerTrace
from autlearn.profiler.energy.align import ClockOffset, baseline_power, estimate_offset, integrate, step_energies
from autlearn.profiler.energy.fuelgauge import (
    SUSPEND_SWITCHES,
    Calibration,
    FuelGaugeDecision,
    GaugeLog,
    charge_facts,
    decide_fuelgauge,
    infer_calibration,
    parse_log,
    to_trace,
)
from autlearn.profiler.energy.monsoon import MonsoonWindow, open_monitor
from autlearn.profiler.errors import DeviceError, EnergyError
from autlearn.profiler.instruments import known_monitor as lookup
from autlearn.profiler.probe import DeviceFacts

BASELINE_S = 0.7
TAIL_MARGIN_S = 0.1  # samples kept past the last step's end (a monitor's samples arrive with latency: waited for)
GAUGE_INTERVAL_S = 0.05
_NODES = ("battery/status", "usb/online", "ac/online", "wireless/online") + tuple(n for n, _, _ in SUSPEND_SWITCHES)
_DEVICE_REALTIME = 'echo "${EPOCHREALTIME:-$(date +%s.%N)}"'
# a phone-side sampler ends by itself this long after it started: a run killed mid-cell cannot stop it (the next run
# on the phone does, through its stop file: stop_orphan_samplers)
SAMPLER_MAX_S = 4 * 3600
SAMPLER_TAG = "fuelgauge-"  # its files in the device work dir: <tag><ns>.log / .err / .stop
# a runner clock pair: {"mono_ns": ..., "real_ns": ...} (autlearn.profiler.steps.clock_pairs), or (mono_ns, real_ns)
_ClockPair = Mapping[str, Any] | tuple[int, int]


@dataclass(frozen=True)
class CellEnergy:
    """Summary of one cell's energy. Per-step values are GROSS (all the phone drew, never <= 0: such steps get
    None); net of the idle baseline only where named so (`j_per_step_net_median`). `net` stays False (older
    results stored net values with net=True)."""

    source: str  # fuelgauge | monsoon
    serial: str  # the instrument: the device serial (fuel gauge) or the monitor serial (Monsoon)
    labels: tuple[str, ...]
    steps: int  # steps given
    steps_measured: int  # steps with an energy (inside the trace, with timestamps)
    net: bool
    j_per_step_median: float | None
    j_per_step_gross_median: float | None
    mean_w: float | None  # gross power over the step windows
    baseline_w: float | None
    alignment_error_s: float
    uncertainty_j_median: float | None  # per-step energy change if the windows moved by the alignment error
    resolution_s: float  # median spacing of the trace's samples
    trace_duration_s: float
    notes: tuple[str, ...] = ()
    method: str = "per-step"  # per-step | window/steps (steps shorter than the source resolves)
    j_per_step_ci95: tuple[float, float] | None = None  # window/steps: 95 % CI of the per-step value over runs
    j_per_step_net_median: float | None = None  # NET: above the idle baseline

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def known_monitor(serial: str, lab_home: str | os.PathLike[str] | None = None) -> str | None:
    """The Monsoon known to power the device `serial`, as a plugin knows it (autlearn.profiler.instruments; the virtual
    lab: the simulated monitor recorded in its state under `lab_home`, default $AUTLEARN_HOME, `autlearn lab up
    --monsoon`), else None (real phones name theirs in the campaign's [devices.energy] table, which overrides the
    global `energy` before this)."""

    return lookup(serial, lab_home)


def resolve_energy(spec: str, serial: str, lab_home: str | os.PathLike[str] | None = None) -> str:
    """A concrete energy spec for device `serial`: `auto` -> `monsoon:<the monitor known to power it>`, else
    `fuelgauge`; `monsoon:auto` -> that monitor, EnergyError (naming the serial) when none is known. Other specs
    are returned as they are."""
    spec = (spec or "none").strip()
    if spec == "auto":
        mon = known_monitor(serial, lab_home)
        return f"monsoon:{mon}" if mon else "fuelgauge"
    if spec == "monsoon:auto":
        mon = known_monitor(serial, lab_home)
        if not mon:
            raise EnergyError(
                f"energy monsoon:auto: no Monsoon is known to power {serial} (virtual lab: "
                "`autlearn lab up --monsoon NAME`; real phones: name it in [devices.energy], e.g. "
                f'"{serial}" = "monsoon:12345")',
                serial=serial,
            )
        return f"monsoon:{mon}"
    return spec


def open_meter(
    spec: str, device: Device, facts: DeviceFacts, lab_home: str | os.PathLike[str] | None = None
) -> Meter | None:
    """The meter for an energy spec: "none" -> None, "fuelgauge", "monsoon:SERIAL" (a real HVPM serial or a lab
    monitor `SIM-<port>`), "auto" / "monsoon:auto" (resolve_energy for the device). A wrong or missing monitor
    serial raises EnergyError here. The meter's `spec` is the resolved spec."""
    asked = (spec or "none").strip()
    spec = resolve_energy(asked, device.serial, lab_home)
    if spec == "none":
        return None
    meter: Meter
    if spec == "fuelgauge":
        meter = FuelGaugeMeter(device, facts)
    else:
        kind, _, serial = spec.partition(":")
        if kind != "monsoon" or not serial:
            raise EnergyError(f"unknown energy spec {spec!r} (none | fuelgauge | monsoon:SERIAL | monsoon:auto | auto)")
        meter = MonsoonMeter(device, facts, serial, lab_home=lab_home)
    meter.spec = spec
    if asked != spec:
        meter.notes.append(f"energy {asked} -> {spec}")
    return meter


# ------------------------------------------------------------------------------------------------------------
# shared


def _step_window(step: object) -> tuple[int | None, int | None]:
    if isinstance(step, Mapping):
        return step.get("t_start_ns"), step.get("t_end_ns")
    return getattr(step, "t_start_ns", None), getattr(step, "t_end_ns", None)


def _pair_offset(clock_pairs: Iterable[_ClockPair] | None) -> tuple[float, float, int] | None:
    """(median real - mono in s, half their spread in s, count) from the runner's clock pairs."""
    offs = []
    for p in clock_pairs or ():
        mono, real = (p.get("mono_ns"), p.get("real_ns")) if isinstance(p, Mapping) else p
        if mono is not None and real is not None:
            offs.append((int(real) - int(mono)) / 1e9)
    if not offs:
        return None
    return float(np.median(offs)), (max(offs) - min(offs)) / 2, len(offs)


def _resolution(trace: PowerTrace) -> float:
    return float(np.median(np.diff(trace.t))) if len(trace) > 1 else math.nan


def _attribute(
    trace: PowerTrace,
    steps: Sequence[Any],
    shift_s: float | None,
    error_s: float,
    baseline: tuple[float, float] | None,
    source: str,
    serial: str,
    notes: list[str],
) -> tuple[list[float | None], CellEnergy]:
    """Energies of `steps` (device CLOCK_MONOTONIC ns) on `trace`, trace time = ns / 1e9 + shift_s."""
    out: list[float | None] = [None] * len(steps)
    baseline_w = None
    if baseline is not None and len(trace) > 1:
        b0, b1 = max(baseline[0], float(trace.t[0])), min(baseline[1], float(trace.t[-1]))
        if b1 - b0 >= 0.1:
            baseline_w = baseline_power(trace, b0, b1)
        else:
            notes.append("idle baseline window not covered by the trace: gross energies only")
    idx, windows = [], []
    if shift_s is not None and len(trace) > 1:
        lo, hi = float(trace.t[0]) - error_s, float(trace.t[-1]) + error_s
        for i, s in enumerate(steps):
            a, b = _step_window(s)
            if a is None or b is None or b < a:
                continue
            if lo <= a / 1e9 + shift_s and b / 1e9 + shift_s <= hi:
                idx.append(i)
                windows.append((int(a), int(b)))
    missing = len(steps) - len(idx)
    if missing:
        notes.append(f"{missing} of {len(steps)} steps have no energy (no timestamps, or outside the trace)")
    gross: list[float] = []
    unc: list[float] = []
    net_vals: list[float] = []
    dur = 0.0
    method, ci95 = "per-step", None
    resolution = _effective_resolution(trace)
    if idx:
        clock = ClockOffset(0.0, error_s, 2 * error_s, 1, 1)
        rep = step_energies(trace, windows, clock, shift_s=shift_s, baseline_w=baseline_w, step_ids=idx)
        gross = [se.gross_j for se in rep.steps]
        unc = [se.uncertainty_j for se in rep.steps]
        dur = sum(se.end_s - se.start_s for se in rep.steps)
        durations = [se.end_s - se.start_s for se in rep.steps]
        if math.isfinite(resolution) and float(np.median(durations)) < resolution:
            # steps shorter than what the source resolves: each run's window (first start .. last end of its
            # timed steps, warm-up apart) divided by its steps; a CI over the runs
            method = "window/steps"
            assert shift_s is not None  # steps are placed (idx) only with a known shift
            gross, per_run = _window_energies(trace, [steps[i] for i in idx], windows, shift_s)
            if len(per_run) >= 2:
                m, sd = float(np.mean(per_run)), float(np.std(per_run, ddof=1))
                half = float(student_t.ppf(0.975, len(per_run) - 1)) * sd / math.sqrt(len(per_run))
                ci95 = (m - half, m + half)
            notes.append(
                f"energy per step = energy of each run's timed window / its steps (median step "
                f"{float(np.median(durations)) * 1e3:.2f} ms < source resolution {resolution * 1e3:.1f} ms)"
                + (f"; 95% CI over {len(per_run)} runs [{ci95[0]:.3g}, {ci95[1]:.3g}] J" if ci95 else "")
            )
        else:
            notes.append(f"energy per step integrated over each step's window (resolution {resolution * 1e3:.1f} ms)")
        bad = sum(1 for g in gross if not g > 0)
        for k, (i, g) in enumerate(zip(idx, gross)):
            out[i] = g if g > 0 else None  # gross energy is never negative or zero: such steps have none
            if baseline_w is not None:
                net_vals.append(g - baseline_w * durations[k])
        if bad:
            notes.append(
                f"{bad} steps had a gross energy <= 0 on this trace (e.g. charging current inside the "
                "window): no energy for them"
            )
    if baseline_w is not None:
        notes.append(
            f"energy_j is GROSS (all the phone drew); NET = gross - idle baseline {baseline_w:.3f} W x "
            "step time" + (f", median net {float(np.median(net_vals)):.3g} J per step" if net_vals else "")
        )
    vals = [v for v in out if v is not None]
    summary = CellEnergy(
        source=source,
        serial=serial,
        labels=tuple(trace.labels),
        steps=len(steps),
        steps_measured=len(idx),
        net=False,
        j_per_step_median=float(np.median(vals)) if vals else None,
        j_per_step_gross_median=float(np.median(gross)) if gross else None,
        mean_w=float(sum(gross) / dur) if gross and dur > 0 else None,
        baseline_w=baseline_w,
        alignment_error_s=float(error_s),
        uncertainty_j_median=float(np.median(unc)) if unc else None,
        resolution_s=resolution,
        trace_duration_s=trace.duration,
        notes=tuple(notes),
        method=method,
        j_per_step_ci95=ci95,
        j_per_step_net_median=float(np.median(net_vals)) if net_vals else None,
    )
    return out, summary


# The virtual phones' power model updates every 20 ms (testbed/power_model.TICK_S; tests/test_dvfs.py checks they
# agree): a modeled power resolves no finer, whatever instrument samples it.
MODELED_UPDATE_S = 0.02


def _effective_resolution(trace: PowerTrace) -> float:
    """What the source resolves: its sample spacing; for a modeled power (virtual phones), at least the model's
    update period (testbed/power_model.py TICK_S), whatever instrument follows it."""
    res = _resolution(trace)
    if "modeled" in trace.labels:
        res = max(res, MODELED_UPDATE_S) if math.isfinite(res) else MODELED_UPDATE_S
    return res


def _window_energies(
    trace: PowerTrace, steps: Sequence[Any], windows: Sequence[tuple[int, int]], shift_s: float
) -> tuple[list[float], list[float]]:
    """Per-step energy from run windows: steps grouped into runs (numbering restarts) and warm-up / timed; each
    group's energy from its first start to its last end, split evenly. Also the timed per-step value of each run."""

    groups: list[list[int]] = []
    prev_step, prev_warm = None, None
    for k, s in enumerate(steps):
        num = s.get("step") if isinstance(s, Mapping) else getattr(s, "step", None)
        warm: object = bool(s.get("warmup") if isinstance(s, Mapping) else getattr(s, "warmup", False))
        if not groups or warm != prev_warm or num is None or prev_step is None or num <= prev_step:
            groups.append([])
        groups[-1].append(k)
        prev_step, prev_warm = num, warm
    out = [0.0] * len(steps)
    per_run = []
    for g in groups:
        a = windows[g[0]][0] / 1e9 + shift_s
        b = windows[g[-1]][1] / 1e9 + shift_s
        e = float(integrate(trace, a, b)) / len(g)
        for k in g:
            out[k] = e
        warm = steps[g[0]].get("warmup") if isinstance(steps[g[0]], Mapping) else getattr(steps[g[0]], "warmup", 0)
        if not warm:
            per_run.append(e)
    return out, per_run


class Meter:
    """Base: a context manager whose __exit__ always restores what __enter__ changed."""

    source = "?"
    spec = "?"  # the resolved energy spec (open_meter)

    @property
    def notes(self) -> list[str]:
        """Notes carried into the cell's CellEnergy (e.g. how `auto` was resolved)."""
        if "_meter_notes" not in self.__dict__:
            self._meter_notes: list[str] = []
        return self._meter_notes

    def precheck(self) -> str | None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        return False

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> PowerTrace:
        raise NotImplementedError

    def attribute(
        self, trace: PowerTrace, steps: Sequence[Any], clock_pairs: Sequence[_ClockPair]
    ) -> tuple[list[float | None], CellEnergy]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------------
# fuel gauge


class FuelGaugeMeter(Meter):
    """The battery fuel gauge via device_scripts/fuelgauge.sh running in the background on the device."""

    source = "fuelgauge"

    def __init__(
        self,
        device: Device,
        facts: DeviceFacts,
        *,
        interval_s: float = GAUGE_INTERVAL_S,
        baseline_s: float = BASELINE_S,
    ) -> None:
        self.device, self.facts = device, facts
        self.interval_s, self.baseline_s = interval_s, baseline_s
        self.virtual = bool(getattr(facts, "virtual", False))
        self.labels = ("virtual", "modeled") if self.virtual else ("measured",)
        self.decision: FuelGaugeDecision | None = None
        self.restore: tuple[str, str] | None = None  # (device path, prior value) of the charging switch
        self._suspended_at: float | None = None
        self.pending_root = knobs.default_root()  # where the switch's prior value is persisted
        self._files: tuple[str, str, str] | None = None  # out, err, stop
        self._marks: dict[str, str] = {}
        self._notes: list[str] = []

    # -- decision -------------------------------------------------------------------------------------------
    def _sysfs_state(self) -> dict[str, str]:
        loop = " ".join(quote(n) for n in _NODES)
        cmd = (
            'S="${AUTLEARN_SYSFS:-/sys}/class/power_supply"; for f in '
            + loop
            + '; do if [ -e "$S/$f" ]; then printf "%s=%s\\n" "$f" "$(cat "$S/$f" 2>/dev/null)"; fi; done'
        )
        out = self.device.check(cmd, timeout=20)
        return {k: v.strip() for k, _, v in (line.partition("=") for line in out.splitlines()) if k}

    def precheck(self) -> str | None:
        st = self._sysfs_state()

        def online(name: str) -> bool | None:
            v = st.get(f"{name}/online")
            return None if v is None else v not in ("0", "")

        supplies = {n: online(n) for n in ("usb", "ac", "wireless")}
        # virtual phones model a USB cable (their adb runs over TCP on this host)
        transport = "usb" if self.virtual or ":" not in self.device.serial else "wifi"
        charging = any(supplies.values()) or st.get("battery/status", "").lower() in ("charging", "full")
        rooted = self.device.root_mode != "none" if charging else False  # root only matters while charging
        cf = charge_facts(
            st.get("battery/status"),
            supplies,
            adb_transport=transport,
            rooted=rooted,
            nodes=tuple(n for n in st if n.startswith("battery/")),
        )
        self.decision = decide_fuelgauge(cf)
        return None if self.decision.allowed else self.decision.reason

    # -- context --------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self.decision is None:
            reason = self.precheck()
            if reason:
                raise EnergyError(reason, serial=self.device.serial)
        assert self.decision is not None  # precheck() decided
        if not self.decision.allowed:
            raise EnergyError(self.decision.reason, serial=self.device.serial)
        if self.decision.suspend:
            node, off, _ = self.decision.suspend
            path = f"${{AUTLEARN_SYSFS:-/sys}}/class/power_supply/{node}"
            prior = self.device.shell_root(f'cat "{path}"', timeout=20)
            if not prior.ok:
                raise EnergyError(
                    f"cannot read {node}: {(prior.stderr or prior.stdout).strip()}", serial=self.device.serial
                )
            self.restore = (path, prior.stdout.strip())
            # persisted before the switch is turned: a run killed mid-cell leaves it for the next run to restore
            knobs.persist(self.pending_root, self.device.serial, "charging", {"path": path, "prior": self.restore[1]})
            self._write_switch(off)
            self._notes.append(f"charging suspended via {node} (prior value {self.restore[1]!r})")
            self._suspended_at = time.monotonic()
        return self

    def _write_switch(self, value: str) -> None:
        assert self.restore is not None  # written only while the switch's prior value is kept
        path = self.restore[0]
        r = self.device.shell_root(f'echo {quote(value)} > "{path}" && cat "{path}"', timeout=20)
        if not r.ok or r.stdout.strip() != value:
            raise EnergyError(
                f"cannot write {value!r} to {path}: {(r.stderr or r.stdout).strip()}", serial=self.device.serial
            )

    def __exit__(self, *exc: object) -> Literal[False]:
        try:
            self._kill_sampler()
        finally:
            if self.restore is not None:
                self._write_switch(self.restore[1])
                self.restore = None
                knobs.forget(self.pending_root, self.device.serial, "charging")
        return False

    # -- sampling -------------------------------------------------------------------------------------------
    def _mark(self) -> str:
        return self.device.check('echo "${EPOCHREALTIME:-}|$(cat /proc/uptime)"', timeout=20).strip()

    def start(self) -> None:
        if self._files is not None:
            raise RuntimeError("fuel gauge already sampling")
        script = self.device.script_path("fuelgauge.sh")
        tag = f"{self.device.workdir}/{SAMPLER_TAG}{time.time_ns()}"
        out, err, stop = f"{tag}.log", f"{tag}.err", f"{tag}.stop"
        self._files = (out, err, stop)
        self.device.check(
            f"rm -f {quote(stop)}; nohup sh {quote(script)} {SAMPLER_MAX_S} {self.interval_s:g} "
            f"{quote(stop)} </dev/null >{quote(out)} 2>{quote(err)} &",
            timeout=20,
        )
        deadline = time.monotonic() + 10
        while not self.device.shell(f"grep -q '^S ' {quote(out)}", timeout=20).ok:
            if time.monotonic() > deadline:
                raise EnergyError(
                    "fuel gauge sampler printed no sample within 10 s: "
                    + self.device.shell(f"cat {quote(err)}").stdout.strip()[-200:],
                    serial=self.device.serial,
                )
            time.sleep(0.05)
        # the gauge needs a moment after charging is suspended before it shows the discharge: the baseline window
        # starts once that has passed (the sampler's start-up counts towards it)
        if self._suspended_at is not None:
            time.sleep(max(0.0, (0.2 if self.virtual else 1.0) - (time.monotonic() - self._suspended_at)))
        self._marks["b0"] = self._mark()
        time.sleep(self.baseline_s)
        self._marks["b1"] = self._mark()

    def stop(self) -> PowerTrace:
        if self._files is None:
            raise RuntimeError("fuel gauge stop() without start()")
        out, err, stop = self._files
        time.sleep(max(3 * self.interval_s, 0.1))  # samples after the last step's end, so the trace covers it
        self.device.check(f"touch {quote(stop)}", timeout=20)
        deadline = time.monotonic() + 10
        while True:  # one round trip per poll: read the log, done once the sampler wrote its end line
            text = self.device.check(f"cat {quote(out)}", timeout=60)
            ended = "\n# end" in text
            if ended or time.monotonic() > deadline:
                break  # not ended: parse what there is (end_reason None says it was cut)
            time.sleep(0.05)
        self._kill_sampler(ended=ended)
        log = parse_log(text)
        cal = self._calibration(log)
        return to_trace(log, serial=self.device.serial, labels=self.labels, calibration=cal)

    def _calibration(self, log: GaugeLog) -> Calibration:
        samples = [s for s in log.samples if s.current_raw is not None]
        if self.decision is not None and self.decision.suspend:
            # our switch cut the charger: USB stays "online" for data but feeds nothing, so these samples are
            # discharging samples for the sign inference
            samples = [dataclasses.replace(s, usb_online=False, ac_online=False) for s in samples]
        if not samples:
            raise EnergyError("fuel gauge reported no current_now values", serial=self.device.serial)
        return infer_calibration(samples)

    def _kill_sampler(self, ended: bool = False) -> None:
        if self._files is None:
            return
        out, err, stop = self._files
        self._files = None
        wait = "" if ended else "sleep 0.3; "  # a sampler that wrote its end line has exited
        with contextlib.suppress(DeviceError):
            self.device.shell(f"touch {quote(stop)}; {wait}rm -f {quote(out)} {quote(err)} {quote(stop)}", timeout=20)

    # -- attribution ----------------------------------------------------------------------------------------
    def attribute(
        self, trace: PowerTrace, steps: Sequence[Any], clock_pairs: Sequence[_ClockPair]
    ) -> tuple[list[float | None], CellEnergy]:
        notes = (
            list(self.notes)
            + list(self._notes)
            + [f"fuel gauge {trace.info.get('current_unit')}, discharge sign {trace.info.get('discharge_sign')}"]
        )
        clock = trace.info.get("clock")
        if clock == "realtime":
            pair = _pair_offset(clock_pairs)
            if pair is None:
                notes.append("no clock pair from the runner: steps cannot be placed on the fuel gauge's clock")
                shift, err = None, math.inf
            else:
                off, spread, n = pair
                assert trace.t0_device is not None  # a fuel-gauge trace (to_trace) has its device clock anchor
                shift, err = off - trace.t0_device, spread + 0.001  # + sampling latency of one gauge read
        else:
            notes.append("fuel gauge clock is /proc/uptime (CLOCK_BOOTTIME, 10 ms): assumed = CLOCK_MONOTONIC")
            assert trace.t0_device is not None  # a fuel-gauge trace (to_trace) has its device clock anchor
            shift, err = -trace.t0_device, 0.01
        baseline = None
        marks = [self._marks.get(k) for k in ("b0", "b1")]
        if all(marks):
            t = [
                float((m.split("|")[0] if clock == "realtime" else m.split("|")[1].split()[0]).replace(",", "."))
                for m in cast(list[str], marks)  # all set (all(marks))
            ]
            assert trace.t0_device is not None  # a fuel-gauge trace (to_trace) has its device clock anchor
            baseline = (t[0] - trace.t0_device, t[1] - trace.t0_device)
        return _attribute(
            trace, steps, shift, err if math.isfinite(err) else 0.0, baseline, self.source, self.device.serial, notes
        )


# ------------------------------------------------------------------------------------------------------------
# Monsoon


class MonsoonMeter(Meter):
    """A Monsoon HVPM (or the virtual lab's simulated one) through autlearn.profiler.energy.monsoon (one process)."""

    source = "monsoon"

    def __init__(
        self,
        device: Device,
        facts: DeviceFacts,
        serial: str,
        *,
        lab_home: str | os.PathLike[str] | None = None,
        voltage: float = 4.0,
        baseline_s: float = BASELINE_S,
        round_trips: int = 8,
    ) -> None:

        self.device, self.facts, self.serial = device, facts, str(serial)
        self.virtual = bool(getattr(facts, "virtual", False))
        self.baseline_s, self.n_trips = baseline_s, round_trips
        self.src = open_monitor(
            self.serial, MonsoonWindow(voltage=voltage, passthrough="off", settle_s=0.2), lab_home=lab_home
        )
        self.trips: list[tuple[float, float, float]] = []
        self._baseline_host: tuple[float, float] | None = None

    def precheck(self) -> str | None:
        if not self.virtual and ":" not in self.device.serial:
            return (
                "adb runs over USB: the Monsoon's passthrough must be off while it measures, which would cut "
                "adb mid-cell; connect adb over Wi-Fi (adb tcpip) to use the Monsoon"
            )
        return None

    def __exit__(self, *exc: object) -> Literal[False]:
        self.src.close()  # aborts a running measurement and restores passthrough
        return False

    def _round_trips(self) -> None:
        for _ in range(self.n_trips):
            h0 = time.monotonic()
            out = self.device.check(_DEVICE_REALTIME, timeout=20).strip()
            h1 = time.monotonic()
            with contextlib.suppress(ValueError):
                self.trips.append((h0, float(out.replace(",", ".")), h1))

    def start(self) -> None:
        self._round_trips()
        self.src.start()
        h0 = time.monotonic()
        time.sleep(self.baseline_s)
        self._baseline_host = (h0, time.monotonic())

    def stop(self) -> PowerTrace:
        # the last step has ended: keep sampling until the samples (arriving with USB/pacing latency) cover now plus
        # a margin, instead of a fixed tail
        trace = self.src.stop(cover_until=time.monotonic() + TAIL_MARGIN_S)
        self._round_trips()
        labels = tuple(trace.labels) + (("modeled", "virtual") if self.virtual else ())
        info = {**trace.info, "monitor": self.serial}
        return dataclasses.replace(trace, labels=labels, serial=self.serial, info=info)

    def attribute(
        self, trace: PowerTrace, steps: Sequence[Any], clock_pairs: Sequence[_ClockPair]
    ) -> tuple[list[float | None], CellEnergy]:
        notes = list(self.notes)
        pair = _pair_offset(clock_pairs)
        shift, err = None, 0.0
        if not self.trips:
            notes.append("no usable adb round trips: the device clock is unknown")
        elif pair is None:
            notes.append("no clock pair from the runner: steps cannot be placed on the monitor's clock")
        elif trace.t0_host is None:
            notes.append("the trace has no host time anchor")
        else:
            host = estimate_offset(self.trips)  # host monotonic = device realtime + offset
            off, spread, _ = pair
            shift = off + host.offset_s - trace.t0_host
            err = host.error_s + spread
            notes.append(f"clock: {host.samples} adb round trips, min RTT {host.min_rtt_s * 1e3:.1f} ms")
        baseline = None
        if self._baseline_host and trace.t0_host is not None:
            baseline = cast(tuple[float, float], tuple(h - trace.t0_host for h in self._baseline_host))
        return _attribute(trace, steps, shift, err, baseline, self.source, self.serial, notes)


__all__ = ["CellEnergy", "FuelGaugeMeter", "Meter", "MonsoonMeter", "known_monitor", "open_meter", "resolve_energy"]


def restore_charging(device: Device, doc: dict[str, Any]) -> None:
    """The charging switch's restorer (profiler.knobs.restore_pending): write its persisted prior value back."""
    path, prior = doc["state"]["path"], str(doc["state"]["prior"])
    if not re.fullmatch(r"\$\{AUTLEARN_SYSFS:-/sys\}/class/power_supply/[A-Za-z0-9_./-]+", path) or "\n" in prior:
        raise EnergyError(f"refusing a malformed pending charging state ({path!r})", serial=device.serial)
    r = device.shell_root(f'echo {quote(prior)} > "{path}" && cat "{path}"', timeout=20)
    if not r.ok or r.stdout.strip() != prior:
        raise EnergyError(f"cannot restore {path} to {prior!r}", serial=device.serial)


def stop_orphan_samplers(serials: Iterable[str]) -> dict[str, str]:
    """Fuel-gauge samplers a killed run left polling on the leased phones (no run of ours uses them now: they are
    leased) are asked to stop through their stop files, and their files removed."""
    out: dict[str, str] = {}
    for serial in serials:
        try:
            device = Device(serial)
            r = device.shell(
                f"cd {quote(device.workdir)} 2>/dev/null || exit 0; n=0; for f in {SAMPLER_TAG}*.log; "
                'do [ -e "$f" ] || continue; touch "${f%.log}.stop"; n=$((n + 1)); done; '
                f'[ "$n" = 0 ] || {{ sleep 0.5; rm -f {SAMPLER_TAG}*; echo "$n"; }}',
                timeout=20,
            )
        except DeviceError:
            continue  # unreachable now: its cells say so
        if r.ok and r.stdout.strip():
            out[f"{serial} fuel-gauge sampler"] = f"{r.stdout.strip()} left running, stopped"
    return out
