"""Two WireGuard sessions, each in a core, wired through the in-memory network,
with a fake clock advanced by hand: handshakes, retries, rekeys, keepalives,
cookies, replays and roaming, tested without sleeping."""

import random

import pytest

from tunneld.service.relay import Relay
from tunneld.conn.memory import MemoryNetwork
from tunneld.core.clock import FakeClock
from tunneld.tun.memory import MemoryDevice
from tunneld.core.tunnel import Tunnel
from tunneld.wg import constants as C
from tunneld.wg.peer import WireGuardSession
from tunneld.wg.primitives import generate_private, public_of
from tests.packets import ipv4_udp

A, B = ("10.77.0.1", 51820), ("10.77.0.2", 51820)
PING = ipv4_udp("10.9.0.1", "10.9.0.2", 1000, 2000, b"hello")
PONG = ipv4_udp("10.9.0.2", "10.9.0.1", 2000, 1000, b"world")
KEY_A = generate_private(bytes(range(32)))
KEY_B = generate_private(bytes(range(32, 64)))


class Site:
    def __init__(self, net, addr, clock, key, peer_key, *, endpoint=None, compatible=True, psk=None,
                 keepalive=None, seed=0, under_load_backlog=C.UNDER_LOAD_BACKLOG, allowed_ips=None,
                 offload=False):
        rng = random.Random(seed)
        self.session = WireGuardSession(static_private=key, peer_public=public_of(peer_key), psk=psk,
                                        compatible=compatible, max_packet=1420, persistent_keepalive=keepalive,
                                        wall_offset=1.7e9, rng=rng.randbytes, under_load_backlog=under_load_backlog,
                                        offload=offload)
        self.core = Tunnel(self.session, "tun", 1420, endpoint=endpoint, allowed_ips=allowed_ips,
                           vnet=offload, mtu=1420)
        self.device = MemoryDevice(vnet=offload)
        self.relay = Relay(self.core, self.device, clock=clock)
        self.transport = net.transport(addr, self.relay.messages)
        self.relay.transport = self.transport
        self.counters = self.core.counters

    def send(self, *packets):
        for p in packets:
            self.device.inject(p)
        self.relay.device_readable()


class World:
    def __init__(self, **kw):
        self.net, self.clock = MemoryNetwork(), FakeClock()
        self.sent: list[tuple[float, bytes, tuple, tuple]] = []  # every message put on the wire
        self.drop = lambda message, src, dst: False
        self.net.loss = self._watch
        a_kw = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
        b_kw = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
        common = {k: v for k, v in kw.items() if not k.startswith(("a_", "b_"))}
        self.a = Site(self.net, A, self.clock, KEY_A, KEY_B, endpoint=B, seed=1, **{**common, **a_kw})
        self.b = Site(self.net, B, self.clock, KEY_B, KEY_A, seed=2, **{**common, **b_kw})

    def _watch(self, message, src, dst):
        self.sent.append((self.clock.now, message, src, dst))
        return self.drop(message, src, dst)

    def run(self, seconds: float):
        """Advance the clock, firing each side's timer at its deadline and
        delivering messages in between."""
        until = self.clock.now + seconds
        while True:
            self.net.deliver()
            due = [d for s in (self.a, self.b) if (d := s.core.get_timer()) is not None and d <= until]
            if not due:
                break
            self.clock.now = max(self.clock.now, min(due))
            for s in (self.a, self.b):
                d = s.core.get_timer()
                if d is not None and d <= self.clock.now:
                    s.relay.timer_fired()
        self.clock.now = until
        self.net.deliver()

    def kinds(self, since: float = float("-inf"), src=None):
        return [m[0] for t, m, s, _ in self.sent if t >= since and (src is None or s == src)]


def test_handshake_then_data_both_ways():
    w = World()
    w.a.send(PING)  # staged; starts the handshake
    w.run(0)
    assert w.kinds() == [1, 2, 4]  # initiation, response, the staged ping (no keepalive needed)
    assert w.b.device.written == [PING]
    assert w.a.counters.handshakes == 1
    w.b.send(PONG)  # b's keypair is confirmed by a's first transport message
    w.run(0)
    assert w.a.device.written == [PONG]
    assert w.b.counters.handshakes == 1
    assert w.b.core.endpoint == A  # learned from the authenticated initiation


