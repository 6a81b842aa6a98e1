"""Simulated Monsoon power monitor: a pyusb backend the unmodified `monsoon` (PyMonsoon) package talks to.

Everything it produces is SIMULATED: the current is whatever profile you give it, sampled at 5 kHz in simulated
time. It exists so the real driver (HVPM.Monsoon + sampleEngine) and autlearn.profiler.energy.monsoon can be exercised
without hardware.

How the backend reaches the driver without patching it: `pmapi.USB_protocol.Connect/enumerateDevices` call
`usb.core.find(...)` with no backend; pyusb then asks `usb.backend.libusb1.get_backend()` (then openusb, libusb0).
`installed(backend)` swaps those three module attributes for the duration of a `with` block, so `find()` returns
devices of our backend. A found `usb.core.Device` keeps its backend, so the block only has to cover
`setup_usb()` / `enumerateDevices()`. Use it in one thread of one process (it is a process-global swap).

Protocol implemented (what the driver uses; layout fixed by how PyMonsoon decodes it):
  * device descriptor 0x2AB9/0x0001, serial-number string = str(serial) (u16 serial, like the EEPROM one);
    one configuration, one interface, bulk IN 0x81 and bulk OUT 0x01.
  * control IN  0xC0 bRequest 1, wIndex low byte = opcode -> 4 bytes little-endian value (EEPROM or status).
    control OUT 0x40 bRequest 1, wIndex = opcode | value[23:16] << 8, wValue = value[15:0] -> set value.
    control OUT 0x40 bRequest 2 -> start sampling (wValue = ms between calibration samples, data = max samples);
    control OUT 0x40 bRequest 3 -> stop.  getStartStatus (0xC4) has bit 0x80 set while sampling.
  * bulk IN 0x81: 64-byte packets: u16 dropped count, u8 flags, u8 sample count (1-3), then 18-byte samples:
    8 big-endian u16 (main coarse, main fine, usb coarse, usb fine, aux coarse, aux fine, main V, usb V),
    a gain byte and the sample-type byte (0x00 measurement, 0x10 zero calibration, 0x30 reference calibration).
    The header is left in host (little-endian) order because the driver does not byte-swap it.
    The dropped count is cumulative since the start request and wraps at 2**16.
  * calibration: the first 6 packets after start and then one packet every `calTime` ms (simulated) carry a
    zero and a reference calibration sample plus one measurement; other packets carry 3 measurements.
    Calibration samples do not consume measurement time slots (a simulation choice), so measurement k is at
    t = k / 5000 s (k counts dropped samples too).
  * raw ADC values are computed by inverting the driver's own calibration formula, so the driver reports the
    profile's current exactly up to ADC quantisation (fine range ~0.004 mA/count up to ~245 mA, coarse ~0.24 mA/count).

Time: by default simulated time only advances as packets are read (as fast as the host reads; no real-time
pacing), so a simulated minute can be read in a few wall seconds and nothing is ever lost except injected
`DropBurst`s. With `SimMonitor(realtime=True)` sample k is due at host time (CLOCK_MONOTONIC) start + k/5000: a bulk
read returns only samples whose time has come (sleeping a few ms otherwise), so a live workload can be measured.

Virtual lab: `backend_for_serial("SIM-<port>", lab_home)` builds a real-time monitor whose current follows the
MODELED power of the lab phone on that port (testbed/power_model.py log); its traces are `simulated` (instrument)
and the current they see is `modeled`.

EEPROM (voltage, USB passthrough mode, ...) and an event log persist in `state_dir/<serial>.json` when a state_dir
is given, so several processes (one per monitor, as the driver requires) see one device, and tests can check
that passthrough was restored.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import json
import os
import random
import struct
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from autlearn.profiler.energy.monsoon import pyusb_backend
from autlearn.profiler.errors import EnergyError
from autlearn.testbed.lab import Lab
from autlearn.testbed.power_model import P_IDLE_W, power_at, read_log

VENDOR_ID, PRODUCT_ID = 0x2AB9, 0x0001
SAMPLE_RATE = 5000
LABEL = "simulated"

# opcodes (Monsoon.Operations.OpCodes) the simulation knows about
OP_PASSTHROUGH, OP_VOLTAGE, OP_SERIAL, OP_FIRMWARE, OP_PROTOCOL = 0x10, 0x41, 0x42, 0xC0, 0xC1
OP_HW_MODEL, OP_START_STATUS = 0x45, 0xC4
HVPM = 2
FLOAT_TO_INT = 1048576  # volts * 2**20 = setMainVoltage value

# Calibration constants: EEPROM scales/offsets (driver-visible) and the raw zero/ref calibration readings.
_EEPROM_DEFAULTS = {
    0x1A: 35946,
    0x1B: 6400,
    0x1C: 14000,
    0x1D: 600,
    0x1E: 3100,
    0x1F: 250,  # fine/coarse scales main/usb/aux
    0x25: 15,
    0x26: 15,
    0x27: 0,
    0x28: 0,  # zero offsets main fine/coarse, usb fine/coarse
    0x43: 0xF000,
    0x44: 0xF000,
    0x0C: 15,
    0x29: 0x4600,  # current limits, powerup time, fan temperature
    OP_PASSTHROUGH: 1,
    0x23: 0,
    OP_VOLTAGE: 0,  # passthrough on, voltage channel main, Vout off
    0x88: 0xE000,
    0x89: 0xC800,  # DAC calibration within the driver's tolerance check
    OP_FIRMWARE: 32,
    OP_PROTOCOL: 2,
    OP_HW_MODEL: HVPM,
}
# raw (zero cal, ref cal) per ADC index 0..5: main coarse, main fine, usb coarse, usb fine, aux coarse, aux fine
_CAL_RAW = (
    (1100, 1100 + 15 + 26880),
    (1200, 1200 + 15 + 9200),
    (900, 900 + 12000),
    (950, 950 + 9000),
    (800, 800 + 9000),
    (850, 850 + 9000),
)
_FINE_THRESHOLD = 64000  # driver switches to the coarse channel at or above this fine reading
_VOLT_LSB_MAIN, _VOLT_LSB_USB = 62.5e-6 * 4, 62.5e-6 * 2


def _slope_ma_per_count(scale_op: int, zero_op: int | None, idx: int, fine: bool) -> tuple[float, float]:
    """(zero level, mA per count) exactly as sampleEngine computes them from EEPROM + calibration samples."""
    zero = _CAL_RAW[idx][0] + (_EEPROM_DEFAULTS[zero_op] if zero_op is not None else 0)
    slope = _EEPROM_DEFAULTS[scale_op] / (_CAL_RAW[idx][1] - zero)
    return zero, slope / 1000 if fine else slope


_MAIN_COARSE = _slope_ma_per_count(0x1B, 0x26, 0, False)
_MAIN_FINE = _slope_ma_per_count(0x1A, 0x25, 1, True)


@dataclass(frozen=True)
class DropBurst:
    """`samples` measurement samples starting at simulated time `at_s` are lost and reported in the dropped count."""

    at_s: float
    samples: int


Profile = Callable[[float], float] | Sequence[tuple[float, float]]


@dataclass(frozen=True)
class SimMonitor:
    """One simulated monitor. `profile`: a callable t_s -> mA (must be picklable for multi-process use, i.e. a
    module-level function) or a piecewise-constant schedule of (duration_s, mA); after the schedule the last
    level holds. Current flows only while Vout >= 2 V (the phone is powered by the monitor)."""

    serial: int
    profile: Profile = ((1.0, 100.0),)
    drops: tuple[DropBurst, ...] = ()
    noise_ma: float = 0.0  # gaussian, seeded by serial
    usb_volts: float = 5.0  # USB channel voltage while passthrough is on
    firmware: int = 32
    realtime: bool = False  # pace samples to host time (see module docstring)

    def __post_init__(self) -> None:
        if not 0 < self.serial < 0x10000:
            raise ValueError(f"serial must fit the EEPROM's u16: {self.serial}")

    def current_ma(self, t: float) -> float:
        if callable(self.profile):
            return float(self.profile(t))
        edges = _edges(self.profile)
        i = bisect.bisect_right(edges, t)
        return float(self.profile[min(i, len(self.profile) - 1)][1])


def _edges(schedule: Sequence[tuple[float, float]]) -> list[float]:
    out, acc = [], 0.0
    for dur, _ in schedule:
        acc += dur
        out.append(acc)
    return out


def schedule_energy_j(schedule: Sequence[tuple[float, float]], volts: float, t0: float, t1: float) -> float:
    """Exact energy (J) of a piecewise-constant schedule between simulated times t0 and t1 at `volts`."""
    total, start = 0.0, 0.0
    for dur, ma in schedule:
        lo, hi = max(start, t0), min(start + dur, t1)
        if hi > lo:
            total += (hi - lo) * ma / 1000 * volts
        start += dur
    if t1 > start:  # the last level holds
        total += (t1 - max(start, t0)) * schedule[-1][1] / 1000 * volts
    return total


def read_state(state_dir: str | os.PathLike[str], serial: int) -> dict[str, Any]:
    """The persisted EEPROM and event log of a simulated monitor (for tests and the lab)."""
    path = Path(state_dir) / f"{serial}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def passthrough_mode(state_dir: str | os.PathLike[str], serial: int) -> int:
    """USB passthrough mode stored in the simulated EEPROM: 0 off, 1 on, 2 auto."""
    eeprom = read_state(state_dir, serial).get("eeprom", {})
    return int(eeprom.get(str(OP_PASSTHROUGH), _EEPROM_DEFAULTS[OP_PASSTHROUGH]))


class SimulatedDevice:
    """Runtime state of one simulated monitor inside one process."""

    def __init__(self, spec: SimMonitor, state_dir: str | None, bus: int, address: int):
        self.spec, self.state_dir, self.bus, self.address = spec, state_dir, bus, address
        self.eeprom = {**_EEPROM_DEFAULTS, OP_SERIAL: spec.serial, OP_FIRMWARE: spec.firmware}
        self.log: list[dict[str, Any]] = []
        self._load()
        self.sampling = False
        self.k = 0  # next measurement sample index (simulated time k / SAMPLE_RATE), persists across runs
        self.packets = 0
        self.dropped = 0
        self.cal_every = 1250
        self.remaining: int | None = None
        self._next_cal_k = 0
        self.anchor = time.monotonic()
        self._drops = sorted(spec.drops, key=lambda d: d.at_s)
        self._drop_i = 0
        self._rng = random.Random(spec.serial)

    # -- persistence -------------------------------------------------------------------------------------
    def _path(self) -> Path | None:
        return Path(self.state_dir) / f"{self.spec.serial}.json" if self.state_dir else None

    def _load(self) -> None:
        p = self._path()
        if p and p.exists():
            st = json.loads(p.read_text())
            self.eeprom.update({int(k): v for k, v in st.get("eeprom", {}).items()})
            self.log = st.get("log", [])

    def _save(self) -> None:
        p = self._path()
        if p:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "serial": self.spec.serial,
                        "label": LABEL,
                        "eeprom": {str(k): v for k, v in self.eeprom.items()},
                        "log": self.log,
                    }
                )
            )
            tmp.replace(p)

    def _event(self, what: str, value: object = None) -> None:
        self.log.append({"event": what, "value": value, "sim_t": self.k / SAMPLE_RATE, "pid": os.getpid()})
        self._save()

    # -- state seen from outside ---------------------------------------------------------------------------
    @property
    def vout(self) -> float:
        return self.eeprom[OP_VOLTAGE] / FLOAT_TO_INT

    @property
    def usb_link_up(self) -> bool:
        """Whether the phone's USB data link is connected through the monitor (passthrough on, or auto while idle)."""
        mode = self.eeprom[OP_PASSTHROUGH]
        return mode == 1 or (mode == 2 and not self.sampling)

    # -- control transfers ---------------------------------------------------------------------------------
    def get_value(self, opcode: int) -> int:
        if opcode == OP_START_STATUS:
            return 0x80 if self.sampling else 0x00
        return int(self.eeprom.get(opcode, 0))

    def set_value(self, opcode: int, value: int) -> None:
        if self.sampling:
            raise usb.core.USBError("simulated monitor: command while sampling", errno=errno.EPIPE)
        self.eeprom[opcode] = value
        if opcode in (OP_PASSTHROUGH, OP_VOLTAGE):
            self._event(
                "passthrough" if opcode == OP_PASSTHROUGH else "vout",
                value if opcode == OP_PASSTHROUGH else round(value / FLOAT_TO_INT, 6),
            )
        else:
            self._save()

    def start(self, cal_ms: int, max_samples: int) -> None:
        self.sampling = True
        self.packets = 0
        self.dropped = 0
        self.cal_every = max(1, cal_ms) * SAMPLE_RATE // 1000
        self._next_cal_k = self.k
        self.remaining = None if max_samples in (0, 0xFFFFFFFF) else max_samples
        self.anchor = time.monotonic() - self.k / SAMPLE_RATE  # host time of sample k = anchor + k / 5000
        self._event("start", cal_ms)

    def stop(self) -> None:
        if self.sampling:
            self.sampling = False
            self._event("stop", self.k)

    # -- sample packets ---------------------------------------------------------------------------------
    def _measurement(self) -> bytes:
        t = self.k / SAMPLE_RATE
        follow = getattr(self.spec.profile, "follow", None)
        if self.vout < 2.0:
            ma = 0.0
        elif follow is not None:  # a profile of host time (e.g. a lab phone's modeled power)
            ma = follow(self.anchor + t, self.vout)
        else:
            ma = self.spec.current_ma(t)
        if self.spec.noise_ma:
            ma += self._rng.gauss(0.0, self.spec.noise_ma)
        zc, sc = _MAIN_COARSE
        zf, sf = _MAIN_FINE
        coarse = _clip(zc + ma / sc)
        fine = _clip(zf + ma / sf)
        if fine >= _FINE_THRESHOLD:
            fine = 0xFFFF  # fine range saturated: the driver falls back to coarse
        usb_v = (
            self.spec.usb_volts
            if self.eeprom[OP_PASSTHROUGH] == 1 or (self.eeprom[OP_PASSTHROUGH] == 2 and not self.sampling)
            else 0.0
        )
        words = (
            coarse,
            fine,
            _CAL_RAW[2][0],
            _CAL_RAW[3][0],
            _CAL_RAW[4][0],
            _CAL_RAW[5][0],
            _clip(self.vout / _VOLT_LSB_MAIN),
            _clip(usb_v / _VOLT_LSB_USB),
        )
        self.k += 1
        return struct.pack(">8HBB", *words, 0, 0x00)

    @staticmethod
    def _cal(kind: int) -> bytes:
        words = [z if kind == 0x10 else r for z, r in _CAL_RAW] + [0, 0]
        return struct.pack(">8HBB", *words, 0, kind)

    def _apply_drops(self) -> None:
        while self._drop_i < len(self._drops) and self.k >= round(self._drops[self._drop_i].at_s * SAMPLE_RATE):
            n = self._drops[self._drop_i].samples
            self.k += n
            self.dropped += n
            self._drop_i += 1

    def next_packet(self) -> bytes:
        if not self.sampling:
            raise usb.core.USBError("simulated monitor: bulk read timed out (not sampling)", errno=errno.ETIMEDOUT)
        self._apply_drops()
        if self.spec.realtime:  # the packet's last sample is due at anchor + (k + 3) / 5000
            wait = self.anchor + (self.k + 3) / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                time.sleep(max(wait, 0.004))  # a few ms at a time: samples arrive in small bursts, never early
        if self.packets < 6 or self.k >= self._next_cal_k:
            samples = [self._cal(0x10), self._cal(0x30), self._measurement()]
            if self.packets >= 5:
                self._next_cal_k = self.k + self.cal_every
        else:
            samples = [self._measurement() for _ in range(3)]
        self.packets += 1
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.stop()
        body = b"".join(samples)
        return struct.pack("<HBB", self.dropped & 0xFFFF, 0, len(samples)) + body + bytes(60 - len(body))


