"""CPU frequency governors: intents, the mapping to what a kernel offers, and a save/restore guard.

Small operations, pyperf-style, each a call of `device_scripts/governor.sh`:

    available  -> parse_available(text) -> tuple[CpuPolicy, ...]    (what each cpufreq policy offers)
    read       -> parse_state(text)     -> tuple[PolicyState, ...]  (governor and limits now)
    apply      -> one policy: governor [+ min/max limits]
    restore    -> re-apply a snapshot (the text `read` printed)

`resolve_governor(intent, available, fallback)` is pure: it maps an intent from a campaign (`interactive`,
`powersave`, `performance`, `schedutil`, `userspace@FREQ`) to a governor the kernel offers. `GovernorGuard` changes a
phone's governors and puts every policy back as it was on exit, on exceptions and on SIGINT/SIGTERM; it also keeps the
snapshot on disk so `restore_pending(results_dir, connect)` can undo the changes of a host process that was killed.

Mapping table (`fallback = "nearest"`; the requested governor is tried first, then the first candidate offered):

| intent      | nearest candidates                                   | why                                            |
| ----------- | ---------------------------------------------------- | ---------------------------------------------- |
| interactive | schedutil, walt, sched_pixel, ondemand, conservative | removed from mainline; its load-driven         |
|             |                                                      | successors, mainline first (comparable across  |
|             |                                                      | phones), then vendor (Qualcomm, Pixel), older  |
| schedutil   | walt, sched_pixel, interactive, ondemand             | vendor forks of schedutil, then older ones     |
| performance | (none)                                               | always built; nothing else means "max"         |
| powersave   | (none)                                               | always built; nothing else means "min"         |
| userspace@F | performance with min = max = F (pinned by limits)    | many GKI kernels do not build userspace        |

`fallback = "skip"` accepts only the requested governor (`applied=None` otherwise, the cell is skipped with the
reason); `"fail"` raises `GovernorUnavailable`. Requested and applied are both recorded with every result.

Frequency pins (issue 34): `pin:CLUSTER=LEVEL[,CLUSTER=LEVEL...]` holds clusters at a frequency, one cell per entry,
so a campaign sweeps frequency like any other factor (`governors = ["pin:big=min", "pin:big=1.2GHz",
"pin:big=max"]`; `pin:little=min,big=1.8GHz`; `pin:all=max`).

- CLUSTER: `all`; `little` / `big` (the slowest / fastest cluster by its highest offered frequency, as affinity's
  little/big; two clusters or more); `mid` (the middle of exactly three); `policyN` (a policy by its kernel name);
  `cpuN` (the policy CPU N belongs to). `all` comes first, a named cluster overrides it; two names that reach one
  policy with different levels are an error.
- LEVEL: `min` / `max` (the lowest / highest frequency the policy offers: scaling_available_frequencies, else
  cpuinfo_min/max_freq) or a frequency (`1.2GHz`, `1200MHz`, `1200000` kHz). A frequency is held at the NEAREST
  frequency the policy offers and the choice is recorded (`Applied.pinned_khz`, the reason says `requested ->
  held`); one farther than PIN_TOLERANCE (10 %) from every offered frequency is an error naming the offered ones
  (a typo such as 18GHz, or a frequency of another phone), and the cell is skipped with it (`fallback = "fail"`:
  GovernorUnavailable). Written canonically as `pin:little=min,big=1200000` (kHz; all, little, mid, big, then
  policies and CPUs).
- How: with `userspace` on every policy, userspace + scaling_setspeed (limits at the full hardware range); else
  `performance` with scaling_min_freq = scaling_max_freq. One governor on every policy (a cell runs under one):
  policies the pin does not name are held at their highest frequency (setspeed = max, or performance's own max),
  the same in every cell of a sweep. `plan_pins` is pure; `GovernorGuard.apply_pins` writes the plan in one call
  (`governor.sh pin`), reads it back and fails the cell when the kernel did not hold it.
- Restored like every governor change: the snapshot (governor, scaling_min_freq, scaling_max_freq,
  scaling_setspeed of every policy) is taken before the first change and written back, byte for byte.
- `resolve_governor` cannot resolve a pin from governor names alone (`applied=None`): a phone without root runs no
  pin cell.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from types import FrameType, TracebackType
from typing import Any, Literal, NoReturn, cast

from autlearn.profiler import hostcpu, knobs
from autlearn.profiler.cpufreq import CpuPolicy, common_governors, parse_policy
from autlearn.profiler.errors import DeviceCommandFailed, NotRooted, ParseError, UserError

INTENTS = ("interactive", "powersave", "performance", "schedutil", "userspace")
FALLBACKS = ("nearest", "skip", "fail")
NEAREST: dict[str, tuple[str, ...]] = {
    "interactive": ("schedutil", "walt", "sched_pixel", "ondemand", "conservative"),
    "schedutil": ("walt", "sched_pixel", "interactive", "ondemand"),
    "performance": (),
    "powersave": (),
    "userspace": (),  # handled specially: pinned limits under `performance`
}
SCRIPT = "governor.sh"
KNOB = "governor"  # autlearn.profiler.knobs: snapshots under <root>/governor-pending/<serial>.json while changed

PIN_PREFIX = "pin:"
PIN_ROLES = ("all", "little", "mid", "big")  # then policyN, cpuN
PIN_TOLERANCE = 0.10  # a pinned frequency farther than this (relative) from every offered one is an error

_UNITS = {"": 1, "khz": 1, "mhz": 1000, "ghz": 1_000_000, "hz": 0.001}
_FREQ_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$", re.I)
_PIN_NAME_RE = re.compile(r"^(all|little|mid|big|policy([0-9]+)|cpu([0-9]+))$")


class GovernorUnavailable(UserError):
    """The requested governor is not offered and the campaign said `fallback = "fail"`."""


class PinError(ValueError):
    """A pin this phone cannot hold: a cluster it does not have, a frequency it does not offer (the message names
    what it has)."""


# ---------------------------------------------------------------------------------------------------------- intents
PinLevel = Literal["min", "max"]


@dataclass(frozen=True)
class Pin:
    """One `CLUSTER=LEVEL` of a `pin:` entry: LEVEL is a frequency in kHz, or the policy's lowest / highest one."""

    cluster: str  # "all" | "little" | "mid" | "big" | "policyN" | "cpuN"
    level: int | PinLevel

    def __str__(self) -> str:
        return f"{self.cluster}={self.level}"


