"""A fleet across USB hosts on Ray (the `cluster` extra): one agent per host (`autlearn.engine.cluster.agent`), the
controller here. Imported only when a command names `--cluster ADDRESS`; the in-process engine never imports Ray.

The controller discovers the phones through the agents (named `host/serial` when the cluster has more than one
host), leases them through their agents, builds artifacts through its provider (`ClusterBuilds`: Ray tasks, once
per content hash across the cluster, `BuildRegistry`), ships each artifact to the agents that need it, and records
every streamed event (`engine.events`) in its own store, through the engine's own run loop (`engine.fleet`). A
host whose agent dies or stops answering heartbeats for `HOST_TIMEOUT_S` is lost: its unfinished cells fail with
"host lost", the other hosts go on, and `--resume` completes them once its agent is back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from autlearn.engine.campaign_config import Campaign, Cell, device_names
from autlearn.engine.cluster.agent import ENV_KEYS, NAMESPACE, PREFIX, Agent, actor_name, agent_env
from autlearn.engine.events import EventSink
from autlearn.engine.fleet import (
    ArtifactProvider,
    BuildRequest,
    CellArtifacts,
    DeviceRunFailed,
    run_devices,
)
from autlearn.engine.store import Store
from autlearn.engine.worker import ArtifactRef, CampaignError, Planned, PlannedCell, Progress
from autlearn.profiler import paths
from autlearn.profiler.errors import EnergyError, UserError
from autlearn.profiler.fleet import FleetEntry
from autlearn.profiler.lease import PhoneBusy
from autlearn.profiler.probe import DeviceFacts
from autlearn.workloads.artifact import build_artifact, input_files
from autlearn.workloads.metaschedule import TuneSettings
from autlearn.workloads.tuning_db import DB_FILES, HAND_FILE, tuning_database

HEARTBEAT_S = 5.0
HOST_TIMEOUT_S = 30.0
INFO_TIMEOUT_S = 120.0  # an agent probes its phones (settling adbd restarts) before it answers
TOUCH_S = 10.0
REGISTRY = "artifact-builds"

__all__ = ["ClusterError", "ClusterFleet", "start_agent", "stop_agent", "list_agents", "connect", "ENV_KEYS"]


class ClusterError(UserError):
    """The Ray cluster or an agent cannot be reached or used."""


def _ray() -> Any:  # the ray module
    try:
        import ray  # the cluster extra: only --cluster needs it
    except ImportError:
        raise ClusterError("--cluster needs Ray: pip install 'autlearn[cluster]'") from None
    return ray


def connect(address: str) -> Any:
    """Join the Ray cluster at `address` (host:port of its head) in autlearn's namespace; the ray module."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ClusterError(f"--cluster {address!r}: expected HOST:PORT of the Ray head (e.g. 127.0.0.1:6379)")
    try:  # Ray retries an unreachable head for minutes: say so at once
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({exc}); start it with `ray start --head` "
            "or `autlearn lab up --hosts 2`"
        ) from None
    try:
        ray.init(
            address=address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False, configure_logging=True
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({str(exc).splitlines()[0]}); start it "
            "with `ray start --head` or `autlearn lab up --hosts 2`"
        ) from None
    return ray


def _errors(
    ray: Any,
) -> tuple[type[BaseException], type[BaseException], type[BaseException], type[BaseException]]:
    return (
        ray.exceptions.RayActorError,
        ray.exceptions.ActorUnavailableError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.GetTimeoutError,
    )


# ------------------------------------------------------------------------------------------------------ agents
def _node_for(ray: Any, label: str | None) -> str:
    """The node an agent runs on: the one labelled `autlearn-host=LABEL` (several hosts on one machine, the
    virtual lab), else the node this process joined."""
    if label:
        for n in ray.nodes():
            if n.get("Alive") and (n.get("Labels") or {}).get("autlearn-host") == label:
                return cast(str, n["NodeID"])
    return cast(str, ray.get_runtime_context().get_node_id())


