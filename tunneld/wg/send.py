"""Sending: staging, sealing in place, initiating (wireguard-go device/send.go)."""

from __future__ import annotations

import struct

from tunneld.core.contract import Segmented
from tunneld.core.session import NOTHING
from tunneld.packet.chunks import cut
from tunneld.wg.constants import (AEAD_TAG_SIZE, FLAG_CHUNK, TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE,
                                  KEEPALIVE_TIMEOUT, MESSAGE_INITIATION, MESSAGE_TRANSPORT,
                                  PADDING_MULTIPLE, QUEUED_PACKETS_MAX,
                                  REJECT_AFTER_MESSAGES,
                                  REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
                                  REKEY_TIMEOUT)
from tunneld.wg.primitives import NONCE
from tunneld.wg.keypair import Keypair


class Sender:
    """WireGuardSession's sending half (wireguard-go send.go): device packets are
    sealed at once on a usable keypair or staged while a handshake runs; every
    call gathers what to send in `_out` and returns it (`_take`).

        seal -> _encrypt_many (in place) -> the transport message(s)
             -> _stage -> _send_staged -> _initiate (no usable keypair)
    """

    def _take(self) -> list | tuple:
        """The messages gathered so far, all for the peer's endpoint."""
        out = self._out
        if not out:
            return NOTHING
        self._out = []
        return [m for m, _ in out]

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

    def sends_chunks(self, now: float) -> bool:
        """The next seal_chunks() goes out at once: the current keypair joins chunks."""
        kp = self.current
        return kp is not None and kp.chunks and not self.staged and self._can_send(kp, now)

    def chunks_of(self, size: int) -> int:
        """How many chunks seal_chunks() cuts `size` bytes into; 0: too many (seal it whole)."""
        n = cut(size, self.chunk_stride)
        return n if n > 1 else 0

    def seal_chunks(self, data: memoryview, now: float, flags: int) -> list:
        """One plaintext (a super-packet with its virtio header, or a frame over the
        underlay's size) -> its chunks (packet/chunks.py), sealed straight from
        `data` into one reused buffer at a fixed stride: [Segmented], one UDP GSO
        send. Only after sends_chunks(now) said yes and chunks_of(len(data)) > 1.
        Chunks carry no padding: every one but the last is CHUNK_STRIDE bytes,
        so only the last tells the plaintext's size (to the byte, where a
        padded packet tells it to 16; a super-packet's size says little)."""
        kp = self.current
        stride = self.chunk_stride
        size = len(data)
        count = -(-size // stride)
        counter = kp.send_counter
        if counter + count > REJECT_AFTER_MESSAGES:
            return self.seal((data,), now, flags)  # the keypair's last messages: it goes one way or the other
        step = stride + TRANSPORT_MIN_SIZE
        buf, view = self._chunk_buf, self._chunk_view
        pack, nonce = _CHUNK_HEADER.pack_into, NONCE.pack
        encrypt_into, receiver, kind = kp.send.aead.encrypt_into, kp.remote_index, flags | FLAG_CHUNK
        pos = start = 0
        for index in range(count):
            end = min(start + stride, size)
            body = pos + TRANSPORT_HEADER_SIZE
            pack(buf, pos, MESSAGE_TRANSPORT, kind, index, count, receiver, counter)
            encrypt_into(nonce(counter), data[start:end], view[pos:body], view[body:body + end - start + AEAD_TAG_SIZE])
            counter += 1
            start = end
            pos += step
        kp.send_counter = counter
        self._data_sent(kp, counter, now)
        out = [Segmented(view[:pos - step + TRANSPORT_MIN_SIZE + size - (count - 1) * stride], step)]
        if self._out:  # a rekey started on the way
            out.extend(self._take())
        return out

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
        self._data_sent(kp, counter, now, data)
        return out

    def _data_sent(self, kp: Keypair, counter: int, now: float, data: bool = True) -> None:
        """timers.go's bookkeeping once per sealed batch: `counter` is the keypair's next."""
        self._authenticated_sent(now)
        if data and self.t_new_handshake is None:  # data sent: expect an answer
            self.t_new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        # keep the key fresh: the initiator of a keypair rekeys it after 120 s or 2^60 messages
        if (kp.initiator and now - kp.created >= REKEY_AFTER_TIME) or counter - 1 >= REKEY_AFTER_MESSAGES:
            self._initiate(now, retry=False)

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


_CHUNK_HEADER = struct.Struct("<BBBBIQ")  # type, flags, chunk index, chunk count, receiver, counter
_ZEROS = bytes(PADDING_MULTIPLE + AEAD_TAG_SIZE)  # the most padding and tag room a message needs


def _plain_size(n: int, trailer: bool, limit: int) -> int:
    """The plaintext's size once padded: to a multiple of 16, with the trailer's
    length byte (TAP in tunneld mode), or within the interface's limit (IP)."""
    if trailer:
        return n + 1 + (-(n + 1) % PADDING_MULTIPLE) if n else 0
    return min(n + (-n % PADDING_MULTIPLE), max(limit, n))

