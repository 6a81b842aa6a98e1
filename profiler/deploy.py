"""The one way an artifact reaches a phone and its runner is started there."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from autlearn.profiler.device import Device, command, quote


def remote_dir(device: Device, artifact_hash: str) -> str:
    return f"{device.workdir}/artifacts/{artifact_hash[:16]}"


def deploy(device: Device, artifact_hash: str, local_dir: Path, files: Iterable[str]) -> str:
    """Push an artifact's files under `<workdir>/artifacts/<hash[:16]>` unless a complete copy is there; returns
    that directory. A `.complete` marker is written last, so a push cut short is redone, never half-used."""
    remote = remote_dir(device, artifact_hash)
    if not device.shell(command("test", "-f", f"{remote}/.complete")).ok:
        device.check(command("rm", "-rf", remote) + " && " + command("mkdir", "-p", remote))
        for name in files:
            device.push(Path(local_dir) / name, f"{remote}/{name}")
        device.check(command("chmod", "755", f"{remote}/runner") + " && " + command("touch", f"{remote}/.complete"))
    return remote


def runner_command(
    remote: str, *, warmup: int, steps: int, threads: int | None = None, cpu_mask: str | None = None
) -> str:
    """The shell command that runs a deployed runner (its stdout: `autlearn.profiler.steps.parse_run_output`)."""
    argv: list[object] = [f"{remote}/runner", remote, "--warmup", warmup, "--steps", steps]
    if threads:
        argv += ["--threads", threads]
    cmd = command(*argv)
    if not cpu_mask:
        return cmd
    # plain hex digits: Android's taskset (toybox) refuses a "0x" prefix that util-linux accepts
    mask = cpu_mask[2:] if cpu_mask.lower().startswith("0x") else cpu_mask
    return f"taskset {quote(mask)} {cmd}"
