"""The LLVM CPU target for a device, from its /proc/cpuinfo text. Pure: no device I/O, no side effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autlearn.profiler.errors import ConfigError

ABIS = ("x86_64", "arm64-v8a")


@dataclass(frozen=True)
class CpuTarget:
    abi: str  # "x86_64" | "arm64-v8a"
    mcpu: str | None  # LLVM -mcpu; None = the ABI's generic floor
    mattr: tuple[str, ...]  # extra LLVM -mattr ("+dotprod", "-sve"); sorted, deduplicated
    recognised: bool  # False = CPU not recognised, generic target used
    cpu: str  # human description of the CPU
    note: str  # one line: how the choice was made

    @property
    def key(self) -> str:
        """Filesystem-safe id, e.g. 'x86_64-znver4', 'arm64-v8a-cortex-a76+dotprod+fullfp16'."""
        return f"{self.abi}-{self.mcpu or 'generic'}{''.join(self.mattr)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "abi": self.abi,
            "mcpu": self.mcpu,
            "mattr": list(self.mattr),
            "recognised": self.recognised,
            "cpu": self.cpu,
            "note": self.note,
            "key": self.key,
        }


def _check_abi(abi: str) -> None:
    if abi not in ABIS:
        raise ConfigError(f"no CPU target for ABI {abi!r} (supported: {', '.join(ABIS)})", key="abi")


def generic(abi: str, note: str, *, cpu: str = "unknown", mattr: tuple[str, ...] = ()) -> CpuTarget:
    """The ABI's generic floor, marked not recognised."""
    _check_abi(abi)
    return CpuTarget(abi, None, tuple(sorted(set(mattr))), False, cpu, note)


