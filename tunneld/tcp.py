"""TCP transport with simpletun's framing: a 2-byte big-endian length, then the packet.

One connection to the peer at a time. A side with `remote` connects and, after
any loss, reconnects with capped exponential backoff. A side with `listen`
accepts; what happens to a new connection depends on whether the session can
authenticate:

- plaintext (simpletun): the new connection replaces the current one at once.
  Anyone who can reach the port can take the tunnel over; `listen` on the
  underlay address the peer uses, and a firewall, are all that limit it.
- encrypted: the new connection is a *candidate*. It may send handshake
  messages and gets nothing but what the session addresses to it (handshake
  responses, cookie replies); it takes over only once the session accepts an
  authenticated message from it (`peer_moved`). Candidates are few
  (CANDIDATES_MAX, CANDIDATES_PER_SOURCE from one IP) and short-lived
  (CANDIDATE_TIMEOUT), so strangers cannot cut the tunnel or hold the listener.

    socket readable --_readable()--> FrameDecoder.feed --> on_messages(frames, addr)
    send(message) --> header+packet in one send(); the unsent tail waits in a
                      bounded per-connection queue; past it, whole frames drop
    send_many(messages) --> all their frames in one send()
A framing error (zero length, oversize, truncated) closes that connection only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket

from tunneld import framing, netaddr
from tunneld.config import ENCRYPTION_OVERHEAD, PADDING_TRAILER_ROOM, TransportConfig
from tunneld.errors import StartupError
from tunneld.framing import FrameDecoder, FramingError
from tunneld.io import Address, OnMessages, format_address
from tunneld.limits import (CONNECT_TIMEOUT, MAX_IP_PACKET, RECONNECT_INITIAL, RECONNECT_MAX,
                            TCP_RECV_CHUNK, TCP_SEND_QUEUE_FRAMES, VNET_HEADER, link_header)

log = logging.getLogger("tunneld")
DRAIN_BURST = 64  # reads per callback; the loop calls again while more wait
CANDIDATES_MAX = 8  # unauthenticated connections held at once; more are closed on accept
CANDIDATES_PER_SOURCE = 2  # from one IP: a third closes that IP's oldest
CANDIDATE_TIMEOUT = 5.0  # s (REKEY_TIMEOUT): a candidate that has not authenticated by then is closed
KEEPALIVE = (15, 5, 3)  # s idle, s between probes, probes: a silent dead peer is noticed in ~30 s
USER_TIMEOUT = 30_000  # ms unacknowledged data may wait before the kernel gives up
# the largest message a super-packet makes: transport header and tag, TAP padding
# and its length, virtio header, a 64 KB IP packet behind Ethernet and two VLAN tags
BIG_FRAME = ENCRYPTION_OVERHEAD + PADDING_TRAILER_ROOM + VNET_HEADER + link_header("tap") + MAX_IP_PACKET


class _Connection:
    __slots__ = ("sock", "fd", "addr", "decoder", "out", "closed", "expiry")

    def __init__(self, sock: socket.socket, addr: Address, max_frame: int):
        self.sock, self.fd, self.addr = sock, sock.fileno(), addr
        self.decoder = FrameDecoder(max_frame)
        self.out: collections.deque[memoryview | bytes] = collections.deque()
        self.closed = False
        self.expiry: asyncio.TimerHandle | None = None  # a candidate's deadline


class TcpTransport:
    """Contract: `tunneld.io.Transport`, plus peer up/down callbacks."""

    def __init__(self, cfg: TransportConfig, max_frame: int, on_messages: OnMessages,
                 on_up, on_down, on_error, *, authenticated: bool = False, note=None, counters=None):
        """`on_up(addr, dialled)`: a connection became the peer's. `authenticated`:
        the session proves who sent what, so new connections are candidates (above).
        `note(kind, level, text)`: a log line at most once per interval per kind."""
        self.cfg = cfg
        self.max_frame = max_frame
        self.on_messages, self.on_up, self.on_down, self.on_error = on_messages, on_up, on_down, on_error
        self.big_limit = 0  # > 0: frames over 64 KB, up to this, are accepted (allow_big_frames)
        self.authenticated = authenticated
        self.note = note or (lambda kind, level, text: log.info("%s", text))
        self.conn: _Connection | None = None
        self.candidates: dict[Address, _Connection] = {}
        self.counters = counters  # the core's: candidates_refused is counted here
        self.listener: socket.socket | None = None
        self._buf = bytearray(max(TCP_RECV_CHUNK, max_frame + 2))
        self.big_frame = BIG_FRAME if authenticated else 0  # the largest big frame we would accept
        self._view = memoryview(self._buf)
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.family = netaddr.family_of(cfg.listen, cfg.remote)

    @classmethod
    async def open(cls, cfg: TransportConfig, max_frame: int, on_messages: OnMessages,
                   on_up, on_down, on_error, **kw) -> "TcpTransport":
        self = cls(cfg, max_frame, on_messages, on_up, on_down, on_error, **kw)
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

    def allow_big_frames(self, allow: bool) -> None:
        """The session agreed on super-packets with the peer (or no longer has):
        accept frames over 64 KB from now on (or not). Plaintext never does."""
        self.big_limit = self.big_frame if allow else 0
        for conn in [self.conn, *self.candidates.values()]:
            if conn is not None:
                conn.decoder.big_limit = self.big_limit

    # --- server side ----------------------------------------------------------

    def _listen(self) -> None:
        ep = self.cfg.listen
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old conns sit in TIME_WAIT
            netaddr.dual_stack(sock, ep)
            netaddr.mark(sock, self.cfg.fwmark)  # accepted connections inherit it
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
            if self.authenticated:
                self._add_candidate(sock, addr)
                continue
            old = self.conn
            if old is not None:
                self.note("tcp-accept", "info", f"tcp: {format_address(addr)} replaces {format_address(old.addr)}")
                self._close_conn(old)
            else:
                self.note("tcp-accept", "info", f"tcp: accepted {format_address(addr)}")
            self._attach(sock, addr)

    def _add_candidate(self, sock: socket.socket, addr: Address) -> None:
        same_source = [c for c in self.candidates.values() if c.addr[0] == addr[0]]
        if len(same_source) >= CANDIDATES_PER_SOURCE:
            self._refuse(same_source[0], "too many from one address")  # dicts keep insertion order: the oldest
        elif len(self.candidates) >= CANDIDATES_MAX:
            sock.close()
            self._count_refused()
            self.note("tcp-candidate", "warning", f"tcp: refused {format_address(addr)}: "
                      f"{CANDIDATES_MAX} connections are already waiting to authenticate")
            return
        conn = self._prepare(sock, addr)
        conn.expiry = self._loop.call_later(CANDIDATE_TIMEOUT, self._refuse, conn, "did not authenticate in time")
        self.candidates[addr] = conn
        self._loop.add_reader(conn.fd, self._readable, conn)
        self.note("tcp-candidate-accept", "info", f"tcp: accepted {format_address(addr)}; "
                  "it takes over once it authenticates")

    def _refuse(self, conn: _Connection, why: str) -> None:
        if self.candidates.get(conn.addr) is conn:
            del self.candidates[conn.addr]
            self._close_conn(conn)
            self._count_refused()
            self.note("tcp-candidate", "warning", f"tcp: closed {format_address(conn.addr)}: {why}")

    def _count_refused(self) -> None:
        if self.counters is not None:
            self.counters.candidates_refused += 1

    def peer_moved(self, addr: Address) -> None:
        """The session accepted an authenticated message from `addr`: if that is a
        candidate, it becomes the connection to the peer and the old one goes."""
        conn = self.candidates.pop(addr, None)
        if conn is None:
            return
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        old = self.conn
        if old is not None:
            self._close_conn(old)
        log.info("tcp: %s authenticated%s", format_address(addr),
                 f"; it replaces {format_address(old.addr)}" if old is not None else "")
        self.conn = conn
        self.on_up(addr, False)

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
                netaddr.mark(sock, self.cfg.fwmark)
                await asyncio.wait_for(self._loop.sock_connect(sock, addr), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError, StartupError) as e:
                if sock is not None:
                    sock.close()
                log.warning("tcp: cannot connect to %s: %s; retrying in %g s", ep, netaddr.reason(e), wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX)
                continue
            self._lost = self._loop.create_future()
            try:
                self._attach(sock, sock.getpeername())  # a reset right after connect fails here
            except OSError as e:
                sock.close()
                log.warning("tcp: connection to %s lost at once (%s); reconnecting in %g s", ep, netaddr.reason(e), wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX)
                continue
            wait = RECONNECT_INITIAL  # success resets the backoff
            log.info("tcp: connected to %s", ep)
            why = await self._lost
            if self._closed:
                return
            log.warning("tcp: connection to %s lost (%s); reconnecting in %g s", ep, why, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_MAX)

    # --- one connection ---------------------------------------------------------

    def _attach(self, sock: socket.socket, addr: Address) -> None:
        """`sock` becomes the connection to the peer."""
        conn = self._prepare(sock, addr)
        self.conn = conn
        self._loop.add_reader(conn.fd, self._readable, conn)
        self.on_up(addr, self.listener is None)

    def _prepare(self, sock: socket.socket, addr: Address) -> _Connection:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame goes out now, not after an ACK
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT)
        conn = _Connection(sock, addr, self.max_frame)
        conn.decoder.big_limit = self.big_limit
        return conn

    def _readable(self, conn: _Connection) -> None:
        if conn.closed:
            return
        recv, view, deliver = conn.sock.recv_into, self._view, self.on_messages
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
                self.on_error(f"tcp: {format_address(conn.addr)} sent a bad frame ({e}); closing that connection",
                              "tcp-bad-frame")
                self._lose(conn, f"bad frame: {e.kind}", quiet=True)
                return
            if frames:
                deliver(frames, conn.addr)
                if conn.closed:  # the callback closed it
                    return

    def send(self, message: bytes | memoryview, addr: Address) -> bool:
        """To the peer's connection; a message addressed to a candidate (a handshake
        response) goes to that candidate."""
        conn = self._conn_for(addr)
        if conn is None:
            return False
        return self._write(conn, framing.encode(message, self.big_frame > 0))

    def send_many(self, messages: list, addr: Address) -> int:
        """All their frames in one write (one entry of the backlog when it waits)."""
        if len(messages) == 1:
            return int(self.send(messages[0], addr))
        conn = self._conn_for(addr)
        if conn is None:
            return 0
        big = self.big_frame > 0
        return len(messages) if self._write(conn, b"".join([framing.encode(m, big) for m in messages])) else 0

    def _conn_for(self, addr: Address) -> _Connection | None:
        """The peer's connection, or the candidate `addr` names (a handshake response goes there)."""
        conn = self.conn
        if conn is None or conn.addr != addr:
            conn = self.candidates.get(addr, conn)
        return conn

    def _write(self, conn: _Connection, frame: bytes) -> bool:
        if conn.out:  # a backlog: keep the stream in order, bounded by whole frames
            if len(conn.out) >= TCP_SEND_QUEUE_FRAMES:
                return False
            conn.out.append(frame)
            return True
        try:
            n = conn.sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._lose(conn, netaddr.reason(e))
            return False
        if n < len(frame):
            conn.out.append(memoryview(frame)[n:])
            self._loop.add_writer(conn.fd, self._writable, conn)
        return True

    def _writable(self, conn: _Connection) -> None:
        if conn.closed:
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
        if self.candidates.get(conn.addr) is conn:
            del self.candidates[conn.addr]
            self._close_conn(conn)
            return
        if self.conn is conn:
            self._close_conn(conn)
            if self.listener is not None and not quiet:
                log.warning("tcp: connection from %s lost (%s)", format_address(conn.addr), why)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    def _close_conn(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.expiry is not None:
            conn.expiry.cancel()
        self._loop.remove_reader(conn.fd)
        self._loop.remove_writer(conn.fd)
        conn.sock.close()
        conn.out.clear()
        if self.conn is conn:
            self.conn = None
            self.on_down()

    def close(self) -> None:
        self._closed = True
        for conn in list(self.candidates.values()):
            self._close_conn(conn)
        self.candidates.clear()
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
