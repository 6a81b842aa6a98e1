"""One device's worker: its cells in order under a GovernorGuard (cooldown, governor, deploy once per content hash,
R runner launches of W warm-up and N timed steps, parse, metadata, energy), every outcome and progress change an
event (`engine.events`). The in-process engine (engine.campaign) runs one per device in threads and records the
events as they come; a cluster agent (engine.cluster) runs the same worker on its host and streams them back.
Also the host-side steps around a run on a device's host: failing fast on a monitor that cannot exist, putting
back a killed run's passthrough, undoing adbd root.
A cell with a CI target (`[samples] ci_width`) launches on from R until the 95 % CI of its median step time is that
narrow or `max_launches` are made, and says which (`stop_reason`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autlearn.engine.campaign_config import Campaign, Cell, Cooldown
from autlearn.engine.events import CellEvent, EventSink, StateEvent, StatusEvent, TraceEvent, WarningEvent
from autlearn.engine.store import LABELS, CellMeta, Sample, one_line
from autlearn.profiler import __version__, hostcpu, knobs, paths, stats
from autlearn.profiler.deploy import deploy, remote_dir, runner_command
from autlearn.profiler.device import Device, quote
from autlearn.profiler.energy.monsoon import open_monitor, restore_pending_passthrough
from autlearn.profiler.energy.session import known_monitor, open_meter, resolve_energy, stop_orphan_samplers
from autlearn.profiler.errors import DeviceError, DeviceUnreachable, EnergyError, NotRooted, ParseError, UserError
from autlearn.profiler.governor import Applied, GovernorGuard, GovernorUnavailable, Resolution
from autlearn.profiler.probe import DeviceFacts, parse_probe
from autlearn.profiler.steps import (
    TIMES_SUFFIX,
    Step,
    clock_pairs,
    cpu_share,
    parse_children_cpu_s,
    parse_run_output,
)
from autlearn.profiler.telemetry import Flag, Reading, Window, combine, judge, parse_reading, window

RUN_TIMEOUT_S = 1800.0
OWN_HEAT = (
    "not redone: it started as cool as the campaign's cooldown asks, so it heats the phone past its trip point itself"
)
INTERRUPTED = (
    "the run was stopped (Ctrl-C or SIGTERM) during this cell: its governors were restored at once, "
    "so nothing it measured is kept; `run --resume` redoes it"
)


class CampaignError(UserError):
    """The campaign cannot start (no matching device, results exist without --resume, ...)."""


@dataclass(frozen=True)
class ArtifactRef:
    """What the engine needs of a built workload artifact."""

    path: Path
    hash: str
    files: tuple[str, ...]
    tools: tuple[tuple[str, str], ...] = ()


# a cell of the plan: (cell, cell id, artifact); per device, in the order they run (local or on a cluster)
PlannedCell = tuple[Cell, str, ArtifactRef]
Planned = dict[str, list[PlannedCell]]


def follow_order(planned: Planned, order: Mapping[str, Sequence[str]]) -> Planned:
    """Each device's planned cells in `order` (serial -> cell ids, `Store.set_order`); cells it lacks go last."""
    out = {}
    for serial, cells in planned.items():
        rank = {cid: i for i, cid in enumerate(order.get(serial, ()))}
        out[serial] = sorted(cells, key=lambda p: rank.get(p[1], len(rank)))
    return out


@dataclass
class Progress:
    """Thread-safe counters per device, rendered by the CLI."""

    total: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_change: Callable[[str], None] | None = None
    finished: bool = False  # set by `run` when the campaign has ended

    def advance(self, serial: str, state: str = "") -> None:
        with self.lock:
            self.done[serial] = self.done.get(serial, 0) + 1
            if state:
                self.state[serial] = state
        if self.on_change:
            self.on_change(serial)

    def set_state(self, serial: str, state: str) -> None:
        with self.lock:
            self.state[serial] = state
        if self.on_change:
            self.on_change(serial)


@dataclass(frozen=True)
class Outcome:
    ok: int
    failed: int
    skipped: int
    resumed: int
    results_dir: Path
    restored: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------------ pure helpers
