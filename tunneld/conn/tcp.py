"""TCP transport with simpletun's framing: a 2-byte big-endian length, then the packet.

One connection to the peer at a time. A side with `remote` connects and, after
any loss, reconnects with capped exponential backoff. A side with `listen`
accepts; what happens to a new connection depends on whether the session can
authenticate:

- plaintext (simpletun): the new connection replaces the current one at once.
  Anyone who can reach the port can take the tunnel over; `listen` on the
  underlay address the peer uses, and a firewall, are all that limit it.
- encrypted: the new connection is a *candidate*. Its first message must be
  the session's opening (`Opening`: a handshake initiation), each of its
  messages goes to the session alone, and it gets nothing but what the session
  addresses to it (handshake responses, cookie replies); it takes over only
  once the session accepts an authenticated message from it (`peer_moved`).
  Candidates are few, short-lived and evicted rather than refused, so
  strangers can neither cut the tunnel nor keep the peer out: the rules and
  why are in candidates.py.

    listener readable --Acceptor--> _accepted(), at most ACCEPT_BURST per callback;
        out of descriptors: the first-out candidate goes, or accepting pauses (accept.py)
        encrypted: the candidate is read at once (TCP_DEFER_ACCEPT: its opening
        is there) --> promoted, refused, or it waits; room is made by evicting
    candidate readable --_candidate_readable()--> one read of CANDIDATE_READ,
        its messages one at a time --> on_messages([message], addr)
    socket readable --_readable()--> FrameDecoder.feed --> on_messages(frames, addr)
        at most READ_FRAMES frames and READ_BYTES bytes per callback: the rest
        waits in the kernel (the loop calls again) or, frames already read, in
        the decoder (a call_soon carries on), so no input holds the loop
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

from tunneld.conn import candidates, framing, sockopts as netaddr
from tunneld.conn.accept import Acceptor
from tunneld.conn.candidates import CANDIDATE_MESSAGES, CANDIDATE_TIMEOUT, Opening, Stage
from tunneld.conn.endpoint import TransportConfig
from tunneld.packet.limits import ENCRYPTION_OVERHEAD, PADDING_TRAILER_ROOM
from tunneld.errors import StartupError
from tunneld.conn.framing import FrameDecoder, FramingError
from tunneld.core.contract import Address, OnMessages, format_address
from tunneld.packet.limits import (CONNECT_TIMEOUT, MAX_IP_PACKET, RECONNECT_INITIAL, RECONNECT_MAX,
                            TCP_RECV_CHUNK, TCP_SEND_QUEUE_FRAMES, VNET_HEADER, link_header)

log = logging.getLogger("tunneld")
# the work of one callback on a connection, so that no input holds the loop: at
# ~600 MB/s (encrypted, super-packets) 512 KiB is under a millisecond, and 256
# frames (the relay's DRAIN_BURST) of the smallest kind a few milliseconds
READ_FRAMES = 256
READ_BYTES = 512 * 1024
CANDIDATE_READ = 4096  # bytes per callback from a candidate: an opening and then some
ACCEPT_BURST = 16  # connections accepted per callback; the loop calls again while more wait
LISTEN_BACKLOG = 64  # connections the kernel completes before we accept them
KEEPALIVE = (15, 5, 3)  # s idle, s between probes, probes: a silent dead peer is noticed in ~30 s
USER_TIMEOUT = 30_000  # ms unacknowledged data may wait before the kernel gives up
# the largest message a super-packet makes: transport header and tag, TAP padding
# and its length, virtio header, a 64 KB IP packet behind Ethernet and two VLAN tags
BIG_FRAME = ENCRYPTION_OVERHEAD + PADDING_TRAILER_ROOM + VNET_HEADER + link_header("tap") + MAX_IP_PACKET


class _Connection:
    __slots__ = ("sock", "fd", "addr", "decoder", "out", "closed", "expiry", "resume",
                 "source", "stage", "ticket", "budget", "answers")

    def __init__(self, sock: socket.socket, addr: Address, max_frame: int):
        self.sock, self.fd, self.addr = sock, sock.fileno(), addr
        self.decoder = FrameDecoder(max_frame)
        self.out: collections.deque[memoryview | bytes] = collections.deque()
        self.closed = False
        self.resume: asyncio.Handle | None = None  # a call_soon for frames a callback's budget left
        # a candidate's (candidates.Candidate): its deadline, rank and what it may still send
        self.expiry: asyncio.TimerHandle | None = None
        self.source = b""
        self.stage = Stage.OPENING
        self.ticket = 0
        self.budget = CANDIDATE_MESSAGES
        self.answers = 0  # messages the session addressed to it


class TcpTransport:
    """Contract: `tunneld.core.contract.Transport`, plus peer up/down callbacks."""

    def __init__(self, cfg: TransportConfig, max_frame: int, on_messages: OnMessages,
                 on_up, on_down, on_error, *, authenticated: bool = False, opening: Opening | None = None,
                 note=None, counters=None):
        """`on_up(addr, dialled)`: a connection became the peer's. `authenticated`:
        the session proves who sent what, so new connections are candidates (above),
        and `opening` says what their first message must be (None: any message).
        `note(kind, level, text)`: a log line at most once per interval per kind."""
        self.cfg = cfg
        self.max_frame = max_frame
        self.on_messages, self.on_up, self.on_down, self.on_error = on_messages, on_up, on_down, on_error
        self.big_limit = 0  # > 0: frames over 64 KB, up to this, are accepted (allow_big_frames)
        self.authenticated = authenticated
        self.note = note or (lambda kind, level, text: log.info("%s", text))
        self.conn: _Connection | None = None
        self.candidates: dict[Address, _Connection] = {}
        self.opening = opening
        self.peer_source: bytes | None = None  # candidates.source_of() where the peer last authenticated
        self._tickets = 0  # candidates' progress, in order
        self.counters = counters  # the listener's own part of the totals (core/counters.py): candidates_refused
        self.listener: socket.socket | None = None
        self.acceptor: Acceptor | None = None
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
        # a client resolves its remote at each connect (_connect_loop): a name that does not
        # resolve yet is retried with the reconnect backoff, and start-up does not wait for it
        return self

    def start_connecting(self) -> None:
        """A client starts dialling: called once start-up is done (after any privilege
        drop, so no lookup is in flight in another thread when the uid changes)."""
        if self.cfg.remote is not None and self._task is None and not self._closed:
            self._task = asyncio.create_task(self._connect_loop(), name="tcp-connect")

    def stop_connecting(self) -> None:
        """A client stops dialling and closes its connection (a transport list moved
        to another entry); start_connecting() dials again."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("no longer used")
        if self.conn is not None and self.listener is None:
            self._close_conn(self.conn)

    @property
    def connecting(self) -> bool:
        """A client is dialling, or connected."""
        return self._task is not None

    def allow_big_frames(self, allow: bool) -> None:
        """The session agreed on super-packets with the peer (or no longer has):
        accept frames over 64 KB from now on (or not). Plaintext never does."""
        self.big_limit = self.big_frame if allow else 0
        if self.conn is not None:
            self.conn.decoder.big_limit = self.big_limit
        for conn in self.candidates.values():
            if conn.stage is not Stage.OPENING:  # an opening is a handshake message, never big
                conn.decoder.big_limit = self.big_limit

    # --- server side ----------------------------------------------------------

    def _listen(self) -> None:
        ep = self.cfg.listen
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old conns sit in TIME_WAIT
            netaddr.dual_stack(sock, ep)
            netaddr.mark(sock, self.cfg.fwmark)  # accepted connections inherit it
            if self.authenticated:
                # the peer speaks first (its initiation, the moment it connects): the kernel
                # hands a connection over once data came, so the initiation is read with
                # the accept; a silent one waits in the kernel (about 7 s for 5) first
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(CANDIDATE_TIMEOUT))
            sock.bind(netaddr.bind_address(ep, self.family))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise netaddr.bind_error("tcp", ep, e) from None
        self.listener = sock
        self.acceptor = Acceptor(sock, self._accepted, "tcp", make_room=self._make_room, batch=ACCEPT_BURST)
        self.acceptor.start()
        log.info("tcp: listening on %s", format_address(sock.getsockname()))

    def _accepted(self, sock: socket.socket, addr: Address) -> None:
        if self.authenticated:
            self._add_candidate(sock, addr)
            return
        old = self.conn
        if old is not None:
            self.note("tcp-accept", "info", f"tcp: {format_address(addr)} replaces {format_address(old.addr)}")
            self._close_conn(old)
        else:
            self.note("tcp-accept", "info", f"tcp: accepted {format_address(addr)}")
        self._attach(sock, addr)

    def _make_room(self) -> bool:
        """Out of descriptors: the candidate first out by candidates.py's rules goes."""
        if not self.candidates:
            return False
        self._refuse(candidates.first_out(self.candidates.values(), self.peer_source), "made room: out of file descriptors")
        return True

    def _add_candidate(self, sock: socket.socket, addr: Address) -> None:
        """A newcomer is read at once (its opening is usually there: TCP_DEFER_ACCEPT);
        if it still waits after that, one candidate makes room (candidates.make_room)."""
        try:
            conn = self._prepare(sock, addr)
        except OSError:  # reset before we got to it
            sock.close()
            return
        conn.decoder.big_limit = 0  # an opening is a handshake message, never big
        if self.opening is not None:
            conn.decoder.max_frame = self.opening.size  # no buffering past an opening's size
        conn.source = candidates.source_of(addr)
        conn.ticket = self._ticket()
        conn.expiry = self._loop.call_later(CANDIDATE_TIMEOUT, self._refuse, conn, "did not authenticate in time")
        self.candidates[addr] = conn
        self._loop.add_reader(conn.fd, self._candidate_readable, conn)
        self.note("tcp-candidate-accept", "info", f"tcp: accepted {format_address(addr)}; "
                  "it takes over once it authenticates")
        self._candidate_readable(conn)
        if self.candidates.get(addr) is not conn:  # authenticated, refused or gone already
            return
        victim = candidates.make_room(self.candidates.values(), conn, self.peer_source)
        if victim is not None:
            self._refuse(victim, f"made room for {format_address(addr)}")

    def _ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def _candidate_readable(self, conn: _Connection) -> None:
        """One read, then its messages one at a time (candidates.py): a promotion or
        a refusal applies to the very next one."""
        if conn.closed:
            return
        n = self._recv(conn, CANDIDATE_READ)
        if n is None:
            return
        if n == 0:
            self._lose(conn, "closed by peer")
            return
        decoder, data = conn.decoder, self._view[:n]
        while True:
            try:
                frames = decoder.feed(data, 1)
            except FramingError as e:  # counted and logged as any connection's bad frame is
                self.on_error(f"tcp: {format_address(conn.addr)} sent a bad frame ({e}); closing that connection",
                              "tcp-bad-frame")
                self._refuse(conn, "", quiet=True)
                return
            if not frames:
                return
            data = b""
            first = conn.stage is Stage.OPENING
            if first and self.opening is not None and not self.opening.accepts(frames[0]):
                self._refuse(conn, f"opened with a {len(frames[0])}-byte message, not a handshake initiation")
                return
            if conn.budget == 0:
                self._refuse(conn, f"sent {CANDIDATE_MESSAGES} messages without authenticating")
                return
            conn.budget -= 1
            answers = conn.answers
            self.on_messages(frames, conn.addr)
            if conn.closed:
                return
            if conn is self.conn:  # authenticated: the rest is the peer's, read as such
                if decoder.more:
                    self._resume_soon(conn)
                return
            if conn.answers != answers:  # the session wants its next message (a cookie reply)
                if first:
                    decoder.max_frame, decoder.big_limit = self.max_frame, self.big_limit
                conn.stage, conn.ticket = Stage.ANSWERED, self._ticket()
            elif first:
                self._refuse(conn, "its opening was neither authenticated nor answered")
                return
            if not decoder.more:
                return

    def _refuse(self, conn: _Connection, why: str, quiet: bool = False) -> None:
        if self.candidates.get(conn.addr) is conn:
            del self.candidates[conn.addr]
            self._close_conn(conn)
            self._count_refused()
            if not quiet:
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
        self.peer_source = conn.source
        conn.decoder.max_frame, conn.decoder.big_limit = self.max_frame, self.big_limit
        self._loop.add_reader(conn.fd, self._readable, conn)  # replaces the candidate's reader
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
            except asyncio.CancelledError:  # stop_connecting() while dialling
                if sock is not None:
                    sock.close()
                raise
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

    def _recv(self, conn: _Connection, limit: int = 0) -> int | None:
        """One read into the shared buffer (at most `limit` bytes; 0: as much as it
        holds): the byte count (0 at end of stream), or None when nothing waits or
        the connection failed (then it is lost)."""
        try:
            return conn.sock.recv_into(self._buf, limit)
        except BlockingIOError:
            return None
        except OSError as e:
            self._lose(conn, netaddr.reason(e))
            return None

    def _readable(self, conn: _Connection) -> None:
        """The peer's connection: at most READ_FRAMES frames and READ_BYTES bytes
        (see the top); frames a read brought beyond the budget are handed over
        first the next time, so the decoder never holds more than one read."""
        if conn.closed:
            return
        if conn.resume is not None:
            conn.resume.cancel()
            conn.resume = None
        view, deliver, decoder = self._view, self.on_messages, conn.decoder
        frames_left, bytes_left = READ_FRAMES, READ_BYTES
        while frames_left > 0:
            try:
                if decoder.more:
                    frames = decoder.feed(b"", frames_left)
                elif bytes_left <= 0:
                    return
                else:
                    n = self._recv(conn)
                    if n is None:
                        return
                    if n == 0:
                        decoder.eof()
                        self._lose(conn, "closed by peer")
                        return
                    bytes_left -= n
                    frames = decoder.feed(view[:n], frames_left)
            except FramingError as e:
                # one line per connection: as many as the accepts, which are logged too
                self.on_error(f"tcp: {format_address(conn.addr)} sent a bad frame ({e}); closing that connection",
                              "tcp-bad-frame")
                self._lose(conn, f"bad frame: {e.kind}", quiet=True)
                return
            if frames:
                frames_left -= len(frames)
                deliver(frames, conn.addr)
                if conn.closed:  # the callback closed it
                    return
        if decoder.more:
            self._resume_soon(conn)

    def _resume_soon(self, conn: _Connection) -> None:
        """Frames already read wait in the decoder: the kernel will not wake us for
        them, so the loop is asked to call again once the others had their turn."""
        if conn.resume is None:
            conn.resume = self._loop.call_soon(self._readable, conn)

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
            candidate = self.candidates.get(addr)
            if candidate is not None:
                candidate.answers += 1
                return candidate
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
        if conn.resume is not None:
            conn.resume.cancel()
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
            self.acceptor.close()
            self.listener.close()
            self.listener = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("closing")
        if self._task is not None:
            self._task.cancel()
