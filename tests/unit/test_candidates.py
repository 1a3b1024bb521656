"""Which TCP candidate makes room for a newcomer (tunneld/conn/candidates.py), one row
per case, and what a candidate must open with."""

from dataclasses import dataclass

import pytest

from tunneld.conn.candidates import CANDIDATES_MAX, CANDIDATES_PER_SOURCE, Stage, first_out, make_room, source_of

O, A = Stage.OPENING, Stage.ANSWERED
PEER = source_of(("192.0.2.1", 0))


@dataclass(eq=False)
class Cand:
    name: str
    source: bytes
    stage: Stage
    ticket: int


def pool(*rows):
    """rows: (name, source address, stage); tickets in the order given (oldest first)."""
    return [Cand(name, source_of((ip, 1000 + i)), stage, i) for i, (name, ip, stage) in enumerate(rows)]


def strangers(n, stage=O, first_ip=10):
    return [(f"s{first_ip + i}", f"198.51.100.{first_ip + i}", stage) for i in range(n)]


# (name, the pool with the newcomer "new" in it, which one make_room closes)
ROOM = [
    ("room to spare", pool(*strangers(3), ("new", "203.0.113.1", O)), None),
    ("full: the oldest goes", pool(*strangers(CANDIDATES_MAX), ("new", "203.0.113.1", O)), "s10"),
    ("full: one that sent nothing goes before an answered one",
     pool(*strangers(2, A), *strangers(CANDIDATES_MAX - 2, O, 20), ("new", "203.0.113.1", A)), "s20"),
    ("full of answered ones: the one answered longest ago",
     pool(*strangers(CANDIDATES_MAX, A), ("new", "203.0.113.1", O)), "s10"),
    ("the peer's own address outranks answered strangers",
     pool(("peer", "192.0.2.1", O), *strangers(CANDIDATES_MAX - 1, A), ("new", "203.0.113.1", O)), "s10"),
    ("never the newcomer, however it ranks", pool(("new", "203.0.113.1", O), *strangers(CANDIDATES_MAX, A)), "s10"),
    ("a source at its share: its own oldest goes, even with room",
     pool(("x1", "203.0.113.1", O), ("x2", "203.0.113.1", O), ("y", "203.0.113.2", O), ("new", "203.0.113.1", O)),
     "x1"),
    ("a source at its share: its silent one before its answered one",
     pool(("x1", "203.0.113.1", A), ("x2", "203.0.113.1", O), ("new", "203.0.113.1", O)), "x2"),
    ("an IPv6 /64 is one source", pool(("x1", "2001:db8:1:2::a", O), ("x2", "2001:db8:1:2:ffff::b", O),
                                       ("new", "2001:db8:1:2::c", O)), "x1"),
    ("different /64s are different sources", pool(("x1", "2001:db8:1:2::a", O), ("x2", "2001:db8:1:3::a", O),
                                                  ("new", "2001:db8:1:4::a", O)), None),
    ("a v4-mapped address is its IPv4 address", pool(("x1", "::ffff:203.0.113.1", O), ("x2", "203.0.113.1", O),
                                                     ("new", "::ffff:203.0.113.1", O)), "x1"),
]


@pytest.mark.parametrize("name,candidates,victim", ROOM, ids=[r[0] for r in ROOM])
def test_make_room(name, candidates, victim):
    newcomer = next(c for c in candidates if c.name == "new")
    closed = make_room(candidates, newcomer, PEER)
    assert (closed.name if closed is not None else None) == victim


def test_a_newcomer_is_never_refused_and_the_pool_stays_bounded():
    """Strangers from many sources reopening: every newcomer stays, the pool never
    passes CANDIDATES_MAX, no source passes its share."""
    waiting: list[Cand] = []
    for i in range(500):
        newcomer = Cand(f"n{i}", source_of((f"198.51.100.{i % 37}", i)), (O, A)[i % 3 == 0], i)
        waiting.append(newcomer)
        closed = make_room(waiting, newcomer, PEER)
        if closed is not None:
            waiting.remove(closed)
        assert newcomer in waiting
        assert len(waiting) <= CANDIDATES_MAX
        assert all(sum(c.source == s.source for c in waiting) <= CANDIDATES_PER_SOURCE for s in waiting)


@pytest.mark.parametrize("newcomers", [CANDIDATES_MAX - 1, CANDIDATES_MAX])
def test_an_answered_candidate_survives_seven_answered_newcomers(newcomers):
    """The bound the module docstring gives: the peer's candidate, answered last,
    outlives 7 strangers answered after it (any number that sent nothing)."""
    waiting = [Cand("peer", source_of(("203.0.113.7", 1)), A, 0)]
    waiting += [Cand(f"old{i}", source_of((f"198.51.100.{i}", 1)), A, -1 - i) for i in range(CANDIDATES_MAX - 1)]
    ticket = 1
    for i in range(50):  # silent ones: they churn among themselves
        newcomer = Cand(f"silent{i}", source_of((f"198.51.101.{i}", 1)), O, ticket)
        ticket += 1
        waiting.append(newcomer)
        waiting.remove(make_room(waiting, newcomer, None))
    for i in range(newcomers):
        newcomer = Cand(f"answered{i}", source_of((f"198.51.102.{i}", 1)), A, ticket)
        ticket += 1
        waiting.append(newcomer)
        waiting.remove(make_room(waiting, newcomer, None))
    assert any(c.name == "peer" for c in waiting) is (newcomers < CANDIDATES_MAX)


def test_first_out_orders_by_rank_then_age():
    c = pool(("peer-old", "192.0.2.1", O), ("answered", "198.51.100.1", A), ("silent-new", "198.51.100.2", O))
    assert first_out(c, PEER).name == "silent-new"
    assert first_out(c[:2], PEER).name == "answered"
    assert first_out(c, None).name == "peer-old"  # no peer known yet: just rank and age


@pytest.mark.parametrize("addr,want", [
    (("203.0.113.9", 1), bytes([203, 0, 113, 9])),
    (("::ffff:203.0.113.9", 1, 0, 0), bytes([203, 0, 113, 9])),
    (("2001:db8:a:b:c:d:e:f", 1, 0, 0), bytes.fromhex("20010db8000a000b")),
    (("fe80::1%eth0", 1, 0, 2), bytes.fromhex("fe80000000000000")),
    (("not an address", 1), repr(("not an address", 1)).encode()),
    ("a label", repr("a label").encode()),
])
def test_source_of(addr, want):
    assert source_of(addr) == want


@pytest.mark.parametrize("message,ok", [
    (b"\x01\x00\x00\x00" + bytes(144), True),
    (b"\x01\x01\x00\x00" + bytes(144), True),  # tunneld mode's capability bits: the session judges them
    (b"\x01\x00\x00\x00" + bytes(143), False),
    (b"\x01\x00\x00\x00" + bytes(145), False),
    (b"\x02\x00\x00\x00" + bytes(88), False),  # a response
    (b"\x04\x00\x00\x00" + bytes(144), False),  # a transport message of the same size
    (b"\x45", False),
])
def test_the_daemon_opens_with_an_initiation(message, ok):
    from tunneld.service.daemon import OPENING
    assert OPENING.size == 148
    assert OPENING.accepts(message) is ok