def affinity_mask(affinity: str, facts: DeviceFacts) -> str | None:
    """Hex CPU mask for an affinity choice, or None for all CPUs. big/little = fastest/slowest cluster."""
    if affinity == "all":
        return None
    if affinity.startswith("0x"):
        return affinity
    found = facts.cpu_clusters  # slowest first; per-CPU cpufreq layouts grouped too
    if len(found) < 2:
        raise UserError(f"[{facts.serial}] affinity {affinity!r} needs at least two clusters; found {len(found)}")
    chosen = found[-1] if affinity == "big" else found[0]
    return hex(sum(1 << c for c in chosen.cpus))


def cooldown_temp(text: str, zones: str) -> float | None:
    """Highest temperature (C) among thermal zones whose type matches the glob `zones` (pure)."""
    facts = parse_probe(text)
    temps = [z.temp_c for z in facts.thermal if z.temp_c is not None and fnmatch.fnmatch(z.type.lower(), zones.lower())]
    return max(temps) if temps else None


def stop_reason(cell: Cell, runs: Sequence[Sequence[Step]]) -> str | None:
    """None while the cell needs another launch, else why it makes no more ("" after its fixed `repetitions`).
    With a CI target (`cell.ci_width`): at least `repetitions` launches, then until the 95 % CI of the median of
    the timed step times (stats.median_ci) is at most `ci_width` of the median, or `max_launches` are made."""
    n = len(runs)
    if n < cell.repetitions:
        return None
    if cell.ci_width is None:
        return ""
    times = [s.step_ns for steps in runs for s in steps if not s.warmup]
    med, lo, hi = stats.median_ci(times)
    width = (hi - lo) / med if times and med > 0 else math.inf
    if width <= cell.ci_width:
        return f"ci-width {width:.1%} <= {cell.ci_width:.1%} after {n} launch{'es' if n > 1 else ''}"
    if n >= cell.max_launches:
        return f"cap {n} launches, width {width:.1%} > {cell.ci_width:.1%}"
    return None


def _freqs(facts: DeviceFacts) -> tuple[tuple[str, int], ...]:
    return tuple((p.name, p.cur_khz) for p in facts.policies if p.cur_khz is not None)


def _throttled(facts: DeviceFacts) -> bool | None:
    states = [c.cur_state for c in facts.cooling if c.cur_state is not None]
    return any(s > 0 for s in states) if states else None


def started_cool(start: DeviceFacts, cooldown: Cooldown) -> bool:
    """Did a cell start as cool as its campaign asks: the cooldown's zones found and at or under its limit, no CPU
    cooling device engaged (pure)? Such a cell that ran throttled heated the phone past its trip point itself: a redo
    from the same start would throttle again, so it is kept with its flag."""
    temps = [
        z.temp_c
        for z in start.thermal
        if z.temp_c is not None and fnmatch.fnmatch(z.type.lower(), cooldown.zones.lower())
    ]
    engaged = any(c.cur_state for c in start.cooling if "cpu" in c.type.lower())
    return bool(temps) and max(temps) <= cooldown.max_temp_c and not engaged


def telemetry_columns(tele: Window | None, flags: tuple[Flag, ...], redone: list[str]) -> dict[str, Any]:
    """CellMeta's telemetry fields: mean achieved MHz per policy, how measured, hottest zone, cooling states, the
    verdict and the attempts (pure)."""
    return dict(
        freq_mhz=tuple((p.name, round(p.mean_khz / 1e3, 1)) for p in tele.policies) if tele else (),
        telemetry_source=tele.source if tele else "",
        launch_max_temp_c=tele.max_temp_c if tele else None,
        cooling_max=tuple((n, s) for n, s, _ in tele.cooling) if tele else (),
        flagged=bool(flags),
        flag_reason="; ".join(f.kind for f in flags),
        flag_detail="; ".join(str(f) for f in flags),
        attempts=len(redone) + 1,
        redo_reasons=tuple(redone),
    )


