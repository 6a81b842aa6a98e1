"""Campaign files: TOML (stdlib `tomllib`) validated into frozen dataclasses, and expanded into a plan of cells.

    name = "paper"                       # safe for a directory name: results/<name>/
    description = "..."                  # optional
    warmup = 3                           # untimed steps at the start of every repetition
    steps = 20                           # timed steps per repetition
    repetitions = 5                      # runner launches per cell
    affinity = "all"                     # or a list; "all" | "big" | "little" | hex CPU mask "0xf0"
    energy = "none"                      # "none" | "fuelgauge" | "monsoon:SERIAL" | "monsoon:auto" | "auto"
                                         # auto: the Monsoon known to power the phone (lab: `lab up --monsoon`),
                                         # else the fuel gauge; monsoon:auto: that Monsoon, an error if none

    [devices]                            # no serials and no models: every connected device
    serials = ["R58M12345"]              # these serials ...
    models = ["Pixel*"]                  # ... plus devices whose model matches a glob (case-insensitive)
    virtual = true                       # true: allowed, false: excluded, "only": virtual phones only
    [devices.energy]                     # per-device energy source, overrides `energy`
    "R58M12345" = "monsoon:12345"

    [[workload]]
    model = "lstm"                       # "lstm" | "mobilenet" | "layers" (config: family, every, suite, suites
                                         #   + the family's model arguments; see autlearn.workloads.layer_suite)
    variants = ["full", "compressed"]    # "full" | "compressed" | "unoptimized" | "cached"; default ["full"]
    batch = [1, 16]                      # int or list; default [1]
    config = { hidden_size = 64 }        # model keyword arguments (scalars or lists of scalars); variant
                                         #   "compressed" takes compressed = "path/compressed.json" (autlearn prune)

    [governors]                          # or the shorthand: governors = ["interactive", "powersave"]
    intents = ["interactive", "powersave", "userspace@1.2GHz"]
                                         # frequency pins, a sweep: "pin:big=min", "pin:big=1.2GHz", "pin:big=max",
                                         #   "pin:little=min,big=1.8GHz", "pin:all=max" (autlearn.profiler.governor)
    fallback = "nearest"                 # "nearest" | "skip" | "fail" (see autlearn.profiler.governor)

    [cooldown]                           # wait before every cell until all matching zones are below max_temp_c
    max_temp_c = 45.0
    timeout_s = 300
    zones = "*cpu*"                      # glob over thermal zone types

    order = "interleaved"                # a phone's cells: "interleaved" (default) | "shuffled" | "sequential"
    seed = 0                             # the seed of "shuffled" (salted with the device serial)

    [samples]                            # optional: launch until the median is known this well (pyperf-style)
    ci_width = 0.03                      # stop when the 95 % CI of the median step time is <= 3 % of the median
    max_launches = 10                    # ... or at this many launches (default max(10, repetitions));
                                         #   `repetitions` is then the minimum number of launches

    [throttle]                           # a cell whose launches ran throttled is flagged and redone
    retries = 2                          # redone up to this many times, then kept with its flag
    cooldown_s = 0.0                     # before a redo: CPU cooling released, then this pause, then [cooldown]
    max_temp_c = 60.0                    # optional: a launch this hot is throttled too (default: not checked)

Order (`order_cells`): cells that are compared with each other (same workload, config, batch and affinity) form a
block; "interleaved" runs a block's variant x governor cells round-robin, variants alternating within each governor
and reversed on alternate governors (ABBA: full, unoptimized | unoptimized, full), whole blocks alternately forward
and backward; "shuffled" runs the blocks, and the cells within each, in a seeded random order; "sequential" is
device > workload > variant > batch > governor > affinity. A cell's R launches always run together (one launch
group): the cell is the unit the results store commits, energy measures and `--resume` skips.

`load_campaign(path) -> Campaign`; `parse_campaign(dict) -> Campaign`. Every problem is a `ConfigError` whose `key`
names the dotted key (`workload[1].variants[0]`); syntax errors name the file, line and column. Campaigns built in
code (the pipelines') are typed from the start: `make_workload`, `energy_source`, `governor_intents`, then
`check_campaign` checks the whole as a file's would be.
`Campaign.plan(devices) -> tuple[Cell, ...]` expands device x workload x variant x batch x governor x affinity, each
device's cells in the campaign's order;
`cell_id(cell, artifact_hash)` is the stable id the results store uses.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import random
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from autlearn.profiler.errors import ConfigError, UserError
from autlearn.profiler.governor import FALLBACKS, GovernorIntent, parse_intent
from autlearn.workloads.compressed import compressed_build_args
from autlearn.workloads.registry import LAYER_SUITE, campaign_models, get, plain_config

VARIANTS = ("full", "compressed", "unoptimized", "cached")
AFFINITY_NAMES = ("all", "big", "little")
ENERGY_KINDS = ("none", "fuelgauge", "monsoon", "auto")
VIRTUAL = {True: "allow", False: "exclude", "only": "only"}
ORDERS = ("interleaved", "shuffled", "sequential")
DEFAULT_MAX_LAUNCHES = 10

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SERIAL_RE = re.compile(r"^([A-Za-z0-9._\-]{1,64}/)?[A-Za-z0-9._:\-]{1,128}$")  # [host/]serial
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MASK_RE = re.compile(r"^0x[0-9a-f]{1,16}$")
_TOML_POS_RE = re.compile(r"\(at line (\d+), column (\d+)\)")
_Device = TypeVar("_Device", bound="DeviceLike")


# ---------------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class EnergySource:
    """`none`, `fuelgauge` (the phone's battery gauge), `monsoon` with the monitor's serial (`auto`: the monitor
    known to power the phone) or `auto` (that monitor if there is one, else the fuel gauge). `auto` is resolved per
    device when the cell runs (autlearn.profiler.energy.session.resolve_energy)."""

    kind: str = "none"
    serial: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.serial}" if self.serial else self.kind


@dataclass(frozen=True)
class DeviceSelection:
    serials: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # fnmatch globs, case-insensitive
    virtual: str = "allow"  # "allow" | "exclude" | "only"
    energy: tuple[tuple[str, EnergySource], ...] = ()  # per-serial overrides

    def matches(self, device: DeviceLike) -> bool:
        """True when `device` (anything with .serial, .model, .virtual) is selected."""
        if self.virtual == "exclude" and device.virtual or self.virtual == "only" and not device.virtual:
            return False
        if not self.serials and not self.models:
            return True
        return bool(device_names(device.serial) & set(self.serials)) or any(
            fnmatch.fnmatchcase((device.model or "").lower(), g.lower()) for g in self.models
        )

    def missing(self, devices: Iterable[DeviceLike]) -> tuple[str, ...]:
        """Serials the campaign names that are not among `devices` (report them; do not silently run less)."""
        present = {n for d in devices for n in device_names(d.serial)}
        return tuple(s for s in self.serials if s not in present)


def device_names(serial: str) -> set[str]:
    """What a campaign may call a device: its serial, and on a cluster of hosts also `host/serial` (results name
    it so) or the bare serial."""
    return {serial, serial.rpartition("/")[2]}


@dataclass(frozen=True)
class Workload:
    model: str
    variants: tuple[str, ...] = ("full",)
    batch: tuple[int, ...] = (1,)
    config: tuple[tuple[str, Any], ...] = ()  # sorted (key, value); lists frozen to tuples

    @property
    def kwargs(self) -> dict[str, Any]:
        """Model keyword arguments (lists back as lists)."""

        return plain_config(dict(self.config))


@dataclass(frozen=True)
class Governors:
    intents: tuple[GovernorIntent, ...] = (GovernorIntent("schedutil"),)
    fallback: str = "nearest"


@dataclass(frozen=True)
class Cooldown:
    max_temp_c: float = 45.0
    timeout_s: float = 300.0
    zones: str = "*cpu*"


@dataclass(frozen=True)
class Samples:
    """How many launches a cell makes: `repetitions` (ci_width None), or from `repetitions` on until the 95 % CI of
    the median step time is at most `ci_width` of the median, or `max_launches` are made."""

    ci_width: float | None = None
    max_launches: int = DEFAULT_MAX_LAUNCHES


@dataclass(frozen=True)
class Throttle:
    """Frequency telemetry's verdict on a cell (autlearn.profiler.telemetry): flagged, it is redone up to `retries`
    times, each time after a cooldown (until no CPU cooling device is engaged, then `cooldown_s`, then the campaign's
    [cooldown]), then kept with its flag; a cell that started as cool as [cooldown] asks is kept at once (it heats
    the phone past its trip point itself). `max_temp_c`: a launch this hot is throttled (None: not checked)."""

    retries: int = 2
    cooldown_s: float = 0.0
    max_temp_c: float | None = None


@dataclass(frozen=True)
class Campaign:
    """A validated campaign file. `source` is the file it came from ("" when parsed from a dict)."""

    name: str
    workloads: tuple[Workload, ...]
    devices: DeviceSelection = DeviceSelection()
    governors: Governors = Governors()
    warmup: int = 3
    steps: int = 20
    repetitions: int = 5
    affinities: tuple[str, ...] = ("all",)
    energy: EnergySource = EnergySource()
    cooldown: Cooldown = Cooldown()
    throttle: Throttle = Throttle()
    description: str = ""
    source: str = ""
    order: str = "interleaved"  # ORDERS: the order of a device's cells (order_cells)
    seed: int = 0  # of the "shuffled" order
    samples: Samples = Samples()

    def energy_for(self, serial: str) -> EnergySource:
        per = dict(self.devices.energy)
        return per.get(serial, per.get(serial.rpartition("/")[2], self.energy))

    def select(self, devices: Iterable[_Device]) -> tuple[_Device, ...]:
        """The devices this campaign runs on, in the given order."""
        return tuple(d for d in devices if self.devices.matches(d))

    def plan(self, devices: Iterable[DeviceLike]) -> tuple[Cell, ...]:
        """Expand into cells: selected device x workload x variant x batch x governor x affinity, each device's cells
        in the campaign's order (`order_cells`)."""
        cells: list[Cell] = []
        for d in self.select(devices):
            mine = []
            for w in self.workloads:
                for v in w.variants:
                    for b in w.batch:
                        for g in self.governors.intents:
                            for a in self.affinities:
                                mine.append(
                                    Cell(
                                        device_serial=d.serial,
                                        device_model=d.model or "",
                                        device_virtual=bool(d.virtual),
                                        workload=w.model,
                                        config=w.config,
                                        variant=v,
                                        batch=b,
                                        governor=str(g),
                                        fallback=self.governors.fallback,
                                        affinity=a,
                                        warmup=self.warmup,
                                        steps=self.steps,
                                        repetitions=self.repetitions,
                                        energy=str(self.energy_for(d.serial)),
                                        ci_width=self.samples.ci_width,
                                        max_launches=self.samples.max_launches,
                                    )
                                )
            cells += order_cells(mine, self.order, self.seed, d.serial)
        return tuple(cells)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, canonical; `parse_campaign(c.to_dict())` gives back an equal campaign (bar `source`)."""
        d: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "warmup": self.warmup,
            "steps": self.steps,
            "repetitions": self.repetitions,
            "affinity": list(self.affinities),
            "energy": str(self.energy),
            "devices": {
                "serials": list(self.devices.serials),
                "models": list(self.devices.models),
                "virtual": {v: k for k, v in VIRTUAL.items()}[self.devices.virtual],
                "energy": {s: str(e) for s, e in self.devices.energy},
            },
            "workload": [
                {"model": w.model, "variants": list(w.variants), "batch": list(w.batch), "config": w.kwargs}
                for w in self.workloads
            ],
            "governors": {"intents": [str(i) for i in self.governors.intents], "fallback": self.governors.fallback},
            "cooldown": {
                "max_temp_c": self.cooldown.max_temp_c,
                "timeout_s": self.cooldown.timeout_s,
                "zones": self.cooldown.zones,
            },
            "order": self.order,
            "seed": self.seed,
            "throttle": _throttle_dict(self.throttle),
        }
        if self.samples.ci_width is not None:
            d["samples"] = {"ci_width": self.samples.ci_width, "max_launches": self.samples.max_launches}
        return d


def order_cells(cells: Sequence[Cell], kind: str, seed: int = 0, salt: str = "") -> list[Cell]:
    """One device's cells (in plan order) in the order they run (`kind`: ORDERS; see the module docstring).
    Blocks: the cells compared with each other (same workload, config, batch, affinity). "shuffled" draws from
    `random.Random(f"{seed}:{salt}")` (stable across runs and Python versions' hash seeds)."""
    if kind == "sequential":
        return list(cells)
    blocks: dict[tuple[Any, ...], list[Cell]] = {}
    for c in cells:
        blocks.setdefault((c.workload, c.config, c.batch, c.affinity), []).append(c)
    groups = list(blocks.values())
    if kind == "shuffled":
        rng = random.Random(f"{seed}:{salt}")
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
        return [c for g in groups for c in g]
    out: list[Cell] = []
    for i, g in enumerate(groups):
        block = _round_robin(g)
        out += block if i % 2 == 0 else block[::-1]
    return out


def _round_robin(block: list[Cell]) -> list[Cell]:
    """A block's cells governor by governor, its variants in turn, reversed on every other governor (ABBA)."""
    governors = list(dict.fromkeys(c.governor for c in block))
    out: list[Cell] = []
    for i, g in enumerate(governors):
        row = [c for c in block if c.governor == g]
        out += row if i % 2 == 0 else row[::-1]
    return out


class DeviceLike(Protocol):
    # read-only: frozen dataclasses (DeviceRef, autlearn.profiler.probe.DeviceFacts) fit
    @property
    def serial(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def virtual(self) -> bool: ...


@dataclass(frozen=True)
class DeviceRef:
    """The minimum the planner needs to know about a device (autlearn.profiler.probe's facts also fit)."""

    serial: str
    model: str = ""
    virtual: bool = False


@dataclass(frozen=True)
class Cell:
    """One measurement unit. Everything that changes what is measured is in `spec()`; the device model and the
    virtual flag are facts carried along for reports."""

    device_serial: str
    device_model: str
    device_virtual: bool
    workload: str
    config: tuple[tuple[str, Any], ...]
    variant: str
    batch: int
    governor: str  # the intent as written canonically, e.g. "userspace@1200000"
    fallback: str
    affinity: str
    warmup: int
    steps: int
    repetitions: int
    energy: str
    ci_width: float | None = None  # launch until the median's 95 % CI is this narrow (relative), or max_launches
    max_launches: int = DEFAULT_MAX_LAUNCHES

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "device": self.device_serial,
            "workload": self.workload,
            "config": plain_config(dict(self.config)),
            "variant": self.variant,
            "batch": self.batch,
            "governor": self.governor,
            "fallback": self.fallback,
            "affinity": self.affinity,
            "warmup": self.warmup,
            "steps": self.steps,
            "repetitions": self.repetitions,
            "energy": self.energy,
        }
        if self.ci_width is not None:  # absent otherwise: the ids of cells without a CI target stay as they were
            d["samples"] = {"ci_width": self.ci_width, "max_launches": self.max_launches}
        return d

    @property
    def spec_key(self) -> str:
        """Hash of the spec alone: equal for the same cell built from a different artifact."""
        return _digest({"spec": self.spec()})

    @property
    def label(self) -> str:
        return cell_label(self.device_serial, self.workload, self.variant, self.batch, self.governor, self.affinity)


def cell_label(serial: str, workload: str, variant: str, batch: int, governor: str, affinity: str) -> str:
    """A cell as people read it (status files, reports): `SERIAL/WORKLOAD-VARIANT/bBATCH/GOVERNOR/AFFINITY`; the
    serial comes first (`serial_of_label`)."""
    return f"{serial}/{workload}-{variant}/b{batch}/{governor}/{affinity}"


def serial_of_label(label: str) -> str:
    """The device serial of a `cell_label` ('' when `label` is not one). Cut from the right: the four fields after
    the serial hold no "/", and a serial may (a cluster phone's is `HOST/SERIAL`)."""
    parts = label.rsplit("/", 4)
    return parts[0] if len(parts) == 5 and all(parts) else ""


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cell_id(cell: Cell, artifact_hash: str) -> str:
    """Stable 16-hex id of (cell spec, artifact hash). A rebuilt artifact gives a new id: old results go stale."""
    return _digest({"spec": cell.spec(), "artifact": artifact_hash})


# ---------------------------------------------------------------------------------------------------------- loading
MAX_FILE_BYTES = 1 << 20  # a campaign file larger than this is refused unread
MAX_TEXT = 256  # any string value (serials, model arguments, ...)
MAX_DESCRIPTION = 4000  # the free-text description copied into campaign.json and the report
MAX_LIST = 1024  # items of a model-argument array
_COUNTS = {"warmup": (0, 100_000), "steps": (1, 1_000_000), "repetitions": (1, 10_000)}  # (min, max)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file. ConfigError on a missing file, a syntax error (file:line:column) or an
    invalid key (`key` names it)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:  # checked before reading: a campaign is a page of TOML, not a data file
            raise ConfigError(f"campaign file {p} is {size} bytes; the limit is {MAX_FILE_BYTES}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"campaign file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read campaign file {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POS_RE.search(str(exc))
        where = f"{p}:{m.group(1)}:{m.group(2)}" if m else str(p)
        msg = _TOML_POS_RE.sub("", str(exc)).strip()
        raise ConfigError(f"{where}: TOML syntax error: {msg}") from None
    try:
        return parse_campaign(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError(f"{_message(exc)} (in {p})", key=exc.key) from None


def _message(exc: ConfigError) -> str:
    s = str(exc)
    return s[len(exc.key) + 2 :] if exc.key and s.startswith(f"{exc.key}: ") else s


def parse_campaign(data: Mapping[str, Any], source: str = "") -> Campaign:
    """Validate a parsed TOML document (a dict) into a Campaign. ConfigError(message, key=dotted.key)."""
    if not isinstance(data, Mapping):
        raise ConfigError("a campaign is a TOML table")
    _keys(
        data,
        "",
        {
            "name",
            "description",
            "warmup",
            "steps",
            "repetitions",
            "affinity",
            "energy",
            "devices",
            "workload",
            "governors",
            "cooldown",
            "order",
            "seed",
            "samples",
            "throttle",
        },
    )
    if "name" not in data:
        raise ConfigError("required (the results directory name)", key="name")
    name = _name(_str(data["name"], "name"))
    if "workload" not in data:
        raise ConfigError("at least one [[workload]] is required", key="workload")
    repetitions = _int(data.get("repetitions", 5), "repetitions", *_COUNTS["repetitions"])
    return Campaign(
        name=name,
        description=_str(data.get("description", ""), "description", empty=True, limit=MAX_DESCRIPTION),
        workloads=_workloads(data["workload"]),
        devices=_devices(data.get("devices", {})),
        governors=_governors(data.get("governors", ["schedutil"])),
        warmup=_int(data.get("warmup", 3), "warmup", *_COUNTS["warmup"]),
        steps=_int(data.get("steps", 20), "steps", *_COUNTS["steps"]),
        repetitions=repetitions,
        affinities=_affinities(data.get("affinity", "all")),
        energy=_energy(data.get("energy", "none"), "energy"),
        cooldown=_cooldown(data.get("cooldown", {})),
        throttle=_throttle(data.get("throttle", {})),
        source=source,
        order=_choice(data.get("order", "interleaved"), "order", ORDERS),
        seed=_int(data.get("seed", 0), "seed", 0, 2**63 - 1),
        samples=_samples(data.get("samples", {}), repetitions),
    )


def check_campaign(campaign: Campaign) -> Campaign:
    """A Campaign built in code (not read from a file) checked as `parse_campaign` checks a file: name, serials,
    counts, every workload's model config (`make_workload`), governors. Returns it; ConfigError(key=...)."""
    _name(campaign.name)
    _str(campaign.description, "description", empty=True, limit=MAX_DESCRIPTION)
    for i, s in enumerate(campaign.devices.serials):
        _serial(s, f"devices.serials[{i}]")
    for k, (lo, hi) in _COUNTS.items():
        _int(getattr(campaign, k), k, lo, hi)
    if not campaign.workloads:
        raise ConfigError("at least one workload is required", key="workload")
    for i, w in enumerate(campaign.workloads):
        if make_workload(w.model, w.variants, w.batch, w.kwargs, key=f"workload[{i}]") != w:
            raise ConfigError("not as make_workload makes it (config sorted, lists as tuples)", key=f"workload[{i}]")
    _distinct(campaign.workloads)
    if not campaign.governors.intents:
        raise ConfigError("must not be empty", key="governors")
    _unique(list(campaign.governors.intents), "governors")
    _choice(campaign.order, "order", ORDERS)
    _int(campaign.seed, "seed", 0, 2**63 - 1)
    if campaign.samples.ci_width is not None:
        _samples(
            {"ci_width": campaign.samples.ci_width, "max_launches": campaign.samples.max_launches},
            campaign.repetitions,
        )
    return campaign


def energy_source(text: str, key: str = "energy") -> EnergySource:
    """`none` | `fuelgauge` | `monsoon:SERIAL` | `monsoon:auto` | `auto` as a campaign file writes it."""
    return _energy(text, key)


def governor_intents(intents: Iterable[str]) -> Governors:
    """Governor intents as a campaign file writes them (the shorthand list: fallback `nearest`)."""
    return _governors(list(intents))


# ---------------------------------------------------------------------------------------------------------- checks
def _name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (it names the results directory)",
            key="name",
        )
    return name


def _serial(serial: str, key: str) -> str:
    if not _SERIAL_RE.match(_str(serial, key)):
        raise ConfigError(f"not a device serial: {serial!r}", key=key)
    return serial


def _type_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(v), type(v).__name__
    )


def _key(prefix: str, name: str) -> str:
    """`prefix` + `name`, quoted TOML-style unless it is a bare key (so "" and "a.b" stay visible)."""
    return prefix + (name if re.match(r"^[A-Za-z0-9_-]+$", name) else json.dumps(name))


def _keys(table: Any, prefix: str, allowed: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise ConfigError(f"must be a table, not {_type_name(table)}", key=prefix.rstrip(".") or None)
    for k in table:
        if k not in allowed:
            raise ConfigError(f"unknown key; valid keys: {', '.join(sorted(allowed))}", key=_key(prefix, k))


def _str(v: Any, key: str, empty: bool = False, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"must be a string, not {_type_name(v)}", key=key)
    if not empty and not v.strip():
        raise ConfigError("must not be empty", key=key)
    if len(v) > limit:
        raise ConfigError(f"is {len(v)} characters; the limit is {limit}", key=key)
    return v


def _int(v: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"must be an integer, not {_type_name(v)}", key=key)
    if not lo <= v <= hi:
        raise ConfigError(f"must be between {lo} and {hi}, not {v}", key=key)
    return v


def _num(v: Any, key: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"must be a number, not {_type_name(v)}", key=key)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ConfigError(f"must be between {lo:g} and {hi:g}, not {v}", key=key)
    return float(v)


def _choice(v: Any, key: str, valid: Iterable[str]) -> str:
    valid = tuple(valid)
    if not isinstance(v, str) or v not in valid:
        got = repr(v) if isinstance(v, str) else _type_name(v)
        raise ConfigError(f"must be one of {', '.join(valid)}; got {got}", key=key)
    return v


def _list(v: Any, key: str, scalar_ok: bool = True, nonempty: bool = True) -> list[Any]:
    """A list (a lone scalar counts as a list of one when `scalar_ok`)."""
    if isinstance(v, list):
        items = v
    elif scalar_ok and not isinstance(v, Mapping):
        items = [v]
    else:
        raise ConfigError(f"must be an array, not {_type_name(v)}", key=key)
    if nonempty and not items:
        raise ConfigError("must not be empty", key=key)
    return items


def _unique(items: list[Any], key: str) -> None:
    seen = set()
    for i, x in enumerate(items):
        if x in seen:
            raise ConfigError(f"duplicate value {x!r}", key=f"{key}[{i}]")
        seen.add(x)


def _energy(v: Any, key: str) -> EnergySource:
    s = _str(v, key)
    kind, colon, serial = s.partition(":")
    if kind not in ENERGY_KINDS:
        raise ConfigError(f"must be one of none, fuelgauge, monsoon:SERIAL, monsoon:auto, auto; got {s!r}", key=key)
    if kind == "monsoon":
        if not colon or not re.match(r"^[A-Za-z0-9_-]{1,32}$", serial):
            raise ConfigError(f"monsoon needs the monitor's serial (or auto): monsoon:12345; got {s!r}", key=key)
        return EnergySource("monsoon", serial)
    if colon:
        raise ConfigError(f"only monsoon takes a serial; got {s!r}", key=key)
    return EnergySource(kind)


def _devices(v: Any) -> DeviceSelection:
    _keys(v, "devices.", {"serials", "models", "virtual", "energy"})
    serials = _list(v.get("serials", []), "devices.serials", nonempty=False)
    for i, s in enumerate(serials):
        _serial(s, f"devices.serials[{i}]")
    _unique(serials, "devices.serials")
    models = _list(v.get("models", []), "devices.models", nonempty=False)
    for i, m in enumerate(models):
        _str(m, f"devices.models[{i}]")
    virtual = v.get("virtual", True)
    if virtual is not True and virtual is not False and virtual != "only":
        raise ConfigError(f'must be one of true, false, "only"; got {virtual!r}', key="devices.virtual")
    energy_tbl = v.get("energy", {})
    if not isinstance(energy_tbl, Mapping):
        raise ConfigError(f'must be a table of "SERIAL" = "SOURCE", not {_type_name(energy_tbl)}', key="devices.energy")
    energy = []
    for s, e in energy_tbl.items():
        if not _SERIAL_RE.match(s):
            raise ConfigError(f"not a device serial: {s!r}", key=_key("devices.energy.", s))
        energy.append((s, _energy(e, _key("devices.energy.", s))))
    return DeviceSelection(tuple(serials), tuple(models), VIRTUAL[virtual], tuple(sorted(energy)))


def _config_value(v: Any, key: str, nested: bool = False) -> Any:
    if isinstance(v, str):
        return _str(v, key, empty=True)
    if isinstance(v, (bool, int)) or isinstance(v, float) and math.isfinite(v):
        return v
    if isinstance(v, list) and not nested:
        if len(v) > MAX_LIST:
            raise ConfigError(f"has {len(v)} items; the limit is {MAX_LIST}", key=key)
        return tuple(_config_value(x, f"{key}[{i}]", nested=True) for i, x in enumerate(v))
    raise ConfigError(
        f"model arguments are strings, finite numbers, booleans or flat arrays of them, not {_type_name(v)}", key=key
    )


def __getattr__(name: str) -> Any:
    if name == "MODELS":  # the registered model families and "layers" (autlearn.workloads.registry.campaign_models)
        return campaign_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _workloads(v: Any) -> tuple[Workload, ...]:

    if not isinstance(v, list) or not v:
        raise ConfigError("must be one or more [[workload]] tables", key="workload")
    out = []
    for i, w in enumerate(v):
        k = f"workload[{i}]"
        _keys(w, f"{k}.", {"model", "variants", "batch", "config"})
        if "model" not in w:
            raise ConfigError(f"required; one of {', '.join(campaign_models())}", key=f"{k}.model")
        out.append(_workload(w["model"], w.get("variants", ["full"]), w.get("batch", [1]), w.get("config", {}), k))
    _distinct(out)
    return tuple(out)


def make_workload(
    model: str,
    variants: Iterable[str] = ("full",),
    batch: Iterable[int] = (1,),
    config: Mapping[str, Any] | None = None,
    key: str = "workload",
) -> Workload:
    """A workload checked as a `[[workload]]` table is (`key` prefixes the errors' keys); config values may be
    tuples."""
    return _workload(model, list(variants), list(batch), plain_config(config or {}), key)


def _workload(model: Any, variants: Any, batch: Any, cfg: Any, k: str) -> Workload:

    models = campaign_models()  # "layers": a suite of single-layer workloads (per-layer tables)
    model = _choice(model, f"{k}.model", models)
    variants = _list(variants, f"{k}.variants")
    for j, x in enumerate(variants):
        _choice(x, f"{k}.variants[{j}]", VARIANTS if model != LAYER_SUITE else ("full",))
    _unique(variants, f"{k}.variants")
    batch = _list(batch, f"{k}.batch")
    for j, x in enumerate(batch):
        _int(x, f"{k}.batch[{j}]", 1, 4096)
    _unique(batch, f"{k}.batch")
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"must be a table of model arguments, not {_type_name(cfg)}", key=f"{k}.config")
    config = []
    for name, val in cfg.items():
        if not _IDENT_RE.match(name):
            raise ConfigError("model argument names are Python identifiers", key=_key(f"{k}.config.", name))
        config.append((name, _config_value(val, f"{k}.config.{name}")))
    _check_model_config(model, variants, batch, dict(config), f"{k}.config")
    return Workload(model, tuple(variants), tuple(batch), tuple(sorted(config)))


def _distinct(workloads: Iterable[Workload]) -> None:
    keys = [(w.model, w.config) for w in workloads]
    for i, x in enumerate(keys):
        if x in keys[:i]:
            raise ConfigError(
                "same model and config as an earlier workload; merge their variants/batch", key=f"workload[{i}]"
            )


def _check_model_config(model: str, variants: list[Any], batch: list[Any], config: dict[str, Any], key: str) -> None:
    """The whole model config checked now, before any results directory exists: its keys and value types against
    the family's config (per batch), `tuning` and a pruned model's `compressed` file."""

    if model == LAYER_SUITE:
        return
    config = dict(config)
    tuning = config.pop("tuning", "default")
    if tuning not in ("default", "none"):
        raise ConfigError(f"must be 'default' (the target's database) or 'none', not {tuning!r}", key=f"{key}.tuning")
    compressed = config.pop("compressed", None)
    if compressed is not None:
        if not isinstance(compressed, str):
            raise ConfigError("must be the path of a compressed.json", key=f"{key}.compressed")
        if list(variants) != ["compressed"]:
            raise ConfigError('a compressed model file needs variants = ["compressed"]', key=f"{key}.compressed")
        try:
            compressed_build_args(compressed, model)
        except UserError as exc:
            raise ConfigError(str(exc), key=f"{key}.compressed") from None
        return
    if "batch" in config:
        raise ConfigError("the batch size is the workload's `batch` list, not a config key", key=f"{key}.batch")
    family = get(model)
    for b in batch:
        try:
            family.make_config(**config, batch=b)
        except ConfigError as exc:
            raise ConfigError(
                _message(exc), key=f"{key}.{exc.key}" if exc.key and exc.key != "config" else key
            ) from None
        except (TypeError, ValueError) as exc:  # a family's own checks beyond the field types
            raise ConfigError(str(exc).splitlines()[0][:200], key=key) from None


def _governors(v: Any) -> Governors:
    if isinstance(v, Mapping):
        _keys(v, "governors.", {"intents", "fallback"})
        fallback = _choice(v.get("fallback", "nearest"), "governors.fallback", FALLBACKS)
        items, key = _list(v.get("intents", ["schedutil"]), "governors.intents"), "governors.intents"
    else:
        items, key, fallback = _list(v, "governors"), "governors", "nearest"
    intents = []
    for i, x in enumerate(items):
        try:
            intents.append(parse_intent(_str(x, f"{key}[{i}]")))
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"{key}[{i}]") from None
    _unique(intents, key)
    return Governors(tuple(intents), fallback)


def _affinities(v: Any) -> tuple[str, ...]:
    items = _list(v, "affinity")
    out = []
    for i, x in enumerate(items):
        k = "affinity" if not isinstance(v, list) else f"affinity[{i}]"
        s = _str(x, k).strip().lower()
        if s in AFFINITY_NAMES:
            out.append(s)
        elif _MASK_RE.match(s) and int(s, 16) != 0:
            out.append(hex(int(s, 16)))
        else:
            raise ConfigError(
                f'must be one of all, big, little or a non-zero hex CPU mask like "0xf0"; got {x!r}', key=k
            )
    _unique(out, "affinity")
    return tuple(out)


def _samples(v: Any, repetitions: int) -> Samples:
    _keys(v, "samples.", {"ci_width", "max_launches"})
    if "ci_width" not in v:
        if "max_launches" in v:
            raise ConfigError("needs samples.ci_width (the launches are `repetitions` without one)", key="samples")
        return Samples()
    width = _num(v["ci_width"], "samples.ci_width", 0.0001, 1.0)
    cap = _int(v.get("max_launches", max(DEFAULT_MAX_LAUNCHES, repetitions)), "samples.max_launches", 1, 10_000)
    if cap < repetitions:
        raise ConfigError(
            f"must be at least repetitions ({repetitions}): the launches a cell makes before its CI is looked at",
            key="samples.max_launches",
        )
    return Samples(width, cap)


def _cooldown(v: Any) -> Cooldown:
    _keys(v, "cooldown.", {"max_temp_c", "timeout_s", "zones"})
    return Cooldown(
        max_temp_c=_num(v.get("max_temp_c", 45.0), "cooldown.max_temp_c", 20.0, 120.0),
        timeout_s=_num(v.get("timeout_s", 300.0), "cooldown.timeout_s", 0.0, 86_400.0),
        zones=_str(v.get("zones", "*cpu*"), "cooldown.zones"),
    )


def _throttle(v: Any) -> Throttle:
    _keys(v, "throttle.", {"retries", "cooldown_s", "max_temp_c"})
    limit = v.get("max_temp_c")
    return Throttle(
        retries=_int(v.get("retries", 2), "throttle.retries", 0, 10),
        cooldown_s=_num(v.get("cooldown_s", 0.0), "throttle.cooldown_s", 0.0, 3600.0),
        max_temp_c=None if limit is None else _num(limit, "throttle.max_temp_c", 20.0, 150.0),
    )


def _throttle_dict(t: Throttle) -> dict[str, Any]:
    d: dict[str, Any] = {"retries": t.retries, "cooldown_s": t.cooldown_s}
    return d if t.max_temp_c is None else d | {"max_temp_c": t.max_temp_c}


__all__ = [
    "AFFINITY_NAMES",
    "Campaign",
    "Cell",
    "Cooldown",
    "DeviceRef",
    "DeviceSelection",
    "ENERGY_KINDS",
    "EnergySource",
    "Governors",
    "ORDERS",
    "Samples",
    "Throttle",
    "VARIANTS",
    "Workload",
    "cell_id",
    "check_campaign",
    "energy_source",
    "governor_intents",
    "load_campaign",
    "make_workload",
    "order_cells",
    "parse_campaign",
]
