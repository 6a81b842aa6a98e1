"""Virtual phone profiles: `testbed/profiles/<name>.toml` loaded into frozen dataclasses."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autlearn.profiler.errors import LabError

PROFILE_DIR = Path(__file__).parent / "profiles"
ROOT_MODES = ("adbd", "su", "none")


@dataclass(frozen=True)
class Cluster:
    cpus: tuple[int, ...]
    freqs_khz: tuple[int, ...]
    governors: tuple[str, ...]
    governor: str
    capacity: int  # EAS cpu_capacity (0-1024)


@dataclass(frozen=True)
class ThermalZone:
    type: str
    temp_mc: int  # millidegrees Celsius, at idle (the modeled rise above idle is added: testbed/dvfs.py)
    coupling: float = 1.0  # share of the modeled die temperature rise this sensor sees (CPU 1.0, battery less)


@dataclass(frozen=True)
class Thermal:
    """MODELED first-order heat of the whole SoC (testbed/dvfs.py): dT/dt = (P_dyn * r_th - T) / tau, T = rise
    above idle, P_dyn = modeled power above idle. Above `trip_c` (hottest coupled zone) the cpufreq cooling devices
    cap the maximum frequency one table step per `polling_s`; below trip_c - hysteresis_c they release it."""

    r_th_c_per_w: float = 3.0
    tau_s: float = 30.0
    trip_c: float = 95.0
    hysteresis_c: float = 3.0
    polling_s: float = 0.25


@dataclass(frozen=True)
class CoolingDevice:
    type: str
    max_state: int
    cur_state: int = 0


@dataclass(frozen=True)
class Battery:
    status: str
    capacity: int
    current_now: int  # vendor units and sign, as the kernel reports them
    voltage_now: int  # uV
    charge_counter: int  # uAh
    temp: int  # tenths of a degree Celsius
    usb_online: int


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    root_mode: str  # "adbd" (adb root works) | "su" (su binary) | "none"
    kernel_release: str
    kernel_version: str  # the `#1 SMP PREEMPT ...` part of uname -v
    manufacturer: str
    brand: str
    model: str
    device: str
    product: str
    android_release: str
    sdk: int
    soc_manufacturer: str
    soc_model: str
    board_platform: str
    abi: str
    clusters: tuple[Cluster, ...]
    thermal_zones: tuple[ThermalZone, ...]
    cooling_devices: tuple[CoolingDevice, ...]
    battery: Battery
    thermal: Thermal = Thermal()
    extra_props: tuple[tuple[str, str], ...] = ()
    # "policy": cpufreq/policyN per cluster (every kernel since ~4.x); "per-cpu": old kernels' cpuN/cpufreq
    # directories, one per CPU, without policyN and without related_cpus
    cpufreq_layout: str = "policy"

    def policy_dirs(self, cpu_root: Path, cluster: Cluster) -> tuple[Path, ...]:
        """The cpufreq directories that hold `cluster`'s settings under `.../devices/system/cpu`."""
        if self.cpufreq_layout == "per-cpu":
            return tuple(cpu_root / f"cpu{c}" / "cpufreq" for c in cluster.cpus)
        return (cpu_root / "cpufreq" / f"policy{cluster.cpus[0]}",)

    def with_governor(self, governor: str | None) -> Profile:
        """This profile booting with `governor` on every cluster (None: its own defaults); LabError when a cluster
        does not offer it."""
        if not governor:
            return self
        if any(governor not in cl.governors for cl in self.clusters):
            offered = sorted(set.intersection(*(set(cl.governors) for cl in self.clusters)))
            raise LabError(
                f"profile {self.name!r} does not offer governor {governor!r} on every cluster "
                f"(offered on all: {', '.join(offered) or 'none'})"
            )
        return replace(self, clusters=tuple(replace(cl, governor=governor) for cl in self.clusters))

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(c for cl in self.clusters for c in cl.cpus))

    def system_props(self) -> dict[str, str]:
        """What `system/build.prop` holds (build + product identity)."""
        props = {
            "ro.build.version.release": self.android_release,
            "ro.build.version.sdk": str(self.sdk),
            "ro.build.type": "user",
            "ro.build.tags": "release-keys",
            "ro.build.id": f"VIRT.{self.sdk}",
            "ro.build.fingerprint": (
                f"{self.brand}/{self.product}/{self.device}:{self.android_release}/VIRT.{self.sdk}/1:user/release-keys"
            ),
            "ro.product.manufacturer": self.manufacturer,
            "ro.product.brand": self.brand,
            "ro.product.model": self.model,
            "ro.product.name": self.product,
            "ro.product.device": self.device,
            "ro.product.cpu.abi": self.abi,
            "ro.product.cpu.abilist": self.abi,
            "ro.debuggable": "1" if self.root_mode == "adbd" else "0",
            "ro.secure": "0" if self.root_mode == "adbd" else "1",
            "ro.autlearn.virtual": "1",
            "ro.autlearn.profile": self.name,
        }
        props.update(dict(self.extra_props))
        return props

    def vendor_props(self) -> dict[str, str]:
        """What `vendor/build.prop` holds (SoC identity)."""
        props = {"ro.board.platform": self.board_platform, "ro.hardware": self.board_platform}
        if self.sdk >= 31:  # ro.soc.* exist since Android 12
            props.update({"ro.soc.manufacturer": self.soc_manufacturer, "ro.soc.model": self.soc_model})
        return props


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name: str) -> Profile:
    path = PROFILE_DIR / f"{name}.toml"
    if not name or "/" in name or not path.is_file():
        raise LabError(f"unknown profile {name!r} (known: {', '.join(known_profiles())})")
    try:
        raw = tomllib.loads(path.read_text())
        return _build(name, raw)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LabError(f"profile {name!r} ({path}) is invalid: {exc}") from exc