@dataclass(frozen=True)
class GovernorIntent:
    """A governor as a campaign asks for it. `freq_khz` only for `userspace`; `pins` only for `pin:` (name "pin")."""

    name: str
    freq_khz: int | None = None
    pins: tuple[Pin, ...] = ()

    def __str__(self) -> str:
        if self.pins:
            return PIN_PREFIX + ",".join(str(p) for p in self.pins)
        return f"{self.name}@{self.freq_khz}" if self.freq_khz is not None else self.name


def parse_frequency(text: str | int) -> int:
    """`1200000`, `"1200000"`, `"1200000kHz"`, `"1200MHz"`, `"1.2GHz"` -> 1200000 (kHz). ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"not a frequency: {text!r}")
    if isinstance(text, int):
        khz = text
    else:
        m = _FREQ_RE.match(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a frequency: {text!r} (use kHz or a unit: 1200000, 1200MHz, 1.2GHz)")
        khz = round(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if not 1 <= khz <= 100_000_000:
        raise ValueError(f"frequency out of range: {text!r}")
    return int(khz)


def _pin_key(pin: Pin) -> tuple[int, int]:
    """Canonical order: all, little, mid, big, then policies and CPUs by number."""
    if pin.cluster in PIN_ROLES:
        return (PIN_ROLES.index(pin.cluster), 0)
    m = _PIN_NAME_RE.match(pin.cluster)
    assert m is not None  # parse_pins admits only these names
    return (len(PIN_ROLES), int(m.group(2))) if m.group(2) else (len(PIN_ROLES) + 1, int(m.group(3)))


def parse_pins(text: str) -> tuple[Pin, ...]:
    """`"pin:little=min,big=1.8GHz"` (the prefix optional) -> its pins in canonical order. ValueError otherwise."""
    body = text.strip()
    if body.lower().startswith(PIN_PREFIX):
        body = body[len(PIN_PREFIX) :]
    usage = "pin:CLUSTER=LEVEL[,...], e.g. pin:big=1.2GHz, pin:little=min,big=max, pin:all=max"
    if not body.strip():
        raise ValueError(f"{text!r} pins nothing; write {usage}")
    pins: dict[str, Pin] = {}
    for part in body.split(","):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if not eq or not name or not value:
            raise ValueError(f"{part.strip()!r} in {text!r} is not CLUSTER=LEVEL; write {usage}")
        if not _PIN_NAME_RE.match(name):
            raise ValueError(f"unknown cluster {name!r} in {text!r}; name all, little, mid, big, policyN or cpuN")
        if name in pins:
            raise ValueError(f"cluster {name!r} is pinned twice in {text!r}")
        if value in ("min", "max"):
            pins[name] = Pin(name, cast(PinLevel, value))
            continue
        try:
            pins[name] = Pin(name, parse_frequency(value))
        except ValueError as exc:
            raise ValueError(f"{name}={value} in {text!r}: {exc}; or min / max") from None
    return tuple(sorted(pins.values(), key=_pin_key))


def parse_intent(text: str) -> GovernorIntent:
    """`"interactive"` | `"powersave"` | `"performance"` | `"schedutil"` | `"userspace@FREQ"` |
    `"pin:CLUSTER=LEVEL,..."`; ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"governor must be a string, not {type(text).__name__}")
    if text.strip().lower().startswith(PIN_PREFIX):
        return GovernorIntent("pin", pins=parse_pins(text))
    name, at, freq = text.strip().partition("@")
    name = name.strip().lower()
    if name not in INTENTS:
        valid = ", ".join(i if i != "userspace" else "userspace@FREQ" for i in INTENTS)
        raise ValueError(f"unknown governor {text!r}; valid: {valid}, pin:CLUSTER=LEVEL[,...]")
    if name == "userspace":
        if not at:
            raise ValueError("userspace needs a frequency: userspace@1.2GHz or userspace@1200000 (kHz)")
        return GovernorIntent(name, parse_frequency(freq))
    if at:
        raise ValueError(f"only userspace takes a frequency, not {name!r}")
    return GovernorIntent(name)


