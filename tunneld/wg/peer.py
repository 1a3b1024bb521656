"""The WireGuard session with our one peer: handshakes, keypair rotation, timers.

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
import ipaddress
import os
import random
from typing import Callable

from tunneld.core.contract import Address
from tunneld.core.contract import format_address as _fmt
from tunneld.core.counters import Counters
from tunneld.core.events import (AuthFailed, CookieReceived, HandshakeAnswered, HandshakeCompleted, HandshakeGaveUp,
                                 HandshakeRetry, HandshakeStale, KeysZeroed, NoReply, Notice)
from tunneld.core.session import NOTHING, Opened
from tunneld.wg import messages
from tunneld.wg.constants import (AEAD_TAG_SIZE, CAP_SUPER_PACKETS, TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE, COOKIE_REPLIES_BURST, FLAGS_KNOWN, COOKIE_REPLIES_PER_SECOND, HANDSHAKES_BURST,
                                  HANDSHAKES_PER_SECOND, IDENTIFIER, KEEPALIVE_TIMEOUT, MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION,
                                  MESSAGE_RESPONSE, MESSAGE_TRANSPORT, PADDING_MULTIPLE, QUEUED_PACKETS_MAX,
                                  REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
                                  REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_ON_RECEIVE_AGE, REKEY_TIMEOUT,
                                  REKEY_TIMEOUT_JITTER_MAX, TUNNELD_IDENTIFIER, UNDER_LOAD_AFTER,
                                  UNDER_LOAD_BACKLOG, ZERO_KEYS_AFTER)
from tunneld.wg.cookie import CookieChecker, CookieGenerator
from tunneld.wg.noise import Handshake, HandshakeError, StaleHandshake, State
from tunneld.wg.primitives import AEAD, NONCE, InvalidTag
from tunneld.wg.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND, LoadMeter, RateLimiter, TokenBucket
from tunneld.wg.replay import ReplayWindow

# wireguard-go's MaxTimerHandshakes: a retry is sent while attempts <= 18, so a
# handshake is tried 1 + 19 times (about 90 s) before it is given up
MAX_HANDSHAKE_ATTEMPTS = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
INITIATIONS_PER_SECOND = 50  # a peer's initiations closer together than 20 ms are a flood
_KIND = {MESSAGE_INITIATION: "handshake initiation", MESSAGE_RESPONSE: "handshake response",
         MESSAGE_COOKIE_REPLY: "cookie reply", MESSAGE_TRANSPORT: "transport message"}


class Keypair:
    """Transport keys from one handshake. Python cannot wipe memory; dropping the
    last reference to the AEAD objects is as close as we get to zeroing."""

    __slots__ = ("send", "recv", "send_counter", "replay", "created", "initiator",
                 "local_index", "remote_prefix", "offload")

    def __init__(self, send_key: bytes, recv_key: bytes, initiator: bool, created: float,
                 local_index: int, remote_index: int, offload: bool = False):
        self.send, self.recv = AEAD(send_key), AEAD(recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = created
        self.initiator = initiator
        self.local_index = local_index
        self.remote_prefix = messages.HEADER_TRANSPORT + remote_index.to_bytes(4, "little")
        self.offload = offload  # both announced CAP_SUPER_PACKETS: messages carry flags, header authenticated


class WireGuardSession:
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
        CAP_SUPER_PACKETS; a keypair both sides announced it for carries
        offload flags (constants.FLAG_*) in its transport messages.
        `under_load_backlog`: see ratelimiter.LoadMeter (0: always under load)."""
        if padding_trailer and compatible:
            raise ValueError("WireGuard's wire format has no padding trailer")
        if offload and compatible:
            raise ValueError("WireGuard's reserved bytes must stay zero")
        self.capabilities = CAP_SUPER_PACKETS if offload else 0
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
        old_hs = getattr(old, "handshake", None)
        if old_hs is not None and old_hs.peer_public == self.handshake.peer_public:
            self.handshake.last_timestamp = old_hs.last_timestamp

    def _take(self) -> list | tuple:
        """The messages gathered so far, all for the peer's endpoint."""
        out = self._out
        if not out:
            return NOTHING
        self._out = []
        return [m for m, _ in out]

    # --- sending -------------------------------------------------------------

    def seal(self, packets, now: float, flags: int = 0) -> list | tuple:
        """Device packets (one, or the segments of a super-packet) -> the messages
        to send now, in order. `flags` (constants.FLAG_*, only when
        `sends_offload(now)` said so): what the packets are besides whole plain
        ones. The per-batch work (timers, the rekey check) runs once."""
        kp = self.current
        if self.staged or kp is None or not self._can_send(kp, now) \
                or kp.send_counter + len(packets) > REJECT_AFTER_MESSAGES:
            for packet in packets:
                self._seal_one(packet, now, flags)
            return self._take()
        out = self._encrypt_many(kp, packets, now, flags)
        if self._out:  # a rekey started on the way
            out.extend(self._take())
        return out

    def _seal_one(self, packet: bytes | memoryview, now: float, flags: int = 0) -> None:
        kp = self.current
        if self.staged or kp is None or not self._can_send(kp, now):
            self._stage(packet)
            self._send_staged(now)
        else:
            self._out.append((self._encrypt(kp, packet, now, flags), None))

    def sends_offload(self, now: float) -> bool:
        """The next seal() goes out at once on a keypair that carries super-packets."""
        kp = self.current
        return kp is not None and kp.offload and not self.staged and self._can_send(kp, now)

    @property
    def offload_peer(self) -> bool:
        """Some keypair carries super-packets: the peer may send them (a TCP
        transport then accepts frames over 64 KB)."""
        return any(kp is not None and kp.offload for kp in (self.current, self.next, self.previous))

    def _can_send(self, kp: Keypair, now: float) -> bool:
        return now - kp.created < REJECT_AFTER_TIME and kp.send_counter < REJECT_AFTER_MESSAGES

    def _stage(self, packet: bytes | memoryview) -> None:
        if len(self.staged) >= QUEUED_PACKETS_MAX:
            self.staged.popleft()  # the oldest goes, as wireguard-go's staged queue does
            self.counters.tx.drops += 1
        self.staged.append(bytes(packet))

    def _send_staged(self, now: float) -> None:
        kp = self.current
        if kp is None or not self._can_send(kp, now):
            self._initiate(now, retry=False)
            return
        while self.staged:
            self._out.append((self._encrypt(kp, self.staged.popleft(), now), None))

    def _encrypt(self, kp: Keypair, packet: bytes | memoryview, now: float, flags: int = 0) -> bytes:
        return self._encrypt_many(kp, (packet,), now, flags)[0]

    def _encrypt_many(self, kp: Keypair, packets, now: float, flags: int = 0) -> list:
        """Seal in place (wireguard-go's send.go: the header in front, `Seal(dst[:0], ...)`):
        each packet is copied once into its message's place behind its header,
        its padding is zeros already there, and it is encrypted where it lies
        (ChaCha20Poly1305.encrypt_into over the same bytes, the tag after). One
        packet: the buffer is the message. A batch: one buffer for all, the
        messages views into it. (Measured: a 1400-byte copy is ~0.1 us of a
        ~2 us seal in CPython; in place is not faster than pad+encrypt+join.)"""
        counter = kp.send_counter
        encrypt_into, nonce = kp.send.aead.encrypt_into, NONCE.pack
        trailer, limit, offload = self.padding_trailer, self.max_packet, kp.offload
        prefix = bytes((MESSAGE_TRANSPORT, flags, 0, 0)) + kp.remote_prefix[4:] if offload else kp.remote_prefix
        data = False
        if len(packets) == 1:  # the common case: the message grows in one buffer, header first
            packet = packets[0]
            n = len(packet)
            size = _plain_size(n, trailer, limit)
            header = prefix + counter.to_bytes(8, "little")
            buf = bytearray(header)
            buf += packet
            buf += _ZEROS[:size - n + AEAD_TAG_SIZE]  # the padding, and room for the tag
            if trailer and size:  # frame || k zero bytes || k, a multiple of 16 in all (a keepalive stays empty)
                buf[TRANSPORT_HEADER_SIZE + size - 1] = size - n - 1
            body = memoryview(buf)[TRANSPORT_HEADER_SIZE:]
            # a keypair with offload flags authenticates its header (constants.FLAG_*)
            encrypt_into(nonce(counter), body[:size], header if offload else None, body)
            out = [buf]
            counter += 1
            data = n > 0
        else:  # a super-packet's segments: one buffer for all, each message a view into it
            sizes = [_plain_size(len(p), trailer, limit) for p in packets]
            buf = bytearray(sum(sizes) + TRANSPORT_MIN_SIZE * len(packets))
            view = memoryview(buf)
            out = []
            pos = 0
            for packet, size in zip(packets, sizes):
                n = len(packet)
                header = prefix + counter.to_bytes(8, "little")
                start = pos + TRANSPORT_HEADER_SIZE
                end = start + size
                view[pos:start] = header
                view[start:start + n] = packet
                if trailer and size:
                    buf[end - 1] = size - n - 1
                encrypt_into(nonce(counter), view[start:end], header if offload else None, view[start:end + AEAD_TAG_SIZE])
                out.append(view[pos:end + AEAD_TAG_SIZE])
                pos = end + AEAD_TAG_SIZE
                counter += 1
                data = data or n > 0
        kp.send_counter = counter
        self._authenticated_sent(now)
        if data and self.t_new_handshake is None:  # data sent: expect an answer
            self.t_new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        # keep the key fresh: the initiator of a keypair rekeys it after 120 s or 2^60 messages
        if (kp.initiator and now - kp.created >= REKEY_AFTER_TIME) or counter - 1 >= REKEY_AFTER_MESSAGES:
            self._initiate(now, retry=False)
        return out

    def _initiate(self, now: float, retry: bool, gap: bool = True) -> None:
        """A new initiation; `gap=False` skips the 5 s spacing (a cookie to return,
        a new TCP stream: the last initiation went nowhere useful)."""
        if not retry:
            self.attempts = 0
        if gap and now - self.last_handshake_sent < REKEY_TIMEOUT:
            # at most one handshake message per REKEY_TIMEOUT. wireguard-go returns
            # here without arming the retry, so after answering the peer's initiation
            # (crossed handshakes) nothing retried ours: retry when the gap is over
            if self.t_retransmit is None:
                self.t_retransmit = self.last_handshake_sent + REKEY_TIMEOUT + self._jitter()
            return
        self.last_handshake_sent = now
        self._retried_for_cookie = False
        wall = self.wall_clock() if self.wall_clock is not None else now + self.wall_offset
        header = bytes((MESSAGE_INITIATION, self.capabilities, 0, 0))
        body = self.handshake.create_initiation(wall, self._new_index(), header)
        self._out.append((self.cookie_generator.add_macs(body, now), None))
        self._authenticated_sent(now)
        self.t_retransmit = now + REKEY_TIMEOUT + self._jitter()

    def _send_keepalive(self, now: float) -> None:
        if not self.staged:
            self._seal_one(b"", now)

    # --- receiving -------------------------------------------------------------

    def open(self, batch, addr: Address, now: float) -> Opened:
        """What one read from `addr` brought: see core/session.py."""
        packets = []
        accepted = None
        for message in batch:
            self._accepted = None
            opened = self._open_one(message, addr, now)
            if self._accepted is not None:
                accepted = self._accepted
            if opened is not None and opened[0]:  # b"": a keepalive, nothing for the device
                packets.append(opened)
        out = self._out
        if out:
            self._out = []
        else:
            out = NOTHING
        return Opened(packets, accepted, out)

    def _open_one(self, message: bytes | memoryview, addr: Address, now: float) -> tuple | None:
        """One message -> (plaintext, offload flags) of a transport message, or None."""
        kind = messages.classify(message, strict_reserved=self.compatible)
        if kind == MESSAGE_TRANSPORT:
            return self._receive_transport(message, addr, now)
        if kind == 0:
            self.counters.rx.errors += 1
            self._events.append(Notice("junk", "warning", f"dropped {len(message)} bytes from {_fmt(addr)}: not a WireGuard message"))
            return None
        source = self._source(addr)
        # load: how fast messages that may ask for DH arrive, checked or not (wireguard-go's queue length)
        under_load = self.load.under_load(now) if kind == MESSAGE_COOKIE_REPLY else self.load.arrive(now)
        if self._peer_addr != self._exempt_for:
            self._exempt_peer()
        # under load, a source over its rate is dropped before any hashing: a flood
        # from one host costs a dict lookup per message, not a MAC
        if under_load and not self.limiter.allow(source[:-2], now):
            self._shed(now, addr)
            return None
        message = bytes(message)
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(message, addr, now)
            return None
        if not self.cookie_checker.check_mac1(message):
            self._auth_failed(now, addr, f"{_KIND[kind]} with a bad mac1 (not for our public key)")
            return None
        if under_load and not self.cookie_checker.check_mac2(message, source, now):
            budget = self.peer_cookie_budget if source[:-2] == self.limiter.exempt else self.cookie_budget
            if not budget.take(now):
                self._shed(now, addr)
                return None
            self._out.append((self.cookie_checker.reply(message, source, now), addr))
            self.counters.cookies_sent += 1
            self._events.append(Notice("cookie", "info", f"under load: asked {_fmt(addr)} to return a cookie"))
            return None
        # the whole daemon's handshake work, load or not; under load only a valid mac2 gets
        # here, and a flood spent at most UNDER_LOAD_BACKLOG of it before (LoadMeter)
        if not self.handshake_budget.take(now):
            self._shed(now, addr)
            return None
        if kind == MESSAGE_INITIATION:
            self._receive_initiation(message, addr, now)
        else:
            self._receive_response(message, addr, now)
        return None

    def _exempt_peer(self) -> None:
        """The peer's current address (where the last authenticated message came
        from) is exempt from the per-source limiter, by IP: a restarted peer may
        come back on another port."""
        self._exempt_for = addr = self._peer_addr
        self.limiter.exempt = None if addr is None else _source(addr)[:-2]

    def _shed(self, now: float, addr: Address) -> None:
        """A handshake message dropped unread by a rate limit or budget."""
        self.counters.rx.drops += 1
        self.counters.handshakes_shed += 1
        self._events.append(Notice("shed", "warning", f"under load: dropping handshake messages from {_fmt(addr)} over the rate limit"))

    def _source(self, addr: Address) -> bytes:
        """The source's IP bytes and port (the cookie's input), remembered for the
        last address: a flood comes from few."""
        if addr != self._last_addr:
            self._last_addr, self._last_source = addr, _source(addr)
        return self._last_source

    def _receive_initiation(self, message: bytes, addr: Address, now: float) -> None:
        if now - self.last_initiation_consumed < 1 / INITIATIONS_PER_SECOND:
            self.counters.rx.drops += 1
            return
        try:
            self.handshake.consume_initiation(message)
        except HandshakeError as e:
            self._auth_failed(now, addr, str(e))
            return
        self.last_initiation_consumed = now
        offload = self._agreed()
        body = self.handshake.create_response(self._new_index(), bytes((MESSAGE_RESPONSE, self.capabilities, 0, 0)))
        response = self.cookie_generator.add_macs(body, now)
        hs = self.handshake
        local, remote = hs.local_index, hs.remote_index
        send, recv, _ = hs.derive_keys()
        self.next = Keypair(send, recv, False, now, local, remote, offload)  # used once the initiator confirms it
        self.previous = None
        self._out.append((response, addr))
        self.last_handshake_sent = now
        self._accepted = self._peer_addr = addr
        self._authenticated_sent(now)
        self.t_zero_keys = now + ZERO_KEYS_AFTER
        self._events.append(HandshakeAnswered(addr))

    def _receive_response(self, message: bytes, addr: Address, now: float) -> None:
        try:
            self.handshake.consume_response(message)
        except StaleHandshake as e:
            # both sides initiated at once and we answered theirs: late, not forged
            self.counters.rx.drops += 1
            self._events.append(HandshakeStale(addr, str(e)))
            return
        except HandshakeError as e:
            self._auth_failed(now, addr, str(e))
            return
        hs = self.handshake
        local, remote = hs.local_index, hs.remote_index
        send, recv, _ = hs.derive_keys()
        kp = Keypair(send, recv, True, now, local, remote, self._agreed())
        if self.next is not None:
            self.previous, self.next = self.next, None
        else:
            self.previous = self.current
        self.current = kp
        self._accepted = self._peer_addr = addr
        self.t_zero_keys = now + ZERO_KEYS_AFTER
        self._handshake_complete(now, addr, initiated=True)
        self._authenticated_received(now)
        if self.staged:
            self._send_staged(now)
        else:
            self._send_keepalive(now)  # lets the responder confirm the keypair

    def _agreed(self) -> bool:
        """Super-packets for the keypair of the handshake just consumed: both announced them."""
        peer = self.handshake.peer_header
        return bool(self.capabilities & CAP_SUPER_PACKETS and len(peer) == 4 and peer[1] & CAP_SUPER_PACKETS)

    def _receive_cookie_reply(self, message: bytes, addr: Address, now: float) -> None:
        receiver = int.from_bytes(message[4:8], "little")
        if receiver != self.handshake.local_index or not self.cookie_generator.consume_reply(message, now):
            self._auth_failed(now, addr, "cookie reply that does not match our last handshake message")
            return
        self._events.append(CookieReceived(addr))
        # wireguard-go waits for the retry timer (5 s); resending once per attempt at
        # once costs the peer nothing it did not ask for and gets through in one RTT
        if not self._retried_for_cookie and self.handshake.state is State.INITIATION_CREATED:
            self._initiate(now, retry=True, gap=False)
            self._retried_for_cookie = True

    def _receive_transport(self, message: bytes | memoryview, addr: Address, now: float) -> tuple | None:
        receiver = int.from_bytes(message[4:8], "little")
        kp = self.current
        if kp is None or kp.local_index != receiver:
            kp = self.next if self.next is not None and self.next.local_index == receiver else self.previous
            if kp is None or kp.local_index != receiver:
                self.counters.rx.drops += 1  # unknown index: an old session, or noise
                return None
        counter = int.from_bytes(message[8:16], "little")
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self.counters.rx.drops += 1
            return None
        try:
            if kp.offload:
                plaintext = kp.recv.open(counter, message[16:], bytes(message[:16]))
            else:
                plaintext = kp.recv.open(counter, message[16:])
        except InvalidTag:
            self._auth_failed(now, addr, "transport message that did not authenticate")
            return None
        if not kp.replay.check_and_update(counter, REJECT_AFTER_MESSAGES):
            self.counters.rx.drops += 1
            self.counters.replays += 1
            self._events.append(Notice("replay", "warning", f"dropped a replayed transport message from {_fmt(addr)}"))
            return None
        if self.padding_trailer and plaintext:
            plaintext = self._strip_trailer(plaintext)
            if plaintext is None:  # authentic, so the peer's bug, not an attack: still dropped
                self.counters.rx.errors += 1
                self._events.append(Notice("trailer", "warning", f"dropped a frame from {_fmt(addr)} with a malformed padding trailer"))
                return None
        flags = message[1] if kp.offload else 0
        if flags & ~FLAGS_KNOWN:  # authentic, so a newer peer's idea: not ours to guess
            self.counters.rx.errors += 1
            self._events.append(Notice("flags", "warning", f"dropped a packet from {_fmt(addr)} with unknown offload flags {flags:#x}"))
            return None
        self._accepted = self._peer_addr = addr
        if kp is self.next:  # the initiator confirmed the keypair: rotate it in
            self.previous, self.current, self.next = self.current, kp, None
            self._handshake_complete(now, addr, initiated=False)
            if self.staged:
                self._send_staged(now)
        elif (kp is self.current and kp.initiator and not self.sent_last_minute_handshake
              and now - kp.created >= REKEY_ON_RECEIVE_AGE):
            self.sent_last_minute_handshake = True
            self._initiate(now, retry=False)
        self._authenticated_received(now)
        if plaintext:  # data received: answer it within KEEPALIVE_TIMEOUT
            if self.t_keepalive is None:
                self.t_keepalive = now + KEEPALIVE_TIMEOUT
            else:
                self.need_another_keepalive = True
        return plaintext, flags

    @staticmethod
    def _strip_trailer(plaintext: bytes) -> bytes | None:
        """The frame inside frame || k zero bytes || k, or None if that is not the shape."""
        k = plaintext[-1]
        end = len(plaintext) - 1 - k
        if k >= PADDING_MULTIPLE or end < 1 or plaintext[end:-1].count(0) != k:
            return None
        return plaintext[:end]

    def _handshake_complete(self, now: float, addr: Address, initiated: bool) -> None:
        self.t_retransmit = None
        self.attempts = 0
        self.sent_last_minute_handshake = False
        first = self.last_handshake is None
        self.last_handshake = now
        self.counters.handshakes += 1
        self._events.append(HandshakeCompleted(addr, initiated, first))

    def _auth_failed(self, now: float, addr: Address, why: str) -> None:
        self.counters.auth_failures += 1
        self._events.append(AuthFailed(addr, why))

    # --- timers ----------------------------------------------------------------

    def _authenticated_sent(self, now: float) -> None:
        """timers.go: any authenticated packet sent (no keepalive owed) and traversal."""
        self.t_keepalive = None
        if self.persistent_keepalive:
            self.t_persistent = now + self.persistent_keepalive

    def _authenticated_received(self, now: float) -> None:
        """timers.go: any authenticated packet received (the peer is alive) and traversal."""
        self.t_new_handshake = None
        if self.persistent_keepalive:
            self.t_persistent = now + self.persistent_keepalive

    def get_timer(self) -> float | None:
        """Called after every packet: no allocation, just the earliest armed timer."""
        best = None
        for d in (self.t_retransmit, self.t_keepalive, self.t_new_handshake, self.t_zero_keys, self.t_persistent):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> list | tuple:
        if self.t_retransmit is not None and now >= self.t_retransmit:
            self.t_retransmit = None
            self._retransmit(now)
        if self.t_keepalive is not None and now >= self.t_keepalive:
            self.t_keepalive = None
            self._send_keepalive(now)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self.t_keepalive = now + KEEPALIVE_TIMEOUT
        if self.t_new_handshake is not None and now >= self.t_new_handshake:
            self.t_new_handshake = None
            self._events.append(NoReply(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT))
            self._initiate(now, retry=False)
        if self.t_zero_keys is not None and now >= self.t_zero_keys:
            self.t_zero_keys = None
            self.current = self.previous = self.next = None
            self.handshake.zero()
            self._events.append(KeysZeroed(ZERO_KEYS_AFTER))
        if self.t_persistent is not None and now >= self.t_persistent:
            self.t_persistent = None
            self._send_keepalive(now)
        return self._take()

    def kick(self, now: float) -> list | tuple:
        if self.persistent_keepalive:
            self._send_keepalive(now)
        return self._take()

    def stream_up(self, now: float) -> list | tuple:
        """We dialled a new TCP connection: handshake on it at once, whatever the
        5 s gap says (what went on the old stream is gone with it)."""
        self._initiate(now, retry=False, gap=False)
        return self._take()

    def _retransmit(self, now: float) -> None:
        if self.attempts > MAX_HANDSHAKE_ATTEMPTS:
            dropped = len(self.staged)
            self.staged.clear()
            self.counters.tx.drops += dropped
            self.t_keepalive = None
            if self.t_zero_keys is None:
                self.t_zero_keys = now + ZERO_KEYS_AFTER
            self._events.append(HandshakeGaveUp(REKEY_ATTEMPT_TIME, dropped))
            return
        self.attempts += 1
        self._events.append(HandshakeRetry(self.attempts, REKEY_TIMEOUT))
        self._initiate(now, retry=True)

    # --- helpers ----------------------------------------------------------------

    def _jitter(self) -> float:
        return self._jitter_rng.randrange(int(REKEY_TIMEOUT_JITTER_MAX * 1000)) / 1000

    def _new_index(self) -> int:
        taken = {kp.local_index for kp in (self.current, self.previous, self.next) if kp is not None}
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index and index not in taken:
                return index


_ZEROS = bytes(PADDING_MULTIPLE + AEAD_TAG_SIZE)  # the most padding and tag room a message needs


def _plain_size(n: int, trailer: bool, limit: int) -> int:
    """The plaintext's size once padded: to a multiple of 16, with the trailer's
    length byte (TAP in tunneld mode), or within the interface's limit (IP)."""
    if trailer:
        return n + 1 + (-(n + 1) % PADDING_MULTIPLE) if n else 0
    return min(n + (-n % PADDING_MULTIPLE), max(limit, n))


def _source(addr: Address) -> bytes:
    """The cookie's view of a source address: IP bytes and port."""
    try:
        return ipaddress.ip_address(addr[0]).packed + int(addr[1]).to_bytes(2, "big")
    except (ValueError, TypeError, IndexError):
        return repr(addr).encode()