def start_agent(
    address: str, name: str, *, label: str | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Start host `name`'s agent (a detached Ray actor on this host's node, keeping this shell's adb server and
    home, `ENV_KEYS`); it restores what a killed agent left changed before it answers. Its `ready()` report."""
    ray = connect(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # ray only with --cluster

    with contextlib.suppress(ValueError):
        old = ray.get_actor(actor_name(name))
        try:
            ray.get(old.heartbeat.remote(), timeout=10)
        except _errors(ray):
            pass  # dead or stuck: replaced below
        else:
            raise ClusterError(
                f"agent {name!r} already runs on this cluster (stop it with `autlearn agent stop {name}`)"
            )
        ray.kill(old)
    handle = (
        ray.remote(Agent)
        .options(
            name=actor_name(name),
            lifetime="detached",
            max_concurrency=64,
            num_cpus=0,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(_node_for(ray, label), soft=False),
            runtime_env={"env_vars": dict(env if env is not None else agent_env())},
        )
        .remote(name)
    )
    try:
        return cast(dict[str, Any], ray.get(handle.ready.remote(), timeout=INFO_TIMEOUT_S))
    except _errors(ray) as exc:
        raise ClusterError(f"agent {name!r} did not start: {exc}") from None


def stop_agent(address: str, name: str) -> bool:
    ray = connect(address)
    try:
        handle = ray.get_actor(actor_name(name))
    except ValueError:
        return False
    ray.kill(handle)
    return True


def list_agents(address: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every agent on the cluster: its identity, or {"host", "error"} when it does not answer."""
    ray = connect(address)
    out: list[dict[str, Any]] = []
    for n in sorted(x for x in ray.util.list_named_actors() if x.startswith(PREFIX)):
        host = n[len(PREFIX) :]
        try:
            out.append(ray.get(ray.get_actor(n).identity.remote(), timeout=timeout_s))
        except (ValueError, *_errors(ray)) as exc:
            out.append({"host": host, "error": str(exc).splitlines()[0]})
    return out


# ------------------------------------------------------------------------------------------------------ builds
@dataclasses.dataclass(frozen=True)
class RemoteBuild:
    """A build as a Ray task gets it: what to compile, the cache directory's name, and the tuning databases to
    compile with (`tuning`: {"KEY/FILE": bytes} of the controller's; empty: none)."""

    workload: str
    variant: str
    target: str
    dirname: str
    config: dict[str, Any]
    tuning: dict[str, bytes]


class BuildRegistry:
    """Cluster-wide artifact builds: one Ray task per build key, whoever asks first; later askers (other
    controllers too) get the same result. Lives as a detached actor."""

    def __init__(self) -> None:
        self.refs: dict[str, Any] = {}  # build key -> the Ray object reference of its build

    def claim(self, key: str, job: RemoteBuild, node: str | None = None) -> list[Any]:
        """[the build's object reference, whether this ask started it] (in a list: the caller gets the reference,
        not the value). `node`: run it there (a build that reads files only that node has)."""
        fresh = key not in self.refs
        if fresh:
            task = _build_task()
            if node is not None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # ray only with --cluster

                task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            self.refs[key] = task.remote(job)
        return [self.refs[key], fresh]

    def forget(self, key: str) -> None:
        self.refs.pop(key, None)


def _build_task() -> Any:  # a Ray remote function
    import ray  # ray only with --cluster

    return ray.remote(num_cpus=1)(_build)


def _build(job: RemoteBuild) -> dict[str, Any]:
    """Build one artifact on whichever node runs the task, with the controller's tuning databases written under a
    temporary root; {"files": {name: bytes}, "node": the node's id}."""

    import ray  # ray only with --cluster

    with tempfile.TemporaryDirectory(prefix="autlearn-build-") as tmp:
        root = paths.write_tree(Path(tmp) / "tuning", job.tuning)
        # the database the controller's build would use, found under that root (untuned variants ignore it)
        config = {**job.config, "database": tuning_database(job.target, root)}
        art = build_artifact(job.workload, job.variant, job.target, Path(tmp) / job.dirname, **config)
        return {"files": {p.name: p.read_bytes() for p in art.files()}, "node": ray.get_runtime_context().get_node_id()}