def test_responder_sends_only_after_confirmation():
    w = World()
    w.drop = lambda m, s, d: m[0] == 4  # every transport message is lost
    w.a.send(PING)
    w.run(0)
    assert w.b.session.next is not None and w.b.session.current is None
    w.b.send(PONG)  # staged: no keypair confirmed yet
    w.run(0)
    assert [k for k in w.kinds(src=B)] == [2]
    assert len(w.b.session.staged) == 1
    w.drop = lambda m, s, d: False
    w.a.send(PING)
    w.run(0)
    assert w.b.device.written == [PING]
    assert w.a.device.written == [PONG]  # released as soon as a confirmed the keypair


def test_initiator_sends_a_keepalive_when_it_has_nothing_to_send():
    w = World(a_keepalive=None)
    w.a.session._initiate(w.clock.now, retry=False)
    w.a.relay.timer_fired()
    w.run(0)
    assert w.kinds() == [1, 2, 4]
    assert w.b.session.current is not None  # confirmed by the keepalive
    assert w.b.device.written == []  # a keepalive delivers nothing


def test_retry_after_a_dropped_initiation():
    w = World()
    w.drop = lambda m, s, d: m[0] == 1 and len([x for x in w.sent if x[1][0] == 1]) == 1
    w.a.send(PING)
    w.run(4.9)
    assert w.kinds() == [1]
    w.run(0.5)  # REKEY_TIMEOUT + jitter (< 334 ms)
    assert w.kinds() == [1, 1, 2, 4]
    assert w.b.device.written == [PING]
    first, second = [m for _, m, _, _ in w.sent if m[0] == 1]
    assert first[8:40] != second[8:40]  # a fresh ephemeral key per attempt


def test_gives_up_after_19_retries_and_drops_what_was_queued():
    """wireguard-go: retries while attempts <= MaxTimerHandshakes (18), so the first
    initiation and 19 retries, 5 s + 0..333 ms apart, then the next timer gives up."""
    w = World()
    w.drop = lambda m, s, d: True  # the peer is unreachable
    w.a.send(PING, PING)
    w.run(94.9)  # the 19th retry is due at 95..101.3 s
    assert len(w.a.session.staged) == 2
    assert len(w.kinds(src=A)) == 19
    w.run(12)  # and the give-up at 100..106.7 s
    initiations = w.kinds(src=A)
    assert initiations == [1] * 20
    assert len(w.a.session.staged) == 0
    assert w.a.counters.tx.drops == 2
    w.run(60)
    assert len(w.kinds(src=A)) == len(initiations)  # silence after giving up


def test_rekey_after_120_s_and_nothing_sent_on_a_180_s_old_keypair():
    w = World()
    w.a.send(PING)
    w.run(0)
    first = w.a.session.current
    w.run(119)
    w.a.send(PING)
    w.run(0)
    assert w.a.session.current is first  # not yet
    w.run(1.5)
    w.a.send(PING)  # 120.5 s old: sent on it, and a new handshake starts
    w.run(0)
    assert w.a.session.current is not first
    assert w.a.session.previous is first
    assert w.a.counters.handshakes == 2

    # the other side: its peer vanishes; after 180 s its keypair is never used again
    w2 = World()
    w2.a.send(PING)
    w2.run(0)
    w2.b.send(PONG)
    w2.run(0)
    w2.drop = lambda m, s, d: True
    w2.run(180)
    before = len(w2.sent)
    w2.b.send(PONG)
    w2.run(0)
    assert [m[0] for _, m, _, _ in w2.sent[before:]] == [1]  # only a new initiation, no data
    assert len(w2.b.session.staged) == 1


