"""The WireGuard session under attack and at the protocol's edges, on the fake
network and clock: valid-mac1 floods, crossed handshakes, clocks that jump,
and every message shape hypothesis can think of."""

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pairs.test_wg_session import A, B, KEY_A, KEY_B, PING, PONG, Site, World
from tunneld.wg import constants as C
from tunneld.wg.cookie import CookieGenerator
from tunneld.wg.primitives import public_of
from tunneld.wg.ratelimiter import GC_INTERVAL, MAX_ENTRIES, LoadMeter, RateLimiter, TokenBucket, source_key

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


V4 = [bytes([10, 0, 0, i]) for i in range(8)]
NET1 = bytes.fromhex("20010db8000000010000000000000000")  # 2001:db8:0:1::/64
NET2 = bytes.fromhex("20010db8000000020000000000000000")  # 2001:db8:0:2::/64


def v6(net: bytes, host: int) -> bytes:
    return net[:8] + host.to_bytes(8, "big")


def test_rate_limiter_per_source_and_sweep():
    r = RateLimiter(rate=20, burst=5, max_entries=3)
    assert sum(r.allow(V4[1], 0.0) for _ in range(100)) == 5
    assert r.allow(V4[2], 0.0)  # another source has its own bucket
    assert r.allow(V4[1], 0.05)  # one token back after 50 ms
    assert not r.allow(V4[1], 0.05)
    assert r.allow(V4[3], GC_INTERVAL)  # the sweep before it forgets 10.0.0.2 (idle 1 s), keeps 10.0.0.1
    assert list(r.table) == [V4[1], V4[3]]


# the limiter's table, one row per case: (max_entries, steps, table after)
# a step is (ip, now, allowed?); the table lists keys, least recently seen first
EVICTION = [
    # full: a new source evicts the least recently seen, and is let in
    (3, [(V4[1], 0, True), (V4[2], 0, True), (V4[3], 0, True), (V4[4], 0, True)], [V4[2], V4[3], V4[4]]),
    # seeing a source again makes it the most recently seen: 10.0.0.2 goes instead
    (3, [(V4[1], 0, True), (V4[2], 0, True), (V4[3], 0, True), (V4[1], 0, True), (V4[4], 0, True)],
     [V4[3], V4[1], V4[4]]),
    # an evicted source comes back with a full bucket (it had refilled the longest)
    (2, [*[(V4[1], 0, i < 5) for i in range(6)], (V4[2], 0.5, True), (V4[3], 0.5, True), (V4[1], 0.5, True)],
     [V4[3], V4[1]]),
    # a source in its bucket keeps its empty bucket while others come and go: never refilled by eviction
    (2, [*[(V4[1], 0, i < 5) for i in range(5)], (V4[2], 0, True), (V4[1], 0, False), (V4[3], 0, True),
         (V4[1], 0, False)], [V4[3], V4[1]]),
    # one table entry per /64: a host and its neighbours share a bucket; another /64 has its own
    (4, [*[(v6(NET1, h), 0, h <= 5) for h in range(1, 8)], (v6(NET2, 1), 0, True)], [NET1[:8], NET2[:8]]),
    # an IPv4-mapped IPv6 address is the IPv4 address it is
    (4, [*[(V4[1], 0, True) for _ in range(4)], (b"\0" * 10 + b"\xff\xff" + V4[1], 0, True),
         (b"\0" * 10 + b"\xff\xff" + V4[1], 0, False)], [V4[1]]),
]


@pytest.mark.parametrize("max_entries, steps, after", EVICTION)
def test_rate_limiter_evicts_the_least_recently_seen(max_entries, steps, after):
    r = RateLimiter(rate=20, burst=5, max_entries=max_entries)
    assert [r.allow(ip, now) for ip, now, _ in steps] == [ok for _, _, ok in steps]
    assert list(r.table) == after
    assert len(r.table) <= max_entries


def test_rate_limiter_never_refuses_a_new_source_however_many_came_before():
    r = RateLimiter(max_entries=MAX_ENTRIES)
    sources = [bytes([10, 128 + (i >> 16), (i >> 8) & 255, i & 255]) for i in range(3 * MAX_ENTRIES)]
    assert all(r.allow(ip, 0.5) for ip in sources)  # a fresh bucket each: the table was full long before
    assert len(r.table) == MAX_ENTRIES and r.evicted == 2 * MAX_ENTRIES


def test_rate_limiter_exempts_the_peers_address_only():
    r = RateLimiter(rate=20, burst=5, max_entries=2)
    peer = v6(NET1, 1)
    r.exempt = peer
    assert all(r.allow(peer, 0.0) for _ in range(1000))  # never limited, never in the table
    assert r.table == {}
    # its /64 neighbours (a flood from the peer's network) are limited as ever
    assert sum(r.allow(v6(NET1, 2), 0.0) for _ in range(100)) == 5
    assert all(r.allow(peer, 0.0) for _ in range(10))  # and do not spend the peer's allowance
    r.exempt = V4[1]  # the peer moved: its old address is an ordinary source again
    assert sum(r.allow(peer, 0.0) for _ in range(100)) == 0  # the /64's bucket is empty
    assert all(r.allow(V4[1], 0.0) for _ in range(100))


# the load meter (rate 100/s, backlog 5, hold 1 s), one row per case: (arrival times, under load after each)
LOAD = [
    ([0.0], [False]),  # one initiation
    ([0.0, 0.001, 0.002], [False] * 3),  # crossed handshakes and a cookie retry: the most one peer sends
    ([0.0] * 5, [False] * 5),  # five at once: the backlog, not more
    ([0.0] * 6, [False] * 5 + [True]),  # the sixth finds the backlog full
    ([0.0] * 6 + [0.999, 1.0], [False] * 5 + [True, True, False]),  # held for 1 s after the last overflow
    ([i * 0.0105 for i in range(200)], [False] * 200),  # 95 a second: under the budget's rate, never
    ([i * 0.004 for i in range(100)], [False] * 7 + [True] * 93),  # 250 a second: 0.6 more each, full at the 8th
    ([0.0] * 6 + [i * 0.009 for i in range(1, 200)], [False] * 5 + [True] * 200),  # a flood keeps it on
]


