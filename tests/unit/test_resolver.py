"""The resolver's decisions (conn/resolver.py's ResolvePolicy) on a hand-advanced
clock: when a name is looked up again, which of its addresses is used, and the
backoff of a name that does not resolve; and which answers a socket can use."""

import socket

import pytest

from tunneld.conn.resolver import RETRY_MAX, ResolvePolicy, usable
from tunneld.core.clock import FakeClock

V4A, V4B = ("192.0.2.1", 55555), ("192.0.2.2", 55555)
V6 = ("2001:db8::1", 55555, 0, 0)


def policy(floor=5, ceiling=300):
    return ResolvePolicy(floor, ceiling), FakeClock(0.0)


def test_first_answer_is_used_and_asked_again_at_the_ceiling_without_a_ttl():
    p, clock = policy()
    assert p.due == float("-inf")  # at once
    p.asking(clock())
    assert p.resolved(clock(), [V6, V4A]) == V6  # the resolver's order: RFC 6724 puts v6 first where it works
    assert p.due == 300


@pytest.mark.parametrize("ttl, due", [(1, 5), (60, 60), (86400, 300)])
def test_a_ttl_is_honoured_between_floor_and_ceiling(ttl, due):
    p, clock = policy()
    p.resolved(clock(), [V4A], ttl=ttl)
    assert p.due == due


def test_a_new_answer_keeps_the_address_in_use_while_it_is_in_it():
    p, clock = policy()
    p.resolved(clock(), [V4A, V4B])
    assert p.current == V4A
    assert p.resolved(clock.advance(300), [V4B, V4A]) is None  # a round-robin name reordered: no flip
    assert p.current == V4A
    assert p.resolved(clock.advance(300), [V4B]) == V4B  # the name left it: its first address
    assert p.resolved(clock.advance(300), [V4B, V4B]) is None  # one per socket type: the same answer


def test_every_address_is_tried_then_the_name_is_asked_again_no_sooner_than_the_floor():
    p, clock = policy(floor=5)
    p.asking(clock())
    p.resolved(clock(), [V6, V4A, V4B])
    clock.advance(2)
    assert p.unanswered(clock()) == V4A
    assert p.unanswered(clock()) == V4B
    assert p.due == 300  # not every address has gone unanswered yet
    assert p.unanswered(clock()) == V6  # all three tried: look up again, but not before 5 s after the last
    assert p.due == 5
    clock.advance(10)
    p.asking(clock())
    assert p.resolved(clock(), [("192.0.2.9", 55555)]) == ("192.0.2.9", 55555)


def test_one_address_unanswered_asks_the_name_again_and_stays():
    p, clock = policy()
    p.asking(clock())
    p.resolved(clock(), [V4A])
    clock.advance(60)
    assert p.unanswered(clock()) is None
    assert p.due == 60  # at once: the last lookup was more than the floor ago


def test_a_name_that_does_not_resolve_backs_off_and_keeps_its_last_answer():
    p, clock = policy()
    waits = []
    for _ in range(8):
        p.failed(clock(), "Name or service not known")
        waits.append(p.due - clock())
        clock.now = p.due
    assert waits == [1, 2, 4, 8, 16, RETRY_MAX, RETRY_MAX, RETRY_MAX]
    assert p.current is None and p.error == "Name or service not known"
    assert p.resolved(clock(), []) is None and p.failures == 9  # an empty answer is a failure too
    p.resolved(clock(), [V4A])
    p.failed(clock(), "Temporary failure in name resolution")
    assert p.current == V4A and p.due - clock() == 1  # the backoff starts again; the address stays


def test_backoff_never_waits_longer_than_the_ceiling():
    p, clock = policy(floor=1, ceiling=3)
    for _ in range(4):
        p.failed(clock(), "x")
    assert p.due - clock() == 3


def test_a_reload_asks_now():
    p, clock = policy()
    p.resolved(clock(), [V4A])
    p.refresh(clock.advance(7))
    assert p.due == 7


INFOS = [(socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::1", 55555, 0, 0)),
         (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 55555))]


@pytest.mark.parametrize("family, dual, want", [
    (socket.AF_INET, False, [("192.0.2.1", 55555)]),
    (socket.AF_INET6, True, [("2001:db8::1", 55555, 0, 0), ("::ffff:192.0.2.1", 55555, 0, 0)]),
    (socket.AF_INET6, False, [("2001:db8::1", 55555, 0, 0)]),
])
def test_usable_addresses_for_the_socket(family, dual, want):
    assert usable(INFOS, family, dual) == want
