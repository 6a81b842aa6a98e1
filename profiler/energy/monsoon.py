"""Monsoon HVPM power monitor as an EnergySource, driven through the unmodified `monsoon` (PyMonsoon) package.

One PROCESS per monitor (forkserver or spawn, never a fork of the caller): the driver keeps status/calibration
state in class attributes and a default protocol object shared by every instance in a process. The child opens
the monitor by serial, sets Vout and the USB passthrough mode, samples main current + voltage until told to stop,
restores passthrough in a `finally`, and hands the samples back in an .npz file.

Passthrough is restored after success, an error in the window, and a killed host:
  * success / exception in the caller's window: `MonsoonSource.close()` (a `with` block, MonsoonMeter.__exit__)
    sends "abort"; the child leaves its sample loop and its `finally` restores the prior mode.
  * the host dies (SIGKILL included): the child sees EOF on its pipe (and polls the host pid) within ~20 ms of
    samples, aborts and restores before exiting. SIGTERM/SIGHUP to the child also end in the restoring `finally`.
  * the child itself dies before restoring (e.g. SIGKILL of the whole process group): a "passthrough pending"
    marker (`<pending_dir>/<serial>.json`, written before the mode is changed, removed once it is restored)
    keeps the prior mode; the next window on that monitor restores to the recorded prior instead of the mode it
    finds. `pending_dir`: `$AUTLEARN_HOME/monsoon-pending` for real monitors, `<state_dir>/pending` for simulated.

Driver faults worked around (never patched):
  * CSV output writes numpy reprs (`np.float64(1.0)`) under numpy 2 -> we never enable CSV; samples are drained
    in memory with getSamples() from inside our protocol's BulkRead (same thread as the sample loop, so no race).
  * timestamps are host time per USB packet -> rebuilt as (sample index + dropped samples before it) / 5000.
  * the dropped count is only kept for the last packet (`engine.dropped`) -> our protocol subclass (`_TapProtocol`,
    passed to setup_usb; PyMonsoon accepts any protocol object) reads it from every packet and records where drops
    happened, so the rebuilt time axis has gaps and `PowerTrace.dropped` counts them.
  * channel lists can differ in length after a trigger stop -> truncated to the common length.
  * console output drops samples -> ConsoleOutput(False).
  * ErrorHandlingModes.full swallows errors, and on a USB error silently reconnects (5 s sleep) and restarts the run
    -> we use ErrorHandlingModes.off and surface the error (passthrough is still restored).
  * startSampling() never returns if calibration samples never arrive (its 20000-sample guard counts only
    calibrated samples) -> our BulkRead gives up after a bounded number of packets without output.
  * `setup_usb`'s default Protocol argument is one object created at import -> always pass a new one.
  * there is no way to stop an open-ended run from outside -> our BulkRead sets a stop trigger that is already
    true (`timestamp > -1`), so the driver stops at its next processed batch; nothing read is left unprocessed.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import usb.backend.libusb0 as libusb0
import usb.backend.libusb1 as libusb1
import usb.backend.openusb as openusb
import usb.core
import usb.util
from Monsoon import HVPM, pmapi
from Monsoon import Operations as op
from Monsoon import sampleEngine as se

from autlearn.profiler import paths
from autlearn.profiler.energy import PowerTrace
from autlearn.profiler.errors import EnergyError
from autlearn.profiler.instruments import monitor_backend

SAMPLE_RATE = 5000.0
VENDOR_ID, PRODUCT_ID = 0x2AB9, 0x0001
PASSTHROUGH = {"off": 0, "on": 1, "auto": 2}
_PASSTHROUGH_NAMES = {v: k for k, v in PASSTHROUGH.items()}
_SERVICE_EVERY = 32  # packets between drains / stop checks (~20 ms of samples)
_MAX_PACKETS_WITHOUT_OUTPUT = 20000  # ~12 s of packets: the monitor is not calibrating


def _context() -> ForkServerContext | SpawnContext:
    """Fresh processes, not forks of the caller: forkserver (its server preloads the driver, whose import of
    scipy.stats costs ~2 s, so each monitor process starts fast) where available, else spawn. Either way a child
    shares no driver state with the caller or with other monitors."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["autlearn.profiler.energy.monsoon", "Monsoon.HVPM", "Monsoon.sampleEngine"])
        return ctx
    return mp.get_context("spawn")


