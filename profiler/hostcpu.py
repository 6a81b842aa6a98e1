"""Virtual phones run their workloads on this host's CPUs: a timed launch must not share them with other work.

A gate per host (two `flock`s on files in the temp directory, per user): a timed runner launch on a virtual phone
holds it **exclusively**; every other operation on a virtual phone (a shell, push or pull through `profiler.device`,
the controller's parse and store writes for it) holds it **shared**. So while one phone's steps are timed, no other
phone's deploy, probe, governor write or sampler start runs, and a timed launch starts only once the operations
already under way have finished. Exclusive requests go first (a turnstile: a shared request queues behind a waiting
exclusive one), so a launch waits for operations under way, not for a stream of new ones. Real phones (their own
SoCs) never take the gate. The kernel drops an flock with its file: a killed run holds nothing.

The gate names its holder: while a timed launch holds it, `lock_path("holder")` holds that phone's serial (empty
otherwise). The virtual lab reads it and holds every other virtual phone's processes (SIGSTOP) for the launch:
background work a phone started earlier (a fuel-gauge sampler, a shell's leftover job) does not run beside it
(testbed/dvfs.py). `HOLD_SETTLE_S` after naming itself, the launch starts (the phones look every 20 ms).

Time spent waiting at the gate is the lab's queueing, not the harness's cost: it is counted per thread
(`waited_s()`) and recorded as a cell's `wait_s`, beside and never inside `harness_s` (autlearn.engine.worker)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_local = threading.local()
HOLD_SETTLE_S = 0.05  # other virtual phones have held their processes by then (they look every 20 ms)


def lock_path(kind: str = "gate") -> Path:
    return Path(tempfile.gettempdir()) / f"autlearn-{os.getuid()}-virtual-cpu.{kind}"


def waited_s() -> float:
    """Seconds this thread has waited at the gate so far (a monotone counter: take differences)."""
    return getattr(_local, "waited", 0.0)


@contextlib.contextmanager
def _gate(virtual: bool, mode: int, holder: str = "") -> Iterator[None]:
    depth = getattr(_local, "depth", 0)
    if not virtual or depth:  # a real phone; or this thread holds the gate already (shared inside its launch)
        yield
        return
    with open(lock_path("turn"), "a+b") as turn, open(lock_path("gate"), "a+b") as gate:
        t0 = time.perf_counter()
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(gate, mode)
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
        _local.waited = waited_s() + time.perf_counter() - t0
        _local.depth = 1
        try:
            if holder:
                _name_holder(holder)
                time.sleep(HOLD_SETTLE_S)
            yield
        finally:
            _local.depth = 0
            if holder:
                _name_holder("")
            fcntl.flock(gate, fcntl.LOCK_UN)


def _name_holder(serial: str) -> None:
    path = lock_path("holder")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(serial)
    os.replace(tmp, path)


def holder() -> str:
    """The serial of the virtual phone whose timed launch holds the host now ("" when none)."""
    try:
        return lock_path("holder").read_text().strip()
    except OSError:
        return ""


def held_exclusively() -> bool:
    """Is a timed launch holding the gate now? (a shared lock cannot be had without waiting)"""
    try:
        with open(lock_path("gate"), "a+b") as gate:
            fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(gate, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def bypass() -> Iterator[None]:
    """This thread's virtual-phone operations skip the gate: restoring phones' settings when a run is stopped must not
    wait for the timed launch under way (that launch is ended next)."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def exclusive(virtual: bool, serial: str = "") -> contextlib.AbstractContextManager[None]:
    """Hold this host's CPUs for one virtual phone's timed launch (no-op for a real phone); `serial`: the phone
    (named as its holder, so that the lab holds the other phones' processes)."""
    return _gate(virtual, fcntl.LOCK_EX, serial)


def shared(virtual: bool) -> contextlib.AbstractContextManager[None]:
    """Any other operation on a virtual phone: it waits while a timed launch runs (no-op for a real phone)."""
    return _gate(virtual, fcntl.LOCK_SH)
