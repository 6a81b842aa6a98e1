"""A virtual phone: an adbd look-alike speaking the ADB device protocol over TCP on 127.0.0.1.

    python -m autlearn.testbed.vphone --profile legacy --port 6100 --root DIR --serial-name legacy-1

The real adb server attaches with `adb connect 127.0.0.1:6100`. Services: shell: (v1), shell,v2: , exec:, sync:,
root:, unroot:; anything else is refused with CLSE. Commands run on this host under mksh (or /bin/sh) with the
sandbox environment from `testbed.rootfs`; each runs in its own process group, killed when its client goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import faulthandler
import logging
import os
import signal
import stat
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from autlearn.testbed import adbproto as P
from autlearn.testbed import dvfs, power_model
from autlearn.testbed.profiles import Profile, load_profile
from autlearn.testbed.rootfs import ROOT_UID, RUNTIME_PROPS, SHELL_UID, ensure_rootfs, shell_binary, shell_env

log = logging.getLogger("vphone")

# Android absolute paths that the sync service maps into the sandbox root.
ANDROID_TOPS = ("/data", "/sdcard", "/storage", "/sys", "/system", "/vendor", "/proc")


class StreamClosed(Exception):
    """The host closed the stream (or the whole connection)."""


class Stream:
    """One ADB stream: ordered input from WRTE, output as WRTE with one packet in flight."""

    def __init__(self, conn: HostConnection, local_id: int, remote_id: int):
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._buffer = bytearray()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._write_lock = asyncio.Lock()
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    # called by the connection
    def on_data(self, data: bytes) -> None:
        self._inbox.put_nowait(data)

    def on_okay(self) -> None:
        self._can_write.set()

    def on_remote_close(self) -> None:
        self.closed = True
        self._inbox.put_nowait(None)
        self._can_write.set()
        if self.task and not self.task.done():
            self.task.cancel()

    # used by services
    async def read(self) -> bytes:
        """Next WRTE payload (acknowledged once taken); b'' once the host closed the stream."""
        data: bytes | None
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        data = await self._inbox.get()
        if data is None:
            self._inbox.put_nowait(None)
            return b""
        await self.conn.send(P.Message(P.A_OKAY, self.local_id, self.remote_id))
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            data = await self._inbox.get()
            if data is None:
                self._inbox.put_nowait(None)
                raise StreamClosed
            await self.conn.send(P.Message(P.A_OKAY, self.local_id, self.remote_id))
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        async with self._write_lock:
            while view:
                await self._can_write.wait()
                if self.closed:
                    raise StreamClosed
                self._can_write.clear()
                chunk, view = bytes(view[: self.conn.max_payload]), view[self.conn.max_payload :]
                await self.conn.send(P.Message(P.A_WRTE, self.local_id, self.remote_id, chunk))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            # let the last WRTE be acknowledged first, like adbd (bounded: the host may be gone)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._can_write.wait(), 5)
            with contextlib.suppress(ConnectionError):
                await self.conn.send(P.Message(P.A_CLSE, self.local_id, self.remote_id))
        self.conn.streams.pop(self.local_id, None)


class HostConnection:
    """One TCP connection from an adb server; multiplexes streams."""

    def __init__(self, phone: VirtualPhone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.phone, self.reader, self.writer = phone, reader, writer
        self.streams: dict[int, Stream] = {}
        self.max_payload = P.MAX_PAYLOAD
        self.checksum = False
        self.online = False
        self._next_id = 1

    async def send(self, msg: P.Message) -> None:
        if self.writer.is_closing():
            raise ConnectionError("host connection closed")
        self.writer.write(msg.pack(self.checksum))
        await self.writer.drain()

    async def run(self) -> None:
        try:
            while True:
                msg = await P.read_message(self.reader)
                await self.dispatch(msg)
        except (asyncio.IncompleteReadError, ConnectionError, P.ProtocolError) as exc:
            log.debug("host connection ends: %r", exc)
        finally:
            self.drop()

    def drop(self) -> None:
        for s in list(self.streams.values()):
            s.on_remote_close()
        self.streams.clear()
        self.writer.close()

    async def dispatch(self, msg: P.Message) -> None:
        if msg.command == P.A_CNXN:
            self.checksum = msg.arg0 < P.A_VERSION_SKIP_CHECKSUM
            self.max_payload = max(4096, min(P.MAX_PAYLOAD, msg.arg1))
            self.online = True
            await self.send(P.Message(P.A_CNXN, P.A_VERSION, P.MAX_PAYLOAD, self.phone.banner))
        elif not self.online:
            log.debug("ignoring %s before CNXN", msg.name)
        elif msg.command == P.A_OPEN:
            await self.open(msg.arg0, P.parse_service(msg.data))
        elif msg.command == P.A_WRTE:
            stream = self.streams.get(msg.arg1)
            if stream is None or stream.closed:
                await self.send(P.Message(P.A_CLSE, 0, msg.arg0))
            else:
                stream.on_data(msg.data)
        elif msg.command == P.A_OKAY:
            if (stream := self.streams.get(msg.arg1)) is not None:
                stream.on_okay()
        elif msg.command == P.A_CLSE:
            if (stream := self.streams.pop(msg.arg1, None)) is not None:
                stream.on_remote_close()
        else:
            log.debug("ignoring %s", msg.name)

    async def open(self, remote_id: int, service: str) -> None:
        handler = self.phone.service_handler(service)
        if handler is None:
            log.info("refusing service %r", service)
            await self.send(P.Message(P.A_CLSE, 0, remote_id))
            return
        local_id, self._next_id = self._next_id, self._next_id + 1
        stream = Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        await self.send(P.Message(P.A_OKAY, local_id, remote_id))
        stream.task = asyncio.create_task(self._serve(stream, handler, service))

    async def _serve(self, stream: Stream, handler: Callable[[Stream, str], Awaitable[None]], service: str) -> None:
        try:
            await handler(stream, service)
        except (StreamClosed, ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # a bug in a service must not take the phone down
            log.exception("service %r failed", service)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()


class VirtualPhone:
    def __init__(self, profile: Profile, root: Path, serial_name: str):
        self.profile, self.root, self.serial_name = profile, root.resolve(), serial_name
        self.adbd_root = False
        self.connections: set[HostConnection] = set()
        self.banner = P.device_banner(profile.product, profile.model, profile.device)
        self.shell = shell_binary()
        self.groups: set[int] = set()  # process groups of every shell started (leaders' pids)
        self.wake = asyncio.Event()  # set at every shell start: the power model leaves its idle pace
        self.admit: Callable[[int], None] = lambda pg: None  # a shell's new process group, to the throttle at once

    def kill_all_shells(self) -> None:
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self.groups.clear()

    # ---- connections ----
    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = HostConnection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    def restart_adbd(self) -> None:
        """What `adb root` does to a phone: adbd restarts, so every host connection drops."""
        for conn in list(self.connections):
            conn.drop()

    def service_handler(self, service: str) -> Callable[[Stream, str], Awaitable[None]] | None:
        if service.startswith("shell:") or service.startswith("shell,"):
            return self.serve_shell
        if service.startswith("exec:"):
            return self.serve_shell
        if service == "sync:":
            return self.serve_sync
        if service in ("root:", "unroot:"):
            return self.serve_root
        return None

    # ---- root: / unroot: ----
    async def serve_root(self, stream: Stream, service: str) -> None:
        want_root = service == "root:"
        if self.profile.root_mode != "adbd":
            msg = "adbd cannot run as root in production builds\n" if want_root else "adbd not running as root\n"
            await stream.write(msg.encode())
            return
        if want_root == self.adbd_root:
            await stream.write(b"adbd is already running as root\n" if want_root else b"adbd not running as root\n")
            return
        self.adbd_root = want_root
        await stream.write(b"restarting adbd as root\n" if want_root else b"restarting adbd as non root\n")
        await stream.close()  # once the host has the answer, adbd "restarts"
        self.restart_adbd()

    # ---- shell:, shell,v2:, exec: ----
    async def serve_shell(self, stream: Stream, service: str) -> None:
        if service.startswith("exec:"):
            req = P.ShellRequest(v2=False, command=service[5:])
        else:
            req = P.ShellRequest.parse(service)
        vuid = ROOT_UID if self.adbd_root else SHELL_UID
        argv = [self.shell, "-c", req.command] if req.command else [self.shell]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.root,
            env=shell_env(self.root, self.profile, vuid, req.term),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if req.v2 else asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.add(proc.pid)
        self.admit(proc.pid)
        self.wake.set()
        out = [(proc.stdout, P.ShellId.STDOUT), (proc.stderr, P.ShellId.STDERR)] if req.v2 else [(proc.stdout, None)]
        pumps = [  # the pipes: created with PIPE, never None
            asyncio.create_task(self._pump_out(cast(asyncio.StreamReader, pipe), stream, kind)) for pipe, kind in out
        ]
        stdin = asyncio.create_task((self._pump_in_v2 if req.v2 else self._pump_in_raw)(stream, proc))
        completed = False
        try:
            await asyncio.gather(*pumps)
            code = await proc.wait()
            if req.v2:
                status = code if code >= 0 else 128 - code
                await stream.write(P.shell_packet(P.ShellId.EXIT, bytes([status & 0xFF])))
            completed = True
        finally:
            for t in (*pumps, stdin):
                t.cancel()
            if not completed:  # the client went away: kill the whole process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
            # after a normal exit, background jobs (`nohup x &`) live on, as on a phone, until the phone stops
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                self.groups.discard(proc.pid)

    @staticmethod
    async def _pump_out(pipe: asyncio.StreamReader, stream: Stream, kind: P.ShellId | None) -> None:
        limit = stream.conn.max_payload - (P.SHELL_HEADER.size if kind is not None else 0)
        while data := await pipe.read(limit):
            await stream.write(P.shell_packet(kind, data) if kind is not None else data)

    @staticmethod
    async def _pump_in_raw(stream: Stream, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None  # started with stdin=PIPE
        with contextlib.suppress(ConnectionError, StreamClosed):
            while data := await stream.read():
                proc.stdin.write(data)
                await proc.stdin.drain()

    @staticmethod
    async def _pump_in_v2(stream: Stream, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ConnectionError, StreamClosed):
            while True:
                kind, length = P.SHELL_HEADER.unpack(await stream.readexactly(P.SHELL_HEADER.size))
                data = await stream.readexactly(length) if length else b""
                if kind == P.ShellId.STDIN and proc.stdin and not proc.stdin.is_closing():
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                elif kind == P.ShellId.CLOSE_STDIN and proc.stdin:
                    proc.stdin.close()

    # ---- sync: ----
    def map_path(self, path: str) -> Path | None:
        """Sandbox-root paths as they are; Android absolute paths into the sandbox; anything else refused."""
        raw = os.path.normpath(path) if path else ""
        root = str(self.root)
        if raw == root or raw.startswith(root + "/"):
            host = raw
        elif raw == "/" or any(raw == top or raw.startswith(top + "/") for top in ANDROID_TOPS):
            host = root + raw if raw != "/" else root
        else:
            return None
        real = os.path.realpath(host)
        if real != root and not real.startswith(root + "/"):
            return None  # a symlink escapes the sandbox
        return Path(host)

    async def serve_sync(self, stream: Stream, service: str) -> None:
        while True:
            kind, length = P.SYNC_REQ.unpack(await stream.readexactly(P.SYNC_REQ.size))
            if kind == b"QUIT":
                return
            if length > 4096:
                await stream.write(P.sync_status(b"FAIL", b"path too long"))
                return
            arg = (await stream.readexactly(length)).decode("utf-8", "replace")
            if kind == b"STAT":
                await stream.write(self._stat_v1(arg))
            elif kind in (b"STA2", b"LST2"):
                await stream.write(self._stat_v2(kind, arg))
            elif kind in (b"LIST", b"LIS2"):
                await self._list(stream, arg, v2=kind == b"LIS2")
            elif kind == b"RECV":
                if not await self._recv(stream, arg):
                    return
            elif kind == b"SEND":
                if not await self._send(stream, arg):
                    return
            else:
                await stream.write(P.sync_status(b"FAIL", f"unknown sync command {kind!r}".encode()))
                return

    def _stat_v1(self, path: str) -> bytes:
        host = self.map_path(path)
        try:
            st = os.stat(host) if host else None
        except OSError:
            st = None
        return P.stat_v1(st.st_mode, st.st_size, int(st.st_mtime)) if st else P.stat_v1(0, 0, 0)

    def _stat_v2(self, kind: bytes, path: str) -> bytes:
        host = self.map_path(path)
        if host is None:
            return P.stat_v2(kind, None, errno.EACCES)
        try:
            st = os.lstat(host) if kind == b"LST2" else os.stat(host)
        except OSError as exc:
            return P.stat_v2(kind, None, exc.errno or errno.ENOENT)
        return P.stat_v2(kind, st)

    async def _list(self, stream: Stream, path: str, v2: bool) -> None:
        host = self.map_path(path)
        out = bytearray()
        if host is not None and host.is_dir():
            with contextlib.suppress(OSError):
                for name in [".", ".."] + sorted(os.listdir(host)):
                    with contextlib.suppress(OSError):
                        st = os.lstat(host / name)
                        enc = name.encode("utf-8", "surrogateescape")
                        out += P.dent_v2(enc, st) if v2 else P.dent_v1(enc, st)
                    if len(out) >= 32 * 1024:
                        await stream.write(bytes(out))
                        out.clear()
        out += P.dent_done_v2() if v2 else P.dent_done_v1()
        await stream.write(bytes(out))

    async def _recv(self, stream: Stream, path: str) -> bool:
        host = self.map_path(path)
        try:
            if host is None:
                raise PermissionError(errno.EACCES, "Permission denied")
            f = open(host, "rb")
        except OSError as exc:
            await stream.write(P.sync_status(b"FAIL", f"{path}: {exc.strerror or exc}".encode()))
            return False
        with f:
            while True:
                chunk = await asyncio.to_thread(f.read, P.SYNC_DATA_MAX)
                if not chunk:
                    break
                await stream.write(P.sync_status(b"DATA", chunk))
        await stream.write(P.SYNC_REQ.pack(b"DONE", 0))
        return True

    async def _send(self, stream: Stream, arg: str) -> bool:
        path, _, mode_text = arg.rpartition(",")
        if not path:
            path, mode_text = arg, "33188"
        try:
            mode = int(mode_text)
        except ValueError:
            path, mode = arg, 0o100644
        host = self.map_path(path)
        error = None if host is not None else "Permission denied (outside the virtual phone)"
        f = tmp = None
        if error is None and not stat.S_ISLNK(mode):
            assert host is not None  # no error: the path is in the sandbox
            try:
                host.parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
                if host.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "Is a directory")
                tmp = host.with_name(f".{host.name}.vphone-{os.getpid()}.tmp")
                f = open(tmp, "wb")
            except OSError as exc:
                error = exc.strerror or str(exc)
        link_target = bytearray()
        mtime = None
        try:
            while True:
                kind, length = P.SYNC_REQ.unpack(await stream.readexactly(P.SYNC_REQ.size))
                if kind == b"DONE":
                    mtime = length
                    break
                if kind != b"DATA" or length > P.SYNC_DATA_MAX:
                    error = error or f"bad sync packet {kind!r} during SEND"
                    await stream.write(P.sync_status(b"FAIL", error.encode()))
                    return False
                data = await stream.readexactly(length)
                if error is None:
                    if f is not None:
                        try:
                            f.write(data)
                        except OSError as exc:
                            error = exc.strerror or str(exc)
                    else:
                        link_target += data
            if error is None:
                assert host is not None  # no error: the path is in the sandbox
                if f is not None:
                    assert tmp is not None  # f is open on tmp
                    f.close()
                    os.chmod(tmp, stat.S_IMODE(mode))
                    os.replace(tmp, host)
                    tmp = None
                else:
                    with contextlib.suppress(FileNotFoundError):
                        host.unlink()
                    os.symlink(bytes(link_target).decode(), host)
                if mtime:
                    os.utime(host, (mtime, mtime), follow_symlinks=False)
        except OSError as exc:
            error = error or exc.strerror or str(exc)
        finally:
            if f is not None and not f.closed:
                f.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if error:
            await stream.write(P.sync_status(b"FAIL", f"{path}: {error}".encode()))
            return False
        await stream.write(P.SYNC_REQ.pack(b"OKAY", 0))
        return True


def publish_time_scale(root: Path, throttle: dvfs.SignalThrottle) -> str:
    """Say how this phone's time follows its frequencies: a sysfs node and `getprop ro.autlearn.time_scale`."""
    ok, why = dvfs.cgroup_v2_cpu()
    text = f"{throttle.describe()} (cgroup v2 cpu.max {'available but not used' if ok else 'unavailable'}: {why})"
    node = root / dvfs.TIME_SCALE_NODE
    node.parent.mkdir(parents=True, exist_ok=True)
    node.write_text(text + "\n")
    prop = root / RUNTIME_PROPS
    prop.parent.mkdir(parents=True, exist_ok=True)
    prop.write_text(
        f"ro.autlearn.time_scale={throttle.mode}\nro.autlearn.time_scale.period_us={int(throttle.period_s * 1e6)}\n"
    )
    return text


