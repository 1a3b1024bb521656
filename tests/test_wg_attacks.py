"""The WireGuard session under attack and at the protocol's edges, on the fake
network and clock: valid-mac1 floods, crossed handshakes, clocks that jump,
and every message shape hypothesis can think of."""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_wg_session import A, B, KEY_A, KEY_B, PING, PONG, Site, World
from tunneld.wg import constants as C
from tunneld.wg.cookie import CookieGenerator
from tunneld.wg.primitives import public_of
from tunneld.wg.ratelimiter import GC_INTERVAL, RateLimiter, TokenBucket, source_key

M = ("10.78.0.3", 40000)  # mallory


def flood_initiation(rng: random.Random, target_public: bytes) -> bytes:
    """An initiation with random content and a valid mac1: all it takes is the public key."""
    return CookieGenerator(target_public).add_macs(bytes([1, 0, 0, 0]) + rng.randbytes(112), 0.0)


# --- the rate limiter ---------------------------------------------------------

def test_token_bucket_table():
    b = TokenBucket(rate=20, burst=5, now=0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]  # the burst, then empty
    assert b.take(0.049) is False and b.take(0.05) is True  # one token every 50 ms
    assert [b.take(10.0) for _ in range(6)] == [True] * 5 + [False]  # saved up to the burst only


def test_rate_limiter_per_source_sweep_and_bound():
    r = RateLimiter(rate=20, burst=5, max_entries=3)
    assert sum(r.allow(b"\x0a\0\0\x01", 0.0) for _ in range(100)) == 5
    assert r.allow(b"\x0a\0\0\x02", 0.0)  # another source has its own bucket
    r.allow(b"\x0a\0\0\x03", 0.0)
    assert not r.allow(b"\x0a\0\0\x04", 0.0)  # the table is full: a new source is refused
    assert r.allow(b"\x0a\0\0\x04", GC_INTERVAL)  # idle entries swept, room again
    assert len(r.table) == 1


def test_source_keys():
    v6 = bytes.fromhex("20010db8000000010000000000000001")
    assert source_key(v6) == source_key(v6[:8] + os.urandom(8))  # one /64, one key
    assert source_key(b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])) == bytes([10, 0, 0, 1])


# --- floods ---------------------------------------------------------------------

def _flood(w: World, mallory, rng, count: int) -> None:
    pub_b = public_of(KEY_B)
    for _ in range(count):
        mallory.send(flood_initiation(rng, pub_b), B)


def test_valid_mac1_flood_is_shed_and_the_peer_keeps_talking():
    w = World()
    w.a.send(PING)
    w.run(0)
    assert w.b.device.written == [PING]
    mallory = w.net.transport(M)
    rng = random.Random(3)
    delivered = 1
    for tick in range(200):  # 2 s: 1,000 initiations every 10 ms (100k a second), a ping among them
        _flood(w, mallory, rng, 1000)
        w.a.send(PING)
        w.run(0.01)
        delivered += 1
        assert len(w.b.device.written) == delivered, f"ping {tick} lost"
    replies_to_m = [m for _, m, s, d in w.sent if s == B and d == M]
    cookies = w.b.counters.cookies_sent
    # mallory's source: 5 at once and 20 a second, so a cookie reply for at most that many
    assert 0 < len(replies_to_m) == cookies <= 5 + 20 * 2 + 20
    assert all(m[0] == C.MESSAGE_COOKIE_REPLY for m in replies_to_m)
    assert w.b.counters.handshakes_shed >= 200_000 - 100
    assert w.b.counters.handshakes == 1  # no handshake work done for mallory


