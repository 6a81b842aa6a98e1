"""ADB transport protocol, device side: message framing, the CNXN banner, shell v2 packets and sync records.

Pure data helpers (no I/O besides `read_message`); `autlearn.testbed.vphone` builds the server on top of them.
Reference: AOSP packages/modules/adb/protocol.txt, SYNC.TXT and shell_protocol.h.
"""

from __future__ import annotations

import asyncio
import enum
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_AUTH = 0x48545541
A_STLS = 0x534C5453

A_VERSION = 0x01000001  # >= this version: checksums are neither sent nor checked
A_VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 256 * 1024  # what we advertise and the largest WRTE we send
MAX_ACCEPTED_PAYLOAD = 1024 * 1024  # hard limit on an incoming message body

HEADER = struct.Struct("<6I")
COMMAND_NAMES = {
    A_SYNC: "SYNC",
    A_CNXN: "CNXN",
    A_OPEN: "OPEN",
    A_OKAY: "OKAY",
    A_CLSE: "CLSE",
    A_WRTE: "WRTE",
    A_AUTH: "AUTH",
    A_STLS: "STLS",
}

DEVICE_FEATURES = ("shell_v2", "cmd", "stat_v2", "ls_v2", "fixed_push_mkdir")


class ProtocolError(Exception):
    """The peer sent something that is not ADB."""


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"0x{self.command:08x}")

    def pack(self, checksum: bool = False) -> bytes:
        crc = sum(self.data) & 0xFFFFFFFF if checksum else 0
        return (
            HEADER.pack(self.command, self.arg0, self.arg1, len(self.data), crc, self.command ^ 0xFFFFFFFF) + self.data
        )


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read one message; raises asyncio.IncompleteReadError at EOF and ProtocolError on garbage."""
    header = await reader.readexactly(HEADER.size)
    command, arg0, arg1, length, _crc, magic = HEADER.unpack(header)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic in header {header.hex()}")
    if length > MAX_ACCEPTED_PAYLOAD:
        raise ProtocolError(f"message body of {length} bytes exceeds {MAX_ACCEPTED_PAYLOAD}")
    data = await reader.readexactly(length) if length else b""
    return Message(command, arg0, arg1, data)


def device_banner(product: str, model: str, device: str, features: Iterable[str] = DEVICE_FEATURES) -> bytes:
    """The CNXN payload a production adbd sends (no trailing NUL, as adbd does)."""
    clean = {
        k: v.replace(";", ",").replace("=", "-")
        for k, v in (("ro.product.name", product), ("ro.product.model", model), ("ro.product.device", device))
    }
    props = "".join(f"{k}={v};" for k, v in clean.items())
    return f"device::{props}features={','.join(features)}".encode()


def parse_service(data: bytes) -> str:
    """OPEN payload -> service string (NUL-terminated on the wire)."""
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---- shell protocol v2 ----


class ShellId(enum.IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    EXIT = 3
    CLOSE_STDIN = 4
    WINDOW_SIZE_CHANGE = 5


SHELL_HEADER = struct.Struct("<BI")


def shell_packet(kind: ShellId, data: bytes) -> bytes:
    return SHELL_HEADER.pack(int(kind), len(data)) + data


@dataclass(frozen=True)
class ShellRequest:
    """`shell[,v2][,TERM=..][,raw|,pty]:command` parsed."""

    v2: bool
    command: str
    term: str = ""
    pty: bool = False

    @classmethod
    def parse(cls, service: str) -> ShellRequest:
        head, _, command = service.partition(":")
        args = head.split(",")[1:]
        term = next((a[5:] for a in args if a.startswith("TERM=")), "")
        return cls(v2="v2" in args, command=command, term=term, pty="pty" in args)


# ---- sync protocol ----

SYNC_REQ = struct.Struct("<4sI")  # id, length
STAT_V1 = struct.Struct("<4s3I")  # "STAT", mode, size, mtime
STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")  # id, error, dev, ino, mode, nlink, uid, gid, size, atime, mtime, ctime
DENT_V1 = struct.Struct("<4s4I")  # "DENT", mode, size, mtime, namelen
DENT_V2 = struct.Struct("<4sIQQIIIIQqqqI")  # stat_v2 fields + namelen
SYNC_DATA_MAX = 64 * 1024


def sync_status(kind: bytes, message: bytes = b"") -> bytes:
    """OKAY / FAIL / DONE records: id + length + message."""
    return SYNC_REQ.pack(kind, len(message)) + message


def stat_v1(mode: int, size: int, mtime: int) -> bytes:
    return STAT_V1.pack(b"STAT", mode & 0xFFFFFFFF, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF)


def stat_v2(kind: bytes, st: os.stat_result | None, error: int = 0) -> bytes:
    if st is None:
        return STAT_V2.pack(kind, error, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return STAT_V2.pack(
        kind,
        0,
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        int(st.st_atime),
        int(st.st_mtime),
        int(st.st_ctime),
    )


def dent_v1(name: bytes, st: os.stat_result) -> bytes:
    return (
        DENT_V1.pack(
            b"DENT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF, len(name)
        )
        + name
    )


def dent_v2(name: bytes, st: os.stat_result) -> bytes:
    return (
        DENT_V2.pack(
            b"DNT2",
            0,
            st.st_dev,
            st.st_ino,
            st.st_mode,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            int(st.st_atime),
            int(st.st_mtime),
            int(st.st_ctime),
            len(name),
        )
        + name
    )


def dent_done_v1() -> bytes:
    return DENT_V1.pack(b"DONE", 0, 0, 0, 0)


def dent_done_v2() -> bytes:
    return DENT_V2.pack(b"DONE", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
