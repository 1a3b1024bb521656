"""The pure core of one point-to-point tunnel.

    device packet --from_device()--> session.seal --> datagrams_to_send() --> transport
    transport batch --from_network()--> session.open --> checks --> packets_to_deliver() --> device
    timer --handle_timer()--> session.handle_timer --> datagrams_to_send() (handshakes, keepalives)

No I/O and no clock (aioquic's connection): input comes with the time
(`from_device`, `from_network`, `handle_timer`, `transport_up`/`transport_down`,
`start`) and returns nothing; what to do comes out of `datagrams_to_send()`
[(message, address)], `packets_to_deliver()`, `get_timer()` and `next_event()`
(core/events.py), the session's events passed on in order. `counters` sums what
each layer counts in its own part (core/counters.py); the core writes `own`.

With a virtio-header device (`vnet`), a device read may be a 64 KB super-packet.
It leaves whole when the session's keypair carries super-packets and the
transport is a stream (TCP: one AEAD call, one frame); whole as chunks at the
underlay's size over UDP when the keypair joins chunks (packet/chunks.py: each
its own AEAD message, so a loss costs only the segments it touched; the
session salvages those that arrived); cut into segments with partial
checksums, each with its own header, for a peer that takes super-packets but
not chunks; and cut into
ordinary packets with finished checksums for any other peer (WireGuard,
simpletun, a tunneld without the capability). What arrives is checked
(packet/virtio.py) and, when authenticated, TCP segments are joined again
(packet/coalesce.py) until the batch from one read is done.
"""

from __future__ import annotations

import collections
import dataclasses

from tunneld.core.counters import Counters, CounterSet
from tunneld.core.contract import FLAG_INCOMPLETE, FLAG_PARTIAL, FLAG_VNET, Address
from tunneld.core.contract import format_address as _fmt
from tunneld.core.events import EndpointChanged, Notice, OffloadChanged, PeerDown, PeerMoved, PeerUp, StreamChanged
from tunneld.packet.chunks import salvage
from tunneld.packet.limits import ETHERNET_HEADER, UNDERLAY_PLAINTEXT, VNET_HEADER
from tunneld.packet.mss import clamp as clamp_mss
from tunneld.packet.mss import is_syn
from tunneld.packet import layout, segment, virtio
from tunneld.packet.coalesce import Coalescer
from tunneld.core.session import NOTHING, Session

LOG_INTERVAL = 10.0  # s: at most one log line per kind of dropped input per interval
# s without anything accepted from the peer before it counts as down: WireGuard's
# REJECT_AFTER_TIME, the life of a keypair (a peer that is there rekeys within it)
PEER_TIMEOUT = 180.0


