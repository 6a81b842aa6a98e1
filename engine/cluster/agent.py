"""The agent of one USB host: a Ray actor on that host's node. It owns the host's adb server and the monitors
plugged into it, reports its phones (probed afresh on every ask, so hot-plugged phones appear) and runs their cells
with the engine's own DeviceWorker (governor guard, cooldown, deploy, runner, energy). It never writes results:
every event of the worker (`engine.events`) streams back to the controller, which alone owns the store.

`Agent` is a plain class (Ray wraps it in `start_agent`); importing this module does not import Ray.
Leases are the phones' own (`autlearn.profiler.lease`), taken by the agent for a controller's run token and dropped when
that controller stops touching them for `IDLE_S` (a controller that died) or calls `finish`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autlearn.engine.campaign_config import Campaign
from autlearn.engine.events import Event, StatusEvent, WarningEvent
from autlearn.engine.worker import DeviceWorker, PlannedCell, check_energy, put_back, undo_root
from autlearn.profiler import knobs, paths
from autlearn.profiler.device import Device, list_devices, wait_device
from autlearn.profiler.energy.monsoon import list_monitors
from autlearn.profiler.errors import DeviceError, UserError
from autlearn.profiler.fleet import discover
from autlearn.profiler.lease import PhoneLease
from autlearn.profiler.probe import DeviceFacts
from autlearn.workloads.metaschedule import TuneSettings, tune_devices

NAMESPACE = "autlearn"
PREFIX = "agent:"
IDLE_S = 120.0  # a run token nobody touched for this long belongs to a lost controller
# what an agent takes from the shell that starts it: its adb server, its home (pending snapshots, lab monitors)
ENV_KEYS = ("ANDROID_ADB_SERVER_PORT", "AUTLEARN_HOME", "AUTLEARN_CACHE_DIR", "ADBUTILS_ADB_PATH", "ADB_LIBUSB")


class _Run:
    """One controller's run on this host: its leases, when it was last touched, its stop flag."""

    def __init__(self) -> None:
        self.leases: dict[str, PhoneLease] = {}
        self.touched = time.monotonic()
        self.stop = threading.Event()
        self.active = 0
        self.workers: list[DeviceWorker] = []  # its DeviceWorkers under way (a stop ends their launches)


