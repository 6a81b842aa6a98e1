"""Device facts: the probe (talks to the device) and its parser (a pure function of the text it printed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autlearn.profiler.cpufreq import Cluster, CpuPolicy, clusters, common_governors, parse_cpu_list, parse_policy
from autlearn.profiler.cputarget import ABIS, CpuTarget, parse_cpuinfo
from autlearn.profiler.device import Device
from autlearn.profiler.errors import ParseError

Policy = CpuPolicy  # the probe's name for it


@dataclass(frozen=True)
class ThermalZone:
    name: str
    type: str
    temp_c: float | None


@dataclass(frozen=True)
class CoolingDevice:
    name: str
    type: str
    cur_state: int | None
    max_state: int | None


@dataclass(frozen=True)
class PowerSupply:
    name: str
    type: str | None
    status: str | None
    online: bool | None
    capacity: int | None
    current_now: int | None  # raw value: unit and sign vary by vendor (see autlearn.profiler.energy.fuelgauge)
    voltage_now: int | None
    charge_counter: int | None
    input_suspend: str | None
    charging_enabled: str | None


@dataclass(frozen=True)
class DeviceFacts:
    """What the probe found on one device. Missing nodes are None / empty."""

    serial: str
    model: str
    manufacturer: str
    soc: str
    abi: str
    abilist: tuple[str, ...]
    android: str
    sdk: int | None
    build_type: str
    kernel: str
    uid: int | None
    has_su: bool
    virtual: bool
    cores: int
    policies: tuple[Policy, ...]
    thermal: tuple[ThermalZone, ...]
    cooling: tuple[CoolingDevice, ...]
    power: tuple[PowerSupply, ...]
    root: str = "unknown"  # adbd | su | none, filled in by the profiler after probing
    cpu_target: CpuTarget | None = None  # from the cpuinfo lines; None without them or for another ABI
    capacity: tuple[tuple[int, int], ...] = ()  # (cpu, EAS cpu_capacity) where the kernel reports it

    @property
    def cpu_clusters(self) -> tuple[Cluster, ...]:
        """Clusters slowest first (policies; per-CPU layouts grouped by capacity or max frequency)."""
        return clusters(self.policies, dict(self.capacity))

    @property
    def clusters(self) -> str:
        """Cluster sizes in policy order, e.g. '4+3+1'."""
        by_first = sorted(self.cpu_clusters, key=lambda c: c.cpus[0])
        return "+".join(str(len(c.cpus)) for c in by_first) or "?"

    @property
    def governors(self) -> tuple[str, ...]:
        """Governors every policy offers (intersection, in the first policy's order)."""
        return common_governors(self.policies)

    @property
    def battery(self) -> PowerSupply | None:
        return next((p for p in self.power if p.type == "Battery" or p.name == "battery"), None)

    @property
    def max_temp_c(self) -> float | None:
        temps = [z.temp_c for z in self.thermal if z.temp_c is not None]
        return max(temps) if temps else None

    def to_dict(self) -> dict[str, Any]:
        cpu_target = self.cpu_target.to_dict() if self.cpu_target else None
        return dataclasses.asdict(self) | {"clusters": self.clusters, "cpu_target": cpu_target}


def _int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None and value.strip() else None
    except ValueError:
        return None


def _temp_c(raw: str | None) -> float | None:
    value = _int(raw)
    if value is None:
        return None
    # thermal zones report millidegrees; a few old kernels report degrees (or deci-degrees)
    if abs(value) >= 1000:
        return value / 1000.0
    if abs(value) >= 200:
        return value / 10.0
    return float(value)


def parse_probe(text: str, serial: str = "") -> DeviceFacts:
    """Parse probe.sh output. Pure: the same text always gives the same facts; tolerates missing nodes."""
    kv: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            kv[key.strip()] = value.strip()
    if "probe.version" not in kv:
        raise ParseError("not probe output (no probe.version line)", text[:200])

    def group(prefix: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for key, value in kv.items():
            if key.startswith(prefix + "."):
                name, _, field = key[len(prefix) + 1 :].rpartition(".")
                if name:
                    out.setdefault(name, {})[field] = value
        return out

    def natural(name: str) -> tuple[int, str]:
        digits = "".join(c for c in name if c.isdigit())
        return (int(digits) if digits else -1, name)

    policies = [parse_policy(name, f) for name, f in sorted(group("policy").items(), key=lambda i: natural(i[0]))]
    thermal = tuple(
        ThermalZone(n, f.get("type", ""), _temp_c(f.get("temp")))
        for n, f in sorted(group("thermal").items(), key=lambda i: natural(i[0]))
    )
    cooling = tuple(
        CoolingDevice(n, f.get("type", ""), _int(f.get("cur_state")), _int(f.get("max_state")))
        for n, f in sorted(group("cooling").items(), key=lambda i: natural(i[0]))
    )
    power = tuple(
        PowerSupply(
            name=n,
            type=f.get("type"),
            status=f.get("status"),
            online=None if _int(f.get("online")) is None else bool(_int(f.get("online"))),
            capacity=_int(f.get("capacity")),
            current_now=_int(f.get("current_now")),
            voltage_now=_int(f.get("voltage_now")),
            charge_counter=_int(f.get("charge_counter")),
            input_suspend=f.get("input_suspend"),
            charging_enabled=f.get("charging_enabled"),
        )
        for n, f in sorted(group("power").items())
    )

    prop: Callable[[str], str] = lambda name: kv.get(f"prop.{name}", "")  # noqa: E731
    possible = parse_cpu_list(kv.get("cpu.possible"))
    cores = len(possible) or len({c for p in policies for c in p.cpus})
    abilist = tuple(a for a in prop("ro.product.cpu.abilist").split(",") if a)
    abi = prop("ro.product.cpu.abi") or (abilist[0] if abilist else "")
    cpuinfo = [(int(k[8:]), v) for k, v in kv.items() if k.startswith("cpuinfo.") and k[8:].isdecimal()]
    cpu_target = parse_cpuinfo(abi, "\n".join(v for _, v in sorted(cpuinfo))) if cpuinfo and abi in ABIS else None
    return DeviceFacts(
        serial=serial,
        model=prop("ro.product.model"),
        manufacturer=prop("ro.product.manufacturer") or prop("ro.product.brand"),
        soc=prop("ro.soc.model") or prop("ro.board.platform") or prop("ro.hardware"),
        abi=abi,
        abilist=abilist,
        android=prop("ro.build.version.release"),
        sdk=_int(prop("ro.build.version.sdk")),
        build_type=prop("ro.build.type"),
        kernel=kv.get("kernel", ""),
        uid=_int(kv.get("uid")),
        has_su=bool(kv.get("su")),
        virtual=prop("ro.autlearn.virtual") == "1",
        cores=cores,
        policies=tuple(policies),
        thermal=thermal,
        cooling=cooling,
        power=power,
        cpu_target=cpu_target,
        capacity=tuple(
            sorted(
                (int(k[4:-9]), v)
                for k, v in (
                    (k, _int(v))
                    for k, v in kv.items()
                    if k.startswith("cpu.") and k.endswith(".capacity") and k[4:-9].isdigit()
                )
                if v is not None
            )
        ),
    )


def probe(device: Device) -> DeviceFacts:
    """Run probe.sh on `device` (a autlearn.profiler.device.Device) and parse it; also detects the root mode."""
    result = device.run_script("probe.sh", timeout=60)
    if "probe.end=1" not in result.stdout:
        raise ParseError(
            f"[{device.serial}] probe did not finish (exit {result.exit_code}): "
            f"{(result.stderr or result.stdout).strip()[-200:]}"
        )
    facts = parse_probe(result.stdout, serial=device.serial)
    return dataclasses.replace(facts, root=device.root_capability())


def target_id(facts: DeviceFacts) -> str:
    """What a device's artifacts are compiled for: its ABI and the CPU the probe recognised
    (`ABI@MCPU[,ATTR...]`, see autlearn.workloads.compile.parse_target_id), else the ABI's generic floor."""
    ct = facts.cpu_target
    if ct is None or not ct.mcpu or ct.abi != facts.abi:
        return facts.abi
    return ",".join([f"{facts.abi}@{ct.mcpu}", *ct.mattr])
