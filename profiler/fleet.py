"""Fleet discovery: every device the adb server knows, probed in parallel (one thread per device)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from autlearn.profiler.device import Device, adb_client, list_devices
from autlearn.profiler.errors import DeviceError, ParseError
from autlearn.profiler.probe import DeviceFacts, probe


@dataclass(frozen=True)
class FleetEntry:
    serial: str
    state: str
    facts: DeviceFacts | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "state": self.state,
            "error": self.error,
            "facts": self.facts.to_dict() if self.facts else None,
        }


def _probe_one(client: Any, serial: str, state: str | None) -> FleetEntry:
    if state is None:
        return FleetEntry(serial, "unknown", error="serial not known to the adb server")
    if state != "device":
        return FleetEntry(serial, state, error=f"adb state is {state}")
    try:
        return FleetEntry(serial, state, facts=probe(Device(serial, client=client)))
    except (DeviceError, ParseError) as exc:
        return FleetEntry(serial, state, error=str(exc))


def discover(serials: tuple[str, ...] = (), settle_s: float = 10.0, unseen_s: float = 2.0) -> list[FleetEntry]:
    """Probe the fleet (or only `serials`); unknown serials come back as entries with an error.

    A device that drops out while it is probed (its adbd restarting as or from root for another run, a USB
    hiccup) is probed again for up to `settle_s` before it counts as unreachable; a named serial adb has not listed
    at all gets `unseen_s` to appear (a USB device re-enumerating) before it counts as unknown."""
    client = adb_client()
    known = {e.serial: e.state for e in list_devices(client)}
    wanted = list(serials) or sorted(known)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
        entries = dict(zip(wanted, pool.map(lambda s: _probe_one(client, s, known.get(s)), wanted)))
    seen = set(known)
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        retry = [
            s
            for s, e in entries.items()
            if e.facts is None
            and waited < (settle_s if s in seen else unseen_s)
            and e.state in ("device", "offline", "unknown")
            and not _is_final(e)
        ]
        if not retry:
            break
        time.sleep(1.0)
        known = {e.serial: e.state for e in list_devices(client)}
        seen |= set(known)
        for s in retry:
            entries[s] = _probe_one(client, s, known.get(s))
    return [entries[s] for s in wanted]


def _is_final(entry: FleetEntry) -> bool:
    """An answer that waiting does not change (the probe ran and its output was bad)."""
    return bool(entry.error) and "probe did not finish" in cast(str, entry.error)