@dataclass(frozen=True)
class Resolution:
    """What was asked, what will be applied (None: nothing suitable, skip the cell) and why.

    `pin_khz` is set when a frequency is to be held: with `userspace` via scaling_setspeed, otherwise (the
    `performance` fallback) through min = max limits."""

    requested: str
    applied: str | None
    reason: str
    pin_khz: int | None = None

    @property
    def exact(self) -> bool:
        """True when the requested governor itself is applied (a pin: when it is held)."""
        if self.requested.startswith(PIN_PREFIX):
            return self.applied is not None
        return self.applied == self.requested.partition("@")[0]


def resolve_governor(intent: str | GovernorIntent, available: Sequence[str], fallback: str = "nearest") -> Resolution:
    """Map an intent to one of `available` (the kernel's scaling_available_governors). Pure.

    Raises ValueError for an unknown intent/fallback, GovernorUnavailable when `fallback == "fail"` and the requested
    governor is not offered."""
    it = intent if isinstance(intent, GovernorIntent) else parse_intent(intent)
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
    offered = tuple(available)
    req = str(it)
    if it.pins:  # which policy is little or big, what each offers: only the policies tell (plan_pins)
        return Resolution(req, None, "a frequency pin needs the phone's policies (GovernorGuard.apply_pins)")
    if it.name in offered:
        return Resolution(req, it.name, "offered", it.freq_khz)
    missing = f"{it.name} not offered (kernel offers: {' '.join(offered) or 'nothing'})"
    if fallback == "fail":
        raise GovernorUnavailable(f'governor {missing}; fallback = "fail"')
    if fallback == "skip":
        return Resolution(req, None, f'{missing}; fallback = "skip"')
    if it.name == "userspace" and "performance" in offered:
        return Resolution(
            req, "performance", f"{missing}; nearest: performance pinned to {it.freq_khz} kHz by limits", it.freq_khz
        )
    for cand in NEAREST[it.name]:
        if cand in offered:
            return Resolution(req, cand, f"{missing}; nearest: {cand}")
    return Resolution(req, None, f"{missing}; no nearest equivalent")


# ---------------------------------------------------------------------------------------------------------- parsing
PolicyInfo = CpuPolicy  # what a policy offers (`governor.sh available`): governor and limits now are None


@dataclass(frozen=True)
class PolicyState:
    """A policy's governor and limits now (`governor.sh read`); kHz; None where the file was unreadable."""

    policy: str
    governor: str
    min_khz: int | None
    max_khz: int | None
    cur_khz: int | None = None
    setspeed: str | None = None  # scaling_setspeed content ("<unsupported>" unless userspace)


def _blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, eq, value = line.partition("=")
        if not eq or not key:
            raise ParseError(f"governor.sh output line {n} is not key=value", raw)
        if key == "policy":
            if not value:
                raise ParseError(f"governor.sh output line {n}: empty policy name", raw)
            blocks.append({})
        elif not blocks:
            raise ParseError(f"governor.sh output line {n}: `{key}` before any policy=", raw)
        blocks[-1][key] = value
    return blocks


