"""Virtual phones run their workloads on this host's CPUs: two of them timing steps at once would time each other.

Every timed runner launch on a virtual phone holds one host-wide lock (`flock` on a file in the temp directory, per
user), so virtual phones take turns; real phones (their own SoCs) never take it. The lock is released when the
launch ends, fails or its process dies (the kernel drops an flock with its file)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def lock_path() -> Path:
    return Path(tempfile.gettempdir()) / f"autlearn-{os.getuid()}-virtual-cpu.lock"


@contextlib.contextmanager
def host_cpu(virtual: bool):
    """Hold the host's CPU for one virtual phone's timed launch (no-op for a real phone)."""
    if not virtual:
        yield
        return
    import fcntl

    with open(lock_path(), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