def test_a_restarted_peer_handshakes_at_once_during_a_flood():
    w = World()
    w.a.send(PING)
    w.run(0)
    mallory = w.net.transport(M)
    rng = random.Random(4)
    for _ in range(50):  # the flood is on: b is under load
        _flood(w, mallory, rng, 1000)
        w.run(0.01)
    # a restarts: a new process, new session, no cookie, and b still holds the old keypair
    del w.net.hosts[A]
    w.a = Site(w.net, A, w.clock, KEY_A, KEY_B, endpoint=B, seed=11)
    started = w.clock.now
    w.a.send(PING)
    for _ in range(100):
        _flood(w, mallory, rng, 1000)
        w.run(0.01)
        if w.a.session.current is not None:
            break
    # initiation, cookie reply, initiation with mac2, response: one round trip more
    assert w.a.session.current is not None
    assert w.clock.now - started <= 0.05
    assert w.b.device.written[-1] == PING
    b_to_a = [m[0] for t, m, s, d in w.sent if s == B and d == A and t >= started]
    assert b_to_a[:2] == [C.MESSAGE_COOKIE_REPLY, C.MESSAGE_RESPONSE]


def test_global_cookie_budget_bounds_a_many_source_flood():
    w = World()
    pub_b = public_of(KEY_B)
    rng = random.Random(5)
    sources = [w.net.transport((f"10.{i >> 8}.{i & 255}.9", 40000)) for i in range(3000)]
    for second in range(3):
        for s in sources:
            s.send(flood_initiation(rng, pub_b), B)
        w.run(1.0)
    # 3,000 sources a second, each within its own rate, but the daemon answers at most
    # COOKIE_REPLIES_PER_SECOND a second (plus the first burst)
    assert w.b.counters.cookies_sent <= C.COOKIE_REPLIES_BURST + C.COOKIE_REPLIES_PER_SECOND * 3
    assert w.b.counters.handshakes_shed > 0


# --- crossed handshakes and the retry timer ---------------------------------------

def test_crossed_handshakes_are_not_authentication_failures():
    w = World()
    w.b.core.endpoint = A
    w.a.send(PING)
    w.b.send(PONG)  # both initiate before either initiation arrives
    w.run(0)
    assert w.kinds()[:2] == [1, 1]
    w.run(30)
    assert w.a.counters.auth_failures == w.b.counters.auth_failures == 0
    assert w.a.session.current is not None and w.b.session.current is not None
    assert PING in w.b.device.written and PONG in w.a.device.written


def test_retry_stays_armed_after_answering_the_peers_initiation():
    """a initiates; b's initiation crosses it; a answers b (a handshake message sent,
    so a's own retry is held back by the 5 s gap) and b's confirmation is lost:
    a must still retry once the gap is over, not sit on its queued packet."""
    w = World()
    w.b.core.endpoint = A
    w.drop = lambda m, s, d: s == A and m[0] == 1  # a's initiations never arrive
    w.a.send(PING)
    w.run(2.0)
    w.drop = lambda m, s, d: s == B and m[0] == 4  # b's transport messages never arrive
    w.b.send(PONG)  # b initiates; a answers it
    w.run(0.1)
    assert w.a.session.next is not None  # a answered and waits for b to confirm
    w.drop = lambda m, s, d: False
    w.run(10)
    assert w.a.session.current is not None
    assert PING in w.b.device.written


# --- TAI64N and the wall clock ----------------------------------------------------

def test_initiation_timestamps_follow_the_wall_clock_and_never_go_back():
    wall = [1.0e9]  # a machine whose clock is not set yet (2001)
    w = World()
    w.a.session.wall_clock = lambda: wall[0]
    # b accepted an initiation from a's previous run, stamped at the real time
    w.b.session.handshake.last_timestamp = bytes.fromhex("400000006553f10a00000000")  # 2023
    w.a.send(PING)
    w.run(6)
    assert w.b.device.written == []  # stale timestamps: replays, in b's eyes
    assert w.b.counters.auth_failures >= 1
    wall[0] = 1.9e9  # NTP sets the clock
    w.run(6)
    assert w.b.device.written == [PING]  # accepted without a restart
    sent = w.a.session.handshake.last_sent_timestamp
    wall[0] = 1.0e9  # and steps it back again
    w.a.session._initiate(w.clock.now + 10, retry=False)
    assert w.a.session.handshake.last_sent_timestamp > sent