def _int(value: str | None, what: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise ParseError(f"governor.sh: {what} is not an integer", value) from None


# `governor.sh available` key -> the sysfs file it prints
AVAILABLE_KEYS = {
    "cpus": "related_cpus",
    "governors": "scaling_available_governors",
    "frequencies": "scaling_available_frequencies",
    "cpuinfo_min": "cpuinfo_min_freq",
    "cpuinfo_max": "cpuinfo_max_freq",
}


def parse_available(text: str) -> tuple[CpuPolicy, ...]:
    """Parse `governor.sh available` output (autlearn.profiler.cpufreq.parse_policy, strict). Raises ParseError."""
    return tuple(
        parse_policy(b["policy"], {AVAILABLE_KEYS[k]: v for k, v in b.items() if k in AVAILABLE_KEYS}, strict=True)
        for b in _blocks(text)
    )


def parse_state(text: str) -> tuple[PolicyState, ...]:
    """Parse `governor.sh read` (and `apply`/`setspeed`) output. Raises ParseError."""
    out = []
    for b in _blocks(text):
        out.append(
            PolicyState(
                policy=b["policy"],
                governor=b.get("governor", ""),
                min_khz=_int(b.get("min"), "min"),
                max_khz=_int(b.get("max"), "max"),
                cur_khz=_int(b.get("cur"), "cur"),
                setspeed=b.get("setspeed"),
            )
        )
    return tuple(out)


def format_snapshot(states: Iterable[PolicyState]) -> str:
    """The snapshot text `governor.sh restore` reads (same format as `read`)."""
    lines = []
    for s in states:
        lines += [f"policy={s.policy}", f"governor={s.governor}"]
        if s.min_khz is not None and s.max_khz is not None:
            lines += [f"min={s.min_khz}", f"max={s.max_khz}"]
        if s.setspeed is not None:
            lines.append(f"setspeed={s.setspeed}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- pins
@dataclass(frozen=True)
class PolicySetting:
    """What `governor.sh pin` writes to one policy: governor, limits, and scaling_setspeed under userspace."""

    policy: str
    governor: str
    min_khz: int
    max_khz: int
    setspeed_khz: int | None = None


@dataclass(frozen=True)
class PinPlan:
    """A pin resolved against a phone's policies: one setting per policy (every policy under `governor`), the
    (policy, kHz) pinned (the policies the pin named) and the reason recorded with the cell."""

    governor: str
    settings: tuple[PolicySetting, ...]
    pinned_khz: tuple[tuple[str, int], ...]
    reason: str

    def script_args(self) -> list[str]:
        """`governor.sh pin` arguments: POLICY GOV MIN MAX SPEED per policy (SPEED `-`: none)."""
        return [
            str(x)
            for st in self.settings
            for x in (
                st.policy,
                st.governor,
                st.min_khz,
                st.max_khz,
                "-" if st.setspeed_khz is None else st.setspeed_khz,
            )
        ]


def _range(p: CpuPolicy) -> tuple[int, int]:
    """The lowest and highest frequency a policy offers (its table, else cpuinfo limits). PinError without either."""
    lo = p.frequencies_khz[0] if p.frequencies_khz else p.hw_min_khz
    hi = p.frequencies_khz[-1] if p.frequencies_khz else p.hw_max_khz
    if lo is None or hi is None:
        raise PinError(f"{p.name} reports neither scaling_available_frequencies nor cpuinfo_min/max_freq")
    return lo, hi


def _hw_range(p: CpuPolicy) -> tuple[int, int]:
    """The limits that leave a policy its full range (cpuinfo, else its table)."""
    lo, hi = _range(p)
    return (p.hw_min_khz if p.hw_min_khz is not None else lo), (p.hw_max_khz if p.hw_max_khz is not None else hi)


_Cluster = tuple[CpuPolicy, ...]  # policies a pin treats as one: a policyN, or per-CPU directories of one domain


def _cluster_order(policies: Sequence[CpuPolicy]) -> tuple[_Cluster, ...]:
    """Clusters, slowest first (by the highest frequency offered, then the first CPU). Each `policyN` is one; per-CPU
    directories (`cpuN`, old kernels without related_cpus) that offer the same frequencies are one, as
    autlearn.profiler.cpufreq.clusters groups them: a pin writes the same to each (on a kernel they share a policy)."""

    def top(p: CpuPolicy) -> int:
        return p.frequencies_khz[-1] if p.frequencies_khz else p.hw_max_khz or p.max_khz or 0

    groups: dict[object, list[CpuPolicy]] = {}
    for p in policies:
        key = ("cpu", top(p), p.frequencies_khz) if p.name.startswith("cpu") else ("policy", p.name)
        groups.setdefault(key, []).append(p)
    return tuple(sorted((tuple(g) for g in groups.values()), key=lambda g: (top(g[0]), g[0].cpus[:1] or (0,))))


def _cluster_label(c: _Cluster) -> str:
    cpus = sorted({cpu for p in c for cpu in p.cpus})
    where = f"cpu {cpus[0]}" if len(cpus) == 1 else f"cpus {cpus[0]}-{cpus[-1]}" if cpus else "no cpus"
    return f"{'+'.join(p.name for p in c)} ({where})"


def cluster_names(policies: Sequence[CpuPolicy]) -> str:
    """How a pin can name this phone's clusters, e.g. `little = policy0 (cpus 0-3), big = policy4 (cpus 4-7)`."""
    order = _cluster_order(policies)
    roles: dict[int, str] = {}
    if len(order) > 1:
        roles = {0: "little", len(order) - 1: "big"}
    if len(order) == 3:
        roles[1] = "mid"
    return ", ".join((f"{roles[i]} = " if i in roles else "") + _cluster_label(c) for i, c in enumerate(order))


def _named(name: str, order: tuple[_Cluster, ...]) -> tuple[CpuPolicy, ...]:
    """The policies a pin's cluster name reaches on this phone. PinError naming what it has otherwise."""
    n = len(order)
    if name == "all":
        return tuple(p for c in order for p in c)
    if name in ("little", "big") and n >= 2:
        return order[0] if name == "little" else order[-1]
    if name == "mid" and n == 3:
        return order[1]
    m = _PIN_NAME_RE.match(name)
    cpu = int(m.group(3)) if m is not None and m.group(3) is not None else None  # cpuN: the cluster CPU N is in
    found = [c for c in order if any(p.name == name or (cpu is not None and cpu in p.cpus) for p in c)]
    if found:
        return found[0]
    why = {
        "little": "little and big need two clusters or more",
        "big": "little and big need two clusters or more",
        "mid": "mid is the middle of exactly three clusters",
    }.get(name, f"no cluster {name!r}")
    raise PinError(f"{why}; this phone has {n}: {cluster_names([p for c in order for p in c])}")


def _level_khz(pin: Pin, p: CpuPolicy) -> tuple[int, str]:
    """The frequency a pin holds policy `p` at, and how it was chosen (for the reason)."""
    lo, hi = _range(p)
    if pin.level == "min":
        return lo, f"min = {lo} kHz"
    if pin.level == "max":
        return hi, f"max = {hi} kHz"
    want = int(pin.level)
    khz = p.nearest_frequency(want)
    offered = " ".join(str(f) for f in p.frequencies_khz) if p.frequencies_khz else f"{lo}-{hi}"
    if abs(khz - want) > PIN_TOLERANCE * want:
        raise PinError(
            f"{p.name} offers no frequency within {PIN_TOLERANCE:.0%} of {want} kHz (offered: {offered} kHz)"
        )
    return khz, f"{khz} kHz" if khz == want else f"{want} -> {khz} kHz (nearest offered)"


def plan_pins(pins: Sequence[Pin], policies: Sequence[CpuPolicy]) -> PinPlan:
    """Resolve pins against what each policy offers (`governor.sh available`). Pure; PinError when the phone cannot
    hold them (the message names its clusters or frequencies)."""
    if not policies:
        raise PinError("the phone reports no cpufreq policy")
    if not pins:
        raise PinError("nothing to pin")
    order = _cluster_order(policies)
    held: dict[str, tuple[Pin, int, str]] = {}
    named = sorted(pins, key=lambda pin: (pin.cluster == "all", _pin_key(pin)))  # `all` last: only what is left
    for pin in named:
        for p in _named(pin.cluster, order):
            prev = held.get(p.name)
            if prev is not None and pin.cluster == "all":
                continue
            khz, how = _level_khz(pin, p)
            if prev is not None and prev[1] != khz:
                raise PinError(f"{prev[0]} and {pin} both reach {p.name}")
            held[p.name] = (pin, khz, how)
    common = common_governors(policies)
    if "userspace" in common:
        gov, how = "userspace", "userspace + scaling_setspeed"
    elif "performance" in common:
        gov, how = "performance", "performance with scaling_min_freq = scaling_max_freq (no userspace governor)"
    else:
        raise PinError(f"neither userspace nor performance is offered by every policy (common: {' '.join(common)})")
    settings, pinned, said, others = [], [], [], []
    for p in policies:
        lo, hi = _hw_range(p)
        if p.name in held:
            pin, khz, chosen = held[p.name]
            pinned.append((p.name, khz))
            said.append((f"{pin.cluster} ({p.name})" if pin.cluster != p.name else p.name) + f" {chosen}")
        else:
            khz = _range(p)[1]
            others.append(f"{p.name} {khz} kHz")
        if gov == "userspace":  # the full range as limits, the frequency as scaling_setspeed
            settings.append(PolicySetting(p.name, gov, lo, hi, khz))
        elif p.name in held:  # performance runs at scaling_max_freq: min = max holds it there
            settings.append(PolicySetting(p.name, gov, khz, khz))
        else:
            settings.append(PolicySetting(p.name, gov, lo, hi))
    rest = f"; not pinned, at their max: {', '.join(others)}" if others else ""
    return PinPlan(gov, tuple(settings), tuple(pinned), f"pinned {', '.join(said)}{rest}; {how}")


# ---------------------------------------------------------------------------------------------------------- guard
def _run(device: Any, *args: str) -> str:
    """Run governor.sh as root; stdout. NotRooted when root is missing or the kernel refused a write (exit 4)."""
    r = device.run_script(SCRIPT, *args, root=True)
    if isinstance(r, str):  # a seam that returns stdout directly
        return r
    if r.exit_code == 4:  # root missing, or a root shell whose writes SELinux/the kernel refuse: skip-worthy either way
        raise NotRooted(
            "cannot change cpufreq settings",
            serial=getattr(device, "serial", ""),
            command=f"{SCRIPT} {' '.join(args)}",
            output=r.stderr,
            exit_code=r.exit_code,
        )
    if r.exit_code != 0:
        raise DeviceCommandFailed(
            "governor.sh failed",
            serial=getattr(device, "serial", ""),
            command=f"{SCRIPT} {' '.join(args)}",
            output=r.stderr or r.stdout,
            exit_code=r.exit_code,
        )
    return cast(str, r.stdout)


@dataclass(frozen=True)
class Applied:
    """Outcome of `GovernorGuard.apply_intent`: the resolution and every policy's state read back afterwards."""

    resolution: Resolution
    policies: tuple[PolicyState, ...] = ()
    pinned_khz: tuple[tuple[str, int], ...] = ()  # (policy, kHz) actually pinned, when a frequency was requested


_registry_lock = threading.RLock()
_active: set[GovernorGuard] = set()
_previous_handlers: dict[int, Any] = {}
_handler_refs = 0


def _signal_handler(signum: int, frame: FrameType | None) -> None:
    with _registry_lock:
        guards = list(_active)
    for g in guards:
        g.signalled = True  # first: a cell that ends while the restore runs is not stored as measured under it
    with hostcpu.bypass():  # at once, not after a virtual phone's timed launch (the run ends that launch next)
        for g in guards:
            g.restore(quiet=True)
    prev = _previous_handlers.get(signum, signal.SIG_DFL)
    for sig in list(_previous_handlers):  # until the run has unwound (_uninstall_handlers): a second one ends it
        signal.signal(sig, _forced_exit)
    if callable(prev):
        prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _forced_exit(signum: int, frame: FrameType | None) -> NoReturn:
    """A second SIGINT/SIGTERM while the run unwinds (waiting for launches to end, cells to be stored): out now. The
    governors were restored at the first; what else is left changed stays in the knob journal."""
    os.write(
        2,
        b"autlearn: second signal: exiting now; what this run left changed on a phone is put back by the "
        b"next run on it, or by `autlearn devices restore SERIAL`\n",
    )
    os._exit(128 + signum)


def _install_handlers() -> bool:
    global _handler_refs
    if threading.current_thread() is not threading.main_thread():
        return False
    with _registry_lock:
        if _handler_refs == 0:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) == signal.SIG_IGN:  # ignored by our starter (nohup, a background job)
                    continue
                _previous_handlers[sig] = signal.signal(sig, _signal_handler)
        _handler_refs += 1
    return True


def _uninstall_handlers(force: bool = False) -> None:
    global _handler_refs
    if threading.current_thread() is not threading.main_thread():
        return
    with _registry_lock:
        _handler_refs = 0 if force else max(0, _handler_refs - 1)
        if _handler_refs == 0:
            for sig, prev in list(_previous_handlers.items()):
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            _previous_handlers.clear()


class restore_on_signals:  # noqa: N801 - used like a function: `with restore_on_signals(): ...`
    """Install the SIGINT/SIGTERM handlers from the main thread while worker threads hold GovernorGuards.

    A guard entered in the main thread installs them itself; the engine wraps its thread pool in this."""

    def __enter__(self) -> restore_on_signals:
        self._installed = _install_handlers()
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._installed:
            _uninstall_handlers()
        return False


class GovernorGuard:
    """Change a phone's governors; restore every policy's governor and min/max limits afterwards.

        with GovernorGuard(device, results_dir) as g:
            applied = g.apply_intent("interactive", fallback="nearest")   # Applied; .resolution.applied may be None
            ...

    `device` is duck-typed: `.run_script(name, *args, root=True)` -> ShellResult(stdout, stderr, exit_code) (or str),
    `.shell_root(cmd)`, `.serial`, optionally `.workdir`. The snapshot is taken before the first change, written to
    the pending store `results_dir` (autlearn.profiler.knobs: `<root>/governor-pending/<serial>.json`, removed after a
    successful restore; campaigns use `knobs.default_root()`) and restored on exit, on
    exceptions and on SIGINT/SIGTERM (handlers installed when entered in the main thread; see `restore_on_signals`).
    Unrooted phones: `apply*` raises NotRooted before changing anything else.
    """

    def __init__(self, device: Any, results_dir: str | os.PathLike[str] | None = None):
        self.device = device
        self.serial = str(getattr(device, "serial", "device"))
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.snapshot: tuple[PolicyState, ...] | None = None
        self._lock = threading.RLock()
        self._handlers = False
        self._info: tuple[PolicyInfo, ...] | None = None
        self.restore_error: Exception | None = None  # why a quiet restore failed (the pending file stays)
        self.signalled = False  # SIGINT/SIGTERM restored it: nothing that runs from then on is under its governor

    # -- context
    def __enter__(self) -> GovernorGuard:
        with _registry_lock:
            _active.add(self)
        self._handlers = _install_handlers()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        try:
            self.restore(quiet=exc_type is not None)
        finally:
            with _registry_lock:
                _active.discard(self)
            if self._handlers:
                _uninstall_handlers()
                self._handlers = False
        return False

    # -- operations
    def available(self) -> tuple[CpuPolicy, ...]:
        """Every policy and what it offers (cached per guard)."""
        if self._info is None:
            self._info = parse_available(_run(self.device, "available"))
        return self._info

    def read(self) -> tuple[PolicyState, ...]:
        return parse_state(_run(self.device, "read"))

    def save(self) -> tuple[PolicyState, ...]:
        """Take the snapshot (once) and persist it; called by the first change."""
        with self._lock:
            if self.snapshot is None:
                self.snapshot = self.read()
                self._persist()
            return self.snapshot

    def apply(self, policy: str, governor: str, min_khz: int | None = None, max_khz: int | None = None) -> PolicyState:
        """Set one policy's governor (and limits); returns its state read back."""
        self.save()
        limits = [str(min_khz), str(max_khz)] if min_khz is not None and max_khz is not None else []
        args = [policy, governor, *limits]
        states = parse_state(_run(self.device, "apply", *args))
        if not states:
            raise ParseError("governor.sh apply printed no state")
        return states[0]

    def set_speed(self, policy: str, khz: int) -> PolicyState:
        self.save()
        states = parse_state(_run(self.device, "setspeed", policy, str(int(khz))))
        if not states:
            raise ParseError("governor.sh setspeed printed no state")
        return states[0]

    def apply_intent(self, intent: str | GovernorIntent, fallback: str = "nearest") -> Applied:
        """Resolve `intent` against the governors every policy offers and apply it to all policies.

        Limits are reset to the full cpuinfo range (or pinned min = max for a frequency request). Nothing is changed
        when the resolution has `applied=None`."""
        it = intent if isinstance(intent, GovernorIntent) else parse_intent(intent)
        if it.pins:
            return self.apply_pins(it, fallback)
        info = self.available()
        res = resolve_governor(it, common_governors(info), fallback)
        if res.applied is None:
            return Applied(res)
        if res.pin_khz is None and all(p.hw_min_khz is not None and p.hw_max_khz is not None for p in info):
            # every policy in one call, its state read back in the same call (one round trip, not n + 1)
            self.save()
            args = [str(x) for p in info for x in (p.name, res.applied, p.hw_min_khz, p.hw_max_khz)]
            return Applied(res, parse_state(_run(self.device, "apply-all", *args)), ())
        pinned = []
        for p in info:
            if res.pin_khz is not None:
                khz = p.nearest_frequency(res.pin_khz)
                pinned.append((p.name, khz))
                if res.applied == "userspace":
                    self.apply(p.name, "userspace", p.hw_min_khz, p.hw_max_khz)
                    self.set_speed(p.name, khz)
                else:
                    self.apply(p.name, res.applied, khz, khz)
            else:
                self.apply(p.name, res.applied, p.hw_min_khz, p.hw_max_khz)
        return Applied(res, self.read(), tuple(pinned))

    def apply_pins(self, intent: str | GovernorIntent, fallback: str = "nearest") -> Applied:
        """Hold clusters at frequencies (a `pin:` intent; see the module's docstring): `plan_pins`, then every policy
        in one `governor.sh pin` call, read back. A pin this phone cannot hold changes nothing: `applied=None` with
        the reason (`fallback = "fail"`: GovernorUnavailable). DeviceCommandFailed when the kernel did not keep
        what was written (a vendor cap on the limits, say)."""
        it = intent if isinstance(intent, GovernorIntent) else parse_intent(intent)
        if not it.pins:
            raise ValueError(f"{it} is not a frequency pin")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
        try:
            plan = plan_pins(it.pins, self.available())
        except PinError as exc:
            if fallback == "fail":
                raise GovernorUnavailable(f'{it}: {exc}; fallback = "fail"') from None
            return Applied(Resolution(str(it), None, f"{it}: {exc}"))
        self.save()
        states = parse_state(_run(self.device, "pin", *plan.script_args()))
        wrong = _not_held(plan, states)
        if wrong:
            raise DeviceCommandFailed(
                f"the kernel did not hold {it}",
                serial=self.serial,
                command=f"{SCRIPT} pin",
                output="; ".join(wrong),
                exit_code=0,
            )
        return Applied(Resolution(str(it), plan.governor, plan.reason), states, plan.pinned_khz)

    def restore(self, quiet: bool = False) -> bool:
        """Put the snapshot back (idempotent). True when something was restored. `quiet` swallows device errors
        (used on the way out of an exception or signal; the pending file then stays for `restore_pending`)."""
        with self._lock:
            if self.snapshot is None:
                return False
            try:
                _restore_snapshot(self.device, self.snapshot)
            except Exception as exc:
                self.restore_error = exc
                if quiet:
                    return False
                raise
            self.snapshot = None
            self._forget()
            return True

    # -- persistence (autlearn.profiler.knobs: one pending store for every knob)
    def _persist(self) -> None:
        if self.snapshot is not None:
            text = format_snapshot(self.snapshot)
            knobs.persist(self.results_dir, self.serial, KNOB, {"snapshot": text})

    def _forget(self) -> None:
        knobs.forget(self.results_dir, self.serial, KNOB)


def _not_held(plan: PinPlan, states: Sequence[PolicyState]) -> list[str]:
    """What of a pin plan the read-back state does not show (empty: held)."""
    now = {s.policy: s for s in states}
    wrong = []
    for st in plan.settings:
        got = now.get(st.policy)
        if got is None:
            wrong.append(f"{st.policy} not read back")
            continue
        want = (st.governor, st.min_khz, st.max_khz)
        if (got.governor, got.min_khz, got.max_khz) != want:
            wrong.append(f"{st.policy}: {got.governor} {got.min_khz}-{got.max_khz} kHz, not {' '.join(map(str, want))}")
        if st.setspeed_khz is not None and (got.setspeed or "").strip() != str(st.setspeed_khz):
            wrong.append(f"{st.policy}: scaling_setspeed {got.setspeed}, not {st.setspeed_khz}")
    return wrong


def _restore_snapshot(device: Any, states: Sequence[PolicyState] | str) -> None:
    """Write the snapshot to the device's work dir and run `governor.sh restore` on it."""

    text = states if isinstance(states, str) else format_snapshot(states)
    workdir = getattr(device, "workdir", None) or "/data/local/tmp/autlearn"
    remote = f"{workdir}/governor.snapshot"
    r = device.shell_root(f"mkdir -p {quote(workdir)} && printf '%s\\n' {quote(text)} > {quote(remote)}")
    if getattr(r, "exit_code", 0) != 0:
        raise DeviceCommandFailed(
            "cannot write governor snapshot",
            serial=getattr(device, "serial", ""),
            command="printf > governor.snapshot",
            output=r.stderr,
            exit_code=r.exit_code,
        )
    _run(device, "restore", remote)


def pending(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """Serials with a governor snapshot left behind by a host process that did not restore (killed, or device
    vanished)."""
    return tuple(serial for knob, serial, doc, _ in knobs.entries(root) if knob == KNOB and doc)


def restore_knob(device: Any, doc: dict[str, Any]) -> None:
    """The governor knob's restorer (autlearn.profiler.knobs.restore_pending): re-apply a persisted snapshot."""
    text = (doc.get("state") or {}).get("snapshot") or doc["snapshot"]  # top level: files of older runs
    parse_state(text)  # refuse to send garbage to a phone
    _restore_snapshot(device, text)


def restore_pending(root: str | os.PathLike[str], connect: Callable[[str], Any]) -> dict[str, str]:
    """Restore governors left changed by a killed run. `connect(serial)` returns a device (may raise).

    Returns {serial: "restored" | "<error>"}; snapshots that could not be restored stay on disk for the next try."""
    report = {}
    for key, what in knobs.restore_pending(root, connect).items():
        serial, _, knob = key.rpartition(" ")
        if knob == KNOB:
            report[serial] = what
    return report


__all__ = [
    "Applied",
    "FALLBACKS",
    "GovernorGuard",
    "GovernorIntent",
    "GovernorUnavailable",
    "INTENTS",
    "NEAREST",
    "PIN_PREFIX",
    "PIN_TOLERANCE",
    "Pin",
    "PinError",
    "PinPlan",
    "PolicyInfo",
    "PolicySetting",
    "PolicyState",
    "Resolution",
    "cluster_names",
    "format_snapshot",
    "parse_available",
    "parse_frequency",
    "parse_intent",
    "parse_pins",
    "parse_state",
    "plan_pins",
    "pending",
    "resolve_governor",
    "restore_on_signals",
    "restore_pending",
]