def _watch_children_without_threads() -> None:
    """Python 3.11's asyncio waits for each shell's exit in a thread of its own (ThreadedChildWatcher): hundreds of
    short-lived threads a minute beside the throttle thread, with the GIL switched every 100 us. A phone's event loop
    once waited for the GIL for good in that company. A pidfd watcher (3.12's default) needs no thread."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):  # kernel before 5.3: the threaded watcher stays
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


async def serve(
    profile: Profile,
    root: Path,
    port: int,
    serial_name: str,
    ready_file: Path | None,
    dvfs_period_s: float = dvfs.PERIOD_S,
    keep_warm: bool = True,
) -> None:
    sys.setswitchinterval(1e-4)  # the throttle thread must get the GIL within its period
    _watch_children_without_threads()
    # `kill -USR1 PID` writes every thread's stack to the phone's log: a phone that stops answering can be read
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    ensure_rootfs(root, profile, serial_name)
    phone = VirtualPhone(profile, root, serial_name)
    try:
        server = await asyncio.start_server(phone.handle_client, "127.0.0.1", port, reuse_address=True)
    except OSError as exc:
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from exc
    # one model (testbed/dvfs.py + testbed/power_model.py): governors -> frequencies -> the host CPU share of the
    # shells' processes (time), modeled power, heat and thermal caps; shells' sessions = their pids
    throttle = dvfs.SignalThrottle(dvfs_period_s, keep_warm=keep_warm, serial=f"127.0.0.1:{port}")
    publish_time_scale(phone.root, throttle)
    throttle.start()
    model = power_model.PowerModel(profile, phone.root, lambda: phone.groups, throttle=throttle)
    phone.admit = model.admit
    power = asyncio.create_task(power_model.run(model, wake=phone.wake))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()} {port}\n")
        tmp.replace(ready_file)
    log.info("virtual phone %s (%s) listening on 127.0.0.1:%d", serial_name, profile.name, port)
    try:
        await stop.wait()
    finally:
        power.cancel()
        throttle.close()  # SIGCONT whatever it stopped
        server.close()
        phone.restart_adbd()  # drops connections; their shells are killed by their streams' tasks
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=3)
        phone.kill_all_shells()  # including background jobs of shells that exited
        if ready_file:
            with contextlib.suppress(FileNotFoundError):
                ready_file.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autlearn.testbed.vphone", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", type=Path, required=True, help="sandbox root directory")
    ap.add_argument("--serial-name", required=True, help="ro.serialno of the phone")
    ap.add_argument("--ready-file", type=Path, help="written with 'PID PORT' once listening")
    ap.add_argument("--governor", help="boot with this governor on every cluster (default: the profile's)")
    ap.add_argument("--no-keep-warm", action="store_true", help="no keep-warm spinners (testbed/dvfs.py KeepWarm)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        profile = load_profile(args.profile).with_governor(args.governor)
        asyncio.run(
            serve(profile, args.root, args.port, args.serial_name, args.ready_file, keep_warm=not args.no_keep_warm)
        )
    except Exception as exc:  # LabError and friends: one line
        print(f"vphone: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
