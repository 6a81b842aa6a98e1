"""MODELED battery power of a virtual phone, written into its sandbox sysfs (and a log a simulated Monsoon follows).

Every ~20 ms the vphone asks `PowerModel.tick()` to look at the processes its shells started (every process whose
session is one of the shells' sessions, rescanned every ~50 ms; children of those every tick), sums their runnable
time (per-thread /proc/<pid>/task/<tid>/schedstat run + wait time in ns; utime+stime from /proc/<pid>/stat where
schedstat is missing) and turns it into per-core utilisation: busy cores = CPU-seconds / wall-seconds, on the
cluster of each process's virtual affinity (the phone's `taskset`; none: the biggest cluster, where EAS puts a
heavy task). Power:

    P = P_IDLE + sum over busy virtual cores  C(cluster) * V(f)^2 * f * utilisation

  * f: the cluster's frequency from the DVFS model (testbed/dvfs.py: governors, thermal caps).
  * V(f): linear DVFS curve per cluster, V_MIN at the lowest frequency to V_MAX at the highest.
  * C: switched capacitance, C_LITTLE + (C_BIG - C_LITTLE) * cpu_capacity / 1024.
  With these constants an idle phone draws 0.4 W and one busy big core at ~2.4 GHz about 1.5 W more.

This is a MODEL. The workload really runs on this host; with the vphone's throttle (testbed/dvfs.py) it runs at
its cluster's modeled speed, so a busy virtual CPU is host CPU time / its share. At most the host's cores can be
busy (a 2-core host never loads all 8 virtual cores). Processes shorter than ~50 ms, and the CPU time of a process
since its last 20 ms sample when it exits, are missed.

Battery (sys/class/power_supply/battery): the model's load power P is converted to a battery current I with
V = V_OCV - R*I (so V*I = P exactly); V_OCV is the profile's voltage_now. Vendor convention per profile, taken from
the profile's `current_now`: its sign is the sign while DISCHARGING (legacy: positive, modern/unrooted: negative,
like Pixel) and |value| < 3000 means mA (unrooted), otherwise uA.
  * charging (default: USB online, status Charging): the charger feeds CHARGE_A into the phone; current_now is the
    net battery current CHARGE_A - I (positive = into the battery, reported with the opposite of the discharge sign).
  * `input_suspend` = 1 (the node exists on rooted profiles): status Discharging, current_now = the full drain I.
    0 restores charging. usb/online stays 1 (the cable still carries data), as on Qualcomm phones.
  * charge_counter (uAh) integrates the battery current.
Log: `<root>/power_model.jsonl`, one line {"t0": host CLOCK_MONOTONIC s, "p_w": load W, "busy": cores, ...} whenever
the load changes (and at least once a second); the value holds from t0 until the next line's t0. t0 is when the
line was written (the power of the interval the tick closed, applied from the moment it is known, as a realtime
reader such as the simulated Monsoon sees it: it cannot read a line before it is written), so the log and a monitor
following it agree exactly however late a loaded host runs or finishes the ticks. An idle phone (no shell process
alive) ticks every IDLE_TICK_S; a new shell wakes it at once.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autlearn.testbed.dvfs import DvfsModel, cluster_for_mask, virtual_mask, write_node
from autlearn.testbed.profiles import Profile

if TYPE_CHECKING:
    import asyncio

    from autlearn.testbed.dvfs import SignalThrottle

P_IDLE_W = 0.4  # display off, radios idle, SoC in shallow idle
C_LITTLE_F, C_BIG_F = 0.12e-9, 0.5e-9  # switched capacitance (F) at cpu_capacity 0 / 1024
V_MIN, V_MAX = 0.60, 1.05  # V at the lowest / highest frequency of each cluster
R_BATT_OHM = 0.1
CHARGE_A = 1.5  # what the USB charger pushes into the phone
TICK_S = 0.02
IDLE_TICK_S = 0.25  # no process of a shell alive: only the clock moves (a new shell wakes the model at once)
RESCAN_S = 0.05  # the shells' sessions are scanned this often (their children are followed every tick)
HEARTBEAT_S = 1.0
LOG_NAME = "power_model.jsonl"
LOG_MAX_BYTES = 2 << 20
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Convention:
    """How the phone's gauge reports: raw current = discharge_sign * I(A) / scale."""

    discharge_sign: int
    unit: str  # "uA" | "mA"

    @property
    def scale(self) -> float:
        return 1e-6 if self.unit == "uA" else 1e-3

    @classmethod
    def of(cls, profile: Profile) -> Convention:
        raw = profile.battery.current_now
        return cls(1 if raw > 0 else -1, "mA" if abs(raw) < 3000 else "uA")


