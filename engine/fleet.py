"""The declared fleet: where a campaign's phones are, how their artifacts are built and how their cells run.

`Fleet` is the protocol of `engine.campaign.LocalFleet` (this host's adb server, a worker thread per device) and
`engine.cluster.ClusterFleet` (agents on several USB hosts); both log through the callable given at construction.
Builds go through one artifact provider (`ArtifactProvider`, asked with a typed `BuildRequest`), which the fleet
makes from the artifact cache the engine is given (`Fleet.provider`): in-process builds, or Ray tasks first.
Both fleets run their devices through one loop (`run_devices`): the cells finished before a --resume are counted,
the others run where the device is, and every event (`engine.events`) is recorded here into the store and progress.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autlearn.engine.campaign_config import Campaign, Cell
from autlearn.engine.events import CellEvent, Event, EventSink, StateEvent, StatusEvent, TraceEvent, WarningEvent
from autlearn.engine.store import Store
from autlearn.engine.worker import ArtifactRef, Planned, PlannedCell, Progress
from autlearn.profiler.fleet import FleetEntry
from autlearn.profiler.probe import DeviceFacts

OUTCOMES = ("ok", "failed", "skipped", "resumed", "interrupted")


# ------------------------------------------------------------------------------------------------------ builds
@dataclass(frozen=True)
class BuildRequest:
    """One artifact a cell needs: its workload, variant and config compiled for the target id `target`, with the
    tuning databases under `tuning_root` (`workloads.tuning_db`; the committed ones besides)."""

    cell: Cell
    target: str
    tuning_root: Path

    @property
    def workload(self) -> str:
        return self.cell.workload

    @property
    def variant(self) -> str:
        return self.cell.variant

    @property
    def config(self) -> dict[str, Any]:
        return {**dict(self.cell.config), "batch": self.cell.batch}


class ArtifactProvider(Protocol):
    """Where every build of a run goes: `prebuild` what the plan needs (in parallel), then one ArtifactRef each."""

    def __call__(self, request: BuildRequest) -> ArtifactRef: ...

    def prebuild(self, requests: Sequence[BuildRequest]) -> None: ...


# the artifact cache a caller gives the engine: (cell, target id) -> artifact, building what it lacks
# (`pipelines.artifact_cache.ArtifactProvider`, or a test's double); it may also offer `prebuild([(cell, target)])`
CellArtifacts = Callable[[Cell, str], ArtifactRef]


class LocalBuilds:
    """The provider of an in-process run: the cache builds (in parallel processes, when it can prebuild). It reads
    the tuning root from the environment, where the engine took `BuildRequest.tuning_root` from."""

    def __init__(self, cache: CellArtifacts) -> None:
        self.cache = cache

    def __call__(self, request: BuildRequest) -> ArtifactRef:
        return self.cache(request.cell, request.target)

    def prebuild(self, requests: Sequence[BuildRequest]) -> None:
        prebuild = getattr(self.cache, "prebuild", None)
        if prebuild is not None:  # parallel builds of what the plan needs (the cache memoizes them)
            prebuild([(r.cell, r.target) for r in requests])


# ------------------------------------------------------------------------------------------------------ the fleet
class Fleet(Protocol):
    """Where a campaign's phones are and how their cells run: `LocalFleet`, or `engine.cluster.ClusterFleet`."""

    def discover(self) -> list[FleetEntry]: ...

    def lease(
        self,
        devices: Sequence[DeviceFacts],
        campaign: Campaign,
        results: str,
        wait_s: float,
        stack: contextlib.ExitStack,
    ) -> None: ...

    def check(self, campaign: Campaign, devices: Sequence[DeviceFacts]) -> None: ...

    def prepare(
        self, campaign: Campaign, devices: Sequence[DeviceFacts], store: Store, stack: contextlib.ExitStack
    ) -> dict[str, str]: ...

    def provider(self, cache: CellArtifacts) -> ArtifactProvider: ...

    def run(
        self,
        planned: Planned,
        by_serial: dict[str, DeviceFacts],
        store: Store,
        campaign: Campaign,
        progress: Progress,
        resume: bool,
        threads: int | None,
    ) -> tuple[dict[str, int], tuple[str, ...]]: ...


