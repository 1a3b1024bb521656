"""Receiving: handshake messages and transport messages with replay protection (wireguard-go device/receive.go)."""

from __future__ import annotations

import struct

from tunneld.core.contract import FLAG_INCOMPLETE, Address
from tunneld.packet.chunks import REORDER
from tunneld.core.contract import format_address as _fmt
from tunneld.core.events import (AuthFailed, CookieReceived, HandshakeAnswered, HandshakeCompleted,
                                 HandshakeStale, Notice)
from tunneld.wg.constants import (CAP_CHUNKS, CAP_SUPER_PACKETS, FLAG_CHUNK, FLAGS_KNOWN, MESSAGE_TRANSPORT,
                                  TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE, KEEPALIVE_TIMEOUT, MESSAGE_RESPONSE,
                                  PADDING_MULTIPLE, REJECT_AFTER_MESSAGES,
                                  REJECT_AFTER_TIME, REKEY_ON_RECEIVE_AGE,
                                  ZERO_KEYS_AFTER)
from tunneld.wg.noise import HandshakeError, StaleHandshake, State
from tunneld.wg.primitives import NONCE, InvalidTag
from tunneld.wg.keypair import Keypair


_CHUNK_HEADER = struct.Struct("<BBBBIQ")  # type, flags, chunk index, chunk count, receiver, counter
_TRANSPORT_HEADER = struct.Struct("<BBHIQ")  # type, flags (reserved in WireGuard), reserved, receiver, counter
_ZEROS = bytes(PADDING_MULTIPLE)

INITIATIONS_PER_SECOND = 50  # a peer's initiations closer together than 20 ms are a flood