def _build(name: str, raw: dict[str, Any]) -> Profile:
    clusters = tuple(
        Cluster(
            cpus=tuple(c["cpus"]),
            freqs_khz=tuple(c["freqs_khz"]),
            governors=tuple(c["governors"]),
            governor=c["governor"],
            capacity=int(c.get("capacity", 1024)),
        )
        for c in raw["clusters"]
    )
    for c in clusters:
        if c.governor not in c.governors:
            raise ValueError(f"default governor {c.governor!r} not in {c.governors}")
        if list(c.freqs_khz) != sorted(c.freqs_khz) or not c.freqs_khz:
            raise ValueError("freqs_khz must be a non-empty ascending list")
    if raw["root_mode"] not in ROOT_MODES:
        raise ValueError(f"root_mode must be one of {ROOT_MODES}")
    b = raw["battery"]
    return Profile(
        name=name,
        description=raw["description"],
        root_mode=raw["root_mode"],
        kernel_release=raw["kernel_release"],
        kernel_version=raw["kernel_version"],
        manufacturer=raw["manufacturer"],
        brand=raw["brand"],
        model=raw["model"],
        device=raw["device"],
        product=raw["product"],
        android_release=str(raw["android_release"]),
        sdk=int(raw["sdk"]),
        soc_manufacturer=raw["soc_manufacturer"],
        soc_model=raw["soc_model"],
        board_platform=raw["board_platform"],
        abi=raw["abi"],
        clusters=clusters,
        thermal_zones=tuple(
            ThermalZone(z["type"], int(z["temp_mc"]), float(z.get("coupling", _coupling(z["type"]))))
            for z in raw["thermal_zones"]
        ),
        cooling_devices=tuple(
            CoolingDevice(d["type"], int(d["max_state"]), int(d.get("cur_state", 0))) for d in raw["cooling_devices"]
        ),
        battery=Battery(
            status=b["status"],
            capacity=int(b["capacity"]),
            current_now=int(b["current_now"]),
            voltage_now=int(b["voltage_now"]),
            charge_counter=int(b["charge_counter"]),
            temp=int(b["temp"]),
            usb_online=int(b["usb_online"]),
        ),
        thermal=_thermal(raw.get("thermal", {})),
        extra_props=tuple(sorted((str(k), str(v)) for k, v in raw.get("props", {}).items())),
        cpufreq_layout=_layout(raw.get("cpufreq_layout", "policy")),
    )


def _layout(value: str) -> str:
    if value not in ("policy", "per-cpu"):
        raise ValueError(f"cpufreq_layout must be 'policy' or 'per-cpu', not {value!r}")
    return value


def _coupling(zone_type: str) -> float:
    """Default: CPU sensors see the whole modeled rise, others (battery, skin, GPU, board) a third of it."""
    t = zone_type.lower()
    return 1.0 if ("cpu" in t or "tsens" in t) else 0.3


def _thermal(raw: dict[str, Any]) -> Thermal:
    unknown = set(raw) - set(Thermal.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown [thermal] keys {sorted(unknown)}")
    t = Thermal(**{k: float(v) for k, v in raw.items()})
    if t.tau_s <= 0 or t.r_th_c_per_w < 0 or t.polling_s <= 0:
        raise ValueError("[thermal] needs tau_s > 0, r_th_c_per_w >= 0, polling_s > 0")
    return t
