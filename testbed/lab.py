"""The virtual phone lab: start virtual phones as detached processes, attach them to the adb server, stop them.

    with Lab(home) as lab:                      # `down()` on exit
        phones = lab.up(["legacy", "modern"], base_port=6100)
        adbutils.AdbClient().device(phones[0].serial).shell("getprop ro.autlearn.virtual")

State lives in `$AUTLEARN_HOME/lab/state.json`, sandboxes in `$AUTLEARN_HOME/lab/phones/<name>/root`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import adbutils

import autlearn
from autlearn.profiler import paths
from autlearn.profiler.errors import LabError, ToolMissing, UserError
from autlearn.testbed.dvfs import TIME_SCALE_NODE
from autlearn.testbed.profiles import load_profile

DEFAULT_PROFILES = ("legacy", "modern", "unrooted")
DEFAULT_BASE_PORT = 6100
ADB_EMULATOR_PORTS = range(5555, 5586)  # the adb server probes these itself
STATE_VERSION = 1
START_TIMEOUT = 15.0
CONNECT_TIMEOUT = 15.0


@dataclass(frozen=True)
class PhoneInfo:
    name: str
    serial: str  # what adb calls it: 127.0.0.1:PORT
    profile: str
    port: int
    root: Path  # sandbox root (TMPDIR is root/data/local/tmp)
    pid: int
    monsoon: str | None = None  # serial of the simulated Monsoon following this phone (`up(monsoon=...)`)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "root": str(self.root)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PhoneInfo:
        return cls(
            name=d["name"],
            serial=d["serial"],
            profile=d["profile"],
            port=int(d["port"]),
            root=Path(d["root"]),
            pid=int(d["pid"]),
            monsoon=d.get("monsoon"),
        )


@dataclass(frozen=True)
class PhoneStatus:
    phone: PhoneInfo
    alive: bool  # the vphone process runs
    adb_state: str  # device | offline | absent | no-adb-server | ...

    @property
    def time_scale(self) -> str:
        """How the phone's time follows its modeled frequencies (written by the vphone; testbed/dvfs.py)."""

        try:
            return (Path(self.phone.root) / TIME_SCALE_NODE).read_text().strip()
        except OSError:
            return "unknown"

    def to_json(self) -> dict[str, Any]:
        return {**self.phone.to_json(), "alive": self.alive, "adb_state": self.adb_state, "time_scale": self.time_scale}


def adb_server_port() -> int:
    raw = os.environ.get("ANDROID_ADB_SERVER_PORT", "5037")
    try:
        return int(raw)
    except ValueError:
        raise LabError(f"ANDROID_ADB_SERVER_PORT={raw!r} is not a port number") from None


def find_adb() -> str:
    """The adb binary adbutils would use ($ADBUTILS_ADB_PATH, PATH, bundled); ToolMissing if there is none."""

    try:
        path: str = adbutils.adb_path()
    except Exception as exc:
        raise ToolMissing(f"adb not found ({exc}); install platform-tools or the adbutils wheel") from None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        origin = " (from ADBUTILS_ADB_PATH)" if os.environ.get("ADBUTILS_ADB_PATH") == path else ""
        raise ToolMissing(f"adb not found: {path}{origin} is not an executable file")
    return path


def expand_profiles(profiles: Sequence[str], count: int | None) -> list[str]:
    """`-n 5 --profile a --profile b` -> a b a b a; no profiles -> the default trio (cycled to `count`)."""
    base = list(profiles) or list(DEFAULT_PROFILES)
    n = len(base) if count is None else count
    if n < 1:
        raise LabError(f"the lab needs at least one phone (got -n {n})")
    return [base[i % len(base)] for i in range(n)]


