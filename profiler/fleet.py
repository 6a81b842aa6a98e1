"""Fleet discovery: every device the adb server knows, probed in parallel (one thread per device)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from profiler.device import Device, adb_client, list_devices
from profiler.errors import DeviceError, ParseError
from profiler.probe import DeviceFacts, probe


@dataclass(frozen=True)
class FleetEntry:
    serial: str
    state: str
    facts: DeviceFacts | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {"serial": self.serial, "state": self.state, "error": self.error,
                "facts": self.facts.to_dict() if self.facts else None}


def _probe_one(client, serial: str, state: str | None) -> FleetEntry:
    if state is None:
        return FleetEntry(serial, "unknown", error="serial not known to the adb server")
    if state != "device":
        return FleetEntry(serial, state, error=f"adb state is {state}")
    try:
        return FleetEntry(serial, state, facts=probe(Device(serial, client=client)))
    except (DeviceError, ParseError) as exc:
        return FleetEntry(serial, state, error=str(exc))


def discover(serials: tuple[str, ...] = ()) -> list[FleetEntry]:
    """Probe the fleet (or only `serials`); unknown serials come back as entries with an error."""
    client = adb_client()
    known = {e.serial: e.state for e in list_devices(client)}
    wanted = list(serials) or sorted(known)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
        return list(pool.map(lambda s: _probe_one(client, s, known.get(s)), wanted))