def test_keepalive_after_10_s_of_receiving_without_sending():
    w = World()
    w.a.send(PING)
    w.run(0)
    start = w.clock.now
    w.run(9.9)
    assert w.kinds(since=start + 0.001) == []
    w.run(0.2)
    assert w.kinds(since=start + 0.001) == [4]  # b's keepalive
    keepalive = [m for _, m, s, _ in w.sent if s == B][-1]
    assert len(keepalive) == 32


def test_new_handshake_after_15_s_without_reply():
    w = World()
    w.a.send(PING)
    w.run(0)
    w.drop = lambda m, s, d: s == B  # b's answers are lost
    t = w.clock.now
    w.a.send(PING)
    w.run(15.4)
    assert 1 in w.kinds(since=t + 14.9, src=A)


def test_persistent_keepalive():
    w = World(a_keepalive=25)
    w.a.send(PING)
    w.run(0)
    t = w.clock.now
    w.run(60)
    sent = [(round(ts - t), m[0], len(m)) for ts, m, s, _ in w.sent if s == A and ts > t]
    # b's keepalive at 10 s is authenticated traffic, which restarts a's 25 s timer
    assert sent == [(35, 4, 32), (60, 4, 32)]


def test_keys_zeroed_after_540_s_without_handshake():
    w = World()
    w.a.send(PING)
    w.run(0)
    w.drop = lambda m, s, d: True
    w.run(541)
    assert w.a.session.current is None and w.b.session.current is None
    assert w.b.session.next is None and w.b.session.previous is None


def test_replayed_initiation_is_rejected_without_answer():
    w = World()
    w.a.send(PING)
    w.run(0)
    initiation = next(m for _, m, _, _ in w.sent if m[0] == 1)
    before = len(w.sent)
    w.clock.advance(1)
    w.net.transport(("10.77.0.66", 4444)).send(initiation, B)  # captured and replayed
    w.run(0)
    assert len(w.sent) == before + 1  # the replay itself, and no response
    assert w.b.counters.auth_failures == 1
    assert w.b.core.endpoint == A  # the replayer did not become the peer


def test_replayed_transport_message_is_dropped():
    w = World()
    w.a.send(PING)
    w.run(0)
    data = [m for _, m, s, _ in w.sent if s == A and m[0] == 4][0]
    w.a.transport.send(data, B)
    w.run(0)
    assert w.b.device.written == [PING]
    assert w.b.counters.replays == 1


def test_roaming_follows_authenticated_packets_only():
    w = World()
    w.a.send(PING)
    w.run(0)
    w.a.transport.move(("10.77.0.9", 40000))
    w.a.send(PING)
    w.run(0)
    assert w.b.core.endpoint == ("10.77.0.9", 40000)
    w.b.send(PONG)
    w.run(0)
    assert w.a.device.written == [PONG]
    # a forged transport message from elsewhere moves nothing
    w.net.transport(("10.77.0.66", 1)).send(b"\x04\0\0\0" + bytes(28) + b"x" * 16, B)
    w.run(0)
    assert w.b.core.endpoint == ("10.77.0.9", 40000)


def test_cookie_exchange_under_load():
    w = World(b_under_load_backlog=0)  # always under load
    w.a.send(PING)
    w.run(0)
    # initiation, cookie reply; the initiation again at once with mac2, answered
    assert w.kinds() == [1, 3, 1, 2, 4]
    assert w.b.counters.cookies_sent == 1
    assert w.a.session.cookie_generator.cookie
    first, second = [m for _, m, _, _ in w.sent if m[0] == 1]
    assert first[132:148] == bytes(16) and second[132:148] != bytes(16)
    assert w.b.device.written == [PING]
    w.run(30)
    assert w.kinds().count(3) == 1  # one cookie, no further retries


def test_wrong_peer_key_gets_no_answer():
    w = World()
    stranger_key = generate_private(b"\x07" * 32)
    assert w.a.core.get_timer() is None  # a, b's real peer, stays silent: anything b sends is an answer to mallory
    mallory = Site(w.net, ("10.77.0.66", 51820), w.clock, stranger_key, KEY_B, endpoint=B, seed=9)
    mallory.send(PING)
    w.run(30)
    assert all(s == ("10.77.0.66", 51820) for _, _, s, _ in w.sent)  # b never sent anything
    assert w.b.counters.auth_failures >= 1
    assert w.b.device.written == []


