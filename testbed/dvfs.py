"""Virtual phones obey their governors: one MODELED frequency per cluster, applied to time (host CPU share), to
power (testbed/power_model.py) and to heat.

Time scale. A process the phone's shells started runs at a share of one host CPU per thread:

    share = capacity / capacity_max  x  f_applied / f_max(cluster)

`capacity` is the profile's EAS cpu_capacity (at the cluster's max frequency), so the biggest cluster at its max
frequency runs at full host speed (share 1.0, never throttled) and, per clock, a cluster is
capacity / capacity_max x f_ref / f_max(cluster) as fast as the biggest one (f_ref = the biggest cluster's max).
A process runs on the fastest cluster its virtual affinity allows (EAS places a heavy task there): the mask of the
phone's `taskset` shim (env AUTLEARN_VCPU_MASK, or <root>/proc/vaffinity/<pid> from `taskset -p`), else all CPUs.
The share is enforced by `SignalThrottle`: every PERIOD_S each throttled process group runs share x PERIOD_S, then
sits in SIGSTOP until the period ends (SIGCONT). cgroup v2 cpu.max would do this in the kernel, but it caps a
group's CPU time summed over threads (a 2-thread runner would get 2x a 1-thread one's per-thread speed) and is not
available on every host (`cgroup_v2_cpu`): the signal throttle is the one implemented, and phones say so
(getprop ro.autlearn.time_scale, <root>/sys/kernel/autlearn/time_scale, `autlearn lab status`). The host's own
speed and noise stay in every time: share 1.0 is this host's CPU, whatever it is.
The host's CPU speed itself depends on what else runs: a CPU left idle between windows (the group stopped) wakes
slowly (a VM's halted vCPU, deep C-states), and a host whose other cores idle may run one core faster (boost) than
when all are busy. Measured on a 2-vCPU KVM guest, LSTM step, powersave / performance for f_max / f_min 8.19x:
11.0x with neither handled. So while any process of a shell is alive, `KeepWarm` runs one SCHED_IDLE spinner per
host CPU: it takes only time no other task wants, keeps the CPUs out of idle, and makes throttled and unthrottled
runs see the same all-cores-busy host speed (same LSTM: 8.1x); `lab up --no-keep-warm` turns it off (faster,
less exact ratios: the test suite's session lab).
Resolution: a group runs up to a window of CPU (PERIOD_S x share, at least MIN_WINDOW_S) between stops, so a step
shorter than that (e.g. a 0.2 ms cached MobileNet step) mostly runs between two stops at host speed: its median is
not slowed, only the steps a stop falls into; a run of such steps is slowed as a whole. The CPU time budgeted is
read from a perf task-clock counter per thread, exact when read (`TaskClocks`); schedstat, the fallback where perf
is refused, lags a running thread by up to a scheduler tick (4 ms at HZ=250), so a step shorter than a tick could
slip through whole at host speed.

Governors, in outline, once per model tick (~20 ms), with util = busy fraction of the busiest virtual CPU of the
cluster (host CPU time / (wall x share), capped at 1), made frequency-invariant and smoothed with PELT's 32 ms
half-life (UTIL_HALF_LIFE_S), then seen at the current frequency; a process that first runs starts with half the
spare utilisation (the kernel's post_init_entity_util_avg), so a launch does not ramp from zero:
  * performance: max; powersave: min; userspace: scaling_setspeed;
  * schedutil (and sched_pixel, walt): next = 1.25 x f_cur x util, the lowest table frequency >= next;
  * interactive: util >= 0.85 below hispeed (the table's middle) -> hispeed; else f_cur x util / 0.9;
  * ondemand: util > 0.8 -> max, else min + util x (max - min);  conservative: +-5 % of max per tick (0.8 / 0.2);
  * a lower frequency only after the current one was held DOWN_HOLD_S (interactive's min_sample_time, ...);
all within [scaling_min_freq, min(scaling_max_freq, thermal cap)]; scaling_cur_freq / cpuinfo_cur_freq report the
applied frequency, and stats/time_in_state the time spent at each (cumulative, 10 ms units, as Linux counts it). A
governor the policy does not offer is reverted (a kernel would refuse the write).
Heat: see profiles.Thermal. Every number here is MODELED; none is measured on a phone.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import logging
import math
import os
import platform
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from autlearn.profiler import hostcpu
from autlearn.testbed.profiles import Profile

if TYPE_CHECKING:
    import subprocess

_T = TypeVar("_T")

_log = logging.getLogger("vphone.throttle")

PERIOD_S = 0.004  # a group at share s runs about s x PERIOD_S of CPU between stops
MIN_WINDOW_S = 0.002  # but at least this much (caches refill after each stop: at 1 ms a step took 10-20 % more CPU)
UNTHROTTLED = 0.999  # shares at or above this are never signalled
HOLD_POLL_S = 0.02  # while a shell's process lives, the host gate's holder is looked at this often
HELD_POLL_S = 0.02  # and while held, this often (a phone's own launch starts HOLD_SETTLE_S after naming itself)
LATE_CREDIT_S = 0.01  # a throttled group kept stopped this much too long gets the time back (a longer stall: not)
MAX_STOP_S = 10.0  # no budget stop lasts longer (the longest legitimate one, a new group's first charge at the
# lowest share, is ~4 s): a longer one is a bug, logged, and the group runs on with a new budget
HEAL_S = 1.0  # a stopped group that nothing here holds stopped is looked for this often
NEW_GROUP_S = 0.25  # a group first throttled this soon after its start is budgeted from its start
KEEP_WARM_LINGER_S = 0.5  # spinners pause this long after the last shell process ended
MASK_ENV = "AUTLEARN_VCPU_MASK"
VAFFINITY_DIR = "proc/vaffinity"
TIME_SCALE_NODE = "sys/kernel/autlearn/time_scale"
SCHEDUTIL_LIKE = frozenset({"schedutil", "sched_pixel", "walt"})
# how long a dynamic governor holds a frequency before it may lower it (interactive: min_sample_time 80 ms;
# schedutil: down_rate_limit_us, often 20 ms on vendor kernels; ondemand: sampling_rate x down factor, ~ 100 ms)
UTIL_HALF_LIFE_S = 0.032  # PELT's half-life: the utilisation the governors see is smoothed over ~this
DOWN_HOLD_S = {"interactive": 0.08, "schedutil": 0.02, "sched_pixel": 0.02, "walt": 0.02, "ondemand": 0.1}


# ---------------------------------------------------------------------------------------------------- governors
def snap_up(table: tuple[int, ...], f: float) -> int:
    """The lowest table frequency >= f (the highest when none is)."""
    i = bisect.bisect_left(table, math.ceil(f))
    return table[min(i, len(table) - 1)]


def next_freq(
    gov: str, f_cur: int, util: float, table: tuple[int, ...], lo: int, hi: int, setspeed: int | None = None
) -> int:
    """What the governor `gov` applies next (pure). `hi` already includes the thermal cap."""
    hi = max(hi, lo)
    util = min(max(util, 0.0), 1.0)
    if gov == "performance":
        want = hi
    elif gov == "powersave":
        want = lo
    elif gov == "userspace":
        want = f_cur if setspeed is None else setspeed
    elif gov in SCHEDUTIL_LIKE:
        want = snap_up(table, 1.25 * f_cur * util)
    elif gov == "interactive":
        hispeed = table[len(table) // 2]
        want = hispeed if util >= 0.85 and f_cur < hispeed else snap_up(table, f_cur * util / 0.9)
    elif gov == "ondemand":
        want = hi if util > 0.8 else snap_up(table, lo + util * (hi - lo))
    elif gov == "conservative":
        step = 0.05 * table[-1]
        want = snap_up(table, f_cur + step) if util > 0.8 else (snap_up(table, f_cur - step) if util < 0.2 else f_cur)
    else:
        want = f_cur
    # the applied frequency is a table entry inside [lo, hi]
    inside = [f for f in table if lo <= f <= hi] or [lo]
    want = min(max(want, inside[0]), inside[-1])
    return inside[bisect.bisect_left(inside, want)] if want not in inside else want


# ----------------------------------------------------------------------------------------------- time scaling
def cluster_shares(profile: Profile, freqs_khz: Sequence[int]) -> list[float]:
    cap_max = max(cl.capacity for cl in profile.clusters) or 1
    return [cl.capacity / cap_max * f / cl.freqs_khz[-1] for cl, f in zip(profile.clusters, freqs_khz)]


def cluster_for_mask(profile: Profile, mask: int | None) -> int:
    """Index of the fastest cluster (highest capacity) with a CPU in `mask` (None or 0 -> all CPUs)."""
    best = None
    for i, cl in enumerate(profile.clusters):
        if mask and not any(mask >> c & 1 for c in cl.cpus):
            continue
        if best is None or cl.capacity > profile.clusters[best].capacity:
            best = i
    return best if best is not None else max(range(len(profile.clusters)), key=lambda i: profile.clusters[i].capacity)


def parse_mask(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text.strip().removeprefix("0x").removeprefix("0X"), 16) or None
    except ValueError:
        return None


def virtual_mask(pid: int, root: Path) -> int | None:
    """The virtual affinity of a process: `taskset -p` record, else the environment of `taskset MASK cmd`."""
    with contextlib.suppress(OSError):
        return parse_mask((root / VAFFINITY_DIR / str(pid)).read_text())
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = MASK_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return parse_mask(item[len(key) :].decode(errors="replace"))
    return None


def cgroup_v2_cpu() -> tuple[bool, str]:
    """Could cgroup v2 cpu.max throttle here? (answer, why) - reported, not used (see the module doc)."""
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        ctl = base / "cgroup.controllers"
        if ctl.is_file():
            controllers = ctl.read_text().split()
            if "cpu" not in controllers:
                return False, f"cgroup v2 at {base} has no cpu controller (controllers: {' '.join(controllers)})"
            return os.access(base, os.W_OK), f"cgroup v2 cpu controller at {base}"
    return False, "no cgroup v2 hierarchy"


# SCHED_IDLE yields to every other task only within one CFS group: with autogroup (a group per session, the
# default on many kernels) a spinner's session would get a fair share against each shell's session. So a spinner
# starts its own session and gives it the lowest autogroup weight (nice 19) as well.
_SPIN = """import contextlib, os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
with contextlib.suppress(OSError):
    os.setsid()
    with open("/proc/self/autogroup", "w") as f:
        f.write("19")
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(200000):
        pass