# --------------------------------------------------------------------------------------------------------- the worker
class HarnessClock:
    """Where a cell's time goes beyond its training steps: seconds per part of the harness (governor, cooldown,
    deploy, energy start/stop, runner launch beyond its steps, parse, end-of-cell read), recorded with the cell.
    Time a part spent waiting at the virtual lab's host CPU gate (profiler.hostcpu: other phones' timed launches)
    is the lab's queueing, not the harness: it goes to `wait`, never into a part."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.wait = 0.0

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0, w0 = time.perf_counter(), hostcpu.waited_s()
        try:
            yield
        finally:
            waited = hostcpu.waited_s() - w0
            self.wait += waited
            self.add(name, time.perf_counter() - t0 - waited)

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + max(0.0, seconds)

    def total(self) -> float:
        return sum(self.parts.values())

    def parts_tuple(self) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((k, round(v, 4)) for k, v in self.parts.items()))


class DeviceWorker:
    """Runs one device's cells in order. Never raises for a cell: every outcome is an event to `emit`."""

    def __init__(
        self,
        serial: str,
        facts: DeviceFacts,
        cells: list[PlannedCell],
        campaign: Campaign,
        emit: EventSink,
        stop: threading.Event,
        threads: int | None = None,
        name: str | None = None,
    ):
        self.serial, self.facts, self.cells, self.emit = serial, facts, cells, emit
        self.name = name or serial  # what results call the device (`host/serial` on a cluster of hosts)
        self.campaign, self.stop, self.threads = campaign, stop, threads
        self.lab_home = paths.home_override()  # where simulated monitors of the lab are found
        self.launch: tuple[str, str] | None = None  # (serial, remote dir) of the runner launch under way
        self.deployed: set[str] = set()

    def run(self) -> None:
        """Run the cells (the engine left out those finished before a --resume)."""
        if not self.cells:
            self.emit(StateEvent("done"))
            return
        try:
            device = self._device()
        except DeviceError as exc:
            self._fail_rest(self.cells, f"device unreachable: {exc}")
            return
        try:
            self._run_cells(device, self.cells)
        except DeviceError as exc:  # restoring on the way out failed: the snapshot stays pending for the next run
            self.emit(WarningEvent(f"{self.name}: governors not restored now ({exc}); the next run restores them"))
        self.emit(StateEvent("done"))

    def _run_cells(self, device: Device, pending: list[tuple[Cell, str, ArtifactRef]]) -> None:
        with GovernorGuard(device, knobs.default_root()) as guard:
            for i, (cell, cid, art) in enumerate(pending):
                if self.stop.is_set():
                    break
                self.emit(StateEvent(f"{cell.workload}-{cell.variant} {cell.governor}"))
                try:
                    self._cell(device, guard, cell, cid, art)
                except DeviceUnreachable as exc:
                    fresh = self._reconnect()
                    if fresh is None:
                        self._fail_rest(pending[i:], f"device lost: {exc}")
                        return
                    device = fresh
                    guard.device = device
                    try:  # one retry on the fresh connection
                        self._cell(device, guard, cell, cid, art)
                    except DeviceError as exc2:
                        self._fail_rest(pending[i:], f"device lost after retry: {exc2}")
                        return
                except UserError as exc:  # bad device output, runner failure, impossible affinity: this cell only
                    self._record(cid, cell, *self._stopped_or(guard, "failed", str(exc)))
                except Exception as exc:  # noqa: BLE001 - any other fault is this cell's outcome, not the campaign's
                    self._record(cid, cell, *self._stopped_or(guard, "failed", f"{type(exc).__name__}: {exc}"))

    def _device(self) -> Device:
        device = Device(self.serial)
        device.shares_host = self.facts.virtual  # a virtual phone: its operations wait for others' timed steps
        return device

    def _reconnect(self) -> Device | None:
        time.sleep(1.0)
        try:
            return self._device()
        except DeviceError:
            return None

    def _stopping(self, guard: GovernorGuard) -> bool:
        """The run is stopping (Ctrl-C, SIGTERM): the signal restored the guard's governors, or the engine said stop."""
        return self.stop.is_set() or guard.signalled

    def _stopped_or(self, guard: GovernorGuard, status: str, reason: str) -> tuple[str, str]:
        """A cell the run's stop reached is interrupted, whatever else went wrong with it."""
        return ("interrupted", INTERRUPTED) if self._stopping(guard) else (status, reason)

    def abort_launch(self) -> None:
        """From another thread, when the run stops: end the runner launch under way on the phone (best effort; the
        gate is not taken: the launch holds it)."""
        launch = self.launch
        if launch is None:
            return
        serial, remote = launch
        with contextlib.suppress(Exception):
            Device(serial).shell(f"pkill -f {quote(remote + '/runner')}", timeout=10)

    def _fail_rest(self, rest: Iterable[tuple[Cell, str, ArtifactRef]], reason: str) -> None:
        for cell, cid, _ in rest:
            self._record(cid, cell, "failed", reason)

    def _record(self, cid: str, cell: Cell, status: str, reason: str = "") -> None:
        self.emit(StatusEvent(cid, status, reason, cell.spec_key, cell.label))

    # -- one cell
    def _cell(self, device: Device, guard: GovernorGuard, cell: Cell, cid: str, art: ArtifactRef) -> None:
        """Attempts until one ran unthrottled at its governor's frequency (profiler.telemetry), or [throttle] retries
        redos were made: the last is kept with its flag. The redone attempts' time is the cell's harness time."""
        prior, redone = HarnessClock(), list[str]()
        while (why := self._attempt(device, guard, (cell, cid, art), prior, redone)) is not None:
            redone.append(why)
            with prior.part("redo_cooldown"):
                self._settle(device)
            if self._stopping(guard):
                self._record(cid, cell, "interrupted", INTERRUPTED)
                return

    def _attempt(
        self, device: Device, guard: GovernorGuard, planned: PlannedCell, prior: HarnessClock, redone: list[str]
    ) -> str | None:
        """One attempt at a cell: records its outcome, or returns why it is to be redone (flagged, retries left)."""
        cell, cid, art = planned
        clock = HarnessClock()
        for part, seconds in prior.parts.items():  # earlier attempts of this cell, and the cooldowns after them
            clock.add(part, seconds)
        clock.wait += prior.wait
        with clock.part("governor"):
            applied, reason, pinned = self._governor(device, guard, cell)
        if applied is None:
            self._record(cid, cell, "skipped", reason)
            return None
        mask = affinity_mask(cell.affinity, self.facts)
        with clock.part("cooldown"):
            start = self._cooldown(device)  # the last cooldown reading is the cell's start state
        with clock.part("deploy"):
            remote = self._deploy(device, art)
        with clock.part("energy_start"):
            meter = open_meter(cell.energy, device, self.facts, lab_home=self.lab_home)
            energy_note = ""
            if meter is not None:
                why = meter.precheck()
                if why:  # time is still measured; energy is missing with the reason
                    meter, energy_note = None, f"energy not measured: {why}"
        started = time.time()
        runs: list[Sequence[Step]] = []
        pairs, trace, shares, stopped, windows = [], None, [], None, []
        with contextlib.ExitStack() as stack:
            if meter is not None:
                try:  # a monitor that fails to start (or to prepare) costs the energy, never the time
                    with clock.part("energy_start"):
                        stack.enter_context(meter)
                        meter.start()
                except EnergyError as exc:
                    stack.close()
                    meter, energy_note = None, f"energy not measured: {exc}"
            while (stopped := stop_reason(cell, runs)) is None:  # `repetitions` launches, or to a CI target
                if self._stopping(guard):
                    break
                cmd = runner_command(remote, warmup=cell.warmup, steps=cell.steps, threads=self.threads, cpu_mask=mask)
                with contextlib.ExitStack() as turn:
                    with clock.part("host_hold"):  # a virtual phone's steps get the host CPUs alone (hostcpu);
                        turn.enter_context(hostcpu.exclusive(self.facts.virtual, self.serial))  # waits: wait_s
                    with clock.part("telemetry"):  # cpufreq time_in_state, thermal, cooling: before and after
                        before = self._telemetry(device)
                    t0 = time.perf_counter()
                    self.launch = (self.serial, remote)
                    try:
                        r = device.shell(cmd + TIMES_SUFFIX, timeout=RUN_TIMEOUT_S)  # + the launch's CPU time
                    finally:
                        self.launch = None
                    launch = time.perf_counter() - t0
                    with clock.part("telemetry"):
                        after = self._telemetry(device)
                if before is not None and after is not None:
                    windows.append(window(before, after))
                if not r.ok:
                    raise DeviceError(
                        "runner failed",
                        serial=self.serial,
                        command=cmd,
                        output=r.stderr or r.stdout,
                        exit_code=r.exit_code,
                    )
                with clock.part("parse"), hostcpu.shared(self.facts.virtual):
                    out = parse_run_output(r.stdout)
                runs.append(out.steps)
                pairs += clock_pairs(out.meta)
                shares.append(cpu_share(parse_children_cpu_s(r.stderr), launch, out.meta.get("threads")))
                clock.add("launch", launch - sum(s.step_ns for s in out.steps) / 1e9)  # beyond the steps
            if meter is not None:
                try:
                    with clock.part("energy_stop"):
                        trace = meter.stop()
                except EnergyError as exc:  # monitor lost mid-cell: the steps' times stand, energy is missing
                    trace, energy_note = None, f"energy lost: {exc}"
        if meter is not None and trace is None and meter.spec.startswith("monsoon:"):
            # a monitor that died could not put its USB passthrough back (with a real Monsoon the phone is off adb
            # until it is): now, before the next cell, and the cell says so
            energy_note += f"; {put_back_passthrough(meter.spec.partition(':')[2], self.lab_home)}"
        if self._stopping(guard):  # its governors were restored when the stop came: nothing of it is kept
            self._record(cid, cell, "interrupted", INTERRUPTED)
            return None
        with clock.part("end_read"):
            end = self._dynamic(device)
        changed = sorted({p.governor for p in end.policies if p.governor and p.governor != applied})
        if changed:  # something else changed the governor under the launches: not the state the cell asked for
            self._record(
                cid,
                cell,
                "failed",
                f"the governor read back after the launches was {','.join(changed)}, "
                f"not the {applied} applied: `--resume` redoes the cell",
            )
            return None
        tele = combine(windows) if windows else None
        flags = judge(tele, applied, pinned, self.campaign.throttle.max_temp_c) if tele is not None else ()
        cool = bool(flags) and started_cool(start, self.campaign.cooldown)
        if flags and not cool and len(redone) < self.campaign.throttle.retries and not self._stopping(guard):
            prior.parts, prior.wait = dict(clock.parts), clock.wait  # all of it was for nothing but this verdict
            prior.add("redo", sum(s.step_ns for steps in runs for s in steps) / 1e9)
            return "; ".join(str(f) for f in flags)
        energies: list[float | None] = [None] * sum(len(steps) for steps in runs)
        labels = {"virtual"} if self.facts.virtual else {"measured"}
        if trace is not None:
            assert meter is not None  # a trace comes only from a meter
            with clock.part("energy_stop"), hostcpu.shared(self.facts.virtual):
                energies, summary = meter.attribute(trace, [s for steps in runs for s in steps], pairs)
                labels |= set(summary.labels) & set(LABELS)
                energy_note = "; ".join(summary.notes)
                self.emit(TraceEvent(cid, trace))
        flat = iter(energies)
        samples = [Sample.from_step(s, rep, energy_j=next(flat)) for rep, steps in enumerate(runs) for s in steps]
        bat = end.battery
        meta = CellMeta(
            campaign=self.campaign.name,
            cell_id=cid,
            spec_key=cell.spec_key,
            device_serial=self.name,
            device_model=self.facts.model,
            device_virtual=self.facts.virtual,
            workload=cell.workload,
            variant=cell.variant,
            batch=cell.batch,
            governor_requested=cell.governor,
            governor_applied=applied,
            affinity=cell.affinity,
            artifact_hash=art.hash,
            labels=tuple(sorted(labels)),
            config=cell.config,
            governor_reason=reason,
            pinned_khz=pinned,
            warmup_steps=cell.warmup,
            energy_source=getattr(meter, "spec", cell.energy) if trace is not None else "none",
            energy_note=energy_note,
            freqs_start_khz=_freqs(start),
            freqs_end_khz=_freqs(end),
            temp_start_c=start.max_temp_c,
            temp_end_c=end.max_temp_c,
            throttled=_throttled(end),
            battery_pct=None if bat is None or bat.capacity is None else float(bat.capacity),
            tool_versions=tuple(
                sorted({**dict(art.tools), "autlearn": __version__, "android": self.facts.android or "?"}.items())
            ),
            started_at=started,
            finished_at=time.time(),
            harness=clock.parts_tuple(),
            harness_s=round(clock.total(), 4),
            wait_s=round(clock.wait, 4),
            cpu_share=tuple(None if x is None else round(x, 4) for x in shares),
            stop_reason=stopped or "",
            **telemetry_columns(tele, flags, redone),
        )
        if cool:  # kept at once: say why
            meta = dataclasses.replace(meta, flag_detail=f"{meta.flag_detail}; {OWN_HEAT}")
        with hostcpu.shared(self.facts.virtual):  # in-process the store writes it now
            self.emit(CellEvent(meta, tuple(samples)))
        return None

    def _governor(
        self, device: Device, guard: GovernorGuard, cell: Cell
    ) -> tuple[str | None, str, tuple[tuple[str, int], ...]]:
        """Apply the cell's governor intent. Returns (applied | None, reason, pinned)."""
        res: Applied | Resolution
        try:
            res = guard.apply_intent(cell.governor, cell.fallback)
        except NotRooted:
            # Unrooted: run only if the device already sits at what the intent resolves to.
            from autlearn.profiler.governor import resolve_governor

            current = {p.governor for p in self._dynamic(device).policies}  # reading needs no root
            res = resolve_governor(cell.governor, self.facts.governors, cell.fallback)
            if res.applied is not None and res.pin_khz is None and current == {res.applied}:
                return res.applied, f"unrooted: the device already runs {res.applied}", ()
            return (
                None,
                (
                    f"needs root to set governor {cell.governor!r} and the device has none "
                    f"(it runs at its default {','.join(sorted(g for g in current if g))})"
                ),
                (),
            )
        except GovernorUnavailable as exc:
            return None, str(exc), ()
        if res.resolution.applied is None:
            return None, res.resolution.reason or f"governor {cell.governor!r} not offered", ()
        return res.resolution.applied, res.resolution.reason, res.pinned_khz

    def _dynamic(self, device: Device) -> DeviceFacts:
        r = device.run_script("probe.sh", "dynamic", timeout=60)
        return parse_probe(r.stdout, serial=self.serial)

    def _telemetry(self, device: Device) -> Reading | None:
        """One `probe.sh telemetry` read (None when its output cannot be parsed: the launch has no telemetry)."""
        r = device.run_script("probe.sh", "telemetry", timeout=60)
        try:
            return parse_reading(r.stdout, serial=self.serial)
        except ParseError:
            return None

    def _settle(self, device: Device) -> None:
        """Before a flagged cell is redone: until no CPU cooling device is engaged (at most the [cooldown] timeout),
        then [throttle] cooldown_s (a trip point's hysteresis releases the cooling still warm); the attempt's own
        cooldown follows."""
        pause = self.campaign.throttle.cooldown_s
        self.emit(StateEvent(f"throttled: redoing after a cooldown (CPU cooling released, then {pause:g} s)"))
        deadline = time.monotonic() + self.campaign.cooldown.timeout_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            reading = self._telemetry(device)
            if reading is None or not any(c.cur_state for c in reading.cpu_cooling):
                break
            self.stop.wait(min(1.0, max(0.1, deadline - time.monotonic())))
        self.stop.wait(pause)

    def _cooldown(self, device: Device) -> DeviceFacts:
        """Wait until the matching thermal zones are under the limit (or the timeout passes); the last reading."""
        cd = self.campaign.cooldown
        deadline = time.monotonic() + cd.timeout_s
        while True:
            text = device.run_script("probe.sh", "dynamic", timeout=60).stdout
            temp = cooldown_temp(text, cd.zones)
            if temp is None or temp <= cd.max_temp_c or time.monotonic() >= deadline or self.stop.is_set():
                return parse_probe(text, serial=self.serial)
            self.emit(StateEvent(f"cooling down ({temp:.1f} C > {cd.max_temp_c:.1f} C)"))
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))

    def _deploy(self, device: Device, art: ArtifactRef) -> str:
        """Push the artifact once per content hash; returns its directory on the device."""
        if art.hash in self.deployed:
            return remote_dir(device, art.hash)
        remote = deploy(device, art.hash, art.path, art.files)
        self.deployed.add(art.hash)
        return remote


