"""The WireGuard session with our one peer, composed of one piece per concept:

    keypair.py    Keypair and the three slots (current, previous, next)
    send.py       staging and sealing in place, initiating
    receive.py    handshake and transport messages, replay, rotation
    admission.py  the DoS gate before any DH: limiter, mac1, load, cookies, budgets
    timers.py     the five timers and their hooks

    seal(packets, now)          device packets -> transport messages, or staged while
                                a handshake runs (which it starts): what to send
    open(batch, addr, now)      messages from the network -> Opened: packets for the
                                device with their flags, the authenticated source,
                                what to send back (responses, cookie replies, staged
                                packets a new keypair released)
    handle_timer(now)           retries, keepalives, rekeys, key zeroing: what to send
    next_event()                what happened (core/events.py)

It follows core/session.py's contract: every call returns what to send; its
events wait in its own queue; it alone writes its counters.

Keypairs (whitepaper 6.1): `current` sends; `previous` still receives; `next`
is a responder's new keypair, used for sending only once the initiator has
confirmed it by sending on it. Timers follow wireguard-go's timers.go; every
deadline is a float on the caller's clock, None when not armed.
"""

from __future__ import annotations

import collections
import os
import random
from typing import Callable

from tunneld.core.contract import Address
from tunneld.core.contract import format_address as _fmt
from tunneld.core.counters import Counters
from tunneld.core.events import Notice
from tunneld.core.session import NOTHING, Opened
from tunneld.wg import messages
from tunneld.wg.admission import Admission
from tunneld.packet.chunks import MAX_CHUNKS, Reassembly
from tunneld.packet.limits import ETHERNET_HEADER, MAX_IP_PACKET, VLAN_ROOM, VNET_HEADER
from tunneld.wg.constants import (CAP_CHUNKS, CAP_SUPER_PACKETS, CHUNK_STRIDE, FLAG_CHUNK, REJECT_AFTER_TIME,
                                  TRANSPORT_MIN_SIZE, COOKIE_REPLIES_BURST, COOKIE_REPLIES_PER_SECOND, HANDSHAKES_BURST,
                                  HANDSHAKES_PER_SECOND, IDENTIFIER, MESSAGE_TRANSPORT, TUNNELD_IDENTIFIER,
                                  UNDER_LOAD_AFTER, UNDER_LOAD_BACKLOG)
from tunneld.wg.cookie import CookieChecker, CookieGenerator
from tunneld.wg.keypair import Keypair, Keypairs
from tunneld.wg.noise import Handshake
from tunneld.wg.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND, LoadMeter, RateLimiter, TokenBucket
from tunneld.wg.receive import Receiver
from tunneld.wg.send import Sender
from tunneld.wg.timers import Timers




RECEIVE_BUFFER = 65536  # bytes: one UDP GRO read's plaintexts, or a TCP read's first frames (the rest: the long way)