@contextlib.contextmanager
def pyusb_backend(backend: Any) -> Iterator[Any]:
    """Make pyusb's default backend lookup (what `usb.core.find()` uses when PyMonsoon calls it without a
    backend) return `backend` inside the block. Process-global; the found Device keeps its backend afterwards."""

    saved = [(m, m.get_backend) for m in (libusb1, openusb, libusb0)]
    libusb1.get_backend = lambda *a, **k: backend
    openusb.get_backend = libusb0.get_backend = lambda *a, **k: None
    try:
        yield backend
    finally:
        for m, fn in saved:
            m.get_backend = fn


def list_monitors(backend: Callable[[], Any] | None = None) -> tuple[str, ...]:
    """Serial numbers of attached monitors (any Monsoon model). `backend`: a pyusb backend factory (a
    plugin's simulated fleet); None = the system's libusb."""

    try:
        devs = usb.core.find(
            find_all=True, idVendor=VENDOR_ID, idProduct=PRODUCT_ID, backend=backend() if backend is not None else None
        )
        return tuple(str(d.serial_number) for d in devs)
    except usb.core.NoBackendError as e:
        raise EnergyError(
            "no USB backend: install libusb-1.0 (e.g. apt-get install libusb-1.0-0) to use a Monsoon"
        ) from e


