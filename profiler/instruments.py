"""Instruments that plugins provide, so production code never imports them (e.g. the virtual lab's simulated
Monsoons). Plugins are found through the entry point group `autlearn.plugins` (`name = "module:register"`) and
loaded lazily, once, on the first lookup; their `register()` calls the register_* functions here.

    monitor_backend("SIM-6101", home)   # -> MonitorBackend (pyusb backend factory) or None: a real monitor
    known_monitor("emulator-5554", home)  # -> the monitor serial known to power that device, or None

`home` is handed to the plugin as given (the lab: its state directory; None = its default)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

PLUGIN_GROUP = "autlearn.plugins"


@dataclass(frozen=True)
class MonitorBackend:
    """Where a (simulated) power monitor is reached: the serial its driver sees and a picklable pyusb backend
    factory (autlearn.profiler.energy.monsoon.MonsoonSource's `backend`)."""

    usb_serial: str
    backend: Callable[[], Any]
    realtime: bool = True  # paced to real time: the workload waits out the settling window


MonitorFactory = Callable[[str, Any], MonitorBackend]  # (monitor serial, home) -> backend; EnergyError if absent
MonitorLookup = Callable[[str, Any], "str | None"]  # (device serial, home) -> monitor serial or None

_lock = threading.Lock()
_loaded = False
_monitor_factories: dict[str, MonitorFactory] = {}  # serial prefix -> factory
_monitor_lookups: list[MonitorLookup] = []


def register_monitor_backend(prefix: str, factory: MonitorFactory) -> None:
    """Monitors whose serial starts with `prefix` are opened through `factory` instead of the system's libusb."""
    _monitor_factories[prefix] = factory


def register_known_monitor(lookup: MonitorLookup) -> None:
    """`lookup(device_serial, home)` names the monitor known to power a device (None: it knows of none)."""
    if lookup not in _monitor_lookups:
        _monitor_lookups.append(lookup)


def load_plugins() -> None:
    """Call every `autlearn.plugins` entry point once per process. A plugin that fails to load is skipped with a
    warning: real instruments must keep working without it."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True

        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()()
            except Exception as exc:  # an uninstalled or broken plugin
                warnings.warn(f"autlearn plugin {ep.name} ({ep.value}) not loaded: {exc}", RuntimeWarning, stacklevel=2)


def monitor_backend(serial: str, home: Any = None) -> MonitorBackend | None:
    """The plugin backend of monitor `serial` (longest matching prefix), None when no plugin claims the serial
    (a real monitor). The plugin's factory raises EnergyError when the claimed monitor does not exist."""
    load_plugins()
    prefixes = sorted((p for p in _monitor_factories if str(serial).startswith(p)), key=len, reverse=True)
    return _monitor_factories[prefixes[0]](str(serial), home) if prefixes else None


def known_monitor(device_serial: str, home: Any = None) -> str | None:
    """The monitor a plugin knows to power device `device_serial` (the first that answers), else None."""
    load_plugins()
    for lookup in _monitor_lookups:
        found = lookup(device_serial, home)
        if found:
            return found
    return None
