"""cpufreq policies (a cluster of cores sharing a clock): one model and one parser, used by the probe
(profiler.probe: DeviceFacts.policies) and the governor code (profiler.governor: what each policy offers). Pure
functions of the text the device printed.

    parse_policy("policy0", {"related_cpus": "0-3", "scaling_available_governors": "schedutil performance", ...})
    common_governors(policies)  # governors every policy offers"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autlearn.profiler.errors import ParseError

# The sysfs files of /sys/devices/system/cpu/cpufreq/policyN a policy is read from (probe.sh prints these).
SYSFS_FILES = (
    "related_cpus",
    "affected_cpus",
    "scaling_available_governors",
    "scaling_governor",
    "scaling_available_frequencies",
    "scaling_min_freq",
    "scaling_max_freq",
    "scaling_cur_freq",
    "cpuinfo_min_freq",
    "cpuinfo_max_freq",
)


@dataclass(frozen=True)
class CpuPolicy:
    """One cpufreq policy; kHz; None / empty where the file was missing or unreadable."""

    name: str
    cpus: tuple[int, ...]
    governors: tuple[str, ...]  # scaling_available_governors
    governor: str | None = None  # scaling_governor now
    frequencies_khz: tuple[int, ...] = ()  # scaling_available_frequencies (sorted); empty without a table
    min_khz: int | None = None  # scaling limits now
    max_khz: int | None = None
    cur_khz: int | None = None
    hw_min_khz: int | None = None  # cpuinfo_min_freq / cpuinfo_max_freq: what the hardware allows
    hw_max_khz: int | None = None

    def nearest_frequency(self, khz: int) -> int:
        """The offered frequency nearest to `khz` (ties: the lower), clamped to the hardware limits without a
        table."""
        if self.frequencies_khz:
            return min(self.frequencies_khz, key=lambda f: (abs(f - khz), f))
        lo = self.hw_min_khz if self.hw_min_khz is not None else khz
        hi = self.hw_max_khz if self.hw_max_khz is not None else khz
        return max(lo, min(hi, khz))


def parse_cpu_list(text: str | None, *, strict: bool = False) -> tuple[int, ...]:
    """'0-3,6' -> (0, 1, 2, 3, 6); also space-separated lists. A bad part is skipped, or ParseError if `strict`."""
    cpus: list[int] = []
    for part in (text or "").replace(",", " ").split():
        lo, _, hi = part.partition("-")
        try:
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            if strict:
                raise ParseError(f"cpu list has a non-integer: {part!r}", text or "") from None
    return tuple(cpus)


def _int(value: str | None, what: str, strict: bool) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        if strict:
            raise ParseError(f"cpufreq: {what} is not an integer", value) from None
        return None


def _ints(value: str | None, what: str, strict: bool) -> tuple[int, ...]:
    out = (_int(v, what, strict) for v in (value or "").split())
    return tuple(i for i in out if i is not None)


def parse_policy(name: str, files: Mapping[str, str], *, strict: bool = False) -> CpuPolicy:
    """A policy from the contents of its sysfs files (SYSFS_FILES; missing ones absent or empty). Non-integers
    become None (dropped from lists), or ParseError if `strict`."""
    f = files
    cpus = parse_cpu_list(f.get("related_cpus") or f.get("affected_cpus"), strict=strict)
    if not cpus and name.startswith("cpu") and name[3:].isdigit():  # an old per-CPU directory without lists
        cpus = (int(name[3:]),)
    return CpuPolicy(
        name=name,
        cpus=cpus,
        governors=tuple((f.get("scaling_available_governors") or "").split()),
        governor=f.get("scaling_governor") or None,
        frequencies_khz=tuple(sorted(set(_ints(f.get("scaling_available_frequencies"), "frequencies", strict)))),
        min_khz=_int(f.get("scaling_min_freq"), "scaling_min_freq", strict),
        max_khz=_int(f.get("scaling_max_freq"), "scaling_max_freq", strict),
        cur_khz=_int(f.get("scaling_cur_freq"), "scaling_cur_freq", strict),
        hw_min_khz=_int(f.get("cpuinfo_min_freq"), "cpuinfo_min_freq", strict),
        hw_max_khz=_int(f.get("cpuinfo_max_freq"), "cpuinfo_max_freq", strict),
    )


@dataclass(frozen=True)
class Cluster:
    """CPUs of one kind: a policy, or per-CPU directories of equal capacity (else equal maximum frequency)."""

    cpus: tuple[int, ...]
    speed: int  # capacity (0-1024) when known, else the maximum frequency in kHz: orders clusters


def clusters(policies: Iterable[CpuPolicy], capacity: Mapping[int, int] | None = None) -> tuple[Cluster, ...]:
    """Clusters, slowest first. Each `policyN` is one; per-CPU directories (`cpuN`, old kernels without policies
    or related_cpus) are grouped by EAS capacity, or by maximum frequency where capacity is not reported."""
    capacity = capacity or {}

    def speed(p: CpuPolicy) -> int:
        caps = [capacity[c] for c in p.cpus if c in capacity]
        if caps:
            return max(caps)
        return p.hw_max_khz or p.max_khz or max(p.frequencies_khz, default=0)

    groups: dict[object, list[int]] = {}
    speeds: dict[object, int] = {}
    for p in policies:
        if not p.cpus:
            continue
        key = ("speed", speed(p)) if p.name.startswith("cpu") else ("policy", p.name)
        groups.setdefault(key, []).extend(p.cpus)
        speeds[key] = speed(p)
    out = [Cluster(tuple(sorted(set(cpus))), speeds[k]) for k, cpus in groups.items()]
    return tuple(sorted(out, key=lambda c: (c.speed, c.cpus)))


def common_governors(policies: Iterable[CpuPolicy]) -> tuple[str, ...]:
    """Governors every policy offers (intersection, in the first policy's order); () without policies."""
    ps = tuple(policies)
    if not ps:
        return ()
    common = set(ps[0].governors).intersection(*(p.governors for p in ps[1:]))
    return tuple(g for g in ps[0].governors if g in common)


__all__ = ["Cluster", "CpuPolicy", "clusters", "SYSFS_FILES", "common_governors", "parse_cpu_list", "parse_policy"]
