"""The control socket: /run/tunneld/NAME.sock (owner-only), `tunneld status`
and `tunneld reload`.

A client connects, sends one line ("status" or "reload"), and reads one JSON
document: the snapshot, or the reload's outcome {"ok": bool, "message": text}
once the reload is over. Not on the packet path: asyncio streams are fine here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import time
from typing import Awaitable, Callable

log = logging.getLogger("tunneld")
DEFAULT_DIR = "/run/tunneld"
MAX_REQUEST = 256  # bytes: a request is one short line; a longer one is refused unread
REQUEST_TIMEOUT = 5.0  # s a client may take to send its line
RELOAD_TIMEOUT = 60.0  # s a `tunneld reload` waits for the outcome (resolving a host name, at worst)
DISCARD_CHUNKS = 64  # after an oversize request, at most this many more MAX_REQUEST reads are thrown away
MAX_REPLY = 1024 * 1024  # bytes a client reads of one answer; a status is about 1 KiB


def runtime_dir() -> str:
    """systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; otherwise /run/tunneld."""
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or DEFAULT_DIR


def socket_path(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or runtime_dir(), f"{name}.sock")


def kept_path(name: str, directory: str | None = None) -> str:
    """What a stopped tunnel kept in the kernel (host/kept.py), for `tunneld down`."""
    return os.path.join(directory or runtime_dir(), f"{name}.kept")


def running(name: str) -> bool:
    """A daemon answers on the tunnel's control socket."""
    path = socket_path(name)
    return os.path.exists(path) and _alive(path)


class ControlServer:
    def __init__(self, path: str, snapshot: Callable[[], dict], reload: Callable[[], Awaitable[dict]] | None = None):
        self.path, self.snapshot, self.reload = path, snapshot, reload
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _alive(self.path):
                from tunneld.errors import StartupError
                raise StartupError(f"name {_name(self.path)!r} is taken: {_holder(self.path)} holds {self.path}; "
                                   "give one of the configs another name: (the key) or file name")
            os.unlink(self.path)  # left by a daemon that died
        old = os.umask(0o177)  # owner-only from the first moment
        try:
            self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST)
        finally:
            os.umask(old)

    def chown(self, uid: int, gid: int) -> None:
        os.chown(self.path, uid, gid)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), REQUEST_TIMEOUT)
            except (asyncio.LimitOverrunError, ValueError):
                line = None
            except asyncio.IncompleteReadError as e:  # no newline before the client closed
                line = e.partial
            if line is not None and line.strip() == b"reload" and self.reload is not None:
                reply = await self.reload()
            else:
                reply = self.answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            if line is None:  # read a little of the rest, in bounded pieces, so the answer is not lost to a reset
                writer.write_eof()
                for _ in range(DISCARD_CHUNKS):
                    if not await asyncio.wait_for(reader.read(MAX_REQUEST), REQUEST_TIMEOUT):
                        break
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def answer(self, line: bytes | None) -> dict:
        """The reply to one request line (None: longer than MAX_REQUEST)."""
        if line is None:
            return {"error": f"request longer than {MAX_REQUEST} bytes"}
        if line.strip() == b"status":
            return self.snapshot()
        return {"error": f"unknown request {line.strip()[:40]!r}"}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.path)
            except OSError:
                pass  # after a privilege drop the directory may not be ours; systemd removes it


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def _name(path: str) -> str:
    return os.path.basename(path).removesuffix(".sock")


def _holder(path: str) -> str:
    """Who answers on a socket, in a few words: "tunneld pid 812 (/etc/tunneld/a.yaml, tun0)"."""
    try:
        st = query(path, timeout=2.0)
        return f"tunneld pid {st['pid']} ({st.get('config', 'config unknown')}, {st['interface']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a running process"


class ReplyError(OSError):
    """The daemon's answer was too long, or not a JSON object; `strerror` says
    which, in words (callers print it as they print any socket error)."""

    def __init__(self, text: str):
        super().__init__(errno.EBADMSG, text)


def query(path: str, timeout: float = 5.0, request: str = "status") -> dict:
    """Send one request, read one JSON object: at most MAX_REPLY bytes, within
    `timeout` s in all (not per read), into one preallocated buffer."""
    buf = bytearray(MAX_REPLY + 1)  # one byte more, to know a reply is too long
    view, size = memoryview(buf), 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        deadline = time.monotonic() + timeout
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        while size <= MAX_REPLY:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            n = s.recv_into(view[size:])
            if n == 0:
                break
            size += n
    if size > MAX_REPLY:
        raise ReplyError(f"reply longer than {MAX_REPLY // 1024 // 1024} MiB")
    try:
        reply = json.loads(view[:size].tobytes())
    except ValueError:  # also UnicodeDecodeError
        raise ReplyError("reply is not JSON (is something other than tunneld listening?)") from None
    if not isinstance(reply, dict):
        raise ReplyError("reply is not a JSON object")
    return reply


def format_status(st: dict) -> str:
    peer = st.get("peer") or (f"resolving {st['resolving']}" if st.get("resolving") else "none yet")
    if st.get("peer") and st.get("peer_state"):
        peer += f", {st['peer_state']} over {st.get('transport_protocol', '?')}"
    hs = st.get("last_handshake_seconds_ago")
    lines = [
        f"{st['name']}: {st['interface']} ({st['mode']}, mtu {st['mtu']}), {st['transport']}, {st['encryption']}",
        f"  peer: {peer}",
        f"  offload: {st['offload']}; {st.get('super_reads', 0)} super-packets read, "
        f"{st.get('super_writes', 0)} written" if st.get("offload") else "",
        f"  latest handshake: {'never' if hs is None else f'{hs:.0f} s ago'}" if st["encryption"] != "plaintext" else "",
        f"  rx: {st['rx']['packets']} packets, {st['rx']['bytes']} bytes, {st['rx']['drops']} drops, {st['rx']['errors']} errors",
        f"  tx: {st['tx']['packets']} packets, {st['tx']['bytes']} bytes, {st['tx']['drops']} drops, {st['tx']['errors']} errors",
        f"  authentication failures: {st['auth_failures']}, reconnects: {st['reconnects']}, handshakes: {st['handshakes']}",
        f"  under attack: {st.get('cookies_sent', 0)} cookie replies, {st.get('handshakes_shed', 0)} handshake messages shed, "
        f"{st.get('candidates_refused', 0)} TCP candidates refused",
        f"  uptime: {st['uptime_seconds']:.0f} s, pid {st['pid']}",
    ]
    return "\n".join(line for line in lines if line)