class Tunnel:
    def __init__(self, session: Session, mode: str, max_packet: int, *,
                 endpoint: Address | None = None, pinned: bool = False, allowed_ips=None,
                 clamp: tuple[int, int] | None = None, vnet: bool = False, mtu: int = 0,
                 stream: bool = False, peer_timeout: float | None = PEER_TIMEOUT):
        """`endpoint`: the peer to send to, if known in advance. `pinned`: accept
        nothing from any other address (plaintext UDP with a configured remote,
        like OpenVPN without --float); otherwise follow the source of every message
        the session accepts. `allowed_ips`: networks a TUN packet's inner source
        must be in (None: any). `clamp`: (IPv4, IPv6) MSS limits for TCP SYNs
        crossing the tunnel either way (None: leave them alone). `vnet`: device
        buffers start with a virtio header; `mtu`: the interface's; `stream`: the
        transport carries messages of any size whole (TCP). `peer_timeout`: s
        without anything accepted from the peer before PeerDown (None: never)."""
        self.session = session
        self.mode = mode
        self.tap = mode == "tap"
        self.vnet = vnet
        self.mtu = mtu
        self.stream = stream
        # joins authenticated TCP segments; plaintext packets go out one by one
        self.coalescer = Coalescer(self.tap, virtio.PLAIN) if vnet else None
        self.max_packet = max_packet
        # a plaintext over this is sent as chunks when the session can (wg/constants.CHUNK_STRIDE)
        self.chunk_over = min(max_packet, UNDERLAY_PLAINTEXT)
        self.min_packet = ETHERNET_HEADER if mode == "tap" else 1
        self.endpoint = endpoint
        self.pinned = pinned
        self.allowed = None
        self.set_allowed(allowed_ips)
        self.clamp = clamp
        self.own = Counters()  # what the core's own checks count
        self.counters = CounterSet(self.own, session.counters)
        self._datagrams: list[tuple[bytes | memoryview, Address]] = []
        self._packets: list[bytes | memoryview] = []
        self._events: collections.deque = collections.deque()
        self._quiet_until: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.had_stream = False
        self.offload_peer = False  # what the last OffloadChanged said
        self._now = float("-inf")  # the time of the last packet from the device
        # liveness: up from the first message accepted from the peer (authenticated, when
        # the session can tell) until peer_timeout passes without one or the stream goes
        self.peer_timeout = peer_timeout
        self.peer_up = False
        self._heard = float("-inf")  # when the last accepted message came
        self._last_endpoint = endpoint  # the last address sent to, None never: EndpointChanged's old

    # --- what to do: the one way out ------------------------------------------

    def datagrams_to_send(self) -> list | tuple:
        """[(message, address)] to send now, in order; the caller owns the list."""
        out = self._datagrams
        if not out:
            return NOTHING
        self._datagrams = []
        return out

    def packets_to_deliver(self) -> list | tuple:
        """Packets for the device, in order; the caller owns the list."""
        out = self._packets
        if not out:
            return NOTHING
        self._packets = []
        return out

    def next_event(self):
        """The oldest event not yet taken (core/events.py), or None."""
        if not self._events:
            self._take_events(self._now)  # what sealing gave rise to (a rekey), if anything
        return self._events.popleft() if self._events else None

    @property
    def peer_state(self) -> str:
        """"up", "down" (heard from before, silent or its stream lost since) or "not heard yet"."""
        return "up" if self.peer_up else ("down" if self._heard > float("-inf") else "not heard yet")

    def get_timer(self) -> float | None:
        """When handle_timer() wants calling next, on the caller's clock."""
        when = self.session.get_timer()
        if self.peer_up and self.peer_timeout is not None:
            silent = self._heard + self.peer_timeout  # moves later with every read: the relay re-arms lazily
            if when is None or silent < when:
                return silent
        return when

    # --- device -> network ---------------------------------------------------

    def from_device(self, packet: bytes | memoryview, now: float) -> None:
        self._now = now
        if self.endpoint is None:
            self.own.tx.drops += 1  # no peer to send to yet
            return
        if self.vnet:
            self._from_vnet(packet, now)
        else:
            if self.clamp is not None:
                packet = clamp_mss(packet, *self.clamp, self.tap)
            self._seal(packet, now)

    def _seal(self, packet: bytes | memoryview, now: float, flags: int = 0) -> None:
        session = self.session
        if len(packet) > self.chunk_over and not self.stream and session.sends_chunks(now):
            # a frame bigger than one underlay datagram (TAP: a 1500-byte LAN's): as chunks,
            # joined before the device write, where the kernel would fragment the datagram
            if session.chunks_of(len(packet)):
                self.own.chunked += 1
                self._to_endpoint(session.seal_chunks(packet, now, flags))
                return
        self._to_endpoint(session.seal((packet,), now, flags))

    def _from_vnet(self, buf: bytes | memoryview, now: float) -> None:
        """A device read with its virtio header: see the module docstring."""
        session = self.session
        frame = buf[VNET_HEADER:]
        if not buf[0] and not buf[1]:  # a plain packet with its checksum done: the common small case
            if self.clamp is not None and is_syn(frame, self.tap):
                frame = clamp_mss(frame, *self.clamp, self.tap)
            self._seal(frame, now)
            return
        header = virtio.unpack(buf)
        offload = session.sends_offload(now)
        if header.gso:
            self.own.super_reads += 1
        try:
            if not header.gso:
                flags = 0
                if offload and not (self.clamp is not None and is_syn(frame, self.tap)) and _partial_at_l4(frame, header, self.tap):
                    flags = FLAG_PARTIAL  # the peer's kernel finishes it
                else:  # finish it here (a SYN to clamp cannot keep a partial checksum either)
                    frame = bytearray(frame)
                    segment.finish(frame, header.csum_start, header.csum_offset)
                    if self.clamp is not None:
                        frame = clamp_mss(frame, *self.clamp, self.tap)
                self._seal(frame, now, flags)
                return
            if offload and self.stream:  # whole, in one frame, with its header
                self._seal(buf, now, FLAG_VNET)
                return
            if offload and session.sends_chunks(now) and session.chunks_of(len(buf)):
                self.own.chunked += 1  # whole, with its header, as chunks at the underlay's size
                self._to_endpoint(session.seal_chunks(buf, now, FLAG_VNET))
                return
            self._to_endpoint(session.seal(segment.split(frame, header, self.tap, full=not offload), now,
                                           FLAG_PARTIAL if offload else 0))
        except segment.Unsplittable as e:
            self.own.tx.errors += 1
            self.note(now, "device-offload", "warning", f"dropped a device packet: {e}")

    # --- network -> device ---------------------------------------------------

    def from_network(self, batch, addr: Address, now: float) -> None:
        """What one read brought from `addr` (a UDP GRO batch, the frames of one
        TCP read): opened, checked, joined where they can be."""
        if self.pinned and addr != self.endpoint:
            self.own.rx.drops += len(batch)
            self.note(now, "stranger", "warning", f"dropped a packet from {_fmt(addr)}: not the configured peer "
                      f"{_fmt(self.endpoint)}", repeats=len(batch))  # one line per interval, counting the rest
            return
        session = self.session
        opened = session.open(batch, addr, now)
        if opened.source is not None and opened.source != self.endpoint:
            self._follow(opened.source)
        if opened.send:
            self._take_replies(opened.send)
        self._take_events(now)
        if opened.source is not None:  # one write per read, not per packet
            self._heard = now
            if not self.peer_up:
                self.peer_up = True
                self._events.append(PeerUp(self.endpoint))
        for packet, flags in opened.packets:
            if flags & FLAG_INCOMPLETE:  # a chunked one that will never be whole: what arrived, in its place
                self._salvage((packet,), addr, now)
            else:
                self._check(packet, flags, addr, now)
        partials = session.partials()
        if partials:
            self._salvage(partials, addr, now)
        coalescer = self.coalescer
        if coalescer is not None and coalescer.out:
            self.own.super_writes += coalescer.joined
            self._packets.extend(coalescer.flush())
        if session.offload_peer is not self.offload_peer:
            self.offload_peer = session.offload_peer
            self._events.append(OffloadChanged(self.offload_peer))

    def _check(self, packet, flags: int, addr: Address, now: float) -> None:
        """An opened packet on its way to the device: dropped and counted unless it is whole and allowed."""
        rx = self.own.rx
        session = self.session
        header = whole = None
        if flags & FLAG_VNET:  # the plaintext leads with a virtio header
            if len(packet) <= VNET_HEADER:
                rx.errors += 1
                self.note(now, "malformed", "warning", f"dropped a {len(packet)}-byte message from {_fmt(addr)}: no room for its virtio header")
                return
            header = virtio.unpack(packet)
            whole = memoryview(packet)
            packet = whole[VNET_HEADER:]
        n = size = len(packet)
        if self.mode == "tun":
            version = packet[0] >> 4
            if version == 4 and n >= 20:
                size = (packet[2] << 8) | packet[3]
                if size < (packet[0] & 15) * 4 or size < 20:  # shorter than its own header
                    size = 0
                src = packet[12:16]
            elif version == 6 and n >= 40:
                size = 40 + ((packet[4] << 8) | packet[5])
                src = packet[8:24]
            else:
                size, src = 0, b""
            if not 0 < size <= n or (size < n and not session.padded):
                rx.errors += 1
                self.note(now, "malformed", "warning", f"dropped a malformed {n}-byte packet from {_fmt(addr)}")
                return
            if size < n:
                packet = packet[:size]  # the sender's padding
            if self.allowed is not None and not _allowed(self.allowed, src):
                rx.drops += 1
                self.note(now, "allowed-ips", "warning", f"dropped a packet from {_fmt(addr)}: inner source outside allowed_ips")
                return
        elif n < self.min_packet:
            rx.errors += 1
            self.note(now, "malformed", "warning", f"dropped a malformed {n}-byte frame from {_fmt(addr)}")
            return
        if size > self.max_packet and (header is None or not header.gso):
            # the kernel would take it (a write to TUN/TAP is not held to the MTU) and route it on; the
            # coalescer joins only what passed here, so its segments fit too (a super-packet's: virtio.check)
            rx.errors += 1
            what = "frame" if self.tap else "packet"
            self.note(now, "oversize", "warning", f"dropped a {size}-byte {what} from {_fmt(addr)}: over "
                      f"the {self.max_packet}-byte {'frame limit' if self.tap else 'MTU'} of the interface")
            return
        lay = None
        if flags & FLAG_PARTIAL and header is None:  # where the checksum is follows from the packet
            lay = layout.parse(packet, self.tap)
            header = virtio.partial(lay)
        if header is not None:
            try:
                header = virtio.check(header, packet, self.tap, self.mtu, self.max_packet, lay)
            except virtio.BadHeader as e:
                rx.errors += 1
                self.note(now, "bad-offload", "warning", f"dropped a packet from {_fmt(addr)} with a bad virtio header: {e}")
                return
            if header.flags and self.clamp is not None and not header.gso and is_syn(packet, self.tap):
                packet = bytearray(packet)
                segment.finish(packet, header.csum_start, header.csum_offset)
                header = None
        if self.clamp is not None and header is None:
            packet = clamp_mss(packet, *self.clamp, self.tap)
        coalescer = self.coalescer
        if coalescer is None:
            self._packets.append(packet)
        elif header is not None and header.gso:
            if whole.readonly:
                coalescer.add_whole(header.pack() + packet)
            else:  # the session's own buffer (joined chunks, a decrypted frame): the checked header in place
                whole[:VNET_HEADER] = header.pack()
                coalescer.add_whole(whole[:VNET_HEADER + len(packet)])  # as checked: a TUN packet's padding trimmed
            self.own.super_writes += 1
        elif session.authenticated:
            coalescer.add(packet, header.pack() if header is not None and header.flags else None, lay)
        else:
            self._packets.append(virtio.PLAIN + packet)

    # --- live changes (reload) ------------------------------------------------

    def set_allowed(self, networks) -> None:
        self.allowed = _allowed_table(networks) if networks is not None and self.mode == "tun" else None

    def replace_session(self, session) -> None:
        """New keys: the old session's keypairs go with it; the next packet handshakes.
        Its counts stay in the totals."""
        session.rekey_from(self.session)
        self.counters.add(session.counters)
        self.session = session

    def set_keepalive(self, seconds: float | None) -> None:
        self.session.set_keepalive(seconds)

    def set_endpoint(self, addr: Address | None, pinned: bool, why: str = "reload") -> None:
        """The configured peer (start, reload, its name resolved anew): `pinned`,
        accept nothing from elsewhere. `why`: for EndpointChanged."""
        self._moved(addr, why)
        self.endpoint = addr
        self.pinned = pinned

    def set_peer_timeout(self, seconds: float | None) -> None:
        self.peer_timeout = seconds

    # --- timers --------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        session = self.session
        self._to_endpoint(session.handle_timer(now))
        partials = session.partials()
        if partials:
            self._salvage(partials, self.endpoint, now)
            if self.coalescer is not None and self.coalescer.out:
                self._packets.extend(self.coalescer.flush())
        self._take_events(now)
        if self.peer_up and self.peer_timeout is not None and now >= self._heard + self.peer_timeout:
            self._down(f"nothing from it for {self.peer_timeout:g} s")

    def _salvage(self, partials, addr: Address, now: float) -> None:
        """Super-packets that will never be whole: the segments that lie wholly
        inside what arrived go on, each checked like any packet."""
        for partial in partials:
            self.own.salvaged += 1
            for packet in salvage(partial, self.tap, self.mtu, self.max_packet):
                self._check(packet, FLAG_VNET, addr, now)

    def start(self, now: float) -> None:
        """The transport is up and the peer known: a session with a persistent
        keepalive says hello now, as WireGuard does when an interface comes up."""
        if self.endpoint is not None:
            self._to_endpoint(self.session.kick(now))
            self._take_events(now)

    # --- connection-oriented transports (TCP) -----------------------------------

    def transport_up(self, addr: Address, dialled: bool = False, now: float = 0.0) -> None:
        """A stream to the peer is established: send to it from now on. One we
        dialled starts a handshake at once: the listener may have restarted, and
        the old keypair would go unanswered until the 15 s no-reply timer."""
        if self.had_stream:
            self.own.reconnects += 1
        self.had_stream = True
        self._moved(addr, "stream")
        self.endpoint = addr
        self._events.append(StreamChanged(addr))
        if dialled:
            self._to_endpoint(self.session.stream_up(now))
            self._take_events(now)

    def transport_down(self) -> None:
        if self.peer_up:
            self._down("the TCP connection was lost")
        self.endpoint = None
        self._events.append(StreamChanged(None))

    # --- a list of transports ---------------------------------------------------------

    def set_stream(self, stream: bool) -> None:
        """The endpoint is on another kind of transport now (a list moved): a stream
        (TCP) takes a super-packet whole, datagrams (UDP) take it cut into segments."""
        self.stream = stream

    def probe(self, addr: Address, now: float) -> None:
        """Handshake with the peer at `addr` now, the endpoint left as it is: a path
        to try (a list's preferred transport). If the peer answers there, the core
        follows it as it follows any authenticated source."""
        messages = self.session.stream_up(now)  # a new path: an initiation at once, whatever the gap
        self._datagrams.extend([(m, addr) for m in messages])
        self._take_events(now)

    # --- events ---------------------------------------------------------------

    def note(self, now: float, kind: str, level: str, text: str, repeats: int = 1) -> None:
        """A rate-limited Notice (the shell's too: a transport's refusals); `repeats`:
        it stands for that many like it (a batch dropped whole)."""
        self._emit(Notice(kind, level, text), now, repeats)

    def _emit(self, event, now: float, repeats: int = 1) -> None:
        """Queue an event; one of a `kind` at most once per LOG_INTERVAL, saying how many were held back."""
        kind = event.kind
        if kind is not None:
            if now < self._quiet_until.get(kind, float("-inf")):
                self._suppressed[kind] = self._suppressed.get(kind, 0) + repeats
                return
            held = self._suppressed.pop(kind, 0)
            if repeats > 1:  # the first goes out now, the rest are held like any later one
                self._suppressed[kind] = repeats - 1
            self._quiet_until[kind] = now + LOG_INTERVAL
            if held:
                event = dataclasses.replace(event, held=held)
        self._events.append(event)

    def _take_events(self, now: float) -> None:
        """The session's events, passed on in order."""
        next_event = self.session.next_event
        event = next_event()
        while event is not None:
            self._emit(event, now)
            event = next_event()

    def _to_endpoint(self, messages) -> None:
        """What the session sealed or started, for the peer's endpoint. (Its events
        are taken after each call but seal: next_event() picks those up, off the
        per-packet path.)"""
        if messages:
            to = self.endpoint
            if to is None:
                self.own.tx.drops += len(messages)
            elif len(messages) == 1:
                self._datagrams.append((messages[0], to))
            else:
                self._datagrams.extend([(m, to) for m in messages])

    def _take_replies(self, replies) -> None:
        for message, addr in replies:
            dest = addr if addr is not None else self.endpoint
            if dest is None:
                self.own.tx.drops += 1
            else:
                self._datagrams.append((message, dest))

    def _follow(self, addr: Address) -> None:
        if self.endpoint is not None:
            self.own.peer_changes += 1
        self._events.append(PeerMoved(self.endpoint, addr))
        self._moved(addr, "roamed")
        self.endpoint = addr

    def _moved(self, addr: Address | None, why: str) -> None:
        """The endpoint becomes `addr`: EndpointChanged when it leaves a known address for another."""
        if addr is None:
            return
        old = self._last_endpoint
        self._last_endpoint = addr
        if old is not None and old != addr:
            self._events.append(EndpointChanged(old, addr, why))

    def _down(self, why: str) -> None:
        self.peer_up = False
        self._events.append(PeerDown(self.endpoint if self.endpoint is not None else self._last_endpoint, why))


def _partial_at_l4(frame, header: virtio.Header, tap: bool) -> bool:
    """A partial checksum where FLAG_PARTIAL says it is: in the TCP/UDP header."""
    lay = layout.parse(frame, tap)
    want = virtio.partial(lay)
    return lay is not None and (header.csum_start, header.csum_offset) == (want.csum_start, want.csum_offset)


def _allowed_table(networks) -> dict[int, list[tuple[int, int]]]:
    """{address length in bytes: [(network as int, mask as int)]} for quick checks."""
    table: dict[int, list[tuple[int, int]]] = {4: [], 16: []}
    for net in networks:
        size = 4 if net.version == 4 else 16
        table[size].append((int(net.network_address), int(net.netmask)))
    return table


def _allowed(table: dict[int, list[tuple[int, int]]], src: bytes | memoryview) -> bool:
    addr = int.from_bytes(src, "big")
    return any(addr & mask == net for net, mask in table[len(src)])

