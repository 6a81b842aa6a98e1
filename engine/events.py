"""What a device's run tells its engine: typed events, one per write or progress change of a DeviceWorker.

Every fleet runs the same worker and the same loop (`engine.fleet.run_devices`); only where the worker runs and how
its events travel differ: in-process they are recorded as they come, from a cluster agent they stream back to the
controller (pickled by Ray), which alone writes the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autlearn.engine.store import CellMeta, Sample


@dataclass(frozen=True)
class StateEvent:
    """The device's state for the progress display (the cell under way, cooling down, done)."""

    state: str


@dataclass(frozen=True)
class StatusEvent:
    """A cell ended without samples: failed, skipped or interrupted, with the reason."""

    cell_id: str
    status: str
    reason: str
    spec_key: str
    label: str


@dataclass(frozen=True)
class CellEvent:
    """A cell measured: its metadata and samples."""

    meta: CellMeta
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class TraceEvent:
    """A cell's energy trace (written before its CellEvent)."""

    cell_id: str
    trace: Any


@dataclass(frozen=True)
class WarningEvent:
    """A line for the run's warnings (governors not restored, a worker that ended abnormally)."""

    text: str


Event = StateEvent | StatusEvent | CellEvent | TraceEvent | WarningEvent
EventSink = Callable[[Event], None]