def test_modes_never_complete_a_handshake_across():
    w = World(a_compatible=True, b_compatible=False)
    w.a.send(PING)
    w.run(20)
    assert 2 not in w.kinds()
    assert w.b.counters.auth_failures >= 1
    assert w.a.counters.handshakes == w.b.counters.handshakes == 0


def test_own_mode_handshake_and_reserved_bytes():
    w = World(compatible=False)
    w.a.send(PING)
    w.run(0)
    assert w.b.device.written == [PING]
    # WireGuard mode drops a message with reserved bytes set; tunneld mode binds them
    # into the transcript, so a flipped byte in flight fails authentication
    w2 = World(compatible=False)
    w2.drop = lambda m, s, d: False
    flipped = []

    def tamper(m, s, d):
        if m[0] == 1 and not flipped:
            flipped.append(True)
            w2.net.in_flight.append((m[:1] + b"\x01" + m[2:], s, d))
            return True
        return False
    w2.drop = tamper
    w2.a.send(PING)
    w2.run(0)
    assert w2.b.counters.handshakes == 0 and w2.b.counters.auth_failures == 1


@pytest.mark.parametrize("psk_a,psk_b,ok", [(b"\x01" * 32, b"\x01" * 32, True), (b"\x01" * 32, b"\x02" * 32, False),
                                            (None, b"\x02" * 32, False)])
def test_preshared_key(psk_a, psk_b, ok):
    w = World(a_psk=psk_a, b_psk=psk_b)
    w.a.send(PING)
    w.run(0)
    assert (w.b.device.written == [PING]) is ok


def test_padding_and_trimming():
    w = World()
    w.a.send(PING)  # 33 bytes
    w.run(0)
    data = [m for _, m, s, _ in w.sent if s == A and m[0] == 4][0]
    assert len(data) == 16 + 48 + 16  # padded to 48
    assert w.b.device.written == [PING]  # trimmed by the IPv4 total length


def test_allowed_ips_drop_foreign_inner_sources():
    import ipaddress
    w = World(b_allowed_ips=[ipaddress.ip_network("10.9.0.1/32")])
    w.a.send(PING, ipv4_udp("10.66.6.6", "10.9.0.2", 1, 2, b"spoofed"))
    w.run(0)
    assert w.b.device.written == [PING]
    assert w.b.counters.rx.drops == 1


def test_junk_is_counted_and_never_answered():
    w = World()
    junk = w.net.transport(("10.77.0.66", 1))
    for m in (b"", b"\x01", b"\x01\0\0\0" + bytes(144), b"\x02" * 92, b"\x05\0\0\0" + bytes(40), bytes(range(256))):
        junk.send(m, B)
    w.run(0)
    assert all(s == ("10.77.0.66", 1) for _, _, s, _ in w.sent)
    assert w.b.counters.rx.errors + w.b.counters.auth_failures == 6


# --- super-packets: the capability, the flags, what reaches the device -------------------

def _super_packet(size=20000):
    """A TSO read as the device gives it: virtio header, then the super-packet."""
    from tests.unit.test_offload import payload, tcp_super
    from tunneld.packet.virtio import Header
    frame, l4 = tcp_super(4, payload(size))
    return Header(1, 1, 0, 1368, l4, 16).pack() + frame, frame, Header(1, 1, 0, 1368, l4, 16)


def _handshake(w):
    from tunneld.packet.virtio import PLAIN
    w.a.send(PLAIN + PING if w.a.device.vnet else PING)
    w.run(1)
    assert w.b.device.written == [PLAIN + PING if w.b.device.vnet else PING]