def _tuning_payload(request: BuildRequest) -> tuple[dict[str, bytes], str | None]:
    """The tuning database this controller's build of `request` would use, as files to ship ({"KEY/FILE":
    bytes}), and its digest ({}, None: untuned)."""

    if request.variant == "unoptimized" or request.config.get("tuning") == "none":
        return {}, None
    db = tuning_database(request.target, request.tuning_root)
    if db is None:
        return {}, None
    path = Path(db["path"])
    return (
        {f"{db['key']}/{n}": (path / n).read_bytes() for n in (*DB_FILES, HAND_FILE) if (path / n).is_file()},
        db["digest"],
    )


# a build the cache lacks: (workload, variant, target id, directory name, config), as the cache names it
BuildArgs = tuple[str, str, str, str, dict[str, Any]]


@runtime_checkable
class BuildCache(Protocol):
    """An artifact cache that can take builds made elsewhere (`pipelines.artifact_cache.ArtifactProvider`)."""

    def __call__(self, cell: Cell, abi: str) -> ArtifactRef: ...

    def missing(self, requests: Iterable[tuple[Cell, str]]) -> dict[str, BuildArgs]: ...

    def adopt(
        self,
        key: str,
        args: BuildArgs,
        files: dict[str, bytes],
        tuning_digest: str | None = None,
    ) -> None: ...


class ClusterBuilds:
    """The artifact provider of a cluster run: what the plan needs and `cache` lacks is built as Ray tasks (any
    node with a CPU free; a build that reads input files, a pruned model, on this controller's node), once per
    build key across the cluster, with the tuning database of each request's root; each result must verify into
    `cache`, which then serves every request (and builds here what the cluster could not)."""

    def __init__(self, cache: CellArtifacts, ray: Any, say: Callable[[str], None] = lambda s: None) -> None:
        self.cache, self.ray, self._say = cache, ray, say
        self.builds: dict[str, dict[str, Any]] = {}  # the last prebuild: per key, where it ran and who started it

    def __call__(self, request: BuildRequest) -> ArtifactRef:
        return self.cache(request.cell, request.target)

    def prebuild(self, requests: Sequence[BuildRequest]) -> None:
        cache = self.cache
        if not isinstance(cache, BuildCache):
            return  # a cache that takes no builds made elsewhere builds on its own, when asked
        todo: dict[str, tuple[BuildArgs, BuildRequest]] = {}
        for r in requests:
            for key, args in cache.missing([(r.cell, r.target)]).items():
                todo.setdefault(key, (args, r))
        if not todo:
            return
        ray = self.ray
        registry = BuildRegistryHandle.get(ray)
        here = ray.get_runtime_context().get_node_id()
        self._say(f"building {len(todo)} artifacts as Ray tasks on the cluster")
        claims, digests = {}, {}
        for key, ((w, v, target, dirname, config), r) in todo.items():
            tuning, digests[key] = _tuning_payload(r)
            node = here if input_files(config) else None
            job = RemoteBuild(w, v, target, dirname, config, tuning)
            claims[key] = ray.get(registry.claim.remote(key, job, node))
        self.builds = {key: {"started_here": fresh} for key, (_, fresh) in claims.items()}
        for key, (ref, _) in claims.items():
            try:
                out = ray.get(ref)
            except ray.exceptions.RayError as exc:
                registry.forget.remote(key)  # a failed build is not kept: the cache builds it here and raises
                self._say(f"cluster build failed ({str(exc).splitlines()[0]}); building here")
                continue
            self.builds[key]["node"] = out["node"]
            cache.adopt(key, todo[key][0], out["files"], tuning_digest=digests[key])