"""


class KeepWarm:
    """One SCHED_IDLE busy loop per host CPU, running only while a shell's process lives (SIGSTOP otherwise). A
    SCHED_IDLE task runs only when nothing else wants the CPU, so it costs other work next to nothing; it exits with
    the phone (it polls its parent)."""

    def __init__(self, enabled: bool = True):
        self.procs: list[subprocess.Popen[bytes]] = []
        self.running = False
        self.enabled = enabled and hasattr(os, "SCHED_IDLE")

    def set(self, on: bool) -> None:
        if not self.enabled or on == self.running:
            return
        if on and not self.procs:
            cpus = sorted(os.sched_getaffinity(0))
            with contextlib.suppress(OSError):
                self.procs = [
                    subprocess.Popen(
                        [sys.executable, "-S", "-c", _SPIN, str(c)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for c in cpus
                ]
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT if on else signal.SIGSTOP)
        self.running = on

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=2)
        self.procs, self.running = [], False


class SignalThrottle:
    """CPU-time budget per process group, enforced with SIGSTOP/SIGCONT (a thread of the vphone).

    Each throttled group earns `share` CPU-seconds per wall second, per thread: its busiest thread's CPU time
    (/proc/<pid>/task/<tid>/schedstat, ns on a CPU) may not run ahead of share x wall time by more than a window
    (`period_s` x share of CPU, at least MIN_WINDOW_S). A group that is ahead is stopped until the budget catches up;
    then it runs until it is ahead again. Time a group spends waiting for a host CPU, or asleep, earns nothing
    beyond one window (no bursts at full speed after an idle spell), and is not charged either: the budget counts
    CPU time, not wall time, so the host's other work does not slow a throttled group twice. The thread sleeps
    until the next group can have spent its credit (a group cannot use CPU faster than wall time per thread), so
    it wakes ~1/window times a second per group, not every millisecond. Groups at share >= UNTHROTTLED are never
    signalled."""

    mode = "sigstop"

    def __init__(self, period_s: float = PERIOD_S, keep_warm: bool = True, serial: str = ""):
        self.period_s = period_s
        self.serial = serial  # this phone as adb names it: another phone's timed launch holds this one
        self.held = False  # every group of this phone is stopped for another phone's timed launch
        self._holder = _HolderFile()
        self._groups: set[int] = set()  # every group of the phone's shells, throttled or not
        self._known: dict[int, int | None] = {}  # group -> its leader's start (ticks): the same group, not a reuse
        self._healed_at = -math.inf
        self.healed = 0  # groups found stopped that nothing here held stopped, continued (logged)
        self._held_groups: set[int] = set()
        self._shares: dict[int, float] = {}
        self._active = False
        self._members: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopped: set[int] = set()
        self._stopped_at: dict[int, float] = {}  # when each group in _stopped was stopped
        self._thread: threading.Thread | None = None
        self.periods = 0  # stop/continue cycles (for the record)
        self.errors = 0  # loop failures survived (logged)
        self.realtime = False  # the thread got SCHED_FIFO
        self.keep_warm = KeepWarm(keep_warm)
        self.clocks = TaskClocks()

    def describe(self) -> str:
        clock = (
            "perf task-clock, exact"
            if self.clocks.exact
            else f"schedstat, brought up to date at scheduler ticks: {self.clocks.why}"
        )
        return (
            f"sigstop CPU-time budget ({clock}), window {self.period_s * 1e3:g} ms x share; "
            "host CPU share per thread = "
            "capacity/capacity_max x f/f_max(cluster); share 1.0 = this host's CPU, unthrottled; keep-warm "
            f"SCHED_IDLE spinners {'on' if self.keep_warm.enabled else 'off'} while a shell process lives"
        )

    def set_shares(self, shares: dict[int, float], members: dict[int, list[int]] | None = None) -> None:
        """`shares`: process group -> share; `members`: its pids (whose threads' CPU time is budgeted)."""
        with self._lock:
            self._active = bool(shares)
            self._groups = set(shares)
            self._known = {pg: self._known.get(pg) or _start_ticks(pg) for pg in self._groups}
            self._shares = {pg: s for pg, s in shares.items() if s < UNTHROTTLED}
            if members is not None:
                self._members = {pg: list(m) for pg, m in members.items() if pg in self._shares}
        self._wake.set()

    def admit(self, pg: int, share: float) -> None:
        """A shell's new process group, at `share` until the power model's next tick places it: budgeted from its
        start at once (a launch that waited for the tick ran its first steps at host speed)."""
        with self._lock:
            self._groups.add(pg)
            self._known[pg] = _start_ticks(pg)
            if share < UNTHROTTLED:
                self._shares[pg] = share
                self._members.setdefault(pg, [pg])
                self._active = True
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vphone-throttle", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._continue_all()
        self.keep_warm.close()
        self.clocks.close()

    def _continue_all(self) -> None:
        for pg in list(self._stopped | self._held_groups):
            self._signal(pg, signal.SIGCONT)
        self._stopped.clear()
        self._held_groups.clear()
        self.held = False

    def _signal(self, pg: int, sig: int) -> bool:
        if sig == signal.SIGSTOP and not self._ours(pg):
            return False
        try:
            os.killpg(pg, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _ours(self, pg: int) -> bool:
        """Group `pg` is still the one this phone started: its leader is the process first seen, or gone (a
        group's number is not given out again while a member lives). With pid_max 32768 a number comes back within
        minutes on a busy host, and a stop sent to a stale number would freeze another phone's launch."""
        with self._lock:
            want = self._known.get(pg)
        now = _start_ticks(pg)
        return now is None or want is None or now == want

    def _heal(self, groups: set[int], keep: set[int]) -> None:
        """Continue any of this phone's groups found stopped that nothing here keeps stopped (`keep`): a stop that
        escaped the books would otherwise hold a launch (and the host CPU gate with it) for good."""
        now = time.monotonic()
        if now - self._healed_at < HEAL_S:
            return
        self._healed_at = now
        for pg in groups - keep:
            if _state(pg) == "T" and self._ours(pg):
                self.healed += 1
                _log.error("group %d found stopped with no stop of ours on the books: continued", pg)
                self._signal(pg, signal.SIGCONT)

    def window_s(self, share: float) -> float:
        """CPU time a group may run ahead of its budget before it is stopped."""
        return max(self.period_s * share, MIN_WINDOW_S)

    def _run(self) -> None:
        # Real-time priority where allowed: a throttle that wakes late lets processes run too long on a busy host.
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            self.realtime = True
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception:  # a bug here must not leave the phone unthrottled (or held) for the rest of its life
                self.errors += 1
                _log.exception("throttle loop failed; every group continued, budgets start afresh")
                self._continue_all()
                self._stop.wait(0.05)

    def _loop(self) -> None:
        groups: dict[int, _Budget] = {}
        last_throttled = -math.inf
        held = self._held_groups
        while not self._stop.is_set():
            with self._lock:
                shares, members, active = dict(self._shares), dict(self._members), self._active
                all_groups = set(self._groups)
            holder = self._holder.read() if all_groups or held else ""
            if holder and holder != self.serial:  # another phone's timed launch: hold every group till it ends
                self.held = True
                self.keep_warm.set(False)
                held |= self._stopped  # already stopped by their budget: continued when the hold ends
                for pg in all_groups - held:
                    if self._signal(pg, signal.SIGSTOP):
                        held.add(pg)
                groups.clear()  # budgets start afresh after the hold (no burst of saved credit)
                self._stopped.clear()
                self._wake.clear()
                self._wake.wait(HELD_POLL_S)
                continue
            for pg in held:
                self._signal(pg, signal.SIGCONT)
            held.clear()
            self.held = False  # also when the hold found no group to stop (the power model ticks slowly while held)
            if active:
                last_throttled = time.monotonic()
            self.keep_warm.set(time.monotonic() - last_throttled < KEEP_WARM_LINGER_S)
            self._heal(all_groups, self._stopped)
            for pg in [pg for pg in groups if pg not in shares]:  # left the throttle (or share 1.0): runs freely
                groups.pop(pg)
                if pg in self._stopped:
                    self._signal(pg, signal.SIGCONT)
                    self._stopped.discard(pg)
            if not shares:
                self.clocks.keep(())
                self._wake.clear()
                self._wake.wait(HOLD_POLL_S if all_groups else 0.1 if self.keep_warm.running else 1.0)
                continue
            now = time.monotonic()
            wake = now + HOLD_POLL_S  # look at the host gate's holder this often while a group lives
            read: list[int] = []
            for pg, share in shares.items():
                b = groups.get(pg)
                if b is None:  # a group that just started is budgeted from its start: its first tick is not free
                    born = min(now, _started(pg, now))
                    b = groups[pg] = _Budget(born) if now - born < NEW_GROUP_S else _Budget(now, fresh=False)
                cpu, b.pids = _thread_cpu_ns({*members.get(pg, (pg,)), *b.pids}, self.clocks, pg)  # default: leader
                read.extend(cpu)
                ahead = b.update(now, share, self.window_s(share), cpu, stopped=pg in self._stopped)
                if pg in self._stopped and now - self._stopped_at.get(pg, now) > MAX_STOP_S:
                    self.errors += 1
                    _log.error(
                        "group %d stopped %.1f s (budget %.3f s ahead at share %.3f): continued, budget reset",
                        pg,
                        now - self._stopped_at[pg],
                        ahead,
                        share,
                    )
                    self._signal(pg, signal.SIGCONT)
                    self._stopped.discard(pg)
                    groups.pop(pg)
                elif pg in self._stopped:
                    if ahead <= 0:  # the budget caught up: run
                        if self._signal(pg, signal.SIGCONT):
                            self._stopped.discard(pg)
                            wake = min(wake, now + self.window_s(share))
                        else:
                            self._stopped.discard(pg)
                    else:
                        wake = min(wake, now + ahead / share)
                elif ahead >= self.window_s(share):  # a window ahead: stop until share x wall catches up
                    if self._signal(pg, signal.SIGSTOP):
                        self._stopped.add(pg)
                        self._stopped_at[pg] = now
                        self.periods += 1
                        wake = min(wake, now + ahead / share)
                else:  # cannot get a window ahead before (window - ahead) of wall time
                    wake = min(wake, now + max(self.window_s(share) - ahead, 2e-4))
            self.clocks.keep(read)
            self._wake.clear()
            self._wake.wait(max(wake - time.monotonic(), 0.0))


class _HolderFile:
    """The host CPU gate's holder (profiler.hostcpu): re-read only when the file changed, and believed only while
    the gate is held exclusively (a run killed mid-launch leaves its name behind, not its lock)."""

    def __init__(self) -> None:
        self.path = hostcpu.lock_path("holder")
        self.stamp: tuple[int, int, int] | None = None
        self.value = ""
        self.checked = -math.inf

    def read(self) -> str:
        try:
            st = self.path.stat()
        except OSError:
            return ""
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        now = time.monotonic()
        if stamp != self.stamp or (self.value and now - self.checked > 0.5):
            self.stamp, self.value, self.checked = stamp, hostcpu.holder(), now
            if self.value and not hostcpu.held_exclusively():
                self.value = ""
        return self.value


class _Budget:
    """One group's CPU-time account: credit earned at `share` per wall second, CPU spent by its busiest thread."""

    def __init__(self, now: float, fresh: bool = True):
        self.t = now
        self.ahead = 0.0  # CPU s spent beyond the credit earned (negative: unspent credit)
        self.cpu: dict[int, int] = {}
        self.fresh = fresh  # the group started at `now`: all its CPU time counts (else: from the next look)
        self.pids: set[int] = set()  # the group's processes last seen (the power model's members + descendants)

    def update(self, now: float, share: float, window: float, cpu: dict[int, int], stopped: bool = False) -> float:
        spent = 0
        if self.fresh:  # a thread first seen is charged all its CPU time (it started since the last look)
            for tid, ns in cpu.items():
                spent = max(spent, ns - min(self.cpu.get(tid, 0), ns))
        self.cpu, self.fresh = cpu, True
        self.ahead += spent / 1e9 - share * (now - self.t)
        # idle time earns at most one window; time we kept it stopped too long (a late wake) is made up for up to
        # LATE_CREDIT_S of wall time: a longer stall (the host or this process descheduled) is not paid back as a
        # burst at full speed, which would make one step many times faster than the next
        self.ahead = max(self.ahead, -(window + share * LATE_CREDIT_S) if stopped else -window)
        self.t = now
        return self.ahead


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (field 3 = index 0), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """starttime of `pid` (clock ticks since boot), or None when the process is gone."""
    f = _stat_fields(pid)
    try:
        return int(f[19]) if f is not None else None
    except (ValueError, IndexError):
        return None


def _state(pid: int) -> str:
    f = _stat_fields(pid)
    return f[0].decode() if f else ""


def _started(pid: int, default: float) -> float:
    """When process `pid` started, on time.monotonic()'s clock (/proc/<pid>/stat starttime; `default` if gone).
    starttime counts from boot (CLOCK_BOOTTIME, which also counts suspend: the two agree on a host that did not
    sleep since; a later start is clipped to now by the caller)."""
    ticks = _start_ticks(pid)
    if ticks is None:
        return default
    boot = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return ticks / os.sysconf("SC_CLK_TCK") - boot


def _thread_cpu_ns(
    pids: Iterable[int], clocks: TaskClocks | None = None, pg: int | None = None
) -> tuple[dict[int, int], set[int]]:
    """(tid -> ns on a CPU of every thread of `pids` and of their descendants, the pids seen); with `clocks`, a
    running thread's time is exact to the read (else schedstat field 1, brought up to date at scheduler ticks).
    Descendants come from /proc/<pid>/task/<tid>/children: a process a shell just started is budgeted from its
    first tick, not from the power model's next rescan of the sessions. With `pg`, only processes still in that
    process group count: one that left it (`timeout` makes a group of its own) is not stopped with it, and has a
    budget of its own."""
    out: dict[int, int] = {}
    tried: set[int] = set()
    seen: set[int] = set()  # only the live ones: a sampler's group forks a child per sample for hours
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in tried:
            continue
        tried.add(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            if pg is not None and pid != pg and _pgrp(pid) != pg:
                continue
        except OSError:
            continue
        seen.add(pid)
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}/"
            try:
                with open(base + "schedstat", "rb") as f:
                    ns = int(f.read().split()[0])
                with open(base + "children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError, IndexError):
                continue
            out[int(tid)] = clocks.ns(int(tid), ns) if clocks is not None else ns
    return out, seen


def _pgrp(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        try:
            return int(f.read().rpartition(b")")[2].split()[2])
        except (ValueError, IndexError) as exc:
            raise OSError(f"/proc/{pid}/stat: {exc}") from exc


_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241}.get(platform.machine())
_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_TASK_CLOCK = 1, 1
_EXCLUDE_KERNEL_HV = (1 << 5) | (1 << 6)  # perf_event_attr flag bits: what perf_event_paranoid 2 lets a user count


class _PerfAttr(ctypes.Structure):  # struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1)
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
    ]


class TaskClocks:
    """Exact CPU time of other processes' threads: a perf task-clock counter per thread (the kernel brings a running
    thread's time up to date when the counter is read). schedstat alone is brought up to date only at scheduler
    ticks (4 ms at HZ=250), so a throttled step shorter than a tick could run whole at host speed before its
    budget saw it. Where perf_event_open is refused (perf_event_paranoid, seccomp, another arch), schedstat it is,
    and `exact` says so."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fds: dict[int, tuple[int, int]] = {}  # tid -> (counter fd, schedstat ns when it was opened)
        self._flags = 0
        self.exact = self._open(os.getpid()) is not None
        self.why = "" if self.exact else self._why
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _open(self, tid: int) -> int | None:
        if _PERF_EVENT_OPEN is None:
            self._why = f"no perf_event_open number for {platform.machine()}"
            return None
        attr = _PerfAttr(
            type=_PERF_TYPE_SOFTWARE, size=ctypes.sizeof(_PerfAttr), config=_PERF_COUNT_SW_TASK_CLOCK, flags=self._flags
        )
        fd: int = self._libc.syscall(_PERF_EVENT_OPEN, ctypes.byref(attr), tid, -1, -1, 0)
        if fd < 0 and ctypes.get_errno() in (errno.EACCES, errno.EPERM) and not self._flags:
            self._flags = _EXCLUDE_KERNEL_HV  # user time only is what an unprivileged user may count
            return self._open(tid)
        if fd < 0:
            self._why = f"perf_event_open: {os.strerror(ctypes.get_errno())}"
            return None
        self._fds[tid] = (fd, 0)
        return fd

    def ns(self, tid: int, schedstat_ns: int) -> int:
        """CPU ns of thread `tid`, whose schedstat now says `schedstat_ns`."""
        if not self.exact:
            return schedstat_ns
        got = self._fds.get(tid)
        if got is None:
            if self._open(tid) is None:
                return schedstat_ns
            got = self._fds[tid] = (self._fds[tid][0], schedstat_ns)
        fd, base = got
        try:
            return base + cast(int, struct.unpack("Q", os.read(fd, 8))[0])
        except OSError:
            return schedstat_ns

    def keep(self, tids: Iterable[int]) -> None:
        """Close the counters of every thread not in `tids` (gone, or no longer throttled)."""
        for tid in self._fds.keys() - set(tids):
            os.close(self._fds.pop(tid)[0])

    def close(self) -> None:
        self.keep(())


# -------------------------------------------------------------------------------------------- the phone model
@dataclass(frozen=True)
class DvfsState:
    freqs_khz: tuple[int, ...]
    shares: tuple[float, ...]
    caps_khz: tuple[int, ...]
    cooling: tuple[int, ...]
    rise_c: float
    hottest_c: float


class DvfsModel:
    """Frequencies, thermal caps and the temperature of one phone; `step()` once per power-model tick."""

    def __init__(self, profile: Profile, root: Path):
        self.profile, self.root = profile, Path(root)
        self.sys = self.root / "sys"
        # a cluster's cpufreq directories: one policyN, or cpuN/cpufreq per CPU on old kernels (one shared policy)
        self.dirs = [profile.policy_dirs(self.sys / "devices/system/cpu", cl) for cl in profile.clusters]
        self.freqs = [
            _read_int(d[0] / "scaling_cur_freq", cl.freqs_khz[0]) for d, cl in zip(self.dirs, profile.clusters)
        ]
        self.last_gov = [cl.governor for cl in profile.clusters]
        self.cooling_state = [0] * len(profile.clusters)
        self.cooling_dev: list[int | None] = []  # cooling_device index per cluster ("thermal-cpufreq-<cpu>")
        for cl in profile.clusters:
            idx = next(
                (i for i, d in enumerate(profile.cooling_devices) if d.type == f"thermal-cpufreq-{cl.cpus[0]}"), None
            )
            self.cooling_dev.append(idx)
        self.held_s = [0.0] * len(profile.clusters)  # time at the current frequency
        # stats/time_in_state: seconds at each frequency since boot (carried on from the file: a restarted model
        # keeps counting), written in 10 ms units as Linux does
        self.tis_s = [_read_tis(d[0] / TIME_IN_STATE, cl.freqs_khz) for d, cl in zip(self.dirs, profile.clusters)]
        self.util_avg = [0.0] * len(profile.clusters)  # smoothed frequency-invariant utilisation (0..1)
        self.rise_c = 0.0
        self.since_poll = 0.0
        self._written: dict[Path, str] = {}
        self._write_temps()

    # -- sysfs
    def _write(self, path: Path, value: str) -> None:
        if self._written.get(path) != value:
            with contextlib.suppress(OSError):
                write_node(path, value)
                self._written[path] = value

    def _policy(self, i: int) -> tuple[str, int, int, int | None]:
        cl, pol = self.profile.clusters[i], self._primary(i)
        gov = _read(pol / "scaling_governor") or self.last_gov[i]
        if gov not in cl.governors:  # a kernel refuses the write (EINVAL); a plain file is put back
            gov = self.last_gov[i]
            self._written.pop(pol / "scaling_governor", None)
            self._write(pol / "scaling_governor", gov)
        self.last_gov[i] = gov
        lo = _read_int(pol / "scaling_min_freq", cl.freqs_khz[0])
        hi = _read_int(pol / "scaling_max_freq", cl.freqs_khz[-1])
        setspeed = _read_int(pol / "scaling_setspeed", None) if gov == "userspace" else None
        return gov, lo, hi, setspeed

    def _primary(self, i: int) -> Path:
        """The directory last written of cluster i's (one shared policy): its settings are copied to the others."""
        dirs = self.dirs[i]
        if len(dirs) == 1:
            return dirs[0]

        def stamp(d: Path) -> int:
            return max((_mtime(d / f) for f in INPUTS), default=0)

        primary = max(dirs, key=stamp)
        for d in dirs:
            if d != primary:
                for f in INPUTS:
                    value = _read(primary / f)
                    if value is not None and _read(d / f) != value:
                        self._written.pop(d / f, None)
                        self._write(d / f, value)
        return primary

    def cap_khz(self, i: int) -> int:
        table = self.profile.clusters[i].freqs_khz
        return table[max(0, len(table) - 1 - self.cooling_state[i])]

    def zone_temps_c(self) -> list[float]:
        return [z.temp_mc / 1000 + z.coupling * self.rise_c for z in self.profile.thermal_zones]

    def hottest_c(self) -> float:
        temps = [t for t, z in zip(self.zone_temps_c(), self.profile.thermal_zones) if z.coupling >= 1.0]
        return max(temps or self.zone_temps_c() or [0.0])

    def _write_temps(self) -> None:
        for k, t in enumerate(self.zone_temps_c()):
            self._write(self.sys / f"class/thermal/thermal_zone{k}/temp", str(int(round(t * 1000))))

    def shares(self) -> list[float]:
        return cluster_shares(self.profile, self.freqs)

    # -- one tick
    def step(self, dt: float, utils: list[float], p_dyn_w: float, new_tasks: Collection[int] = ()) -> DvfsState:
        """Advance by dt seconds: heat from the modeled power above idle, thermal caps, governors' next frequency.
        `new_tasks`: clusters where a process first ran during dt; as the kernel's post_init_entity_util_avg gives a
        new task half of its CPU's spare capacity, the cluster's utilisation is raised to at least that."""
        th = self.profile.thermal
        target = max(p_dyn_w, 0.0) * th.r_th_c_per_w
        self.rise_c = target + (self.rise_c - target) * math.exp(-dt / th.tau_s)
        self.since_poll += dt
        if self.since_poll >= th.polling_s:  # step_wise: one table step per polling interval
            self.since_poll = 0.0
            hot = self.hottest_c()
            for i, cl in enumerate(self.profile.clusters):
                if hot > th.trip_c:
                    self.cooling_state[i] = min(self.cooling_state[i] + 1, len(cl.freqs_khz) - 1)
                elif hot < th.trip_c - th.hysteresis_c:
                    self.cooling_state[i] = max(self.cooling_state[i] - 1, 0)
        decay = 0.5 ** (dt / UTIL_HALF_LIFE_S)
        for i, cl in enumerate(self.profile.clusters):
            gov, lo, hi, setspeed = self._policy(i)
            hi_eff = min(hi, self.cap_khz(i))
            # frequency-invariant utilisation, smoothed as PELT does (a throttled group's busy time comes in
            # bursts of a window: one tick can see it stopped throughout); the governors see it at f_cur
            busy = utils[i] if i < len(utils) else 0.0
            top = cl.freqs_khz[-1]
            self.util_avg[i] = self.util_avg[i] * decay + busy * self.freqs[i] / top * (1 - decay)
            if i in new_tasks:
                self.util_avg[i] = max(self.util_avg[i], (1.0 - self.util_avg[i]) / 2)
            f = next_freq(
                gov,
                self.freqs[i],
                min(1.0, self.util_avg[i] * top / self.freqs[i]),
                cl.freqs_khz,
                min(lo, hi_eff),
                hi_eff,
                setspeed,
            )
            self.held_s[i] += dt
            self.tis_s[i][self.freqs[i]] = self.tis_s[i].get(self.freqs[i], 0.0) + dt  # the frequency during dt
            hold = DOWN_HOLD_S.get(gov, 0.0)
            if f < self.freqs[i] and self.held_s[i] < hold and self.freqs[i] <= hi_eff:
                f = self.freqs[i]  # a dynamic governor lowers a frequency only after holding it a while
            if f != self.freqs[i]:
                self.held_s[i] = 0.0
            self.freqs[i] = f
            for pol in self.dirs[i]:
                for name in ("scaling_cur_freq", "cpuinfo_cur_freq"):
                    self._write(pol / name, str(self.freqs[i]))
                self._write(pol / TIME_IN_STATE, tis_text(self.tis_s[i]))
            dev = self.cooling_dev[i]
            if dev is not None:
                max_state = self.profile.cooling_devices[dev].max_state
                self._write(
                    self.sys / f"class/thermal/cooling_device{dev}/cur_state",
                    str(min(self.cooling_state[i], max_state)),
                )
        self._write_temps()
        return DvfsState(
            tuple(self.freqs),
            tuple(self.shares()),
            tuple(self.cap_khz(i) for i in range(len(self.freqs))),
            tuple(self.cooling_state),
            self.rise_c,
            self.hottest_c(),
        )


INPUTS = ("scaling_governor", "scaling_min_freq", "scaling_max_freq", "scaling_setspeed")
TIME_IN_STATE = "stats/time_in_state"


def tis_text(seconds: dict[int, float]) -> str:
    """cpufreq's stats/time_in_state: `<kHz> <time in 10 ms units>` per frequency, ascending (pure)."""
    return "\n".join(f"{f} {int(t * 100 + 1e-6)}" for f, t in sorted(seconds.items()))  # float sums: 0.5 not 0.49


def _read_tis(path: Path, table: Sequence[int]) -> dict[int, float]:
    """Seconds per frequency of a time_in_state file (every table frequency present, 0 where the file has none)."""
    out = dict.fromkeys(table, 0.0)
    for line in (_read(path) or "").splitlines():
        f, _, t = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[int(f)] = int(t) / 100
    return out


def write_node(path: Path, value: str) -> None:
    """Write a sysfs node the model owns in one step (a temp file renamed over it): a shell's `cat` never reads it
    empty between the truncation and the write, as a kernel's attribute is never seen empty."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path, default: _T) -> int | _T:
    text = _read(path)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