# ------------------------------------------------------------------------------------------------ on the phones' host
def check_energy(campaign: Campaign, serials: Iterable[str]) -> None:
    """Fail fast, before anything runs, on an energy source that cannot exist (wrong monitor serial, no monitor)."""

    lab_home = paths.home_override()
    for serial in serials:
        spec = resolve_energy(str(campaign.energy_for(serial)), serial, lab_home)
        if spec.startswith("monsoon:"):
            open_monitor(spec.partition(":")[2], lab_home=lab_home).close()  # EnergyError names the serial


def restore_passthrough(campaign: Campaign | None, serials: Iterable[str]) -> dict[str, str]:
    """The monitors powering the leased phones (named in the campaign, or known to power them; with no campaign,
    those known): a passthrough mode left changed by a killed window is put back before anything runs."""

    lab_home = paths.home_override()
    out: dict[str, str] = {}
    for serial in serials:
        spec = str(campaign.energy_for(serial)) if campaign is not None else ""
        mon = spec.partition(":")[2] if spec.startswith("monsoon:") and spec != "monsoon:auto" else None
        try:
            mon = mon or known_monitor(serial, lab_home)
            what = restore_pending_passthrough(mon, lab_home=lab_home) if mon else None
        except (UserError, OSError) as exc:
            what = f"not restored now ({exc})"
        if what:
            out[f"{serial} passthrough"] = what
    return out