# ------------------------------------------------------------------------------------------------------ the run loop
class DeviceRunFailed(Exception):
    """A device's cells cannot go on where they run (its host lost, its agent failed): its cells not recorded yet
    fail with `reason`, and its progress shows `state`."""

    def __init__(self, reason: str, state: str = "done") -> None:
        super().__init__(reason)
        self.reason, self.state = reason, state


class Recorder:
    """One device's events into the store and the progress, counted: the `emit` of its run, wherever it runs."""

    def __init__(self, name: str, store: Store, progress: Progress) -> None:
        self.name, self.store, self.progress = name, store, progress
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.recorded: set[str] = set()
        self.warnings: list[str] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateEvent):
            self.progress.set_state(self.name, event.state)
        elif isinstance(event, TraceEvent):
            self.store.write_trace(event.cell_id, event.trace)
        elif isinstance(event, CellEvent):
            self.store.write_cell(event.meta, event.samples)
            self._outcome(event.meta.cell_id, "ok")
        elif isinstance(event, StatusEvent):
            self.store.write_status(
                event.cell_id, event.status, event.reason, spec_key=event.spec_key, label=event.label
            )
            self._outcome(event.cell_id, event.status)
        elif isinstance(event, WarningEvent):
            self.warnings.append(event.text)

    def _outcome(self, cell_id: str, status: str) -> None:
        self.recorded.add(cell_id)
        self.counts[status] += 1
        self.progress.advance(self.name)

    def pending(self, cells: list[PlannedCell], resume: bool) -> list[PlannedCell]:
        """Of `cells`, those to run: on --resume, the finished ones are counted as resumed instead."""
        out = []
        for cell, cid, art in cells:
            if resume and self.store.finished(cid):
                self.counts["resumed"] += 1
                self.progress.advance(self.name)
            else:
                out.append((cell, cid, art))
        return out

    def fail_unrecorded(self, cells: list[PlannedCell], failure: DeviceRunFailed) -> None:
        for cell, cid, _ in cells:
            if cid not in self.recorded:
                self(StatusEvent(cid, "failed", failure.reason, cell.spec_key, cell.label))
        self.warnings.append(f"{self.name}: unfinished cells failed ({failure.reason}); --resume reruns them")
        self.progress.set_state(self.name, failure.state)


# how a fleet runs one device's cells where the device is, each event to the sink; DeviceRunFailed when it cannot
Drive = Callable[[str, list[PlannedCell], EventSink], None]


def run_devices(
    planned: Planned,
    store: Store,
    progress: Progress,
    resume: bool,
    drive: Drive,
    stop: Callable[[], None],
) -> tuple[dict[str, int], tuple[str, ...]]:
    """Every fleet's run loop: a thread per device gives its pending cells to `drive(name, cells, emit)` and records
    what it emits. When the run stops (Ctrl-C, SIGTERM) or fails here, `stop()` tells the workers (the cell under
    way is stored as interrupted, no other starts), the threads are awaited and the exception goes on.
    (totals per outcome, warnings)."""
    recorders = {name: Recorder(name, store, progress) for name in planned}

    def one(name: str) -> None:
        rec = recorders[name]
        cells = rec.pending(planned[name], resume)
        if not cells:
            progress.set_state(name, "done")
            return
        try:
            drive(name, cells, rec)
        except DeviceRunFailed as exc:
            rec.fail_unrecorded(cells, exc)

    pool = ThreadPoolExecutor(max_workers=max(1, len(planned)), thread_name_prefix="device")
    futures = [pool.submit(one, name) for name in planned]
    try:
        while not all(f.done() for f in futures):
            time.sleep(0.2)
    except BaseException:
        stop()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)
    for f in futures:
        f.result()
    totals = {k: sum(r.counts[k] for r in recorders.values()) for k in OUTCOMES}
    return totals, tuple(w for r in recorders.values() for w in r.warnings)