def open_monitor(
    serial: str | int,
    window: MonsoonWindow | None = None,
    *,
    lab_home: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> MonsoonSource:
    """A MonsoonSource for `serial`, sampling as `window` says: a monitor a plugin provides when one claims the
    serial (profiler.instruments; the virtual lab's `SIM-<port>`, looked up in its state under `lab_home`, default
    $AUTLEARN_HOME; paced to real time, traces labelled `simulated`), else a real HVPM through the monsoon driver +
    pyusb/libusb. EnergyError (one line, naming the monitors found) when no such monitor is attached."""

    serial = str(serial)
    mon = monitor_backend(serial, lab_home)
    if mon is not None:
        kwargs.setdefault("settle_wait", mon.realtime)  # real time: let the settling window pass before the workload
        return MonsoonSource(mon.usb_serial, window, backend=mon.backend, **kwargs)
    found = list_monitors(kwargs.get("backend"))
    if serial not in found:
        listed = ", ".join(found) if found else "none"
        raise EnergyError(
            f"Monsoon with serial {serial} not found (monitors attached: {listed})", serial=serial, found=found
        )
    return MonsoonSource(serial, window, **kwargs)


def restore_pending_passthrough(serial: str | int, *, lab_home: str | os.PathLike[str] | None = None) -> str | None:
    """USB passthrough is a knob of the monitor: when a window on `serial` died before restoring it (its marker
    is left), open a short window now; its end restores the prior mode the marker kept. None when nothing was
    pending."""
    src = open_monitor(serial, MonsoonWindow(passthrough="off", settle_s=0.0), lab_home=lab_home, settle_wait=False)
    if not src.config.pending_dir or pending_passthrough(src.config.pending_dir, src.config.serial) is None:
        return None
    try:
        src.start()
    finally:
        src.close()
    return f"USB passthrough restored ({src.restored_passthrough})"


@dataclass(frozen=True)
class MonsoonWindow:
    """How a window samples: MonsoonConfig's fields of the same names (commented and checked there)."""

    voltage: float = 4.0
    passthrough: str = "off"
    restore: str = "prior"
    settle_s: float = 0.5
    duration_s: float | None = None


@dataclass(frozen=True)
class MonsoonConfig:
    """What the monitor process needs (picklable)."""

    serial: str
    voltage: float = 4.0
    passthrough: str = "off"  # during the window: off | auto | on (on feeds USB power: the phone may charge)
    restore: str = "prior"  # afterwards: prior (mode found at open) | off | on | auto
    settle_s: float = 0.5  # discarded from the start of the trace
    duration_s: float | None = None  # stop by itself after settle_s + duration_s of samples
    backend: Callable[[], Any] | None = None  # pyusb backend factory (a simulated fleet); None = libusb
    pending_dir: str | None = None  # "passthrough pending" markers (module docstring); None = none kept
    host_pid: int | None = None  # the child aborts (and restores) when this process is gone

    def __post_init__(self) -> None:
        if self.passthrough not in PASSTHROUGH:
            raise ValueError(f"passthrough must be one of {sorted(PASSTHROUGH)}: {self.passthrough!r}")
        if self.restore != "prior" and self.restore not in PASSTHROUGH:
            raise ValueError(f"restore must be 'prior' or one of {sorted(PASSTHROUGH)}: {self.restore!r}")
        if not 0.8 <= self.voltage <= 13.5:
            raise ValueError(f"HVPM output voltage must be within 0.8..13.5 V: {self.voltage}")

    @property
    def label(self) -> str:
        return getattr(self.backend, "label", "measured") if self.backend is not None else "measured"


class MonsoonSource:
    """EnergySource for one HVPM. Several can run at once (one process each).

    with MonsoonSource("12345", MonsoonWindow(voltage=4.0)) as src:  # start(); close() restores passthrough
        run_workload()                                                 # (on an error too)
        trace = src.stop()

    `wait_for_adb` is called after passthrough has been restored (e.g. `lambda: device.wait_online()`).
    `settle_wait`: sleep settle_s after sampling started so the workload runs after the settling window
    (default: only for real hardware)."""

    _proc: BaseProcess | None
    _conn: Connection | None
    _dir: Path | None

    def __init__(
        self,
        serial: str | int,
        window: MonsoonWindow | None = None,
        *,
        backend: Callable[[], Any] | None = None,
        wait_for_adb: Callable[[], None] | None = None,
        settle_wait: bool | None = None,
        timeout_s: float = 60.0,
        pending_dir: str | os.PathLike[str] | None | bool = True,
    ) -> None:
        if pending_dir is True:
            pending_dir = default_pending_dir(backend)
        w = window or MonsoonWindow()
        self.config = MonsoonConfig(
            str(serial),
            w.voltage,
            w.passthrough,
            w.restore,
            w.settle_s,
            w.duration_s,
            backend,
            str(pending_dir) if pending_dir else None,
            os.getpid(),
        )
        self.wait_for_adb = wait_for_adb
        self.settle_wait = (self.config.label == "measured") if settle_wait is None else settle_wait
        self.timeout_s = timeout_s
        self._proc = self._conn = self._dir = None
        self.restored_passthrough: str | None = None

    # -- EnergySource --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("MonsoonSource already started")
        ctx = _context()
        self._dir = Path(tempfile.mkdtemp(prefix="autlearn-monsoon-"))
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child_main,
            args=(child, self.config, str(self._dir / "samples.npz")),
            name=f"monsoon-{self.config.serial}",
            daemon=True,
        )
        self._proc.start()
        child.close()
        try:
            msg = self._recv()
        except BaseException:
            self.close()
            raise
        if msg[0] != "sampling":
            self._finish()
            raise self._error(msg)
        if self.settle_wait and self.config.settle_s > 0:
            time.sleep(self.config.settle_s)

    def stop(self, cover_until: float | None = None) -> PowerTrace:
        """End the window; with `cover_until` (a host `time.monotonic()`), once the samples reach that time (they
        arrive with USB latency) rather than at once."""
        if self._proc is None:
            raise RuntimeError("MonsoonSource.stop() without start()")
        assert self._conn is not None  # set with _proc (start), cleared with it (_finish)
        try:
            if self.config.duration_s is None:  # otherwise the monitor stops by itself after the duration
                with contextlib.suppress(OSError):
                    self._conn.send(("stop_at", cover_until) if cover_until is not None else "stop")
            msg = self._recv()
            if msg[0] != "done":
                raise self._error(msg)
            meta = msg[1]
            self.restored_passthrough = meta["restored"]
            with np.load(meta["path"], allow_pickle=False) as z:
                trace = assemble_trace({k: z[k] for k in z.files}, meta, self.config)
        finally:
            self._finish()
        self._after_restore()
        return trace

    def close(self) -> None:
        """Abort a running measurement (samples are discarded) and make sure passthrough is restored."""
        if self._proc is None:
            return
        assert self._conn is not None  # set with _proc (start), cleared with it (_finish)
        try:
            with contextlib.suppress(OSError):
                self._conn.send("abort")
            with contextlib.suppress(EnergyError, EOFError, OSError):
                msg = self._recv()
                if msg[0] in ("done", "error") and isinstance(msg[-1], dict):
                    self.restored_passthrough = msg[-1].get("restored")
        finally:
            self._finish()
        self._after_restore()

    def __enter__(self) -> MonsoonSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------------------
    def _recv(self) -> tuple[Any, ...]:
        assert self._conn is not None and self._proc is not None  # started: both set together (start, _finish)
        deadline = time.monotonic() + self.timeout_s
        while not self._conn.poll(0.05):
            if not self._proc.is_alive() and not self._conn.poll(0.2):
                raise EnergyError(
                    f"Monsoon {self.config.serial}: monitor process died (exit code "
                    f"{self._proc.exitcode}); USB passthrough may not be restored",
                    serial=self.config.serial,
                )
            if time.monotonic() > deadline:
                raise EnergyError(
                    f"Monsoon {self.config.serial}: no answer from the monitor process in {self.timeout_s:.0f} s",
                    serial=self.config.serial,
                )
        try:
            return cast(tuple[Any, ...], self._conn.recv())  # the monitor process's (kind, ...) messages
        except (EOFError, OSError):  # the pipe closed: the monitor process is gone
            raise EnergyError(
                f"Monsoon {self.config.serial}: monitor process lost (exit code "
                f"{self._proc.exitcode}); USB passthrough may not be restored (its marker restores "
                "it at the next use of this monitor)",
                serial=self.config.serial,
            ) from None

    def _error(self, msg: tuple[Any, ...]) -> EnergyError:
        text, extra = msg[2], msg[3] if len(msg) > 3 else {}
        self.restored_passthrough = extra.get("restored", self.restored_passthrough)
        return EnergyError(text, serial=self.config.serial, found=tuple(extra.get("found", ())))

    def _finish(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.join(min(self.timeout_s, 10.0))  # it answered or failed already: exiting takes moments
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():  # frozen (SIGSTOP) or deaf to SIGTERM: an exiting host would wait on it forever
                proc.kill()
                proc.join(5)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _after_restore(self) -> None:
        if self.wait_for_adb is not None and self.config.passthrough != "on":
            self.wait_for_adb()


def default_pending_dir(backend: Callable[[], Any] | None = None) -> Path | None:
    """Where passthrough-pending markers go: `<state_dir>/pending` of a simulated fleet (None without a state
    dir), `$AUTLEARN_HOME/monsoon-pending` (default ~/.autlearn) for real monitors."""
    if backend is not None:
        state_dir = getattr(backend, "state_dir", None)
        return Path(state_dir) / "pending" if state_dir else None

    return paths.pending_dir()


def pending_passthrough(pending_dir: str | os.PathLike[str] | None, serial: str | int) -> dict[str, Any] | None:
    """The marker left by a monitor process that died before restoring passthrough: {"serial", "prior", "pid",
    "time"} (prior = the mode to restore), or None."""
    if not pending_dir:
        return None
    try:
        return cast(dict[str, Any], json.loads((Path(pending_dir) / f"{serial}.json").read_text()))
    except (OSError, ValueError):
        return None


def assemble_trace(arrays: dict[str, np.ndarray], meta: dict[str, Any], config: MonsoonConfig) -> PowerTrace:
    """Build the PowerTrace from what the monitor process recorded (pure; see module docstring)."""
    n_times, n_main, n_volt = (int(meta[k]) for k in ("n_times", "n_main", "n_volt"))
    n = min(n_main, n_volt)  # unequal after a trigger stop: keep the common prefix
    current = arrays["main_ma"][:n] / 1000.0
    voltage = arrays["volts"][:n]
    # output sample i is stream measurement sample s0 + i (the driver discards the calibration phase at the head)
    s0 = int(meta["n_stream"]) - n_times
    notes = []
    if s0 < 0:
        notes.append(f"driver returned {-s0} more samples than were read; drop positions unreliable")
        s0 = 0
    ev = arrays["drop_events"].reshape(-1, 2).astype(np.int64)  # (stream index before which, samples lost)
    before = ev[ev[:, 0] <= s0, 1].sum()
    inside = ev[ev[:, 0] > s0]
    idx = np.arange(n, dtype=np.int64)
    gaps = np.zeros(n, dtype=np.int64)
    if inside.size:
        pos = inside[:, 0] - s0  # first output index after the gap
        np.add.at(gaps, np.clip(pos, 0, max(n - 1, 0)), np.where(pos < n, inside[:, 1], 0))
    slot = idx + np.cumsum(gaps)  # sample slot at 5 kHz, counting lost samples
    t = slot / SAMPLE_RATE
    keep = t >= config.settle_s - 0.5 / SAMPLE_RATE
    if config.duration_s is not None:
        keep &= t <= config.settle_s + config.duration_s + 0.5 / SAMPLE_RATE
    if not keep.any():
        raise EnergyError(
            f"Monsoon {config.serial}: no samples after the {config.settle_s} s settling window ({n} samples recorded)",
            serial=config.serial,
        )
    first, last = np.flatnonzero(keep)[[0, -1]]
    dropped = int(gaps[first + 1 : last + 1].sum())
    t0_host = None
    if math.isfinite(meta.get("anchor", math.inf)):
        t0_host = float(meta["anchor"]) + (s0 + before) / SAMPLE_RATE + float(t[first])
    info = {
        "voltage_set": config.voltage,
        "passthrough": config.passthrough,
        "passthrough_restored": meta.get("restored"),
        "settle_s": config.settle_s,
        "dropped_total": int(ev[:, 1].sum()),
        # trace t=0 on the monitor's sample clock, counted from the start-sampling request
        "monitor_t0_s": float((s0 + before) / SAMPLE_RATE + t[first]),
        "driver": "monsoon (PyMonsoon) HVPM",
        "firmware": meta.get("firmware"),
        "t0_host_note": "upper bound from per-packet host arrival times (min over packets)",
    }
    if notes:
        info["notes"] = tuple(notes)
    return PowerTrace(
        t=t[first : last + 1] - t[first],
        current=current[first : last + 1],
        voltage=voltage[first : last + 1],
        source="monsoon",
        serial=config.serial,
        labels=(config.label,),
        dropped=dropped,
        sample_rate=SAMPLE_RATE,
        t0_host=t0_host,
        info=info,
    )


# ------------------------------------------------------------------------------------------------------------
# monitor process


class _Abort(Exception):
    pass


_COVER_WAIT_S = 2.0  # at most this long past the time asked for: a trace that falls short says so when attributed


def _make_tap(conn: Connection, config: MonsoonConfig) -> Any:

    class _TapProtocol(pmapi.USB_protocol):  # type: ignore[misc]  # the driver (PyMonsoon) has no types
        """USB_protocol that watches every packet: dropped counts, stop requests, draining getSamples()."""

        def __init__(self) -> None:
            super().__init__()
            self.engine: Any = None  # the driver's SampleEngine, once sampling
            self.n_stream = 0  # measurement samples read
            self.last_dropped = 0
            self.total_dropped = 0
            self.drop_events: list[tuple[int, int]] = []
            self.anchor = math.inf
            self.packets = 0
            self.packets_at_first_output: int | None = None
            self.stop_requested_at: int | None = None
            self.stop_at: float | None = None  # host time the samples must reach before stopping
            self.chunks: dict[str, list[np.ndarray]] = {"main": [], "volts": []}
            self.n = {"times": 0, "main": 0, "volts": 0}
            self.limit = (
                None
                if config.duration_s is None
                else math.ceil((config.settle_s + config.duration_s) * SAMPLE_RATE) + 1
            )

        def BulkRead(self) -> Any:
            buf = self.DEVICE.read(0x81, 64, timeout=1000)
            host = time.monotonic()
            if self.packets == 0:
                conn.send(("sampling",))
            count = min(buf[3], 3)
            measurements = sum(1 for i in range(count) if buf[4 + 18 * i + 17] & 0x30 == 0)
            dropped = buf[0] | (buf[1] << 8)  # the driver reads this header in host order too
            if dropped != self.last_dropped:
                lost = (dropped - self.last_dropped) & 0xFFFF
                self.drop_events.append((self.n_stream, lost))
                self.total_dropped += lost
                self.last_dropped = dropped
            self.n_stream += measurements
            # the last sample of this packet was taken no later than `host`
            self.anchor = min(self.anchor, host - (self.n_stream + self.total_dropped) / SAMPLE_RATE)
            self.packets += 1
            if self.stop_at is not None and (
                self.anchor + (self.n_stream + self.total_dropped) / SAMPLE_RATE >= self.stop_at
                or host > self.stop_at + _COVER_WAIT_S
            ):
                self.request_stop()  # the samples now cover the host time asked for (or waited long enough)
            if self.packets % _SERVICE_EVERY == 0:
                self._service()
            return buf

        def drain(self) -> None:
            if self.engine is None:
                return
            out = self.engine.getSamples()
            self.n["times"] += len(out[0])
            for key, col in (("main", 1), ("volts", 4)):
                if out[col]:
                    self.chunks[key].append(np.asarray(out[col], dtype=np.float64))
                    self.n[key] += len(out[col])

        def _service(self) -> None:
            self.drain()
            if self.n["times"] and self.packets_at_first_output is None:
                self.packets_at_first_output = self.packets
            if conn.poll():
                try:
                    msg = conn.recv()
                except EOFError:
                    msg = "abort"  # the parent is gone
                if msg == "abort":
                    raise _Abort("aborted by the host")
                if isinstance(msg, tuple) and msg[0] == "stop_at":
                    self.stop_at = float(msg[1])
                else:
                    self.request_stop()
            if config.host_pid and not _alive(config.host_pid):
                raise _Abort("the host process is gone")
            if self.limit is not None and self.n["times"] >= self.limit:
                self.request_stop()
            if self.stop_requested_at is not None and self.packets - self.stop_requested_at > 4 * _SERVICE_EVERY:
                raise _Abort("the monitor did not stop (not calibrated?)")
            if self.packets_at_first_output is None and self.packets > _MAX_PACKETS_WITHOUT_OUTPUT:
                raise _Abort(f"no calibrated samples after {self.packets} packets (calibration samples missing?)")

        def request_stop(self) -> None:
            if self.stop_requested_at is None:
                self.stop_requested_at = self.packets
                self.engine.setStopTrigger(se.triggers.GREATER_THAN, -1.0)  # timestamps are >= 0: stop at once

    return _TapProtocol()


def _child_main(conn: Connection, config: MonsoonConfig, out_path: str) -> None:

    state: dict[str, Any] = {"found": (), "restored": None, "restoring": False}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        # terminate -> the restoring finally, never a silent death
        if not state["restoring"]:
            raise _Abort(f"monitor process got signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, _on_signal)
    try:
        backend = config.backend() if config.backend is not None else None
        with pyusb_backend(backend) if backend is not None else contextlib.nullcontext():
            try:
                found = tuple(
                    str(d.serial_number) for d in usb.core.find(find_all=True, idVendor=VENDOR_ID, idProduct=PRODUCT_ID)
                )
            except usb.core.NoBackendError:
                conn.send(("error", "no_backend", "no USB backend: install libusb-1.0 to use a Monsoon", state))
                return
            state["found"] = found
            if config.serial not in found:
                listed = ", ".join(found) if found else "none"
                conn.send(
                    (
                        "error",
                        "not_found",
                        f"Monsoon with serial {config.serial} not found (monitors attached: {listed})",
                        state,
                    )
                )
                return
            proto = _make_tap(conn, config)
            mon = HVPM.Monsoon()
            mon.setup_usb(config.serial, proto)
        if proto.DEVICE is None:
            conn.send(("error", "not_found", f"Monsoon {config.serial} vanished while connecting", state))
            return
        model = proto.getValue(op.OpCodes.HardwareModel, 2)
        if model != op.HardwareModel.HVPM:
            conn.send(
                (
                    "error",
                    "model",
                    f"Monsoon {config.serial} is not an HVPM (hardware model {model}); only the HVPM is supported",
                    state,
                )
            )
            return
        prior = proto.getValue(op.OpCodes.setUsbPassthroughMode, 1)
        marker = Path(config.pending_dir) / f"{config.serial}.json" if config.pending_dir else None
        pending = pending_passthrough(config.pending_dir, config.serial)
        if pending is not None and pending.get("prior") in PASSTHROUGH:
            prior = PASSTHROUGH[pending["prior"]]  # an earlier window died before restoring: its prior is the real one
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "serial": config.serial,
                        "prior": _PASSTHROUGH_NAMES.get(prior, "on"),
                        "pid": os.getpid(),
                        "time": time.time(),
                    }
                )
            )
            tmp.replace(marker)
        result = None
        try:
            mon.setVout(config.voltage)
            mon.setUSBPassthroughMode(PASSTHROUGH[config.passthrough])
            engine = se.SampleEngine(mon, errorMode=se.ErrorHandlingModes.off)
            engine.ConsoleOutput(False)
            engine.disableCSVOutput()
            for ch in (se.channels.MainCurrent, se.channels.MainVoltage):
                engine.enableChannel(ch)
            for ch in (se.channels.USBCurrent, se.channels.AuxCurrent, se.channels.USBVoltage):
                engine.disableChannel(ch)
            proto.engine = engine
            ok = engine.startSampling(samples=se.triggers.SAMPLECOUNT_INFINITE)
            proto.drain()
            if ok is False:
                raise _Abort("the monitor failed to calibrate")
            result = proto
        finally:
            state["restoring"] = True
            state["restored"] = _restore(proto, mon, op, prior, config)
            if state["restored"] is not None and marker is not None:
                with contextlib.suppress(OSError):
                    marker.unlink()
        main = np.concatenate(result.chunks["main"]) if result.chunks["main"] else np.zeros(0)
        volts = np.concatenate(result.chunks["volts"]) if result.chunks["volts"] else np.zeros(0)
        np.savez(
            out_path,
            main_ma=main,
            volts=volts,
            drop_events=np.asarray(result.drop_events, dtype=np.int64).reshape(-1, 2),
        )
        conn.send(
            (
                "done",
                {
                    "path": out_path,
                    "n_stream": result.n_stream,
                    "n_times": result.n["times"],
                    "n_main": result.n["main"],
                    "n_volt": result.n["volts"],
                    "anchor": result.anchor,
                    "packets": result.packets,
                    "firmware": int(mon.statusPacket.firmwareVersion),
                    "restored": state["restored"],
                    "prior": _PASSTHROUGH_NAMES.get(prior, str(prior)),
                },
            )
        )
    except BaseException as e:  # report everything to the host; the finally above already restored passthrough
        with contextlib.suppress(Exception):
            conn.send(
                (
                    "error",
                    "failed",
                    f"Monsoon {config.serial}: {type(e).__name__}: {e}"
                    + ("" if state["restored"] else " (USB passthrough may not be restored)"),
                    state,
                )
            )
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X")


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _restore(proto: Any, mon: Any, op: Any, prior: int, config: MonsoonConfig) -> str | None:
    """Stop sampling if needed and put passthrough back; returns the mode now set (None if that failed)."""
    target = prior if config.restore == "prior" else PASSTHROUGH[config.restore]
    for _ in range(2):
        try:
            if not proto.verifyReady(0x02):
                proto.stopSampling()
            mon.setUSBPassthroughMode(target)
            got = proto.getValue(op.OpCodes.setUsbPassthroughMode, 1)
            with contextlib.suppress(Exception):
                usb.util.dispose_resources(proto.DEVICE)
            return _PASSTHROUGH_NAMES.get(got, str(got))
        except Exception:
            time.sleep(0.2)
    return None
