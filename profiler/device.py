"""The one seam between autlearn and adbutils.

Everything that talks to a phone (or a virtual phone) goes through `Device`. Commands are strings built with
`quote()` for every value; results carry stdout, stderr and the exit code; adbutils' exceptions are translated into
the typed errors of `autlearn.profiler.errors` with the serial and command attached.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import adbutils

from autlearn.profiler import hostcpu, knobs
from autlearn.profiler.errors import (
    DeviceCommandFailed,
    DeviceError,
    DeviceTimeout,
    DeviceUnreachable,
    NotRooted,
    ToolMissing,
)

DEFAULT_TIMEOUT = 60.0
ROOT_MODES = ("adbd", "su", "none")


def quote(value: object) -> str:
    """Quote one value for a device shell (mksh on Android, sh elsewhere)."""
    return shlex.quote(str(value))


def command(*argv: object) -> str:
    """Build a shell command line from argv, quoting every element."""
    return " ".join(quote(a) for a in argv)


def adb_path() -> str:
    """The adb binary adbutils would use; ToolMissing when there is none."""

    try:
        path: str = adbutils.adb_path()
    except adbutils.AdbError as exc:
        raise ToolMissing("no adb binary found (install adb, or the adbutils wheel that bundles it)") from exc
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ToolMissing(f"adb binary not found or not executable: {path}")
    return path


def server_port() -> int:
    try:
        return int(os.environ.get("ANDROID_ADB_SERVER_PORT", "5037"))
    except ValueError as exc:
        raise ToolMissing(
            f"ANDROID_ADB_SERVER_PORT is not a port number: {os.environ['ANDROID_ADB_SERVER_PORT']!r}"
        ) from exc


def adb_client() -> Any:
    """An adbutils client for the adb server on ANDROID_ADB_SERVER_PORT, starting the server when needed."""

    port = server_port()
    client = adbutils.AdbClient(host="127.0.0.1", port=port, socket_timeout=30)
    try:
        client.server_version()
    except (adbutils.AdbError, OSError):
        path = adb_path()
        env = dict(os.environ, ANDROID_ADB_SERVER_PORT=str(port))
        try:
            subprocess.run([path, "start-server"], env=env, timeout=30, capture_output=True, check=True)
            client.server_version()
        except (subprocess.SubprocessError, OSError, adbutils.AdbError) as exc:
            raise ToolMissing(f"cannot start or reach the adb server on port {port}: {exc}") from exc
    return client


@dataclass(frozen=True)
class AdbEntry:
    serial: str
    state: str  # device | offline | unauthorized | ...


def list_devices(client: Any = None) -> list[AdbEntry]:
    """Every serial the adb server knows, with its state."""

    client = client or adb_client()
    try:
        return [AdbEntry(i.serial, i.state) for i in client.list()]
    except adbutils.AdbError as exc:
        raise DeviceUnreachable(f"adb server did not list devices: {exc}") from exc


@dataclass(frozen=True)
class ShellResult:
    command: str
    stdout: str
    stderr: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Device:
    """One phone (real or virtual) reached through the adb server."""

    def __init__(
        self, serial: str, client: Any = None, timeout: float = DEFAULT_TIMEOUT, try_adb_root: bool = True
    ) -> None:
        self.serial = serial
        self.timeout = timeout
        self._client = client or adb_client()
        self._try_adb_root = try_adb_root
        self._scripts: dict[str, str] = {}
        self.shares_host = False  # a virtual phone: every operation holds the host CPU gate shared (hostcpu)
        states = {e.serial: e.state for e in list_devices(self._client)}
        if serial not in states:
            known = ", ".join(sorted(states)) or "none"
            raise DeviceUnreachable(f"serial not known to the adb server (known: {known})", serial=serial)
        if states[serial] != "device":
            raise DeviceUnreachable(f"device is {states[serial]}", serial=serial)
        self._adb = self._client.device(serial)

    def __repr__(self) -> str:
        return f"Device({self.serial!r})"

    # -- shell ---------------------------------------------------------------------------------------------------
    def shell(self, cmd: str, timeout: float | None = None) -> ShellResult:
        """Run `cmd` in the device shell; returns its output and exit code, raises only if the device fails us."""

        timeout = self.timeout if timeout is None else timeout
        try:
            with hostcpu.shared(self.shares_host):
                r = self._adb.shell2(cmd, timeout=timeout, v2=True)
        except adbutils.AdbTimeout as exc:
            raise DeviceTimeout(f"no answer within {timeout:g} s", serial=self.serial, command=cmd) from exc
        except (adbutils.AdbError, OSError, EOFError) as exc:
            raise DeviceUnreachable(
                f"connection lost: {exc or type(exc).__name__}", serial=self.serial, command=cmd
            ) from exc
        return ShellResult(cmd, r.stdout, r.stderr, r.returncode)

    def check(self, cmd: str, timeout: float | None = None) -> str:
        """Run `cmd`; return stdout, or raise DeviceCommandFailed carrying stderr and the exit code."""
        r = self.shell(cmd, timeout)
        if not r.ok:
            raise DeviceCommandFailed(
                "command failed", serial=self.serial, command=cmd, output=r.stderr or r.stdout, exit_code=r.exit_code
            )
        return r.stdout

    # -- files ---------------------------------------------------------------------------------------------------
    def push(self, local: str | Path, remote: str) -> None:

        try:
            with hostcpu.shared(self.shares_host):
                self._adb.sync.push(str(local), remote)
        except FileNotFoundError:
            raise
        except (adbutils.AdbError, OSError, EOFError) as exc:
            raise DeviceUnreachable(f"push {local} -> {remote} failed: {exc}", serial=self.serial) from exc

    def pull(self, remote: str, local: str | Path) -> None:

        try:
            with hostcpu.shared(self.shares_host):
                self._adb.sync.pull(remote, str(local))
        except (adbutils.AdbError, OSError, EOFError) as exc:
            raise DeviceError(f"pull {remote} -> {local} failed: {exc}", serial=self.serial) from exc

    # -- facts ---------------------------------------------------------------------------------------------------
    @cached_property
    def workdir(self) -> str:
        """autlearn's directory on the device: `${TMPDIR:-/data/local/tmp}/autlearn`, created on first use."""
        base = self.check('printf %s "${TMPDIR:-/data/local/tmp}"').strip() or "/data/local/tmp"
        path = f"{base.rstrip('/')}/autlearn"
        self.check(command("mkdir", "-p", path))
        return path

    def _uid(self, cmd: str = "id -u") -> str:
        r = self.shell(cmd, timeout=15)
        return r.stdout.strip() if r.ok else ""

    @cached_property
    def root_mode(self) -> str:
        """How this device gives root: 'adbd' (adb root), 'su' (su -c), or 'none'. Detected once."""
        if self._uid() == "0":
            return "adbd"
        if self._try_adb_root:
            if self._adb_root():
                return "adbd"

            knobs.forget(knobs.default_root(), self.serial, "adb_root")  # nothing was changed
        if self._uid("su -c 'id -u'") == "0" or self._uid("su 0 id -u") == "0":
            return "su"
        return "none"

    def root_capability(self) -> str:
        """How this device can give root ('adbd' | 'su' | 'none') without changing it: a debuggable build's adbd
        is reported as 'adbd' without restarting it as root (discovery and `autlearn devices` leave adbd alone;
        `root_mode` roots it when root is first needed)."""
        if "root_mode" in self.__dict__:
            return self.root_mode
        if self._uid() == "0":
            return "adbd"
        if self._try_adb_root and self.shell("getprop ro.debuggable", timeout=15).stdout.strip() == "1":
            return "adbd"
        if self._uid("su -c 'id -u'") == "0" or self._uid("su 0 id -u") == "0":
            return "su"
        return "none"

    def _adb_root(self) -> bool:

        # adbd as root is a knob too: persisted first, undone when the run ends (or by the next run after a kill)
        knobs.persist(knobs.default_root(), self.serial, "adb_root", {"prior": "adbd not root"})
        try:
            answer = self._adb.root()
        except (adbutils.AdbError, OSError):
            return False
        if isinstance(answer, bytes):
            answer = answer.decode(errors="replace")
        if "cannot" in answer or "disabled" in answer:  # "adbd cannot run as root in production builds"
            return False
        return self._wait_adbd(root=True)

    def _wait_adbd(self, root: bool, timeout_s: float = 15.0) -> bool:
        """adbd restarts after root:/unroot:: wait until it answers as (or not as) root; reconnect TCP serials."""

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                uid = self._uid()
                if (uid == "0") if root else uid not in ("0", ""):
                    return True
            except DeviceError:
                if ":" in self.serial:
                    try:
                        self._client.connect(self.serial, timeout=5)
                    except adbutils.AdbError:
                        pass
            time.sleep(0.3)
        return False

    def shell_root(self, cmd: str, timeout: float | None = None) -> ShellResult:
        """Run `cmd` as root; NotRooted when the device gives no root."""
        mode = self.root_mode
        if mode == "adbd":
            return self.shell(cmd, timeout)
        if mode == "su":
            return self.shell(f"su -c {quote(cmd)}", timeout)
        raise NotRooted("root is needed and the device has none (no adb root, no su)", serial=self.serial, command=cmd)

    # -- device scripts --------------------------------------------------------------------------------------------
    def script_path(self, name: str) -> str:
        """Push device_scripts/<name> once per content and return its path on the device."""
        if name not in self._scripts:
            src = resources.files("autlearn.device_scripts").joinpath(name)
            data = src.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:12]
            remote = f"{self.workdir}/scripts/{digest}-{name}"
            if not self.shell(command("test", "-f", remote)).ok:
                self.check(command("mkdir", "-p", f"{self.workdir}/scripts"))
                with resources.as_file(src) as local:
                    self.push(local, remote)
            self._scripts[name] = remote
        return self._scripts[name]

    def run_script(self, name: str, *args: object, root: bool = False, timeout: float | None = None) -> ShellResult:
        """Run a device script with quoted arguments (as root when asked)."""
        cmd = command("sh", self.script_path(name), *args)
        return self.shell_root(cmd, timeout) if root else self.shell(cmd, timeout)


def restore_adb_root(device: Device, doc: dict[str, Any]) -> None:
    """adbd as root, undone (autlearn.profiler.knobs.restore_pending): `adb unroot`, then wait for adbd to come back."""
    with device._adb.open_transport() as c:
        c.send_command("unroot:")
        c.check_okay()
        c.read_until_close()
    if not device._wait_adbd(root=False):
        raise DeviceError("adbd did not come back unrooted", serial=device.serial)


def wait_device(serial: str, settle_s: float) -> Device:
    """`Device(serial)`, waiting up to `settle_s` while adb reports it offline or absent (another run's adbd
    restarting as or from root, a USB re-enumeration)."""

    deadline = time.monotonic() + settle_s
    while True:
        try:
            return Device(serial)
        except DeviceUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
