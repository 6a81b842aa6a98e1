"""A lease per phone: one campaign holds a phone at a time, across processes and hosts, because the lock lives on
the phone itself.

The lease is a directory `<workdir>/lease` on the device: `mkdir` is atomic, so of two runs only one creates it.
Its `holder` file names the holder (token, host, pid, campaign, results directory, start and last heartbeat, in the
device's clock); the holder rewrites the heartbeat every `HEARTBEAT_S`. A lease is stale, and is broken by the next
run, when its heartbeat is older than `STALE_S` (a holder killed or cut off on any host), or at once when its holder
ran on this host and that process is gone (a kill -9 here). Everything that changes a phone (governor snapshots
included) happens under the lease, so a snapshot is never taken while another run holds the phone.

`parse_holder` is pure; `PhoneLease` talks to the device.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from autlearn.profiler.device import Device, quote
from autlearn.profiler.errors import DeviceError, UserError

HEARTBEAT_S = 10.0
STALE_S = 60.0
POLL_S = 2.0
_FIELDS = ("token", "host", "pid", "campaign", "results", "started", "beat")


class PhoneBusy(UserError):
    """Another run holds the phone's lease."""


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    campaign: str
    results: str
    started: int  # device epoch seconds
    beat: int

    def text(self) -> str:
        return "".join(f"{k}={getattr(self, k)}\n" for k in _FIELDS)

    def describe(self, now: int) -> str:
        return (
            f"campaign {self.campaign!r} (pid {self.pid} on {self.host}, results {self.results}, "
            f"for {max(0, now - self.started)} s, last heartbeat {max(0, now - self.beat)} s ago)"
        )


def parse_holder(text: str) -> Holder | None:
    """The holder file's KEY=VALUE lines; None when empty or incomplete (a holder killed while writing it)."""
    kv = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
    try:
        return Holder(
            kv["token"], kv["host"], int(kv["pid"]), kv["campaign"], kv["results"], int(kv["started"]), int(kv["beat"])
        )
    except (KeyError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:

    try:
        alive: bool = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # psutil: no type information here
        return alive
    except psutil.NoSuchProcess:
        return False


class PhoneLease:
    """Hold `device`'s lease for a campaign (`with PhoneLease(...)`); `wait_s` > 0 waits that long for a busy
    phone, else PhoneBusy names the holder."""

    def __init__(
        self,
        device: Device,
        campaign: str,
        results: str,
        *,
        wait_s: float = 0.0,
        say: Callable[[str], None] = lambda s: None,
    ):
        self.device, self.campaign, self.results, self.wait_s, self.say = device, campaign, results, wait_s, say
        self.token = uuid.uuid4().hex
        self.dir = ""  # set by acquire (asking the phone may meet the holder's adbd restarting)
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self.broke: Holder | None = None  # a stale lease this one replaced

    def _holder(self, now: int) -> Holder:
        return Holder(self.token, socket.gethostname(), os.getpid(), self.campaign, self.results, now, now)

    def _try(self) -> tuple[bool, Holder | None, int, int | None]:
        """One attempt: (acquired, current holder, device now, lease dir mtime)."""
        d = quote(self.dir)
        r = self.device.shell(
            f"umask 0; if mkdir {d} 2>/dev/null; then echo LEASE=new; fi; date +%s; "
            f"stat -c %Y {d} 2>/dev/null; echo ---; cat {d}/holder 2>/dev/null",
            timeout=30,
        )
        head, _, holder = r.stdout.partition("---\n")
        lines = head.split()
        acquired = "LEASE=new" in lines
        nums = [int(x) for x in lines if x.isdigit()]
        now = nums[0] if nums else int(time.time())
        mtime = nums[1] if len(nums) > 1 else None
        return acquired, parse_holder(holder), now, mtime

    def _stale(self, h: Holder | None, now: int, mtime: int | None) -> str | None:
        if h is None:  # created but never written: its creator died at once (or is writing right now)
            return "no holder recorded" if mtime is None or now - mtime > 5 else None
        if h.host == socket.gethostname() and not _pid_alive(h.pid):
            return f"its holder (pid {h.pid} on this host) is gone"
        if now - h.beat > STALE_S:
            return f"no heartbeat for {now - h.beat} s"
        return None

    def acquire(self) -> PhoneLease:
        deadline = time.monotonic() + self.wait_s
        unreachable_until = time.monotonic() + max(self.wait_s, 15.0)  # adbd restarts take seconds
        told = False
        while True:
            try:
                self.dir = self.dir or f"{self.device.workdir}/lease"
                acquired, h, now, mtime = self._try()
            except DeviceError:
                if time.monotonic() >= unreachable_until:
                    raise
                time.sleep(POLL_S)  # the holder's adbd restarting (root/unroot): ask again
                continue
            if acquired:
                self._write(self._holder(now))
                break
            why = self._stale(h, now, mtime)
            if why is not None:
                self.say(
                    f"{self.device.serial}: breaking a stale lease ({why})" + (f" of {h.describe(now)}" if h else "")
                )
                self.broke = h
                self.device.shell(f"rm -rf {quote(self.dir)}", timeout=30)
                continue
            if time.monotonic() >= deadline:
                raise PhoneBusy(
                    f"{self.device.serial} is in use by {h.describe(now) if h else 'another run'}; "
                    "wait for it (--wait SECONDS) or choose other devices"
                )
            if not told:
                self.say(f"{self.device.serial}: waiting for {h.describe(now) if h else 'another run'}")
                told = True
            time.sleep(min(POLL_S, max(0.1, deadline - time.monotonic())))
        self._beater = threading.Thread(target=self._beat, name=f"lease-{self.device.serial}", daemon=True)
        self._beater.start()
        return self

    def _write(self, h: Holder) -> None:
        f = quote(f"{self.dir}/holder")
        self.device.check(f"umask 0; printf %s {quote(h.text())} > {f}.tmp && mv {f}.tmp {f}", timeout=30)

    def _beat(self) -> None:
        """Refresh the heartbeat while the lease is ours (a broken lease is not rewritten)."""
        while not self._stop.wait(HEARTBEAT_S):
            f = quote(f"{self.dir}/holder")
            try:
                self.device.shell(
                    f'grep -q token={self.token} {f} && sed -i "s/^beat=.*/beat=$(date +%s)/" {f}', timeout=30
                )
            except DeviceError:
                pass  # the phone is away: its cells fail on their own; the heartbeat tries again

    def release(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        d = quote(self.dir)
        try:
            self.device.shell(f"grep -q token={self.token} {d}/holder 2>/dev/null && rm -rf {d}", timeout=30)
        except DeviceError:
            pass  # left behind: stale once its heartbeat stops (or at once on this host: pid gone)

    def __enter__(self) -> PhoneLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
