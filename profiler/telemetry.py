"""Frequency telemetry around runner launches (Jetpack Microbenchmark's throttle check, on cpufreq's own counters).

Before and after every launch the worker runs `probe.sh telemetry` (one shell call each side): every cpufreq
policy with its cumulative `stats/time_in_state` (`<kHz> <time>` per line, time in 10 ms units), the thermal zones
and the cooling devices. Everything here is a pure function of the text the device printed (nn-Meter's parser
side):

    mean_frequency_khz(before_text, after_text)   # time_in_state deltas -> mean kHz over the launch (or None)
    reading = parse_reading(text)                 # one `probe.sh telemetry` output
    w = window(reading_before, reading_after)     # one launch: mean kHz per policy, hottest zone, cooling states
    cell = combine([w, ...])                      # a cell's launches: time-weighted mean per policy, maxima
    flags = judge(cell, governor, pinned, max_temp_c)     # why the cell ran throttled (empty: it did not)

Where a policy has no time_in_state (stats not built, or a counter reset between the reads), its mean is the mean of
the two `scaling_cur_freq` samples (`source` "sampled": a coarse estimate, said so). A cell is throttled when:
- its frequency fell off what its governor or pin asks for (performance: the hardware max, powersave: the hardware
  min, a pinned frequency: that one; `TOLERANCE` either way), judged on its worst launch; other governors pick their
  own frequency, so for them only thermal evidence counts;
- a CPU cooling device (its type names a cpu: `thermal-cpufreq-N`, `cpufreq-cpuN`, `cpu-isolateN`) was engaged at a
  read; or the hottest thermal zone reached `max_temp_c` (when a campaign sets one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from autlearn.profiler.probe import CoolingDevice, DeviceFacts, Policy, parse_probe

TOLERANCE = 0.03  # a mean this far (relative) off its governor's frequency is off
UNIT_S = 0.01  # time_in_state counts in 10 ms units (USER_HZ ticks), as Linux does
SOURCES = ("time_in_state", "sampled")

TimeInState = tuple[tuple[int, int], ...]  # (kHz, cumulative 10 ms units), in the order printed


def parse_time_in_state(text: str) -> TimeInState:
    """`stats/time_in_state` text (lines `<kHz> <units>`, or the same joined by spaces as probe.sh prints a node)
    -> ((kHz, units), ...). Pure; a pair that is not two integers is left out."""
    tokens = text.split()
    out = []
    for f, t in zip(tokens[::2], tokens[1::2]):
        try:
            out.append((int(f), int(t)))
        except ValueError:
            continue
    return tuple(out)


def tis_delta(before: TimeInState, after: TimeInState) -> tuple[tuple[int, int], ...] | None:
    """Time (10 ms units) spent at each frequency between two readings; None when a counter went backwards (stats
    reset, a CPU taken offline and back) or `after` is empty."""
    if not after:
        return None
    old = dict(before)
    out = []
    for f, t in after:
        d = t - old.get(f, 0)
        if d < 0:
            return None
        out.append((f, d))
    return tuple(out)


def mean_khz_of(delta: Iterable[tuple[int, int]]) -> tuple[float, int] | None:
    """(time-weighted mean kHz, units) of per-frequency time deltas; None when no time passed."""
    pairs = list(delta)
    total = sum(t for _, t in pairs)
    if total <= 0:
        return None
    return sum(f * t for f, t in pairs) / total, total


def mean_frequency_khz(before: str, after: str) -> float | None:
    """The mean frequency (kHz) between two `time_in_state` texts of one policy: sum(f x dt) / sum(dt) over the
    per-frequency deltas. None when less than one unit (10 ms) passed or a counter went backwards. Pure."""
    delta = tis_delta(parse_time_in_state(before), parse_time_in_state(after))
    got = mean_khz_of(delta) if delta is not None else None
    return None if got is None else got[0]


# ------------------------------------------------------------------------------------------------------ readings
@dataclass(frozen=True)
class Reading:
    """One `probe.sh telemetry` output: the policies (governor, limits, scaling_cur_freq), their time_in_state,
    thermal zones and cooling devices."""

    facts: DeviceFacts
    time_in_state: tuple[tuple[str, TimeInState], ...] = ()

    @property
    def cpu_cooling(self) -> tuple[CoolingDevice, ...]:
        return tuple(c for c in self.facts.cooling if "cpu" in c.type.lower())


def parse_reading(text: str, serial: str = "") -> Reading:
    """Parse `probe.sh telemetry` output (ParseError when it is not probe output). Pure."""
    facts = parse_probe(text, serial=serial)
    tis = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("policy.") and key.endswith(".time_in_state"):
            tis.append((key[len("policy.") : -len(".time_in_state")], parse_time_in_state(value)))
    return Reading(facts, tuple(tis))


@dataclass(frozen=True)
class PolicyWindow:
    """One policy over one launch (or a cell's launches, combined): mean kHz, how it was measured, and the time it
    covers in 10 ms units (0 for a sampled mean)."""

    name: str
    mean_khz: float
    source: str  # "time_in_state" | "sampled"
    units: int = 0
    worst_low_khz: float | None = None  # combined: the lowest / highest mean of one launch
    worst_high_khz: float | None = None


@dataclass(frozen=True)
class Window:
    """What the reads before and after one launch (or a cell's launches, combined) tell."""

    policies: tuple[PolicyWindow, ...]
    max_temp_c: float | None
    cooling: tuple[tuple[str, int, int | None], ...]  # CPU cooling devices: (type or name, highest state, max_state)
    limits: tuple[Policy, ...] = ()  # the policies as read before (governor, hardware limits)

    @property
    def source(self) -> str:
        return "+".join(sorted({p.source for p in self.policies}))


def window(before: Reading, after: Reading) -> Window:
    """One launch from the reads around it. Pure."""
    tis0, tis1 = dict(before.time_in_state), dict(after.time_in_state)
    cur0 = {p.name: p.cur_khz for p in before.facts.policies}
    pols = []
    for p in after.facts.policies:
        delta = tis_delta(tis0.get(p.name, ()), tis1.get(p.name, ())) if p.name in tis0 else None
        got = mean_khz_of(delta) if delta is not None else None
        if got is not None:
            pols.append(PolicyWindow(p.name, got[0], "time_in_state", got[1], got[0], got[0]))
            continue
        samples = [f for f in (cur0.get(p.name), p.cur_khz) if f is not None]
        if samples:
            m = sum(samples) / len(samples)
            pols.append(PolicyWindow(p.name, m, "sampled", 0, m, m))
    temps = [t for t in (before.facts.max_temp_c, after.facts.max_temp_c) if t is not None]
    cooling: dict[str, tuple[int, int | None]] = {}
    for c in before.cpu_cooling + after.cpu_cooling:
        name = c.type or c.name
        state = c.cur_state or 0
        seen = cooling.get(name, (0, c.max_state))
        cooling[name] = (max(seen[0], state), c.max_state if c.max_state is not None else seen[1])
    return Window(
        tuple(pols),
        max(temps) if temps else None,
        tuple((n, s, m) for n, (s, m) in sorted(cooling.items())),
        before.facts.policies,
    )


def combine(windows: Sequence[Window]) -> Window:
    """A cell's launches as one: per policy the time-weighted mean (plain mean where a launch was sampled), the
    lowest and highest launch mean; the hottest zone; each cooling device's highest state. Pure."""
    by: dict[str, list[PolicyWindow]] = {}
    for w in windows:
        for p in w.policies:
            by.setdefault(p.name, []).append(p)
    pols = []
    for name, ps in by.items():
        units = sum(p.units for p in ps)
        if all(p.units > 0 for p in ps):
            mean = sum(p.mean_khz * p.units for p in ps) / units
        else:
            mean = sum(p.mean_khz for p in ps) / len(ps)
        lows = [p.worst_low_khz if p.worst_low_khz is not None else p.mean_khz for p in ps]
        highs = [p.worst_high_khz if p.worst_high_khz is not None else p.mean_khz for p in ps]
        source = "+".join(sorted({s for p in ps for s in p.source.split("+")}))
        pols.append(PolicyWindow(name, mean, source, units, min(lows), max(highs)))
    temps = [w.max_temp_c for w in windows if w.max_temp_c is not None]
    cooling: dict[str, tuple[int, int | None]] = {}
    for w in windows:
        for n, s, m in w.cooling:
            cooling[n] = (max(s, cooling.get(n, (0, m))[0]), m)
    return Window(
        tuple(pols),
        max(temps) if temps else None,
        tuple((n, s, m) for n, (s, m) in sorted(cooling.items())),
        windows[0].limits if windows else (),
    )


# -------------------------------------------------------------------------------------------------------- verdict
def expected_khz(governor: str | None, policy: Policy, pinned: Mapping[str, int]) -> tuple[float, str] | None:
    """What the governor or pin asks of `policy`: (kHz, what asks it), or None where the governor picks its own
    frequency (only thermal evidence counts for it)."""
    if policy.name in pinned:
        return float(pinned[policy.name]), f"the {pinned[policy.name] / 1e3:.0f} MHz pin"
    if governor == "performance":
        top = policy.hw_max_khz or policy.max_khz
        return (float(top), "performance (max)") if top else None
    if governor == "powersave":
        low = policy.hw_min_khz or policy.min_khz
        return (float(low), "powersave (min)") if low else None
    return None


@dataclass(frozen=True)
class Flag:
    """One kind of evidence that a cell ran throttled or off its governor's frequency: `kind` is stable (results and
    reports group cells by it), `detail` says by how much."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})"


BELOW, ABOVE = "frequency below its governor", "frequency above its governor"
COOLING, HOT = "throttled: CPU cooling engaged", "throttled: temperature limit reached"


def judge(
    cell: Window,
    governor: str | None,
    pinned: Iterable[tuple[str, int]] = (),
    max_temp_c: float | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[Flag, ...]:
    """Why the cell ran throttled or off its governor's frequency: one Flag per kind of evidence, () when none.
    `cell`: `combine` of its launches; `governor`: the governor applied; `pinned`: (policy, kHz) pins. Pure."""
    pins = dict(pinned)
    limits = {p.name: p for p in cell.limits}
    flags = []
    low, high = [], []
    for p in cell.policies:
        lim = limits.get(p.name)
        want = expected_khz(governor, lim, pins) if lim is not None else None
        if lim is None or want is None:
            continue
        khz, who = want
        worst_low = p.worst_low_khz if p.worst_low_khz is not None else p.mean_khz
        worst_high = p.worst_high_khz if p.worst_high_khz is not None else p.mean_khz
        if worst_low < khz * (1 - tolerance):
            low.append(f"{p.name} {worst_low / 1e3:.0f} MHz < {khz / 1e3:.0f} MHz of {who}")
        elif worst_high > khz * (1 + tolerance) and khz < (lim.hw_max_khz or lim.max_khz or 0):
            high.append(f"{p.name} {worst_high / 1e3:.0f} MHz > {khz / 1e3:.0f} MHz of {who}")
    if low:
        flags.append(Flag(BELOW, ", ".join(low)))
    if high:
        flags.append(Flag(ABOVE, ", ".join(high)))
    engaged = [f"{n} {s}" + (f"/{m}" if m is not None else "") for n, s, m in cell.cooling if s > 0]
    if engaged:
        flags.append(Flag(COOLING, ", ".join(engaged)))
    if max_temp_c is not None and cell.max_temp_c is not None and cell.max_temp_c >= max_temp_c:
        flags.append(Flag(HOT, f"{cell.max_temp_c:.1f} C, limit {max_temp_c:.1f} C"))
    return tuple(flags)


__all__ = [
    "ABOVE",
    "BELOW",
    "COOLING",
    "Flag",
    "HOT",
    "PolicyWindow",
    "Reading",
    "SOURCES",
    "TOLERANCE",
    "Window",
    "combine",
    "expected_khz",
    "judge",
    "mean_frequency_khz",
    "parse_reading",
    "parse_time_in_state",
    "tis_delta",
    "window",
]