def test_both_offload_agree_and_a_super_packet_arrives_joined():
    from tunneld.packet import virtio
    w = World(compatible=False, offload=True)
    _handshake(w)
    assert w.a.session.current.offload and w.b.session.current.offload
    w.b.device.written.clear()
    since = w.clock.now
    buf, frame, header = _super_packet()
    w.a.send(buf)
    w.run(0.1)
    wire = [m for t, m, s, _ in w.sent if t >= since and s == A]
    # chunks at the underlay's size, not segments: chunk i of 15, each its own message, the last shorter
    assert [(m[1], m[2], m[3]) for m in wire] == [(C.FLAG_VNET | C.FLAG_CHUNK, i, 15) for i in range(15)]
    assert {len(m) for m in wire[:-1]} == {1420 + 32} and len(wire[-1]) < 1420 + 32
    assert sum(len(m) - 32 for m in wire) == len(buf)
    counters = [int.from_bytes(m[8:16], "little") for m in wire]
    assert counters == list(range(counters[0], counters[0] + 15))
    assert len(w.b.device.written) == 1  # whole, as the sender's kernel made it: one device write
    out = w.b.device.written[0]
    assert out[10:] == frame and virtio.unpack(out) == header._replace(hdr_len=52)  # checked: hdr_len filled in
    assert w.b.counters.super_writes == 1 and w.a.counters.super_reads == 1 and w.a.counters.chunked == 1


def test_a_peer_without_chunks_gets_segments_with_partial_checksums():
    """An earlier tunneld announces super-packets but not chunks: it is sent the
    super-packet's segments, each fitting the MTU, joined again on its side."""
    from tunneld.packet import segment, virtio
    from tunneld.wg.peer import WireGuardSession as S
    w = World(compatible=False, offload=True)
    w.b.session.capabilities = C.CAP_SUPER_PACKETS  # what it announces in its handshake messages
    _handshake(w)
    assert w.a.session.current.offload and not w.a.session.current.chunks and not w.b.session.current.chunks
    w.b.device.written.clear()
    since = w.clock.now
    buf, frame, header = _super_packet()
    w.a.send(buf)
    w.run(0.1)
    wire = [m for t, m, s, _ in w.sent if t >= since and s == A]
    assert len(wire) == 15 and all(m[1] == C.FLAG_PARTIAL and len(m) <= 1420 + 32 for m in wire)
    assert len(w.b.device.written) == 1  # joined again for one device write
    out = w.b.device.written[0]
    h = virtio.unpack(out)
    assert h.gso == virtio.GSO_TCPV4
    assert segment.split(out[10:], h, False, True) == segment.split(frame, header, False, True)
    assert S is type(w.b.session)


def _segments_of(written):
    """The segments device writes carry, checksums finished (what the kernel would make of them)."""
    from tunneld.packet import segment, virtio
    out = []
    for p in written:
        h = virtio.unpack(p)
        if h.gso:
            out += [bytes(s) for s in segment.split(p[10:], h, False, True)]
        else:
            frame = bytearray(p[10:])
            if h.flags:
                segment.finish(frame, h.csum_start, h.csum_offset)
            out.append(bytes(frame))
    return out


def _hold_chunks(w) -> list:
    """From now on a's chunks are held back (kept in the list returned, in order) instead of sent."""
    held = []
    w.drop = lambda message, src, dst: src == A and message[0] == 4 and bool(message[1] & C.FLAG_CHUNK) \
        and (held.append(bytes(message)) or True)
    return held


def _chunks_sent(w, lose=(), repeat=(), order=None):
    """A 20,000-byte super-packet from a to b as chunks, some lost, repeated or
    reordered on the way; returns (what was sent, its segments)."""
    from tunneld.packet import segment
    held = _hold_chunks(w)
    buf, frame, header = _super_packet()
    w.a.send(buf)
    w.run(0.001)
    w.drop = lambda message, src, dst: False
    order = order if order is not None else range(len(held))
    batch = [held[i] for i in order if i not in lose] + [held[i] for i in repeat]
    w.net.hosts[A].send_many(batch, B)
    w.run(0.001)
    return held, segment.split(frame, header, False, True)


