"""TCP transport with simpletun's framing: a 2-byte big-endian length, then the packet.

One connection to the peer at a time. A side with `remote` connects and, after
any loss, reconnects with capped exponential backoff; a side with `listen`
accepts, and a new connection replaces the old one.

    socket readable --_readable()--> FrameDecoder.feed --> on_message(frame, addr)
    send(message) --> header+packet in one send(); the unsent tail waits in a
                      bounded per-connection queue; past it, whole frames drop
A framing error (zero length, oversize, truncated) closes that connection only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket

from tunneld import framing, netaddr
from tunneld.config import TransportConfig
from tunneld.errors import StartupError
from tunneld.framing import FrameDecoder, FramingError
from tunneld.io import Address, OnMessage, format_address
from tunneld.limits import (CONNECT_TIMEOUT, RECONNECT_INITIAL, RECONNECT_MAX,
                            TCP_RECV_CHUNK, TCP_SEND_QUEUE_FRAMES)

log = logging.getLogger("tunneld")
DRAIN_BURST = 64  # reads per callback; the loop calls again while more wait
KEEPALIVE = (15, 5, 3)  # s idle, s between probes, probes: a silent dead peer is noticed in ~30 s
USER_TIMEOUT = 30_000  # ms unacknowledged data may wait before the kernel gives up


class _Connection:
    __slots__ = ("sock", "fd", "addr", "decoder", "out")

    def __init__(self, sock: socket.socket, addr: Address, max_frame: int):
        self.sock, self.fd, self.addr = sock, sock.fileno(), addr
        self.decoder = FrameDecoder(max_frame)
        self.out: collections.deque[memoryview | bytes] = collections.deque()


class TcpTransport:
    """Contract: `tunneld.io.Transport`, plus peer up/down callbacks."""

    def __init__(self, cfg: TransportConfig, max_frame: int, on_message: OnMessage,
                 on_up, on_down, on_error):
        self.cfg = cfg
        self.max_frame = max_frame
        self.on_message, self.on_up, self.on_down, self.on_error = on_message, on_up, on_down, on_error
        self.conn: _Connection | None = None
        self.listener: socket.socket | None = None
        self._buf = bytearray(max(TCP_RECV_CHUNK, max_frame + 2))
        self._view = memoryview(self._buf)
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.family = netaddr.family_of(cfg.listen, cfg.remote)

    @classmethod
    async def open(cls, cfg: TransportConfig, max_frame: int, on_message: OnMessage,
                   on_up, on_down, on_error) -> "TcpTransport":
        self = cls(cfg, max_frame, on_message, on_up, on_down, on_error)
        if cfg.listen is not None:
            self._listen()
        else:
            await netaddr.resolve(cfg.remote, self.family, socket.SOCK_STREAM)  # fail fast on a bad name
        return self

    def start_connecting(self) -> None:
        """A client starts dialling: called once start-up is done (after any privilege
        drop, so no lookup is in flight in another thread when the uid changes)."""
        if self.cfg.remote is not None and self._task is None and not self._closed:
            self._task = asyncio.create_task(self._connect_loop(), name="tcp-connect")

    # --- server side ----------------------------------------------------------

    def _listen(self) -> None:
        ep = self.cfg.listen
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old conns sit in TIME_WAIT
            netaddr.dual_stack(sock, ep)
            sock.bind(netaddr.bind_address(ep, self.family))
            sock.listen(8)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise netaddr.bind_error("tcp", ep, e) from None
        self.listener = sock
        self._loop.add_reader(sock.fileno(), self._acceptable)
        log.info("tcp: listening on %s", format_address(sock.getsockname()))

    def _acceptable(self) -> None:
        while True:
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. EMFILE: say so, keep listening
                log.warning("tcp: accept failed: %s", e.strerror)
                return
            old = self.conn
            if old is not None:
                log.info("tcp: %s replaces %s", format_address(addr), format_address(old.addr))
                self._close_conn(old)
            else:
                log.info("tcp: accepted %s", format_address(addr))
            self._attach(sock, addr)

    # --- client side ----------------------------------------------------------

    def set_remote(self, remote) -> None:
        """A reload moved the peer: drop the connection; the loop dials the new address."""
        from dataclasses import replace
        self.cfg = replace(self.cfg, remote=remote)
        if self.conn is not None:
            self._lose(self.conn, f"peer endpoint changed to {remote}")

    async def _connect_loop(self) -> None:
        wait = RECONNECT_INITIAL
        while not self._closed:
            ep = self.cfg.remote
            sock = None
            try:
                family, addr = await netaddr.resolve(ep, self.family, socket.SOCK_STREAM)
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                await asyncio.wait_for(self._loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError, StartupError) as e:
                if sock is not None:
                    sock.close()
                log.warning("tcp: cannot connect to %s: %s; retrying in %g s", ep, netaddr.reason(e), wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX)
                continue
            wait = RECONNECT_INITIAL  # success resets the backoff
            log.info("tcp: connected to %s", ep)
            self._lost = self._loop.create_future()
            self._attach(sock, sock.getpeername())
            why = await self._lost
            if self._closed:
                return
            log.warning("tcp: connection to %s lost (%s); reconnecting in %g s", ep, why, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_MAX)

    # --- one connection ---------------------------------------------------------

    def _attach(self, sock: socket.socket, addr: Address) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame goes out now, not after an ACK
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT)
        conn = _Connection(sock, addr, self.max_frame)
        self.conn = conn
        self._loop.add_reader(conn.fd, self._readable)
        self.on_up(addr)

    def _readable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        recv, view, deliver = conn.sock.recv_into, self._view, self.on_message
        for _ in range(DRAIN_BURST):
            try:
                n = recv(self._buf)
            except BlockingIOError:
                return
            except OSError as e:
                self._lose(conn, netaddr.reason(e))
                return
            try:
                if n == 0:
                    conn.decoder.eof()
                    self._lose(conn, "closed by peer")
                    return
                frames = conn.decoder.feed(view[:n])
            except FramingError as e:
                # one line per connection: as many as the accepts, which are logged too
                self.on_error(f"tcp: {format_address(conn.addr)} sent a bad frame ({e}); closing that connection")
                self._lose(conn, f"bad frame: {e.kind}", quiet=True)
                return
            for frame in frames:
                deliver(frame, conn.addr)
                if self.conn is not conn:  # the callback replaced or closed it
                    return

    def send(self, message: bytes | memoryview, addr: Address) -> bool:
        conn = self.conn
        if conn is None:
            return False
        if conn.out:  # a backlog: keep the stream in order, bounded by whole frames
            if len(conn.out) >= TCP_SEND_QUEUE_FRAMES:
                return False
            conn.out.append(framing.encode(message))
            return True
        frame = framing.encode(message)
        try:
            n = conn.sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._lose(conn, netaddr.reason(e))
            return False
        if n < len(frame):
            conn.out.append(memoryview(frame)[n:])
            self._loop.add_writer(conn.fd, self._writable)
        return True

    def _writable(self) -> None:
        conn = self.conn
        if conn is None:
            return
        out = conn.out
        while out:
            head = out[0]
            try:
                n = conn.sock.send(head)
            except BlockingIOError:
                return
            except OSError as e:
                self._lose(conn, netaddr.reason(e))
                return
            if n < len(head):
                out[0] = memoryview(head)[n:]
                return
            out.popleft()
        self._loop.remove_writer(conn.fd)

    def _lose(self, conn: _Connection, why: str, quiet: bool = False) -> None:
        """The connection is gone: stop using it; a client then reconnects."""
        if self.conn is conn:
            self._close_conn(conn)
            if self.listener is not None and not quiet:
                log.warning("tcp: connection from %s lost (%s)", format_address(conn.addr), why)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    def _close_conn(self, conn: _Connection) -> None:
        self._loop.remove_reader(conn.fd)
        self._loop.remove_writer(conn.fd)
        conn.sock.close()
        conn.out.clear()
        if self.conn is conn:
            self.conn = None
            self.on_down()

    def close(self) -> None:
        self._closed = True
        if self.conn is not None:
            self._close_conn(self.conn)
        if self.listener is not None:
            self._loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("closing")
        if self._task is not None:
            self._task.cancel()