def _clip(x: float) -> int:
    return max(0, min(0xFFFF, int(round(x))))


# --------------------------------------------------------------------------------------------------------
# pyusb backend


_DEVICE_DESC = dict(
    bLength=18,
    bDescriptorType=1,
    bcdUSB=0x0200,
    bDeviceClass=0,
    bDeviceSubClass=0,
    bDeviceProtocol=0,
    bMaxPacketSize0=64,
    idVendor=VENDOR_ID,
    idProduct=PRODUCT_ID,
    bcdDevice=0x0100,
    iManufacturer=1,
    iProduct=2,
    iSerialNumber=3,
    bNumConfigurations=1,
    port_number=None,
    port_numbers=None,
    speed=2,
)
_STRINGS = {1: "Monsoon Solutions (simulated)", 2: "Mobile Device Power Monitor (simulated)"}
_ENDPOINTS = ((0x81, 0x02), (0x01, 0x02))  # (address, bulk)


class SimBackend(usb.backend.IBackend):  # type: ignore[misc]  # pyusb ships no type information
    """pyusb backend exposing simulated monitors. Pass to `installed()` (or `usb.core.find(backend=...)`)."""

    label = LABEL

    def __init__(self, monitors: Iterable[SimMonitor], state_dir: str | None = None):
        monitors = list(monitors)
        serials = [m.serial for m in monitors]
        if len(set(serials)) != len(serials):
            raise ValueError(f"simulated monitors need distinct serials: {serials}")
        self.devices = [SimulatedDevice(m, state_dir, bus=1, address=10 + i) for i, m in enumerate(monitors)]

    def device(self, serial: int) -> SimulatedDevice:
        return next(d for d in self.devices if d.spec.serial == serial)

    def enumerate_devices(self) -> Iterator[SimulatedDevice]:
        return iter(self.devices)

    def get_parent(self, dev: SimulatedDevice) -> None:
        return None

    def get_device_descriptor(self, dev: SimulatedDevice) -> SimpleNamespace:
        return SimpleNamespace(**_DEVICE_DESC, bus=dev.bus, address=dev.address)

    def get_configuration_descriptor(self, dev: SimulatedDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=32,
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=50,
            extra_descriptors=[],
        )

    def get_interface_descriptor(self, dev: SimulatedDevice, intf: int, alt: int, config: int) -> SimpleNamespace:
        if intf != 0 or alt != 0 or config != 0:
            raise IndexError((intf, alt, config))
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=0,
            bNumEndpoints=len(_ENDPOINTS),
            bInterfaceClass=0xFF,
            bInterfaceSubClass=0,
            bInterfaceProtocol=0,
            iInterface=0,
            extra_descriptors=[],
        )

    def get_endpoint_descriptor(
        self, dev: SimulatedDevice, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        addr, attrs = _ENDPOINTS[ep]
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=addr,
            bmAttributes=attrs,
            wMaxPacketSize=64,
            bInterval=0,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    def open_device(self, dev: SimulatedDevice) -> SimulatedDevice:
        return dev

    def close_device(self, dev_handle: SimulatedDevice) -> None:
        pass

    def set_configuration(self, dev_handle: SimulatedDevice, config_value: int) -> None:
        pass

    def get_configuration(self, dev_handle: SimulatedDevice) -> int:
        return 1

    def set_interface_altsetting(self, dev_handle: SimulatedDevice, intf: int, altsetting: int) -> None:
        pass

    def claim_interface(self, dev_handle: SimulatedDevice, intf: int) -> None:
        pass

    def release_interface(self, dev_handle: SimulatedDevice, intf: int) -> None:
        pass

    def is_kernel_driver_active(self, dev_handle: SimulatedDevice, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: SimulatedDevice, intf: int) -> None:
        raise usb.core.USBError("simulated: no kernel driver", errno=errno.ENOENT)

    def reset_device(self, dev_handle: SimulatedDevice) -> None:
        dev_handle.stop()

    def clear_halt(self, dev_handle: SimulatedDevice, ep: int) -> None:
        pass

    def bulk_read(self, dev_handle: SimulatedDevice, ep: int, intf: int, buff: array[int], timeout: int) -> int:
        if ep != 0x81:
            raise usb.core.USBError(f"simulated: no IN endpoint {ep:#x}", errno=errno.EPIPE)
        pkt = dev_handle.next_packet()
        n = min(len(buff), len(pkt))
        buff[:n] = array("B", pkt[:n])
        return n

    def bulk_write(self, dev_handle: SimulatedDevice, ep: int, intf: int, data: array[int], timeout: int) -> int:
        return len(data)

    def ctrl_transfer(
        self,
        dev_handle: SimulatedDevice,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array[int],
        timeout: int,
    ) -> int:
        dev: SimulatedDevice = dev_handle
        if bmRequestType == 0x80 and bRequest == 6:  # standard GET_DESCRIPTOR
            kind, index = wValue >> 8, wValue & 0xFF
            if kind != 3:
                raise usb.core.USBError("simulated: unsupported descriptor", errno=errno.EPIPE)
            if index == 0:
                payload = bytes([4, 3]) + struct.pack("<H", 0x0409)
            else:
                text = str(dev.spec.serial) if index == 3 else _STRINGS.get(index, "")
                enc = text.encode("utf-16-le")
                payload = bytes([2 + len(enc), 3]) + enc
            n = min(len(data), len(payload))
            data[:n] = array("B", payload[:n])
            return n
        if bmRequestType == 0xC0 and bRequest == 1:  # vendor get value
            payload = struct.pack("<I", dev.get_value(wIndex & 0xFF) & 0xFFFFFFFF)
            n = min(len(data), 4)
            data[:n] = array("B", payload[:n])
            return n
        if bmRequestType == 0x40 and bRequest == 1:  # vendor set value
            dev.set_value(wIndex & 0xFF, wValue | ((wIndex >> 8) << 16))
            return len(data)
        if bmRequestType == 0x40 and bRequest == 2:
            raw = bytes(data) if len(data) >= 4 else b"\xff\xff\xff\xff"
            dev.start(wValue, struct.unpack("<I", raw[:4])[0])
            return len(data)
        if bmRequestType == 0x40 and bRequest == 3:
            dev.stop()
            return len(data)
        raise usb.core.USBError(f"simulated: unsupported request {bmRequestType:#x}/{bRequest}", errno=errno.EPIPE)


@dataclass(frozen=True)
class SimFleet:
    """Picklable recipe for a SimBackend: calling it (in any process) builds the backend. Use this as the
    `backend` of autlearn.profiler.energy.monsoon.MonsoonSource so each monitor process gets its own view."""

    monitors: tuple[SimMonitor, ...]
    state_dir: str | None = None
    label: str = field(default=LABEL, init=False)

    def __call__(self) -> SimBackend:
        return SimBackend(self.monitors, self.state_dir)


def installed(backend: usb.backend.IBackend) -> contextlib.AbstractContextManager[Any]:
    """Context manager: `usb.core.find()` without an explicit backend uses `backend` inside the block
    (swaps pyusb's default backend lookup; process-global). Same as autlearn.profiler.energy.monsoon.pyusb_backend."""

    return pyusb_backend(backend)


# --------------------------------------------------------------------------------------------------------
# virtual lab: a monitor per phone following its modeled power

LAB_PREFIX = "SIM-"
_FOLLOW_CACHE: dict[
    str, tuple[float, list[tuple[float, float]]]
] = {}  # per process: sandbox root -> (host time loaded, log entries)


@dataclass(frozen=True)
class LabPhoneProfile:
    """Current (mA at the monitor's Vout) = the lab phone's MODELED load power / Vout, looked up at the sample's
    host time in the phone's power model log (testbed/power_model.py). Picklable (module-level, plain fields)."""

    root: str  # the phone's sandbox root

    def follow(self, t_host: float, vout: float) -> float:

        now = time.monotonic()
        loaded, entries = _FOLLOW_CACHE.get(self.root, (-1e18, []))
        # a line written after the last read may start before t_host: read again (lines are stamped when written)
        if t_host > loaded and (not entries or t_host > entries[-1][0]):
            fresh = read_log(self.root, tail_bytes=16 * 1024)
            if fresh:  # keep older entries (a realtime reader lags a few ms at most; this is plenty)
                cut = fresh[0][0]
                entries = [e for e in entries if e[0] < cut][-256:] + fresh
            _FOLLOW_CACHE[self.root] = (now, entries)
        p = power_at(entries, t_host) if entries else P_IDLE_W
        return p / vout * 1000.0

    def __call__(self, t: float) -> float:  # plain profile use (simulated time = host time offset): 4 V
        return self.follow(t, 4.0)


@dataclass(frozen=True)
class LabMonitor:
    serial: str  # SIM-<port>, as the lab records it
    usb_serial: str  # what the driver sees (the port: the simulated EEPROM serial is a u16)
    phone: str  # lab phone name
    backend: SimFleet


def backend_for_serial(serial: str, lab_home: str | os.PathLike[str] | None = None) -> LabMonitor:
    """The simulated Monsoon `serial` (SIM-<port>) of the lab in `lab_home` (default: $AUTLEARN_HOME), as a
    picklable backend for profiler.energy.monsoon.MonsoonSource. EnergyError when the lab has no such monitor."""

    lab = Lab(Path(lab_home) if lab_home is not None else None)
    try:
        phones = lab.phones()
    except Exception as exc:  # a corrupt state file
        raise EnergyError(f"simulated Monsoon {serial}: cannot read the lab state ({exc})", serial=serial) from None
    have = tuple(p.monsoon for p in phones if p.monsoon)
    for p in phones:
        if p.monsoon == serial:
            spec = SimMonitor(serial=p.port, profile=LabPhoneProfile(str(p.root)), realtime=True)
            fleet = SimFleet((spec,), state_dir=str(lab.dir / "monsoon"))
            return LabMonitor(serial=serial, usb_serial=str(p.port), phone=p.name, backend=fleet)
    hint = "" if have else " (start the lab with `autlearn lab up --monsoon`)"
    raise EnergyError(
        f"no simulated Monsoon {serial} in the virtual lab at {lab.home}{hint}", serial=serial, found=have
    )