def test_a_lost_chunk_costs_only_the_segments_it_touched():
    from tests.unit.test_offload import valid_l4
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    held, segments = _chunks_sent(w, lose={5})
    assert w.b.device.written == []  # waiting for the chunk: it may be late, not lost
    w.run(0.2)  # given up (chunks.TIMEOUT): the segments wholly inside what arrived go on
    out = w.b.device.written
    got = _segments_of(out)
    # chunk 5 held bytes 7100..8520 of the super-packet: segments 5 and 6 (1368 bytes each after 54+10 of headers) lie in it
    lost = {k for k in range(len(segments)) if not (64 + (k + 1) * 1368 <= 5 * 1420 or 64 + k * 1368 >= 6 * 1420)}
    assert lost == {5, 6}
    assert got == [bytes(seg) for k, seg in enumerate(segments) if k not in lost]
    assert all(valid_l4(seg) for seg in got)
    assert w.b.counters.salvaged == 1


def test_a_loss_is_salvaged_before_the_next_super_packet_is_written():
    """The next super-packet's chunks say the lost one is lost: what arrived of the
    first reaches the device at once and before the second, so TCP inside sees a
    hole of the lost segments only (not of 64 KB it would resend)."""
    from tunneld.packet import segment
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    held = _hold_chunks(w)
    buf1, frame1, header1 = _super_packet()
    w.a.send(buf1)
    w.run(0.001)
    first = len(held)
    buf2, _, _ = _super_packet(9000)
    w.a.send(buf2)
    w.run(0.001)
    w.drop = lambda message, src, dst: False
    w.net.hosts[A].send_many(held[:5] + held[6:], B)  # chunk 5 of the first lost
    w.run(0.001)  # far less than chunks.TIMEOUT
    written = w.b.device.written
    assert len(held) > first + 1 and written[-1][10:] == buf2[10:]  # the second, whole, last
    segments = segment.split(frame1, header1, False, True)
    assert _segments_of(written[:-1]) == [bytes(seg) for k, seg in enumerate(segments) if k not in (5, 6)]
    assert w.b.counters.salvaged == 1
    count = len(written)
    w.net.hosts[A].send(held[5], B)  # the lost chunk after all, too late: it takes no slot, nothing is written
    w.run(0.001)
    assert len(w.b.device.written) == count and not w.b.session.reassembly.waiting


def test_chunks_late_across_a_rekey_still_arrive_whole_or_salvaged():
    """Chunks on the keypair before a rekey take the long way, one at a time: a chunk
    that both gives up one super-packet and completes another hands over both."""
    from tunneld.packet import segment
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    held = _hold_chunks(w)
    buf1, frame1, header1 = _super_packet()
    w.a.send(buf1)
    buf2, _, _ = _super_packet(3500)  # 3 chunks: its last one also tells that chunk 5 of the first is lost
    w.a.send(buf2)
    w.run(0.001)
    w.drop = lambda message, src, dst: False
    old = w.b.session.current
    w.run(6)  # past the 5 s between handshakes
    w.a.session._initiate(w.clock.now, retry=False)  # a new keypair: the held chunks are on the previous one
    w.a.relay.timer_fired()
    w.run(0.001)
    assert w.b.session.current is not old and w.b.session.previous is old
    w.b.device.written.clear()
    for message in held[:5] + held[6:]:  # one per read; chunk 5 of the first lost
        w.net.hosts[A].send(message, B)
        w.run(0.0001)
    written = w.b.device.written
    assert written and written[-1][10:] == buf2[10:]  # the second, whole
    segments = segment.split(frame1, header1, False, True)
    assert _segments_of(written[:-1]) == [bytes(seg) for k, seg in enumerate(segments) if k not in (5, 6)]


def test_reordered_and_repeated_chunks_arrive_once_whole():
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    replays = w.b.counters.replays + w.b.counters.rx.drops
    held, _ = _chunks_sent(w, order=[14, 3, 0, 1, 2, 13, 4, 5, 6, 7, 8, 9, 10, 11, 12], repeat=[0, 7, 14])
    assert len(w.b.device.written) == 1 and len(w.b.device.written[0]) == sum(len(m) - 32 for m in held)
    assert w.b.counters.replays + w.b.counters.rx.drops == replays + 3  # each repeat dropped, none written twice
    w.run(0.2)
    assert len(w.b.device.written) == 1 and w.b.counters.salvaged == 0