def _blocks(text: str) -> list[dict[str, str]]:
    """'key : value' lines as one dict per processor; a 'processor' line starts a block (blank lines are not
    needed: the probe drops them). Keys are lower-cased; lines before the first processor form their own block."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep or not key:
            continue
        if line.startswith("processor") and key == "processor":  # not arm64's old 'Processor : AArch64 ...'
            blocks.append({})
        blocks[-1].setdefault(key, value.strip())
    return [b for b in blocks if b]


def _int(value: str | None, base: int = 0) -> int | None:
    try:
        return int(value.strip(), base) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------- x86_64
_V2 = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")
_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave")
_V4 = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
_VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}


def _x86_level(flags: set[str]) -> str | None:
    """Highest LLVM x86-64 microarchitecture level the flags cover (None: below v2)."""
    flags = flags | ({"lzcnt"} if "abm" in flags else set())  # cpuinfo calls LZCNT 'abm'
    level = None
    for name, need in (("x86-64-v2", _V2), ("x86-64-v3", _V3), ("x86-64-v4", _V4)):
        if not flags.issuperset(need):
            break
        level = name
    return level


def _x86(text: str) -> CpuTarget:
    blocks = [b for b in _blocks(text) if "flags" in b]
    if not blocks:
        return generic("x86_64", "no flags line in cpuinfo: generic x86_64 target")
    b = blocks[0]
    flags = set(b["flags"].split())
    vendor_id = b.get("vendor_id", "")
    family, model = _int(b.get("cpu family"), 10), _int(b.get("model"), 10)
    cpu = f"{_VENDORS.get(vendor_id, vendor_id or 'unknown vendor')} family {family} model {model}"
    cpu += " (avx512)" if "avx512f" in flags else ""
    cpu += f": {b['model name']}" if b.get("model name") else ""
    level = _x86_level(flags)

    if vendor_id == "AuthenticAMD" and family in (23, 25, 26):
        zen = {
            23: "znver1" if (model or 0) < 0x30 else "znver2",
            25: "znver4" if "avx512f" in flags else "znver3",
            26: "znver5",
        }[family]
        if zen == "znver5" and "avx512f" not in flags:  # a hypervisor hid AVX-512: Zen 5 without it
            zen = "znver3"
        # every Zen has the v3 set; without it (a VM masking features) znver* code would fault
        if level in ("x86-64-v3", "x86-64-v4"):
            return CpuTarget("x86_64", zen, (), True, cpu, f"AMD family {family} model {model}: {zen}")
    if level is None:
        return CpuTarget("x86_64", None, (), True, cpu, "by feature level: below x86-64-v2, generic x86_64")
    return CpuTarget("x86_64", level, (), True, cpu, f"by feature level: {level}")


# ------------------------------------------------------------------------------------------------------- arm64-v8a
# keyed by cpuinfo's implementer and part numbers; looked up with a core's, which are None when cpuinfo lacks them
_IMPLEMENTERS: dict[int | None, str] = {
    0x41: "ARM",
    0x42: "Broadcom",
    0x43: "Cavium",
    0x48: "HiSilicon",
    0x4E: "NVIDIA",
    0x51: "Qualcomm",
    0x53: "Samsung",
    0x61: "Apple",
    0xC0: "Ampere",
}
_PARTS: dict[int | None, dict[int | None, str]] = {
    0x41: {
        0xD03: "cortex-a53",
        0xD04: "cortex-a35",
        0xD05: "cortex-a55",
        0xD07: "cortex-a57",
        0xD08: "cortex-a72",
        0xD09: "cortex-a73",
        0xD0A: "cortex-a75",
        0xD0B: "cortex-a76",
        0xD0D: "cortex-a77",
        0xD41: "cortex-a78",
        0xD44: "cortex-x1",
        0xD46: "cortex-a510",
        0xD47: "cortex-a710",
        0xD48: "cortex-x2",
        0xD4D: "cortex-a715",
        0xD4E: "cortex-x3",
        0xD80: "cortex-a520",
        0xD81: "cortex-a720",
        0xD82: "cortex-x4",
    },
    0x51: {
        0x800: "cortex-a73",
        0x801: "cortex-a53",
        0x802: "cortex-a75",
        0x803: "cortex-a55",
        0x804: "cortex-a76",
        0x805: "cortex-a55",
    },  # Kryo 2xx-4xx gold/silver
}
# biggest first: the training step runs on the big cluster
_RANK = (
    "cortex-x4",
    "cortex-x3",
    "cortex-x2",
    "cortex-x1",
    "cortex-a720",
    "cortex-a715",
    "cortex-a710",
    "cortex-a78",
    "cortex-a77",
    "cortex-a76",
    "cortex-a75",
    "cortex-a73",
    "cortex-a72",
    "cortex-a57",
    "cortex-a520",
    "cortex-a510",
    "cortex-a55",
    "cortex-a53",
    "cortex-a35",
)
# cpuinfo Features -> LLVM feature; a feature counts only if every core has it (threads may run on any core)
_FEATURES = (("asimddp", "dotprod"), ("i8mm", "i8mm"), ("asimdhp", "fullfp16"), ("fphp", "fullfp16"), ("sve", "sve"))
# features LLVM's -mcpu turns on by itself (checked against the installed LLVM's target features)
_V82 = {"cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-x1"}
_V9 = {"cortex-a510", "cortex-a520", "cortex-a710", "cortex-a715", "cortex-a720", "cortex-x2", "cortex-x3", "cortex-x4"}


def _implied(mcpu: str | None) -> set[str]:
    if mcpu in _V9:
        return {"dotprod", "fullfp16", "i8mm", "sve"}
    return {"dotprod", "fullfp16"} if mcpu in _V82 else set()


def _arm_mattr(blocks: list[dict[str, str]], mcpu: str | None) -> tuple[str, ...]:
    """'+f' for tracked features on every core; '-f' for those the mcpu implies but some core lacks (e.g. SVE,
    which several SoCs with v9 cores leave disabled). Without Features lines: nothing (unknown)."""
    feats = [set(b["features"].split()) for b in blocks if "features" in b]
    if not feats:
        return ()
    common = set.intersection(*feats)
    on = {llvm for name, llvm in _FEATURES if name in common}
    return tuple(sorted({f"+{f}" for f in on} | {f"-{f}" for f in _implied(mcpu) - on}))


def _arm(text: str) -> CpuTarget:
    blocks = _blocks(text)
    cores = [(_int(b.get("cpu implementer")), _int(b.get("cpu part"))) for b in blocks if "cpu part" in b]
    if not cores:
        return generic("arm64-v8a", "no CPU part in cpuinfo: generic arm64 target", mattr=_arm_mattr(blocks, None))
    counts: dict[tuple[int | None, int | None], int] = {}
    for core in cores:
        counts[core] = counts.get(core, 0) + 1
    names = {c: _PARTS.get(c[0], {}).get(c[1]) if None not in c else None for c in counts}
    order = sorted(counts, key=lambda c: _RANK.index(names[c]) if names[c] else len(_RANK))

    def impl(c: tuple[int | None, int | None]) -> str:
        return _IMPLEMENTERS.get(c[0], "implementer ?" if c[0] is None else f"implementer {c[0]:#04x}")

    def hexpart(c: tuple[int | None, int | None]) -> str:
        return "?" if c[1] is None else f"{c[1]:#05x}"

    if len({c[0] for c in order}) == 1:  # "ARM part 0xd0b x4 + 0xd05 x4"
        cpu = f"{impl(order[0])} part " + " + ".join(f"{hexpart(c)} x{counts[c]}" for c in order)
    else:
        cpu = " + ".join(f"{impl(c)} part {hexpart(c)} x{counts[c]}" for c in order)
    hardware = next((b["hardware"] for b in blocks if b.get("hardware")), "")
    cpu += f": {hardware}" if hardware else ""

    unknown = [c for c in order if names[c] is None]
    if unknown:  # an unranked core may be the big one: do not guess
        parts = ", ".join(f"part {hexpart(c)} ({impl(c)})" for c in unknown)
        return generic(
            "arm64-v8a", f"unrecognised CPU {parts}: generic arm64 target", cpu=cpu, mattr=_arm_mattr(blocks, None)
        )
    mcpu = names[order[0]]
    note = f"biggest core {impl(order[0])} part {hexpart(order[0])}: {mcpu}"
    return CpuTarget("arm64-v8a", mcpu, _arm_mattr(blocks, mcpu), True, cpu, note)


def parse_cpuinfo(abi: str, text: str) -> CpuTarget:
    """The LLVM target for a device of `abi` whose /proc/cpuinfo is `text` (ConfigError for other ABIs)."""
    _check_abi(abi)
    return _x86(text) if abi == "x86_64" else _arm(text)