def monsoon_phones(monsoon: bool | str | Sequence[str], profiles: Sequence[str]) -> list[bool]:
    """Which of the phones (by profile, in `up` order) get a simulated Monsoon. `monsoon`: False/None (none),
    True or "all" (every phone), or names: a profile (every phone of it) or a phone name (`unrooted-1`); "all"
    among them means every phone. LabError for a name that matches no phone."""
    if not monsoon:
        return [False] * len(profiles)
    if monsoon is True:
        return [True] * len(profiles)
    wanted = [monsoon] if isinstance(monsoon, str) else list(monsoon)
    if "all" in wanted:
        return [True] * len(profiles)
    counts: dict[str, int] = {}
    names = []
    for p in profiles:
        counts[p] = counts.get(p, 0) + 1
        names.append(f"{p}-{counts[p]}")
    unknown = [w for w in wanted if w not in profiles and w not in names]
    if unknown:
        raise LabError(
            f"--monsoon {unknown[0]}: no such phone or profile in this lab (phones: {', '.join(names)}; or `all`)"
        )
    return [p in wanted or n in wanted for p, n in zip(profiles, names)]


def _port_open(port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_port_free(port: int) -> None:
    if not 1024 <= port <= 65535:
        raise LabError(f"port {port} is out of range (1024-65535)")
    if port in ADB_EMULATOR_PORTS:
        raise LabError(f"port {port} is reserved for emulators by the adb server (avoid 5555-5585)")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise LabError(f"port {port} is busy ({exc.strerror or exc}); choose another --base-port") from None


def find_free_ports(count: int, lo: int = 20000, hi: int = 30000) -> int:
    """First port of `count` consecutive free ports in [lo, hi) (for tests and scripts; racy by nature)."""

    for _ in range(200):
        base = random.randrange(lo, hi - count)
        try:
            for port in range(base, base + count):
                _check_port_free(port)
        except LabError:
            continue
        return base
    raise LabError(f"no {count} consecutive free ports in {lo}-{hi}")


def next_free_ports(count: int, start: int = 6100, span: int = 2000) -> int:
    """First port of `count` consecutive free ports at or above `start` (the default when no port is asked for)."""
    port = start
    while port + count <= start + span:
        try:
            for p in range(port, port + count):
                _check_port_free(p)
            return port
        except LabError:
            port += 1
    raise LabError(f"no {count} consecutive free ports in {start}-{start + span}; choose one with --base-port")


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _is_ours(phone: PhoneInfo) -> bool:
    """The pid still runs *our* vphone for this phone (pids get reused)."""
    _reap(phone.pid)
    for _ in range(50):  # cmdline reads empty for a moment while a fresh process execs
        if _proc_state(phone.pid) in (None, "Z", "X"):
            return False
        try:
            argv = Path(f"/proc/{phone.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if argv != [b""]:
            return (
                b"autlearn.testbed.vphone" in argv
                and str(phone.port).encode() in argv
                and str(phone.root).encode() in argv
            )
        time.sleep(0.01)
    return False


def _exited(pid: int) -> bool:
    """A process we spawned has exited (reaps it)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return _proc_state(pid) in (None, "Z", "X")


def _phone_processes(root: Path) -> list[int]:
    """Processes started by a phone's shells: they all inherit AUTLEARN_ROOT=<root> (see autlearn.testbed.rootfs)."""
    needle = b"AUTLEARN_ROOT=" + str(root).encode()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
    return out


def _kill_phone_process(phone: PhoneInfo, graceful: bool) -> None:
    if _is_ours(phone):
        if graceful:  # the vphone kills its shells itself
            with contextlib.suppress(ProcessLookupError):
                os.kill(phone.pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _is_ours(phone):
                time.sleep(0.02)
        if _is_ours(phone):
            with contextlib.suppress(ProcessLookupError):
                os.kill(phone.pid, signal.SIGKILL)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _proc_state(phone.pid) not in (None, "Z", "X"):
                time.sleep(0.01)
            _reap(phone.pid)
    for pid in _phone_processes(phone.root):  # orphans: a killed phone's shells, stray background jobs
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class Lab:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else paths.home()
        self.dir = self.home / "lab"
        self.state_file = self.dir / "state.json"

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- state ----
    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {"version": STATE_VERSION, "phones": []}
        except ValueError as exc:
            raise LabError(
                f"lab state {self.state_file} is corrupt ({exc}); delete it and kill stray vphones"
            ) from None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def phones(self) -> list[PhoneInfo]:
        return [PhoneInfo.from_json(p) for p in self._read_state().get("phones", [])]

    # ---- up ----
    def up(
        self,
        profiles: Sequence[str] = DEFAULT_PROFILES,
        base_port: int = DEFAULT_BASE_PORT,
        *,
        monsoon: bool | str | Sequence[str] = False,
        governor: str | None = None,
        keep_warm: bool = True,
    ) -> list[PhoneInfo]:
        """Start one phone per profile on base_port, base_port+1, ...; connected and in state `device` on return.
        `monsoon`: which phones get a simulated Monsoon (serial `SIM-<port>`, see
        testbed.monsoon_sim.backend_for_serial) following the phone's modeled power: True / "all" every phone, or
        profile / phone names (`monsoon_phones`). `governor`: every phone boots with it on every cluster instead of
        its profile's default (e.g. "performance": virtual times at full host speed, no governor ramps); `keep_warm`:
        the keep-warm spinners that make throttled and unthrottled times comparable (testbed/dvfs.py)."""
        profiles = list(profiles) or list(DEFAULT_PROFILES)
        # unknown profile, or a governor a profile does not offer -> LabError before anything starts
        loaded = [load_profile(p).with_governor(governor) for p in profiles]
        with_monsoon = monsoon_phones(monsoon, [p.name for p in loaded])  # unknown name -> LabError, nothing started
        adb = find_adb()
        ports = [base_port + i for i in range(len(profiles))]
        own = {p.get("port") for p in self._read_state().get("phones", [])} if self.state_file.exists() else set()
        for port in ports:  # a port held by something else fails before the running lab is stopped
            if port not in own:
                _check_port_free(port)
        if self.state_file.exists():
            self.down()  # stale (or previous) lab: clean first
        for port in ports:
            _check_port_free(port)
        server_port = adb_server_port()
        state: dict[str, Any] = {"version": STATE_VERSION, "adb_server_port": server_port, "phones": []}
        self._write_state(state)
        try:
            self._ensure_adb_server(adb, server_port)
            counts: dict[str, int] = {}
            started: list[tuple[PhoneInfo, Path]] = []
            for profile, port, mon in zip(loaded, ports, with_monsoon):
                counts[profile.name] = counts.get(profile.name, 0) + 1
                name = f"{profile.name}-{counts[profile.name]}"
                pdir = self.dir / "phones" / name
                shutil.rmtree(pdir, ignore_errors=True)
                pdir.mkdir(parents=True)
                root = (pdir / "root").resolve()  # the vphone builds its sandbox (phones build in parallel)
                ready = pdir / "ready"
                extra = (["--governor", governor] if governor else []) + ([] if keep_warm else ["--no-keep-warm"])
                pid = self._spawn(profile.name, port, root, name, ready, pdir / "vphone.log", extra)
                phone = PhoneInfo(
                    name=name,
                    serial=f"127.0.0.1:{port}",
                    profile=profile.name,
                    port=port,
                    root=root,
                    pid=pid,
                    monsoon=f"SIM-{port}" if mon else None,
                )
                state["phones"].append(phone.to_json())
                self._write_state(state)
                started.append((phone, ready))
            for phone, ready in started:
                self._wait_ready(phone, ready)
            for phone, _ in started:
                self._connect(adb, server_port, phone)
            return [p for p, _ in started]
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.down()
            if isinstance(exc, (UserError, KeyboardInterrupt)):
                raise
            raise LabError(f"lab up failed: {exc}") from exc

    @staticmethod
    def _spawn(
        profile: str, port: int, root: Path, name: str, ready: Path, logfile: Path, extra: Sequence[str] = ()
    ) -> int:
        argv = [
            sys.executable,
            "-m",
            "autlearn.testbed.vphone",
            "--profile",
            profile,
            "--port",
            str(port),
            "--root",
            str(root),
            "--serial-name",
            name,
            "--ready-file",
            str(ready),
            *extra,
        ]
        env = dict(os.environ)
        src = str(Path(autlearn.__file__).resolve().parent.parent)  # `autlearn` importable without an install
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(logfile), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # detached: own session, no terminal, survives the CLI that started it
        return os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)

    @staticmethod
    def _wait_ready(phone: PhoneInfo, ready: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if _exited(phone.pid):
                log = ready.parent / "vphone.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise LabError(
                    f"virtual phone {phone.name} on port {phone.port} failed to start"
                    + (f": {tail[0]}" if tail else "")
                )
            if time.monotonic() > deadline:
                raise LabError(f"virtual phone {phone.name} did not start within {START_TIMEOUT:.0f}s")
            time.sleep(0.02)

    @staticmethod
    def _ensure_adb_server(adb: str, port: int) -> None:
        if _port_open(port):
            return
        env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(port)}
        with tempfile.TemporaryFile() as out:  # the daemon may keep inherited pipes open: use a file
            try:
                rc = subprocess.run(
                    [adb, "start-server"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=30,
                ).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise LabError(f"cannot start the adb server on port {port}: {exc}") from None
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
        if rc != 0 or not _port_open(port):
            raise LabError(f"cannot start the adb server on port {port}: {text.splitlines()[-1] if text else rc}")

    @staticmethod
    def _connect(adb: str, server_port: int, phone: PhoneInfo) -> None:

        env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(server_port)}
        try:
            r = subprocess.run(
                [adb, "connect", phone.serial],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CONNECT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"adb connect {phone.serial} timed out") from None
        text = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or not (text.startswith("connected to") or text.startswith("already connected")):
            raise LabError(f"adb connect {phone.serial} failed: {text or r.returncode}")
        client = adbutils.AdbClient(port=server_port)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        state = "absent"
        while time.monotonic() < deadline:
            state = _adb_state(client, phone.serial)
            if state == "device":
                return
            time.sleep(0.05)
        raise LabError(f"{phone.name} ({phone.serial}) stayed {state!r} instead of 'device' after adb connect")

    # ---- down / status / kill ----
    def down(self) -> list[PhoneInfo]:
        """Disconnect and stop every phone of this lab; returns what was in the state."""
        state = self._read_state()
        phones = [PhoneInfo.from_json(p) for p in state.get("phones", [])]
        port = int(state.get("adb_server_port") or adb_server_port())
        if phones and _port_open(port):
            client = adbutils.AdbClient(port=port, socket_timeout=5)
            for phone in phones:
                with contextlib.suppress(Exception):
                    client.disconnect(phone.serial)
        for phone in phones:
            _kill_phone_process(phone, graceful=True)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return phones

    def status(self) -> list[PhoneStatus]:
        state = self._read_state()
        phones = [PhoneInfo.from_json(p) for p in state.get("phones", [])]
        port = int(state.get("adb_server_port") or adb_server_port())
        client = None
        if phones and _port_open(port):
            client = adbutils.AdbClient(port=port, socket_timeout=5)
        return [
            PhoneStatus(p, _is_ours(p), _adb_state(client, p.serial) if client else "no-adb-server") for p in phones
        ]

    def kill_phone(self, name: str) -> PhoneInfo:
        """Simulate yanking the cable: SIGKILL the phone (and its shells) without telling adb."""
        for phone in self.phones():
            if phone.name == name or phone.serial == name:
                _kill_phone_process(phone, graceful=False)
                return phone
        raise LabError(f"no phone named {name!r} in the lab (have: {', '.join(p.name for p in self.phones())})")


def _adb_state(client: Any, serial: str) -> str:  # client: an adbutils.AdbClient
    try:
        for info in client.list(extended=False):
            if info.serial == serial:
                return cast(str, info.state)
        return "absent"
    except Exception:  # server went away mid-query
        return "unknown"