@pytest.mark.parametrize("arrivals, loaded", LOAD)
def test_load_meter_table(arrivals, loaded):
    m = LoadMeter(C.HANDSHAKES_PER_SECOND, C.UNDER_LOAD_BACKLOG, C.UNDER_LOAD_AFTER)
    assert [m.arrive(t) for t in arrivals] == loaded


def test_source_keys():
    assert source_key(v6(NET1, 1)) == source_key(v6(NET1, 1) + os.urandom(8))[:8] == NET1[:8]  # one /64, one key
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


SPOOFED = 10_000  # source addresses in the flood below: more than the limiter's table holds


class SpoofedFlood:
    """Valid-mac1 initiations (a pool of 512, each replayed: capturing one is as good as
    knowing the key) from SPOOFED addresses in 10.128.0.0/9, where nobody lives: the
    cookie replies go nowhere, so no message of the flood can ever carry a mac2."""

    def __init__(self, w: World, per_second: int, seed: int = 7):
        rng = random.Random(seed)
        self.w, self.per_tick, self.n = w, per_second // 100, 0
        self.pool = [flood_initiation(rng, public_of(KEY_B)) for _ in range(512)]

    def run(self, seconds: float, until=lambda: False) -> None:
        """Flood for `seconds` of fake time in 10 ms ticks, or until `until()`. Each
        tick's messages go ahead of what is already on its way: the budgets' tokens
        refilled since the last tick are the flood's to take first."""
        for _ in range(round(seconds / 0.01)):
            tick = []
            for _ in range(self.per_tick):
                i = self.n % SPOOFED
                src = (f"10.{128 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", 40000 + (i & 7))
                tick.append((self.pool[self.n % len(self.pool)], src, B))
                self.n += 1
            self.w.net.in_flight.extendleft(reversed(tick))
            self.w.run(0.01)
            if until():
                return


def test_a_restarted_peer_gets_in_through_a_flood_from_10000_spoofed_sources():
    """Issue 14: 5,000 valid-mac1 initiations a second from 10,000 spoofed sources kept a
    restarted initiator out for 10 s (the limiter's table was full, so its new source was
    refused). The peer's address is exempt, b asks it for a cookie, it returns the cookie
    at once and is answered, while the flood, which never sees its cookies, never gets
    Diffie-Hellman once b is under load."""
    w = World()
    w.a.send(PING)
    w.run(0)
    flood = SpoofedFlood(w, 5000)
    flood.run(2.0)  # b is under load and has seen every spoofed address at least once
    assert w.b.session.limiter.table  # the per-source limiter is on
    dh_for_the_flood = w.b.counters.auth_failures  # a random initiation fails its first AEAD, after one DH
    # a restarts: a new process, new session, no cookie; b still holds the old keypair
    del w.net.hosts[A]
    w.a = Site(w.net, A, w.clock, KEY_A, KEY_B, endpoint=B, seed=11)
    started = w.clock.now
    w.a.send(PING)
    flood.run(C.REKEY_TIMEOUT, until=lambda: w.a.session.current is not None)
    assert w.a.session.current is not None, "the restarted peer did not get in before its first retry"
    # initiation, cookie reply, initiation with mac2, response: its first attempt got through
    assert [m[0] for t, m, s, d in w.sent if t >= started and A in (s, d)][:4] == [1, 3, 1, 2]
    assert w.b.device.written[-1] == PING
    flood.run(1.0)
    assert w.b.counters.auth_failures == dh_for_the_flood  # under load, no DH for the flood
    assert dh_for_the_flood <= C.UNDER_LOAD_BACKLOG + 1  # only what came before b was under load
    assert w.b.counters.cookies_sent <= C.COOKIE_REPLIES_BURST + C.COOKIE_REPLIES_PER_SECOND * 3.5 + 1


def test_a_floods_first_burst_leaves_the_peer_its_half_of_the_handshake_budget():
    """The flood starts and the restarted peer's initiation arrives in the same instant,
    behind 50 flood messages: before b knew it was under load, the flood spent what
    Diffie-Hellman budget it could; the peer's initiation with its cookie still finds
    the half the load meter keeps for it."""
    w = World()
    w.a.send(PING)
    w.run(10)  # the budget is full again
    del w.net.hosts[A]
    w.a = Site(w.net, A, w.clock, KEY_A, KEY_B, endpoint=B, seed=12)
    flood = SpoofedFlood(w, 5000)
    for i in range(50):
        w.net.in_flight.append((flood.pool[i], (f"10.128.0.{i}", 40000), B))
    started = w.clock.now
    w.a.send(PING)  # queued behind the burst
    w.run(0)
    assert w.b.counters.auth_failures == C.UNDER_LOAD_BACKLOG  # the flood's DH, all before b was under load
    assert [m[0] for t, m, s, d in w.sent if t >= started and A in (s, d) and m[0] != 4][:4] == [1, 3, 1, 2]
    assert w.a.session.current is not None
    assert w.b.device.written[-1] == PING


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
    from tunneld.service.relay import Relay
    from tunneld.conn.memory import MemoryNetwork
    from tunneld.core.clock import FakeClock
    from tunneld.tun.memory import MemoryDevice
    from tunneld.core.tunnel import Tunnel
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
