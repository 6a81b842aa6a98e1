"""The campaign engine: plan -> artifacts -> one worker per device -> cells in the results store.

Each device gets one worker thread and a GovernorGuard that snapshots every cpufreq policy before the first change
and restores it when the worker ends (also on exceptions and SIGINT/SIGTERM; after a kill, `restore_pending` at the
next run). A cell is: cooldown, governor, deploy the artifact once per content hash, R runner launches of W warm-up
and N timed steps, parse, record metadata, write atomically. A device that vanishes is retried once, then its
remaining cells are marked failed while the other workers go on.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from autlearn.engine.campaign_config import Campaign, cell_id
from autlearn.engine.cluster import ClusterFleet
from autlearn.engine.events import EventSink
from autlearn.engine.fleet import (
    ArtifactProvider,
    BuildRequest,
    CellArtifacts,
    Fleet,
    LocalBuilds,
    run_devices,
)
from autlearn.engine.settings import MeasureSettings
from autlearn.engine.store import Store, one_line
from autlearn.engine.worker import (  # noqa: F401
    ArtifactRef,
    CampaignError,
    DeviceWorker,
    HarnessClock,
    Outcome,
    Planned,
    PlannedCell,
    Progress,
    affinity_mask,
    check_energy,
    cooldown_temp,
    follow_order,
    put_back,
    restore_passthrough,
    undo_root,
)
from autlearn.profiler.device import Device, wait_device
from autlearn.profiler.fleet import FleetEntry, discover
from autlearn.profiler.governor import restore_on_signals, restore_pending
from autlearn.profiler.lease import PhoneLease
from autlearn.profiler.paths import tuning_dir
from autlearn.profiler.probe import DeviceFacts, target_id


class LocalFleet:
    """The phones of this host's adb server, driven in-process: one worker thread per device (the default engine;
    `autlearn.engine.cluster.ClusterFleet` is the same interface over agents on several hosts). `say`: where its
    messages go (leases waited for, what killed runs left changed)."""

    def __init__(self, say: Callable[[str], None] = lambda s: None) -> None:
        self._say = say

    def discover(self) -> list[FleetEntry]:
        return discover()

    def lease(
        self,
        devices: Sequence[DeviceFacts],
        campaign: Campaign,
        results: str,
        wait_s: float,
        stack: contextlib.ExitStack,
    ) -> None:
        for d in devices:  # before anything is written or changed: one run per phone
            stack.enter_context(
                PhoneLease(
                    wait_device(d.serial, max(wait_s, 15.0)), campaign.name, results, wait_s=wait_s, say=self._say
                )
            )

    def check(self, campaign: Campaign, devices: Sequence[DeviceFacts]) -> None:
        """Before anything is written: fail fast on a monitor that cannot exist."""
        check_energy(campaign, [d.serial for d in devices])

    def prepare(
        self, campaign: Campaign, devices: Sequence[DeviceFacts], store: Store, stack: contextlib.ExitStack
    ) -> dict[str, str]:
        """Under the leases: put back what killed runs left changed (governors, charging, adbd root, passthrough)
        and undo adbd root when the run ends."""
        restored = restore_pending(store.root, lambda s: Device(s))  # results of older versions kept them here
        leased = {d.serial for d in devices}
        restored.update(put_back(leased, campaign))
        stack.callback(undo_root, leased, self._say)  # adbd back as it was when the run ends (under the leases)
        stack.callback(_passthrough_at_end, campaign, sorted(leased), self._say)
        return restored

    def provider(self, cache: CellArtifacts) -> ArtifactProvider:
        return LocalBuilds(cache)

    def run(
        self,
        planned: Planned,
        by_serial: dict[str, DeviceFacts],
        store: Store,
        campaign: Campaign,
        progress: Progress,
        resume: bool,
        threads: int | None,
    ) -> tuple[dict[str, int], tuple[str, ...]]:
        stop = threading.Event()
        workers: list[DeviceWorker] = []

        def drive(name: str, cells: list[PlannedCell], emit: EventSink) -> None:
            worker = DeviceWorker(name, by_serial[name], cells, campaign, emit, stop, threads)
            workers.append(worker)
            worker.run()

        def halt() -> None:
            stop.set()  # workers store their current cell as interrupted and start no other; guards restore
            for w in list(workers):
                w.abort_launch()  # the runner under way ends now, not after its steps

        with restore_on_signals():
            return run_devices(planned, store, progress, resume, drive, halt)


def _passthrough_at_end(campaign: Campaign, serials: Iterable[str], log: Callable[[str], None]) -> None:
    """A monitor that died or hung in a run's last cell left its USB passthrough off: put it back now, not at the
    next run (with a real Monsoon the phone is off adb until then)."""
    for key, what in restore_passthrough(campaign, serials).items():
        log(f"{key}: left changed by a monitor that died in this run: {what}")


def fleet_for(settings: MeasureSettings, log: Callable[[str], None] = lambda s: None) -> Fleet:
    """The engine a MeasureSettings asks for: this host's phones, or a Ray cluster's (`settings.cluster`), which
    says from its discovery on (a host whose agent does not answer) through `log`."""
    address = getattr(settings, "cluster", None)
    if not address:
        return LocalFleet(say=log)

    return ClusterFleet(address, say=log)


def run(
    campaign: Campaign,
    settings: MeasureSettings,
    artifacts: CellArtifacts,
    on_progress: Callable[[Progress], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
    wait_s: float = 0.0,
) -> Outcome:
    """Run `campaign` with `settings` (autlearn.engine.settings.MeasureSettings: results root, resume, threads, cluster)
    and an artifact cache (the fleet builds through it: `Fleet.provider`) -> Outcome. No display:
    `on_progress(progress)` is called on every change and once at the end (a CLI renders it; `progress.finished` is
    then True); `log` gets the engine's messages and the fleet's; `wait_s`: how long to wait for a phone another
    run holds."""
    progress = Progress()
    if on_progress is not None:
        progress.on_change = lambda _serial: on_progress(progress)
    try:
        return run_campaign(
            campaign,
            settings.results_root,
            artifacts,
            resume=settings.resume,
            progress=progress,
            threads=settings.threads,
            log=log,
            wait_s=wait_s,
            fleet=fleet_for(settings, log),
        )
    finally:
        progress.finished = True
        if on_progress is not None:
            on_progress(progress)


def run_campaign(
    campaign: Campaign,
    results_root: Path,
    artifacts: CellArtifacts,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    wait_s: float = 0.0,
    fleet: Fleet | None = None,
) -> Outcome:
    """Run every cell of `campaign` on the selected devices; results under `results_root/<campaign.name>`.
    Each device is leased to this run first (`profiler.lease`; `wait_s` for a phone another run holds). `fleet`:
    where the phones are (default: this host's adb server, `LocalFleet` saying through `log`)."""
    fleet = fleet or LocalFleet(say=log)
    with contextlib.ExitStack() as stack:
        return _run_campaign(
            campaign,
            results_root,
            artifacts,
            resume=resume,
            progress=progress,
            threads=threads,
            log=log,
            wait_s=wait_s,
            stack=stack,
            fleet=fleet,
        )


def _run_campaign(
    campaign: Campaign,
    results_root: Path,
    artifacts: CellArtifacts,
    *,
    resume: bool,
    progress: Progress | None,
    threads: int | None,
    log: Callable[[str], None],
    wait_s: float,
    stack: contextlib.ExitStack,
    fleet: Fleet,
) -> Outcome:
    progress = progress or Progress()
    fleet_entries = fleet.discover()
    reachable = [e.facts for e in fleet_entries if e.facts is not None]
    for e in fleet_entries:
        if e.facts is None:
            log(f"{e.serial}: not used ({e.error})")
    missing = campaign.devices.missing(reachable)
    if missing:
        raise CampaignError(f"devices named in the campaign are not connected: {', '.join(missing)}")
    devices = campaign.select(reachable)
    if not devices:
        raise CampaignError(
            "no connected device matches the campaign's [devices] selection"
            + ("" if reachable else " (no device is connected; `autlearn lab up` starts virtual ones)")
        )
    fleet.lease(devices, campaign, str(Path(results_root) / campaign.name), wait_s, stack)
    fleet.check(campaign, devices)
    store = Store.open(results_root, campaign)
    store.record_devices(
        {
            d.serial: {
                "model": d.model,
                "manufacturer": d.manufacturer,
                "soc": d.soc,
                "abi": d.abi,
                "android": d.android,
                "kernel": d.kernel,
                "root": d.root,
                "virtual": d.virtual,
                "clusters": d.clusters,
                "governors": list(d.governors),
                "target": target_id(d),
                "cpu_target": d.cpu_target.to_dict() if d.cpu_target else None,
            }
            for d in devices
        }
    )
    for d in devices:
        if d.cpu_target is not None and not d.cpu_target.recognised:
            log(f"{d.serial}: {d.cpu_target.note}")
    restored = fleet.prepare(campaign, devices, store, stack)
    for key, what in restored.items():
        log(f"{key}: left changed by an interrupted run: {what}")
    planned: Planned = {d.serial: [] for d in devices}
    by_serial = {d.serial: d for d in devices}
    root = tuning_dir()
    requests = [BuildRequest(c, target_id(by_serial[c.device_serial]), root) for c in campaign.plan(devices)]
    provider = fleet.provider(artifacts)  # every build goes through it: in-process, or Ray tasks first
    provider.prebuild(requests)
    for req in requests:
        art = provider(req)
        planned[req.cell.device_serial].append((req.cell, cell_id(req.cell, art.hash), art))
    ids = [(cid, c.spec_key) for lst in planned.values() for c, cid, _ in lst]
    if not resume and any(store.status(cid) is not None for cid, _ in ids):
        raise CampaignError(
            f"{store.root} already holds results of this campaign: use --resume to continue it, "
            "or give the campaign another name"
        )
    store.set_plan(ids)
    order = store.set_order(
        campaign.order, campaign.seed, {s: [cid for _, cid, _ in x] for s, x in planned.items()}, resume
    )
    planned = follow_order(planned, order)  # as recorded: a --resume continues the order the run began
    kept = (store.order.get("kind"), store.order.get("seed"))
    if kept != (campaign.order, campaign.seed):
        log(f"continuing the recorded order ({kept[0]}, seed {kept[1]}): a --resume does not reorder the cells")
    if resume:  # what is redone besides cells never run, failed or skipped, named
        for lst in planned.values():
            for cell, cid, _ in lst:
                why = store.redo_reason(cid)
                if why:
                    log(one_line(f"redoing {cell.label} ({cid}): {why}"))
    for serial, lst in planned.items():
        progress.total[serial] = len(lst)
    totals, warnings = fleet.run(planned, by_serial, store, campaign, progress, resume, threads)
    for w in warnings:
        log(one_line(w))
    return Outcome(
        totals["ok"],
        totals["failed"],
        totals["skipped"],
        totals["resumed"],
        store.root,
        tuple(restored.items()),
        warnings,
    )