# ------------------------------------------------------------------------------------------------------ controller
@dataclasses.dataclass
class _Host:
    handle: Any  # the agent's Ray actor handle
    lost: str = ""  # why the host is lost ("": it answers)


class ClusterFleet:
    """The phones of every agent on the Ray cluster at `address`: an `engine.fleet.Fleet`, saying through `say`
    from its discovery on (a host whose agent does not answer, what the agents said while leasing)."""

    def __init__(self, address: str, say: Callable[[str], None] = lambda s: None):
        self.address = address
        self._say = say  # from discovery on: a host whose agent does not answer is said there
        self.ray = connect(address)
        self.token = uuid.uuid4().hex
        self.hosts: dict[str, _Host] = {}
        self.route: dict[str, tuple[str, str]] = {}  # name in results -> (host, serial on that host)
        self.multi_host = False
        self._shipped: dict[tuple[str, str], str] = {}
        self._ship_lock = threading.Lock()
        self._done = threading.Event()

    # -- discovery
    def discover(self) -> list[FleetEntry]:

        ray = self.ray
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(PREFIX))
        if not names:
            raise CampaignError(
                f"no autlearn agent runs on the cluster at {self.address} (start one per USB host: "
                f"`autlearn agent start --cluster {self.address}`)"
            )
        handles = {n[len(PREFIX) :]: ray.get_actor(n) for n in names}
        refs = {h: a.info.remote() for h, a in handles.items()}
        infos: dict[str, Any] = {}
        for h, ref in refs.items():
            try:
                infos[h] = _get(ray, ref, h, INFO_TIMEOUT_S)
            except _errors(ray) as exc:
                self._say(f"host {h}: agent not answering ({str(exc).splitlines()[0]}); its phones are not used")
        self.multi_host = len(infos) > 1
        entries = []
        for h, info in infos.items():
            self.hosts[h] = _Host(handles[h])
            for e in info["fleet"]:
                name = f"{h}/{e.serial}" if self.multi_host else e.serial
                self.route[name] = (h, e.serial)
                facts = dataclasses.replace(e.facts, serial=name) if e.facts is not None else None
                entries.append(FleetEntry(name, e.state, facts, e.error))
        return entries

    def _by_host(self, names: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for n in names:
            host, serial = self.route[n]
            out.setdefault(host, []).append((n, serial))
        return out

    # -- leases and preparation
    def lease(
        self,
        devices: Sequence[DeviceFacts],
        campaign: Campaign,
        results: str,
        wait_s: float,
        stack: contextlib.ExitStack,
    ) -> None:
        groups = self._by_host(d.serial for d in devices)
        stack.callback(self._finish, list(groups))  # whatever was taken is released
        refs = {
            h: self.hosts[h].handle.lease.remote(self.token, [s for _, s in lst], campaign.name, results, wait_s)
            for h, lst in groups.items()
        }
        threading.Thread(target=self._touch, args=(list(groups),), name="cluster-touch", daemon=True).start()
        errors = []
        for h, ref in refs.items():
            try:
                out = _get(self.ray, ref, h, wait_s + INFO_TIMEOUT_S)
            except _errors(self.ray) as exc:
                errors.append(f"host {h}: agent lost while leasing ({str(exc).splitlines()[0]})")
                continue
            for line in out["said"]:
                self._say(self._named(h, line))
            if out["error"]:
                errors.append(self._named(h, out["error"]))
        if errors:
            raise PhoneBusy("; ".join(errors))

    def _named(self, host: str, text: str) -> str:
        return f"{host}: {text}" if self.multi_host else text

    def check(self, campaign: Campaign, devices: Sequence[DeviceFacts]) -> None:
        """Before anything is written: every host checks the monitors its phones' cells would use."""

        groups = self._by_host(d.serial for d in devices)
        refs = {h: self.hosts[h].handle.check.remote(campaign, [s for _, s in lst]) for h, lst in groups.items()}
        errors = [self._named(h, why) for h, ref in refs.items() if (why := _get(self.ray, ref, h, INFO_TIMEOUT_S))]
        if errors:
            raise EnergyError("; ".join(errors))

    def prepare(
        self, campaign: Campaign, devices: Sequence[DeviceFacts], store: Store, stack: contextlib.ExitStack
    ) -> dict[str, str]:
        groups = self._by_host(d.serial for d in devices)
        refs = {
            h: self.hosts[h].handle.prepare.remote(self.token, campaign, [s for _, s in lst])
            for h, lst in groups.items()
        }
        return {
            self._named(h, k): v for h, ref in refs.items() for k, v in _get(self.ray, ref, h, INFO_TIMEOUT_S).items()
        }

    def _touch(self, hosts: list[str]) -> None:
        while not self._done.wait(TOUCH_S):
            for h in hosts:
                with contextlib.suppress(Exception):
                    self.hosts[h].handle.touch.remote(self.token)

    def _finish(self, hosts: list[str]) -> None:
        self._done.set()
        if not self.ray.is_initialized():
            return  # this process left the cluster (its leases go stale with their heartbeats)
        refs: dict[str, Any] = {}
        for h in hosts:
            with contextlib.suppress(Exception):
                refs[h] = self.hosts[h].handle.finish.remote(self.token)
        for h, ref in refs.items():
            try:
                for line in _get(self.ray, ref, h, 60):
                    self._say(self._named(h, line))
            except (UserError, *_errors(self.ray)):
                pass  # a lost host: its leases go stale with it; its next agent restores its phones

    # -- builds
    def provider(self, cache: CellArtifacts) -> ArtifactProvider:
        return ClusterBuilds(cache, self.ray, self._say)

    # -- cells
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
        involved = sorted({self.route[n][0] for n in planned})
        beat = threading.Thread(target=self._heartbeats, args=(involved,), name="cluster-heartbeat", daemon=True)
        beat.start()

        def drive(name: str, cells: list[PlannedCell], emit: EventSink) -> None:
            self._run_device(name, by_serial[name], cells, campaign, threads, emit)

        def halt() -> None:
            for h in involved:  # agents finish their current cells; their guards restore governors
                with contextlib.suppress(Exception):
                    self.hosts[h].handle.stop.remote(self.token)

        return run_devices(planned, store, progress, resume, drive, halt)

    def _heartbeats(self, hosts: list[str]) -> None:
        """Mark a host lost when its agent dies or does not answer within HOST_TIMEOUT_S."""
        ray = self.ray
        while not self._done.is_set():
            refs = {h: self.hosts[h].handle.heartbeat.remote() for h in hosts if not self.hosts[h].lost}
            for h, ref in refs.items():
                try:
                    ray.get(ref, timeout=HOST_TIMEOUT_S)
                except _errors(ray) as exc:
                    self.hosts[h].lost = self.hosts[h].lost or _why(exc)
            if self._done.wait(HEARTBEAT_S):
                return

    def _ship(self, host: str, art: ArtifactRef) -> ArtifactRef:
        """`art` with the path of its copy on `host` (shipped once per host and content hash)."""
        key = (host, art.hash)
        with self._ship_lock:
            if key not in self._shipped:
                handle = self.hosts[host].handle
                there = _get(self.ray, handle.has_artifact.remote(art.hash, list(art.files)), host, INFO_TIMEOUT_S)
                if there is None:
                    files = {f: (Path(art.path) / f).read_bytes() for f in art.files}
                    there = _get(self.ray, handle.put_artifact.remote(art.hash, files), host, INFO_TIMEOUT_S)
                self._shipped[key] = there
        return dataclasses.replace(art, path=Path(self._shipped[key]))

    def _run_device(
        self,
        name: str,
        facts: DeviceFacts,
        cells: list[PlannedCell],
        campaign: Campaign,
        threads: int | None,
        emit: EventSink,
    ) -> None:
        """Run `cells` on the agent of the device's host, each event it streams back to `emit`."""
        ray = self.ray
        host, serial = self.route[name]
        h = self.hosts[host]
        try:
            shipped = [(cell, cid, self._ship(host, art)) for cell, cid, art in cells]
            gen = h.handle.run_device.remote(self.token, serial, name, facts, shipped, campaign, threads)
            while True:
                ready, _ = ray.wait([gen], timeout=1.0)
                if not ready:
                    if h.lost:
                        break
                    continue
                try:
                    emit(_get(ray, next(gen), host, HOST_TIMEOUT_S))
                except StopIteration:
                    return
        except _errors(ray) as exc:
            h.lost = h.lost or _why(exc)
        except UserError as exc:  # the agent failed (it is not lost): the cells fail with its reason
            raise DeviceRunFailed(str(exc)) from None
        raise DeviceRunFailed(f"host lost: {host} ({h.lost})", "host lost")


def _get(ray: Any, ref: Any, host: str, timeout: float | None) -> Any:
    """An agent's answer; an exception raised in the agent becomes one ClusterError naming the host."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, UserError):
            raise type(cause)(f"host {host}: {cause}") from None
        raise ClusterError(f"host {host}: the agent failed: {type(cause).__name__}: {cause}") from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if type(exc).__name__ == "GetTimeoutError":
        return f"no heartbeat for {HOST_TIMEOUT_S:.0f} s"
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def tune_on_cluster(
    address: str,
    serials: list[str],
    model: str,
    variant: str = "full",
    *,
    target_id: str | None = None,
    settings: TuneSettings = TuneSettings(),
    root: Path | None = None,
    say: Callable[[str], None] = lambda s: None,
    **config: Any,
) -> list[dict[str, Any]]:
    """`autlearn workloads tune --cluster`: tune on phones of one host of the cluster (named `host/serial` or by
    serial), by that host's agent under their leases (candidates built there, measured on its phones), starting
    from this machine's tuning databases under `root` (default `paths.tuning_dir()`); the databases come back
    there. One result dict per phone."""

    fleet = ClusterFleet(address, say=say)
    known: dict[str, list[str]] = {}
    for e in fleet.discover():
        for n in device_names(e.serial):
            known.setdefault(n, []).append(e.serial)
    names = []
    for s in serials:
        found = known.get(s, [])
        if len(found) != 1:
            raise ClusterError(
                f"--device {s}: "
                + (
                    "no such phone on the cluster's agents"
                    if not found
                    else f"on several hosts ({', '.join(found)}): name it host/serial"
                )
            )
        names.append(found[0])
    hosts = {fleet.route[n][0] for n in names}
    if len(hosts) > 1:
        raise ClusterError(f"tune on the phones of one host at a time (got {', '.join(sorted(hosts))})")
    (host,) = hosts
    root = root or paths.tuning_dir()
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.is_dir() else {}
    say(f"tuning on host {host} ({', '.join(names)})")
    serials_there = [fleet.route[n][1] for n in names]
    out = _get(
        fleet.ray,
        fleet.hosts[host].handle.tune.remote(serials_there, model, variant, target_id, settings, config, files),
        host,
        None,
    )
    if out.get("error"):
        raise ClusterError(f"host {host}: {out['error']}")
    dirs: dict[Path, dict[str, bytes]] = {}
    for rel, data in out["files"].items():
        p = Path(rel)
        dirs.setdefault(root / p.parent, {})[p.name] = data
    for d, fs in dirs.items():  # each database directory replaced whole by its tuned copy
        paths.replace_dir(d, fs)
    return [{**r, "database": str(root / r["database"])} for r in out["results"]]


class BuildRegistryHandle:
    """The cluster's BuildRegistry actor, created on first use."""

    @staticmethod
    def get(ray: Any) -> Any:  # the actor's handle
        return (
            ray.remote(BuildRegistry)
            .options(name=REGISTRY, lifetime="detached", get_if_exists=True, num_cpus=0)
            .remote()
        )