def voltage(f_khz: float, f_min: float, f_max: float) -> float:
    if f_max <= f_min:
        return V_MAX
    return V_MIN + (V_MAX - V_MIN) * (f_khz - f_min) / (f_max - f_min)


def core_power_w(capacity: int, f_khz: float, f_min: float, f_max: float, util: float) -> float:
    c = C_LITTLE_F + (C_BIG_F - C_LITTLE_F) * capacity / 1024
    v = voltage(f_khz, f_min, f_max)
    return c * v * v * f_khz * 1e3 * util


def battery_current_a(p_w: float, v_ocv: float) -> float:
    """I with I * (V_OCV - R*I) = P (discharge)."""
    disc = v_ocv * v_ocv - 4 * R_BATT_OHM * p_w
    return (v_ocv - math.sqrt(max(disc, 0.0))) / (2 * R_BATT_OHM)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write_if_changed(path: Path, value: str, cache: dict[Path, str]) -> None:
    if cache.get(path) != value:
        try:
            write_node(path, value)
            cache[path] = value
        except OSError:
            pass


def _cpu_ns(pid: int, children: set[int] | None = None) -> int | None:
    """Runnable time (ns: running + waiting for a host CPU) of all threads of a process; None when it is gone.
    The wait counts as busy: on the phone that virtual CPU would have run the thread (a contended host must not
    make a busy virtual CPU look idle to its governor). `children`: filled with the pids of its children (so a
    process a member just started is counted from the next tick, not the next /proc scan)."""
    total, found = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                run_ns, wait_ns = f.read().split()[:2]
                total += int(run_ns) + int(wait_ns)
                found = True
        except (OSError, ValueError, IndexError):
            continue
        if children is not None:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    children.update(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass
    if found:
        return total
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def session_members(sessions: set[int]) -> dict[int, int]:
    """{pid: process group} of processes whose session id is one of `sessions` (a /proc scan)."""
    out: dict[int, int] = {}
    if not sessions:
        return out
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            with open(f"/proc/{e.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            if int(fields[3]) in sessions:
                out[int(e.name)] = int(fields[2])
        except (OSError, ValueError, IndexError):
            continue
    return out


class PowerModel:
    """State of one phone's model; `tick()` every TICK_S (the vphone's event loop calls it). With a `throttle`
    (autlearn.testbed.dvfs.SignalThrottle) the processes run at their cluster's modeled speed."""

    def __init__(
        self,
        profile: Profile,
        root: Path,
        sessions: Callable[[], Iterable[int]],
        clock: Callable[[], float] = time.monotonic,
        throttle: SignalThrottle | None = None,
    ):
        self.profile, self.root, self.sessions, self.clock = profile, Path(root), sessions, clock
        self.throttle = throttle
        self.dvfs = DvfsModel(profile, self.root)
        self.conv = Convention.of(profile)
        self.v_ocv = profile.battery.voltage_now * 1e-6
        self.battery = self.root / "sys/class/power_supply/battery"
        self.log_path = self.root / LOG_NAME
        self.members: dict[int, int] = {}  # pid -> process group
        self.group_cluster: dict[int, int] = {}
        self.last_cpu: dict[int, int] = {}
        self.last_sessions: frozenset[int] = frozenset()
        self.last_scan = -math.inf
        self.last_t: float | None = None
        self.last_logged: tuple[object, ...] | None = None
        self.last_log_t = -math.inf
        self.charge_uah = float(profile.battery.charge_counter)
        self._written: dict[Path, str] = {}
        self.default_cluster = cluster_for_mask(profile, None)

    def admit(self, pg: int) -> None:
        """A shell just started as process group `pg`: the throttle budgets it at once, at the share of the cluster a
        process with no affinity runs on; the next tick places it by its processes' affinity."""
        if self.throttle is not None:
            self.throttle.admit(pg, self.dvfs.shares()[self.default_cluster])

    # -- inputs ---------------------------------------------------------------------------------------------
    def _busy_ns(self, now: float) -> tuple[dict[int, int], set[int]]:
        """(CPU ns per cluster since the last tick, processes placed by their virtual affinity; the clusters where a
        process ran for the first time)."""
        sessions = frozenset(self.sessions())
        if sessions != self.last_sessions or now - self.last_scan >= RESCAN_S:
            self.members = session_members(set(sessions)) if sessions else {}
            self.last_sessions, self.last_scan = sessions, now
        busy: dict[int, int] = {}
        new: set[int] = set()
        top: dict[int, tuple[int, int]]  # process group -> (CPU ns of its busiest process, that one's cluster)
        seen, pgs, top = {}, {}, {}
        todo = list(self.members.items())
        while todo:  # members, then the children they started since the last tick (not left to the next scan)
            pid, pg = todo.pop()
            if pid in seen:
                continue
            kids: set[int] = set()
            ns = _cpu_ns(pid, kids)
            if ns is None:
                continue
            prev = self.last_cpu.get(pid)
            d = ns - prev if prev is not None and ns >= prev else (0 if prev is not None else ns)
            # read every tick: a process found between its fork and the exec of `taskset MASK cmd` has no mask yet
            c = cluster_for_mask(self.profile, virtual_mask(pid, self.root))
            busy[c] = busy.get(c, 0) + d
            if prev is None and d > 0:
                new.add(c)
            seen[pid], pgs[pid] = ns, pg
            if d > top.get(pg, (-1, 0))[0]:
                top[pg] = (d, c)
            for k in kids:
                if k not in seen and k not in self.members:
                    todo.append((k, pg))  # a child stays in its parent's process group unless it leaves
        self.members = pgs
        self.last_cpu = seen
        # a group runs at the speed of the cluster of its busiest process (the shell around it waits)
        groups = set(self.members.values())
        self.group_cluster = {
            pg: (top[pg][1] if pg in top and top[pg][0] > 0 else self.group_cluster.get(pg, self.default_cluster))
            for pg in groups
        }
        return busy, new

    def power_w(self, busy_cores: list[float], freqs: list[float] | None = None) -> float:
        """Load power with `busy_cores[i]` virtual CPUs busy (fractional) on cluster i at `freqs` (kHz)."""
        freqs = list(self.dvfs.freqs) if freqs is None else freqs
        p = P_IDLE_W
        for cl, n, f in zip(self.profile.clusters, busy_cores, freqs):
            left = min(max(n, 0.0), len(cl.cpus))
            while left > 1e-9:
                u = min(1.0, left)
                p += core_power_w(cl.capacity, f, cl.freqs_khz[0], cl.freqs_khz[-1], u)
                left -= u
        return p

    # -- one step -------------------------------------------------------------------------------------------
    def tick(self) -> dict[str, Any]:
        now = self.clock()
        busy_ns, new_tasks = self._busy_ns(now)
        t_prev = self.last_t if self.last_t is not None else now - TICK_S
        dt = max(now - t_prev, 1e-6)
        self.last_t = now
        # host CPU-seconds per second -> virtual busy CPUs: a throttled process used `share` of a host CPU per
        # virtual CPU it kept busy (without a throttle the host ran it at full speed: share 1)
        shares = self.dvfs.shares() if self.throttle is not None else [1.0] * len(self.profile.clusters)
        host = [busy_ns.get(i, 0) / 1e9 / dt for i in range(len(self.profile.clusters))]
        vcores = [h / max(s, 1e-3) for h, s in zip(host, shares)]
        busy = sum(host)
        p = self.power_w(vcores)  # at the frequencies that were applied during dt
        dv = self.dvfs.step(dt, [min(1.0, v) for v in vcores], p - P_IDLE_W, new_tasks=new_tasks)
        if self.throttle is not None:
            members: dict[int, list[int]] = {}
            for pid, pg in self.members.items():
                members.setdefault(pg, []).append(pid)
            self.throttle.set_shares({pg: dv.shares[c] for pg, c in self.group_cluster.items()}, members)
        suspended = _read(self.battery / "input_suspend") == "1"
        i_load = battery_current_a(p, self.v_ocv)
        if suspended:
            i_batt = -i_load  # + = into the battery
            v = self.v_ocv - R_BATT_OHM * i_load
            status = "Discharging"
        else:
            i_batt = CHARGE_A - i_load
            v = self.v_ocv + R_BATT_OHM * i_batt
            status = "Charging"
        self.charge_uah += i_batt * dt / 3600 * 1e6
        raw = -self.conv.discharge_sign * i_batt / self.conv.scale
        w = self._written
        _write_if_changed(self.battery / "current_now", str(int(round(raw))), w)
        _write_if_changed(self.battery / "voltage_now", str(int(round(v * 1e6))), w)
        _write_if_changed(self.battery / "charge_counter", str(int(self.charge_uah)), w)
        _write_if_changed(self.battery / "status", status, w)
        state = {
            "t0": round(now, 6),
            "p_w": round(p, 4),
            "busy": round(busy, 3),
            "i_batt_a": round(i_batt, 4),
            "status": status,
            "f_khz": list(dv.freqs_khz),
            "temp_c": round(dv.hottest_c, 2),
            "cooling": list(dv.cooling),
        }
        key = (state["p_w"], status, dv.freqs_khz, dv.cooling)
        if key != self.last_logged or now - self.last_log_t >= HEARTBEAT_S:
            state["t0"] = round(self.clock(), 6)  # known from now on (a loaded host may have paused this tick)
            self._log(state)
            self.last_logged, self.last_log_t = key, now
        return state

    def _log(self, state: dict[str, Any]) -> None:
        try:
            if self.log_path.exists() and self.log_path.stat().st_size > LOG_MAX_BYTES:
                os.replace(self.log_path, self.log_path.with_suffix(".jsonl.1"))
            with open(self.log_path, "a") as f:
                f.write(json.dumps(state, separators=(",", ":")) + "\n")
        except OSError:
            pass


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


async def run(
    model: PowerModel, period: float = TICK_S, wake: asyncio.Event | None = None, idle_period: float = IDLE_TICK_S
) -> None:
    """The vphone's task: tick forever (errors in one tick never stop the model). With `wake` (an asyncio.Event
    the phone sets when it starts a shell), a phone with no shell process alive ticks every `idle_period`
    instead: an idle lab costs next to no host CPU, and the first tick after a shell starts is immediate. The idle
    pace starts only after a tick that saw no CPU time at all (the entry that then holds for the idle interval is
    the idle power, not the tail of the last busy one)."""

    log = logging.getLogger("vphone.power")
    while True:
        if wake is not None:
            wake.clear()  # no await before the wait below: a shell started from here on is seen
        busy = True
        try:
            busy = model.tick()["busy"] > 0 or bool(model.members)
        except Exception:  # a bug in the model must not take the phone down
            log.exception("power model tick failed")
        held = getattr(model.throttle, "held", False)  # another phone's timed launch: nothing of ours runs
        if wake is None:
            await asyncio.sleep(period)
            continue
        try:  # a new shell ticks at once (its processes placed on their cluster), busy or idle
            await asyncio.wait_for(wake.wait(), period if busy and not held else idle_period)
        except TimeoutError:
            pass


# ------------------------------------------------------------------------------------------------------------
# reading the log (tests, the simulated Monsoon)


def read_log(root: str | os.PathLike[str], tail_bytes: int | None = None) -> list[tuple[float, float]]:
    """(t0, p_w) entries of a phone's model log, oldest first (`tail_bytes`: only the end of the file)."""
    path = Path(root) / LOG_NAME
    try:
        with open(path, "rb") as f:
            if tail_bytes is not None:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if tail_bytes is not None and len(lines) > 1:
        lines = lines[1:]  # the first may be cut
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append((float(d["t0"]), float(d["p_w"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def power_at(entries: list[tuple[float, float]], t: float) -> float:
    """Load power (W) at host time t: the value of the last entry starting before t."""

    i = bisect.bisect_right([e[0] for e in entries], t) - 1
    return entries[max(i, 0)][1] if entries else P_IDLE_W


def energy_j(entries: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Modeled load energy (J) between host times t0 and t1 (piecewise constant)."""
    if not entries or t1 <= t0:
        return 0.0
    total = 0.0
    starts = [e[0] for e in entries]
    for k, (s, p) in enumerate(entries):
        end = starts[k + 1] if k + 1 < len(entries) else math.inf
        lo, hi = max(s, t0), min(end, t1)
        if k == 0 and t0 < s:
            lo = t0  # before the first entry: assume its value
        if hi > lo:
            total += (hi - lo) * p
    return total
