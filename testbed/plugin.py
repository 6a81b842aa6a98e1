"""The virtual lab as an autlearn plugin (entry point `autlearn.plugins`): registers its simulated instruments."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from autlearn.profiler import instruments
from autlearn.profiler.instruments import MonitorBackend
from autlearn.testbed.lab import Lab
from autlearn.testbed.monsoon_sim import LAB_PREFIX, backend_for_serial

if TYPE_CHECKING:
    from pathlib import Path

    from autlearn.profiler.instruments import MonitorBackend


def register() -> None:
    """Called once by the instrument registry the first time production code looks something up."""

    instruments.register_monitor_backend(LAB_PREFIX, lab_monitor)
    instruments.register_known_monitor(known_monitor)


def lab_monitor(serial: str, lab_home: str | os.PathLike[str] | None = None) -> MonitorBackend:
    """The simulated Monsoon `serial` (SIM-<port>) of the lab in `lab_home` (default $AUTLEARN_HOME), paced to real
    time. EnergyError when the lab has no such monitor."""

    mon = backend_for_serial(serial, lab_home)
    return MonitorBackend(usb_serial=mon.usb_serial, backend=mon.backend, realtime=True)


def known_monitor(serial: str, lab_home: Path | None = None) -> str | None:
    """The simulated monitor recorded for lab phone `serial` in the lab state under `lab_home` (default
    $AUTLEARN_HOME; `autlearn lab up --monsoon`), else None."""

    try:
        phones = Lab(lab_home).phones()
    except Exception:  # no lab / unreadable state: nothing is known
        return None
    return next((p.monsoon for p in phones if p.serial == serial and p.monsoon), None)