class Agent:
    def __init__(self, name: str):
        self.name = name
        self.started = time.time()
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._artifact_lock = threading.Lock()
        self._tune_lock = threading.Lock()
        threading.Thread(target=self._watchdog, name="agent-watchdog", daemon=True).start()

    # -- who and what
    def ready(self) -> dict[str, Any]:
        """Put back what a killed agent (or campaign) left changed on this host's phones, each under its lease;
        the agent's identity and what it restored."""
        return {**self.identity(), "restored": self._restore_pending()}

    def identity(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "adb_port": os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"),
            "started": self.started,
        }

    def heartbeat(self) -> float:
        return time.time()

    def info(self) -> dict[str, Any]:
        """The phones this host's adb server knows, probed now (FleetEntry), and the monitors plugged in."""

        return {**self.identity(), "fleet": discover(), "monitors": self._monitors()}

    def _monitors(self) -> list[str]:

        try:
            found = set(list_monitors())
        except Exception:  # noqa: BLE001 - no libusb on this host: no real monitors
            found = set()
        return sorted(found)

    def _restore_pending(self) -> dict[str, str]:

        root = knobs.default_root()
        out: dict[str, str] = {}
        for entry in list_devices():
            if entry.state != "device" or not knobs.entries(root, entry.serial):
                continue
            try:
                with PhoneLease(Device(entry.serial), f"agent {self.name} restore", str(root)):
                    out.update(put_back({entry.serial}))
            except (DeviceError, UserError) as exc:  # busy or away: the next run on it restores
                out[entry.serial] = f"not restored now ({exc})"
        return out

    # -- leases for a controller's run
    def touch(self, token: str) -> bool:
        with self._lock:
            run = self._runs.get(token)
            if run is not None:
                run.touched = time.monotonic()
            return run is not None

    def lease(self, token: str, serials: list[str], campaign: str, results: str, wait_s: float) -> dict[str, Any]:
        """Lease `serials` to run `token`: {"said": [...], "error": None | why}. On an error nothing stays leased
        by this call."""

        said: list[str] = []
        with self._lock:
            run = self._runs.setdefault(token, _Run())
            run.touched = time.monotonic()
        taken = []
        try:
            for s in serials:
                lease = PhoneLease(
                    wait_device(s, max(wait_s, 15.0)), campaign, results, wait_s=wait_s, say=said.append
                ).acquire()
                taken.append(s)
                run.leases[s] = lease
        except UserError as exc:
            for s in taken:
                run.leases.pop(s).release()
            return {"said": said, "error": str(exc)}
        return {"said": said, "error": None}

    def check(self, campaign: Campaign, serials: list[str]) -> str | None:
        """Why the campaign's energy sources cannot exist on this host (a wrong monitor serial), else None."""

        try:
            check_energy(campaign, serials)
        except UserError as exc:
            return str(exc)
        return None

    def prepare(self, token: str, campaign: Campaign, serials: list[str]) -> dict[str, str]:
        """Under the leases: put back what killed runs left changed on them (what a local run does)."""

        return put_back(set(serials), campaign)

    def stop(self, token: str) -> None:
        """Workers of `token` stop: the cell under way is stored as interrupted (its launch ended), their guards
        restore governors."""
        with self._lock:
            run = self._runs.get(token)
        if run is not None:
            run.stop.set()
            for w in list(run.workers):
                w.abort_launch()

    def finish(self, token: str) -> list[str]:
        """The run ended: adbd back as it was, leases released."""

        with self._lock:
            run = self._runs.pop(token, None)
        if run is None:
            return []
        run.stop.set()
        said: list[str] = []
        undo_root(set(run.leases), said.append)
        for lease in run.leases.values():
            lease.release()
        return said

    def _watchdog(self) -> None:
        while True:
            time.sleep(5.0)
            with self._lock:
                lost = [t for t, r in self._runs.items() if time.monotonic() - r.touched > IDLE_S and not r.active]
                busy = [r for r in self._runs.values() if time.monotonic() - r.touched > IDLE_S and r.active]
            for r in busy:
                r.stop.set()  # its controller is gone: stop after the current cell, then release
            for t in lost:
                self.finish(t)

    # -- artifacts
    def has_artifact(self, digest: str, files: list[str]) -> str | None:
        d = self._artifact_dir(digest)
        return str(d) if all((d / f).is_file() for f in files) else None

    def put_artifact(self, digest: str, files: dict[str, bytes]) -> str:
        """Materialize a shipped artifact in this host's cache (atomically); its directory."""
        d = self._artifact_dir(digest)
        with self._artifact_lock:
            if not all((d / f).is_file() for f in files):
                paths.replace_dir(d, files)
        return str(d)

    @staticmethod
    def _artifact_dir(digest: str) -> Path:
        return paths.home() / "agent-artifacts" / digest

    # -- tuning
    def tune(
        self,
        serials: list[str],
        model: str,
        variant: str,
        target_id: str | None,
        settings: TuneSettings,
        config: dict[str, Any],
        tuning: dict[str, bytes],
    ) -> dict[str, Any]:
        """`workloads tune` on this host's phones `serials`, each under its lease: candidates built here and
        measured on them, into a private copy of the controller's databases (`tuning`: {relative path: bytes}).
        {"results": [...], "files": the databases after tuning, as `tuning`} or {"error": why}."""

        with tempfile.TemporaryDirectory(prefix="autlearn-tune-") as tmp, contextlib.ExitStack() as leases:
            root = paths.write_tree(Path(tmp), tuning)
            try:  # MetaSchedule keeps process-wide state: this agent tunes one request at a time
                with self._tune_lock:
                    for s in serials:
                        leases.enter_context(PhoneLease(Device(s), f"tune {model}", "tuning"))
                    results = tune_devices(
                        serials, model, variant, target_id=target_id, settings=settings, root=root, **config
                    )
            except UserError as exc:
                return {"error": str(exc)}
            files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
            for r in results:
                r["database"] = str(Path(r["database"]).relative_to(root))
            return {"results": results, "files": files}

    # -- cells
    def run_device(
        self,
        token: str,
        serial: str,
        name: str,
        facts: DeviceFacts,
        cells: list[PlannedCell],
        campaign: Campaign,
        threads: int | None,
    ) -> Iterator[Event]:
        """Run `cells` [(cell, cell id, ArtifactRef with this host's path)] on `serial`, reporting as `name`;
        yields the worker's events as they come (a Ray streaming generator)."""

        with self._lock:
            run = self._runs.get(token)
        if run is None or serial not in run.leases:
            for cell, cid, _ in cells:
                why = f"{serial} is not leased to this run on host {self.name}"
                yield StatusEvent(cid, "failed", why, cell.spec_key, cell.label)
            return
        events: queue.Queue[Event | None] = queue.Queue()  # None: the worker ended
        worker = DeviceWorker(serial, facts, cells, campaign, events.put, run.stop, threads, name=name)
        run.workers.append(worker)

        def work() -> None:
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - reported, never lost in a thread
                events.put(WarningEvent(f"{name}: worker ended: {type(exc).__name__}: {exc}"))
            finally:
                events.put(None)

        with self._lock:
            run.active += 1
        thread = threading.Thread(target=work, name=f"cells-{serial}", daemon=True)
        thread.start()
        try:
            while (event := events.get()) is not None:
                yield event
        finally:
            thread.join()
            with self._lock:
                run.active -= 1
                run.touched = time.monotonic()
                run.workers.remove(worker)


def actor_name(host: str) -> str:
    return f"{PREFIX}{host}"


def agent_env() -> dict[str, str]:
    """The variables of this shell an agent started from it keeps (its adb server, its home)."""
    return {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