# --- fuzzed messages -------------------------------------------------------------

MESSAGE = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.sampled_from([1, 2, 3, 4]), st.binary(min_size=3, max_size=3), st.binary(max_size=200))
    .map(lambda t: bytes([t[0]]) + t[1] + t[2]),
    st.tuples(st.sampled_from([(1, 148), (2, 92), (3, 64), (4, 32), (4, 48)]), st.randoms())
    .map(lambda t: bytes([t[0][0], 0, 0, 0]) + t[1].randbytes(t[0][1] - 4)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(MESSAGE, max_size=20))
def test_any_messages_deliver_nothing_and_answer_nothing(messages):
    w = World()
    w.a.send(PING)
    w.run(0)
    before = len(w.sent)
    mallory = w.net.transport(M)
    for m in messages:
        mallory.send(m, B)
    w.run(0)
    assert w.b.device.written == [PING]
    assert [d for _, _, s, d in w.sent[before:] if s == B] == []  # not one reply
    assert w.b.core.endpoint == A


# --- TAP frames in tunneld mode: byte for byte ---------------------------------------

def tap_pair():
    from tunneld.relay import Relay
    from tunneld.testing import FakeClock, MemoryDevice, MemoryNetwork
    from tunneld.tunnel import Tunnel
    from tunneld.wg.peer import WireGuardSession
    net, clock = MemoryNetwork(), FakeClock()
    sites = []
    for addr, key, peer, endpoint, seed in ((A, KEY_A, KEY_B, B, 1), (B, KEY_B, KEY_A, None, 2)):
        rng = random.Random(seed)
        session = WireGuardSession(static_private=key, peer_public=public_of(peer), psk=None, compatible=False,
                                   max_packet=1522, padding_trailer=True, wall_offset=1.7e9, rng=rng.randbytes)
        core = Tunnel(session, "tap", 1522, endpoint=endpoint)
        device = MemoryDevice()
        relay = Relay(core, device, clock=clock)
        relay.transport = net.transport(addr, relay.messages)
        sites.append((session, core, device, relay))
    return net, sites


def test_tap_frames_of_every_length_arrive_byte_for_byte():
    net, ((sa, ca, da, ra), (sb, cb, db, rb)) = tap_pair()
    rng = random.Random(6)
    frames = [rng.randbytes(n) for n in range(14, 1523)]  # every length, up to 1500 + 14 + two VLAN tags
    for f in frames:
        da.inject(f)
        ra.device_readable()
        net.deliver()
    assert db.written == frames


def test_tap_trailer_on_the_wire_and_malformed_trailers():
    net, ((sa, ca, da, ra), (sb, cb, db, rb)) = tap_pair()
    wire = []
    net.loss = lambda m, s, d: wire.append(m) and False
    da.inject(b"\x02" * 15)
    ra.device_readable()
    net.deliver()
    assert db.written == [b"\x02" * 15]
    data = [m for m in wire if m[0] == 4 and len(m) > 32]
    assert len(data[-1]) == 16 + 16 + 16  # 15 bytes + 0 padding + the length byte: one block
    kp = sa.current
    # authentic messages whose plaintext is not frame || zeros || length: dropped, counted
    for bad in (b"\x02" * 15 + b"\x10", b"\x02" * 14 + b"\x01\x01", bytes([0] * 15 + [15]), b"\x02" * 16 + bytes([16])):
        counter = kp.send_counter
        kp.send_counter += 1
        net.in_flight.append((kp.remote_prefix + counter.to_bytes(8, "little") + kp.send.seal(counter, bad), A, B))
    errors = cb.counters.rx.errors
    net.deliver()
    assert db.written == [b"\x02" * 15]
    assert cb.counters.rx.errors == errors + 4