def put_back_passthrough(monitor: str, lab_home: Path | None) -> str:
    """After a window on `monitor` ended badly: its USB passthrough as it was before the window, said in one line."""

    try:
        what = restore_pending_passthrough(monitor, lab_home=lab_home)
    except (UserError, OSError) as exc:
        return f"USB passthrough not put back now ({one_line(str(exc))}): the end of the run or the next run does it"
    return what or "USB passthrough put back by the monitor"


def put_back(serials: Collection[str], campaign: Campaign | None = None) -> dict[str, str]:
    """What killed runs left changed on these (leased) phones, put back: knobs (governors, charging), a monitor's
    passthrough (the campaign's monitors, or those known to power them), fuel-gauge samplers left polling, and adbd
    root last (the others may need it). {"serial what": "restored" | "stopped ..." | why not}."""
    root = knobs.default_root()
    done = knobs.restore_pending(root, lambda s: Device(s), serials=set(serials), but={"adb_root"})
    done.update(restore_passthrough(campaign, sorted(serials)))
    done.update(stop_orphan_samplers(sorted(serials)))
    done.update(knobs.restore_pending(root, lambda s: Device(s), serials=set(serials), only={"adb_root"}))
    return done


def undo_root(serials: set[str], log: Callable[[str], None]) -> None:
    for key, what in knobs.restore_pending(
        knobs.default_root(), lambda s: Device(s), serials=serials, only={"adb_root"}
    ).items():
        if what != "restored":
            log(f"{key}: not undone now ({what}); the next run does it")