class WireGuardSession(Sender, Receiver, Admission, Timers, Keypairs):
    """A session with one peer. `compatible`: WireGuard's identifier and strict
    reserved bytes; otherwise tunneld's own identifier with header binding."""

    authenticated = True

    def __init__(self, *, static_private: bytes, peer_public: bytes, psk: bytes | None,
                 compatible: bool, max_packet: int, persistent_keepalive: float | None = None,
                 padding_trailer: bool = False, offload: bool = False,
                 wall_offset: float = 0.0, wall_clock: Callable[[], float] | None = None,
                 rng: Callable[[int], bytes] = os.urandom,
                 under_load_backlog: float = UNDER_LOAD_BACKLOG):
        """`wall_clock`: the time of day for TAI64N timestamps, read once per
        initiation (the one clock this module reads: a timestamp must be the
        wall time when it is sent, and the wall clock may be stepped while we
        run). Without it, `now + wall_offset`, for tests on a fake clock.
        `padding_trailer` (tunneld mode, TAP): the padding's length travels as the
        plaintext's last byte, so a frame arrives byte for byte; an IP packet
        needs none (its own length trims the padding, as WireGuard does).
        `offload` (tunneld mode, a device with virtio headers): announce
        CAP_SUPER_PACKETS and CAP_CHUNKS; a keypair both sides announced them
        for carries offload flags (constants.FLAG_*) in its transport messages
        and may carry a plaintext as chunks (seal_chunks; the core uses them
        over datagrams only).
        `under_load_backlog`: see ratelimiter.LoadMeter (0: always under load)."""
        if padding_trailer and compatible:
            raise ValueError("WireGuard's wire format has no padding trailer")
        if offload and compatible:
            raise ValueError("WireGuard's reserved bytes must stay zero")
        self.capabilities = CAP_SUPER_PACKETS | CAP_CHUNKS if offload else 0
        # chunks: each fits a 1500-byte underlay, and no more than an interface packet
        self.chunk_stride = min(max_packet, CHUNK_STRIDE)
        if offload:  # bounded: one send buffer, and SLOTS super-packets being joined
            self._chunk_buf = bytearray(MAX_CHUNKS * (self.chunk_stride + TRANSPORT_MIN_SIZE))
            self._chunk_view = memoryview(self._chunk_buf)
            self.reassembly = Reassembly(VNET_HEADER + ETHERNET_HEADER + VLAN_ROOM + MAX_IP_PACKET)
        else:
            self.reassembly = None
        # where open() decrypts a batch's ordinary messages: as much as one read brings
        self._recv_view = memoryview(bytearray(RECEIVE_BUFFER))
        self._joined: list = []  # keys of super-packets handed out whole by the last open()
        self._partials: list = []  # super-packets given up (packet/chunks.Partial), for the core to salvage
        self.padding_trailer = padding_trailer
        self.padded = not padding_trailer  # the core trims TUN packets by their IP length
        self.compatible = compatible
        self.handshake = Handshake(static_private, peer_public, psk,
                                   IDENTIFIER if compatible else TUNNELD_IDENTIFIER,
                                   bind_header=not compatible, rng=rng)
        self.cookie_checker = CookieChecker(self.handshake.static_public, rng)
        self.cookie_generator = CookieGenerator(peer_public)
        self.max_packet = max_packet
        self.persistent_keepalive = persistent_keepalive
        self.wall_offset = wall_offset  # wall-clock time = now + wall_offset (TAI64N only)
        self.wall_clock = wall_clock
        self.rng = rng
        # retry jitter needs no secrecy (wireguard-go: fastrandn); a seeded PRNG keeps
        # the per-packet re-arming of the new-handshake timer free of system calls
        self._jitter_rng = random.Random(int.from_bytes(rng(8), "little"))

        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: collections.deque[bytes] = collections.deque()
        # what to send, (message, address or None: the peer's endpoint), gathered during one
        # call and returned by it; what happened, until the core takes it
        self._out: list[tuple[bytes, Address | None]] = []
        self._events: collections.deque = collections.deque()
        self._accepted: Address | None = None  # the source of an authenticated message in this call
        self.counters = Counters()  # this session's: handshakes, its drops and refusals

        # timers (deadlines on the caller's clock)
        self.t_retransmit: float | None = None
        self.t_keepalive: float | None = None
        self.t_new_handshake: float | None = None
        self.t_zero_keys: float | None = None
        self.t_persistent: float | None = None
        self.attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.last_handshake_sent = float("-inf")
        self.last_initiation_consumed = float("-inf")
        self.last_handshake: float | None = None  # when the last handshake completed
        # under load: per-source limits, then global budgets (see ratelimiter.py)
        self.load = LoadMeter(HANDSHAKES_PER_SECOND, under_load_backlog, UNDER_LOAD_AFTER)
        self.limiter = RateLimiter()
        self.cookie_budget = TokenBucket(COOKIE_REPLIES_PER_SECOND, COOKIE_REPLIES_BURST)
        # the peer's address is exempt from the limiter and cannot spend the shared
        # cookie budget: its cookie replies have a bucket of their own, which floods
        # from elsewhere cannot empty
        self.peer_cookie_budget = TokenBucket(PACKETS_PER_SECOND, PACKETS_BURSTABLE)
        self.handshake_budget = TokenBucket(HANDSHAKES_PER_SECOND, HANDSHAKES_BURST)
        self._peer_addr: Address = None  # the source of the last authenticated message
        self._exempt_for: Address = None  # the address the limiter's exemption was made for
        self._last_addr: Address = None
        self._last_source = b""
        self._retried_for_cookie = False

    # --- the contract's calls -------------------------------------------------

    def next_event(self):
        return self._events.popleft() if self._events else None

    def set_keepalive(self, seconds: float | None) -> None:
        """A persistent keepalive every `seconds` (None: off), counted from the next packet."""
        self.persistent_keepalive = seconds
        self.t_persistent = None

    def rekey_from(self, old) -> None:
        """New keys for the same peer (a reload): its old initiations must stay
        replays, so the newest timestamp seen carries over. Another peer's do not."""
        if isinstance(old, WireGuardSession) and old.handshake.peer_public == self.handshake.peer_public:
            self.handshake.last_timestamp = old.handshake.last_timestamp

    def open(self, batch, addr: Address, now: float) -> Opened:
        """What one read from `addr` brought: see core/session.py."""
        packets = []
        accepted = None
        if self._joined:  # the core has written what the last call joined: its slots are free
            release = self.reassembly.release
            for key in self._joined:
                release(key)
            self._joined = []
        kp = self.current
        usable = kp is not None and now - kp.created < REJECT_AFTER_TIME
        chunks = usable and kp.chunks
        room = 0  # where the next plaintext goes in the receive buffer
        i, n = 0, len(batch)
        while i < n:
            message = batch[i]
            if usable and len(message) >= TRANSPORT_MIN_SIZE and message[0] == MESSAGE_TRANSPORT:
                if chunks and message[1] & FLAG_CHUNK:
                    end, took = self._open_chunks(kp, batch, i, addr, now, packets)
                else:
                    end, took, room = self._open_run(kp, batch, i, addr, now, packets, room)
                if took:
                    accepted = addr
                if end > i:
                    i = end
                    continue  # else not for the current keypair after all: the long way
            i += 1
            self._accepted = None
            self._open_one(message, addr, now, packets)
            if self._accepted is not None:
                accepted = self._accepted
            if self.current is not kp:  # a handshake rotated the keypairs: the runs use the new current one
                kp = self.current
                usable = kp is not None and now - kp.created < REJECT_AFTER_TIME
                chunks = usable and kp.chunks
        out = self._out
        if out:
            self._out = []
        else:
            out = NOTHING
        return Opened(packets, accepted, out)

    def partials(self) -> list:
        """Super-packets given up by time since the last call (packet/chunks.Partial),
        for the core to salvage; open() hands over those given up by sequence in
        order among its packets (flag FLAG_INCOMPLETE)."""
        out = self._partials
        if not out:
            return NOTHING
        self._partials = []
        return out

    def get_timer(self) -> float | None:
        best = Timers.get_timer(self)
        if self.reassembly is not None and self.reassembly.waiting:
            joined = self.reassembly.deadline()
            if joined is not None and (best is None or joined < best):
                best = joined
        return best

    def handle_timer(self, now: float) -> list | tuple:
        if self.reassembly is not None and self.reassembly.waiting:
            self._partials.extend(self.reassembly.expired(now))
        return Timers.handle_timer(self, now)

    def _open_one(self, message: bytes | memoryview, addr: Address, now: float, packets: list) -> None:
        """One message the long way: a transport message's (plaintext, offload flags),
        or what a chunk completed or gave up, go on `packets`."""
        kind = messages.classify(message, strict_reserved=self.compatible)
        if kind == MESSAGE_TRANSPORT:
            self._receive_transport(message, addr, now, packets)
        elif kind == 0:
            self.counters.rx.errors += 1
            self._events.append(Notice("junk", "warning", f"dropped {len(message)} bytes from {_fmt(addr)}: not a WireGuard message"))
        else:
            self._admit(kind, message, addr, now)
