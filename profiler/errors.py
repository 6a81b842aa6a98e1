"""Typed errors. Anything derived from `UserError` is reported as one line and exit code 1 by the CLI."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, missing hardware or tool). Never shown as a traceback; the CLI
    prints one line and exits 1."""


class ConfigError(UserError):
    """Invalid configuration; `key` names the offending key (dotted path) when known."""

    def __init__(self, message: str, key: str | None = None):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class ToolMissing(UserError):
    """A required host tool (adb, compiler, qemu, ...) is not available."""


class LabError(UserError):
    """The virtual lab could not be started, reached or stopped."""


class DeviceError(UserError):
    """A device command failed. Carries everything needed to understand why."""

    def __init__(
        self, message: str, *, serial: str = "", command: str = "", output: str = "", exit_code: int | None = None
    ):
        self.serial, self.command, self.output, self.exit_code = serial, command, output, exit_code
        detail = f"[{serial}] " if serial else ""
        if command:
            detail += f"`{command}`"
            if exit_code is not None:
                detail += f" exited {exit_code}"
            detail += ": "
        tail = output.strip().splitlines()[-1][:300] if output.strip() else ""
        super().__init__(f"{detail}{message}" + (f" ({tail})" if tail and tail not in message else ""))


class DeviceUnreachable(DeviceError):
    """The serial is unknown to the adb server, offline, or vanished mid-command."""


class DeviceCommandFailed(DeviceError):
    """The command ran and exited non-zero."""


class DeviceTimeout(DeviceError):
    """The command did not finish in time."""


class NotRooted(DeviceError):
    """Root is required for this operation and the device has none."""


class ParseError(UserError):
    """Device output could not be parsed; `text` holds the offending excerpt."""

    def __init__(self, message: str, text: str = ""):
        self.text = text
        super().__init__(message + (f": {text[:200]!r}" if text else ""))


class ArtifactError(UserError):
    """A workload artifact is missing, corrupt or does not match its manifest."""


class EnergyError(UserError):
    """An energy source could not be used (no/wrong power monitor, fuel gauge unusable while charging, ...).
    `serial` names the instrument or device, `found` lists the monitors that were present."""

    def __init__(self, message: str, *, serial: str = "", found: tuple[str, ...] = ()):
        self.serial, self.found = serial, tuple(found)
        super().__init__(message)


class TableError(UserError):
    """A per-layer latency/energy table is unusable: from another tool version, missing a layer key or a column,
    or malformed. `key` names the offending layer key when there is one."""

    def __init__(self, message: str, key: object = None):
        self.key = key
        super().__init__(message)