class Receiver:
    """WireGuardSession's receiving half (wireguard-go receive.go): handshake
    messages past the gate (admission.py), and transport messages opened with
    the replay window; a handshake completing rotates the keypairs."""

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
        offload, chunks = self._agreed()
        body = self.handshake.create_response(self._new_index(), bytes((MESSAGE_RESPONSE, self.capabilities, 0, 0)))
        response = self.cookie_generator.add_macs(body, now)
        hs = self.handshake
        local, remote = hs.local_index, hs.remote_index
        send, recv, _ = hs.derive_keys()
        self.next = Keypair(send, recv, False, now, local, remote, offload, chunks)  # used once the initiator confirms it
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
        kp = Keypair(send, recv, True, now, local, remote, *self._agreed())
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

    def _agreed(self) -> tuple[bool, bool]:
        """(super-packets, chunks) for the keypair of the handshake just consumed: both announced them."""
        peer = self.handshake.peer_header
        both = self.capabilities & peer[1] if len(peer) == 4 else 0
        return bool(both & CAP_SUPER_PACKETS), bool(both & CAP_SUPER_PACKETS and both & CAP_CHUNKS)

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

    def _receive_transport(self, message: bytes | memoryview, addr: Address, now: float, packets: list) -> None:
        receiver = int.from_bytes(message[4:8], "little")
        kp = self.current
        if kp is None or kp.local_index != receiver:
            kp = self.next if self.next is not None and self.next.local_index == receiver else self.previous
            if kp is None or kp.local_index != receiver:
                self.counters.rx.drops += 1  # unknown index: an old session, or noise
                return
        counter = int.from_bytes(message[8:16], "little")
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self.counters.rx.drops += 1
            return
        if kp.chunks and message[1] & FLAG_CHUNK:
            self._open_chunks(kp, (message,), 0, addr, now, packets)  # the run's loop, for one
            return
        try:
            if kp.offload:
                plaintext = kp.recv.open(counter, message[16:], bytes(message[:16]))
            else:
                plaintext = kp.recv.open(counter, message[16:])
        except InvalidTag:
            self._auth_failed(now, addr, "transport message that did not authenticate")
            return
        if not kp.replay.check_and_update(counter, REJECT_AFTER_MESSAGES):
            self._replayed(addr)
            return
        if self.padding_trailer and plaintext:
            plaintext = self._strip_trailer(plaintext)
            if plaintext is None:  # authentic, so the peer's bug, not an attack: still dropped
                self.counters.rx.errors += 1
                self._events.append(Notice("trailer", "warning", f"dropped a frame from {_fmt(addr)} with a malformed padding trailer"))
                return
        flags = message[1] if kp.offload else 0
        if flags & ~FLAGS_KNOWN:  # authentic, so a newer peer's idea: not ours to guess
            self._unknown_flags(flags, addr)
            return
        self._transport_received(kp, addr, now, bool(plaintext))
        if plaintext:  # b"": a keepalive, nothing for the device
            packets.append((plaintext, flags))

    def _replayed(self, addr: Address) -> None:
        """An authentic message whose counter the window has seen (or left behind)."""
        self.counters.rx.drops += 1
        self.counters.replays += 1
        self._events.append(Notice("replay", "warning", f"dropped a replayed transport message from {_fmt(addr)}"))

    def _unknown_flags(self, flags: int, addr: Address) -> None:
        self.counters.rx.errors += 1
        self._events.append(Notice("flags", "warning", f"dropped a packet from {_fmt(addr)} with unknown offload flags {flags:#x}"))

    def _open_run(self, kp, batch, i: int, addr: Address, now: float, packets: list,
                  room: int) -> tuple[int, int, int]:
        """The run of ordinary transport messages on the current keypair from batch[i]
        on (a GRO batch is one): each decrypted into its own place in one receive
        buffer, no allocation per packet, the window per counter, and the timers
        and rotation once for the run; receive._receive_transport's checks in the
        same order. The packets are views valid until the next open().
        -> (where the run ended, how many were authentic, the buffer's next free byte)."""
        unpack, nonce = _TRANSPORT_HEADER.unpack_from, NONCE.pack
        counters, buf = self.counters, self._recv_view
        decrypt_into, check, local = kp.recv.aead.decrypt_into, kp.replay.check_and_update, kp.local_index
        offload, strict, trailer = kp.offload, self.compatible, self.padding_trailer
        n, took, data, limit = len(batch), 0, False, len(buf)
        while i < n:
            message = batch[i]
            size = len(message) - TRANSPORT_MIN_SIZE
            if size < 0 or room + size > limit:
                break
            kind, flags, reserved, receiver, counter = unpack(message)
            if kind != MESSAGE_TRANSPORT or receiver != local or (strict and (flags or reserved)) \
                    or (offload and flags & FLAG_CHUNK):
                break
            i += 1
            if counter >= REJECT_AFTER_MESSAGES:
                counters.rx.drops += 1
                continue
            into = buf[room:room + size]
            try:
                decrypt_into(nonce(counter), message[TRANSPORT_HEADER_SIZE:],
                             message[:TRANSPORT_HEADER_SIZE] if offload else None, into)
            except InvalidTag:
                self._auth_failed(now, addr, "transport message that did not authenticate")
                continue
            if not check(counter, REJECT_AFTER_MESSAGES):
                self._replayed(addr)
                continue
            room += size
            if trailer and size:  # frame || k zero bytes || k (tunneld mode, TAP)
                k = into[-1]
                end = size - 1 - k
                if k >= PADDING_MULTIPLE or end < 1 or into[end:size - 1] != _ZEROS[:k]:
                    counters.rx.errors += 1
                    self._events.append(Notice("trailer", "warning", f"dropped a frame from {_fmt(addr)} with a malformed padding trailer"))
                    continue
                into = into[:end]
            if not offload:
                flags = 0
            elif flags & ~FLAGS_KNOWN:
                self._unknown_flags(flags, addr)
                continue
            took += 1
            if size:
                data = True
                packets.append((into, flags))
        if took:
            self._transport_received(kp, addr, now, data)
        return i, took, room

    def _open_chunks(self, kp, batch, i: int, addr: Address, now: float, packets: list) -> tuple[int, int]:
        """The run of chunks on the current keypair from batch[i] on (a GRO batch is
        one): per message only the header, the place, the AEAD call and the window
        (the long path's checks, in the same order); the timers and the
        rotation once for the run. -> (where the run ended, how many were authentic)."""
        unpack, nonce = _CHUNK_HEADER.unpack_from, NONCE.pack
        reassembly, counters = self.reassembly, self.counters
        target, commit = reassembly.target, reassembly.commit
        decrypt_into, check, local = kp.recv.aead.decrypt_into, kp.replay.check_and_update, kp.local_index
        window = kp.replay
        n, took = len(batch), 0
        while i < n:
            message = batch[i]
            size = len(message) - TRANSPORT_MIN_SIZE
            if size <= 0:
                break
            kind, flags, index, count, receiver, counter = unpack(message)
            if kind != MESSAGE_TRANSPORT or not flags & FLAG_CHUNK or receiver != local:
                break
            i += 1
            key = (local, counter - index)
            into = target(key, index, count, size) if counter < REJECT_AFTER_MESSAGES else None
            if into is None:
                counters.rx.drops += 1
                continue
            try:
                decrypt_into(nonce(counter), message[TRANSPORT_HEADER_SIZE:], message[:TRANSPORT_HEADER_SIZE], into)
            except InvalidTag:
                self._auth_failed(now, addr, "transport message that did not authenticate")
                continue
            if not check(counter, REJECT_AFTER_MESSAGES):
                self._replayed(addr)
                continue
            flags &= ~FLAG_CHUNK
            if flags & ~FLAGS_KNOWN:
                self._unknown_flags(flags | FLAG_CHUNK, addr)
                continue
            if counter - index + count - 1 + REORDER < window.last and not reassembly.holds(key):
                counters.rx.drops += 1  # late for a super-packet given up already: it would hold a slot in vain
                continue
            if counter > reassembly.stale_at:  # an older one stopped coming: what arrived of it goes first
                packets.extend([(partial, FLAG_INCOMPLETE) for partial in reassembly.stale(local, counter)])
            took += 1
            whole, given_up = commit(key, index, count, size, now)
            if given_up:  # evicted for room
                packets.extend([(partial, FLAG_INCOMPLETE) for partial in given_up])
            if whole is not None:
                self._joined.append(key)
                packets.append((whole, flags))
        if took:
            self._transport_received(kp, addr, now, True)
        return i, took

    def _transport_received(self, kp: Keypair, addr: Address, now: float, data: bool) -> None:
        """An authentic transport message on `kp`: rotation, rekey-on-receive, timers."""
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
        if data:  # data received: answer it within KEEPALIVE_TIMEOUT
            if self.t_keepalive is None:
                self.t_keepalive = now + KEEPALIVE_TIMEOUT
            else:
                self.need_another_keepalive = True

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