def test_a_forged_chunk_marks_nothing():
    """A chunk that does not authenticate (any byte changed, the header too) is
    refused; the real one still fills its place."""
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    failures = w.b.counters.auth_failures
    held = _hold_chunks(w)
    buf, _, _ = _super_packet()
    w.a.send(buf)
    w.run(0.001)
    w.drop = lambda message, src, dst: False
    forged = [held[0][:2] + bytes([held[0][2]]) + held[0][3:40] + bytes([held[0][40] ^ 1]) + held[0][41:],
              held[1][:3] + bytes([16]) + held[1][4:], held[2][:2] + b"\x07" + held[2][3:]]
    stranger = w.net.transport(("10.77.0.66", 1))
    stranger.send_many(forged, B)
    w.run(0.001)
    assert w.b.counters.auth_failures + w.b.counters.rx.drops >= failures + 3
    w.net.hosts[A].send_many(held, B)
    w.run(0.001)
    assert len(w.b.device.written) == 1 and w.b.device.written[0][10:] == buf[10:]


def test_a_peer_without_offload_gets_ordinary_packets():
    from tests.unit.test_offload import valid_l4
    from tunneld.packet import segment
    w = World(compatible=False, a_offload=True, b_offload=False)
    _handshake(w)
    assert not w.a.session.current.offload and not w.b.session.current.offload
    w.b.device.written.clear()
    since = w.clock.now
    buf, frame, header = _super_packet()
    w.a.send(buf)
    w.run(0.1)
    assert all(m[1:4] == b"\0\0\0" for t, m, s, _ in w.sent if t >= since and s == A)
    assert w.b.device.written == [bytes(s) for s in segment.split(frame, header, False, True)]
    assert all(valid_l4(p) for p in w.b.device.written)


def test_offload_flags_are_authenticated():
    w = World(compatible=False, offload=True)
    _handshake(w)
    w.b.device.written.clear()
    since = w.clock.now
    w.drop = lambda message, src, dst: src == A and message[0] == 4
    buf, _, _ = _super_packet(3000)
    w.a.send(buf)
    w.run(0.1)
    wire = [m for t, m, s, _ in w.sent if t >= since and s == A]
    failures = w.b.counters.auth_failures
    for m in wire:
        flipped = bytes((m[0], m[1] ^ C.FLAG_VNET)) + m[2:]
        w.net.transport(("10.77.0.66", 1)).send(flipped, B)  # an attacker's rewrite, from anywhere
    w.drop = lambda message, src, dst: False
    w.run(0.1)
    assert w.b.counters.auth_failures == failures + len(wire)
    assert w.b.device.written == []


def test_wireguard_mode_never_announces_offload():
    with pytest.raises(ValueError):
        WireGuardSession(static_private=KEY_A, peer_public=public_of(KEY_B), psk=None, compatible=True,
                         max_packet=1420, offload=True)


def test_new_keys_for_the_same_peer_keep_its_old_initiations_replays():
    w = World()
    w.a.send(PING)
    w.run(0)
    initiation = next(m for _, m, _, _ in w.sent if m[0] == 1)
    fresh = WireGuardSession(static_private=KEY_B, peer_public=public_of(KEY_A), psk=None, compatible=True,
                             max_packet=1420, wall_offset=1.7e9, rng=random.Random(7).randbytes)
    w.b.core.replace_session(fresh)  # a reload with new settings, the same peer (rekey_from)
    failures, sent = w.b.counters.auth_failures, len(w.sent)
    w.net.transport(("10.77.0.9", 51820), lambda batch, addr: None).send(initiation, B)  # the old initiation, replayed
    w.run(1)
    assert w.b.counters.auth_failures == failures + 1
    assert [s for _, _, s, _ in w.sent[sent:]] == [("10.77.0.9", 51820)]  # b answered nothing
