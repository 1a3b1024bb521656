"""Who may wait at an encrypted TCP listener: the candidates, and which one goes
when a newcomer needs room. Pure: no sockets, no clock; tcp.py carries it out.

A candidate is an accepted connection that has not authenticated yet. Anyone
who can reach the port can open one, so what a candidate gets is small and
short, and no set of strangers can keep the real peer out:

- Its first message must be the session's opening message (a handshake
  initiation: right type, right size), or it is closed at once; each of its
  messages goes to the session alone, and one the session neither authenticates
  nor answers (a cookie reply, under load) closes it too. It may send at most
  CANDIDATE_MESSAGES in all and must authenticate within CANDIDATE_TIMEOUT.
  The first authenticated message makes it the peer's connection.
- A newcomer is always admitted; to make room, one candidate is closed: from
  the newcomer's source when that source already has CANDIDATES_PER_SOURCE
  (an IPv4 address, or an IPv6 /64, which one host owns at least; a v4-mapped
  address counts as the IPv4 address), else from all when more than
  CANDIDATES_MAX wait. The one closed (`first_out`) is the lowest in rank,
  and of those the one that has waited longest since it last made progress.
  Rank, lowest first: sent nothing whole yet; answered by the session; from
  the source the peer last authenticated from (a TCP source cannot be
  spoofed, so only the peer, or a host behind its own address, has that).

Why the real peer always gets in. The listener sets TCP_DEFER_ACCEPT and reads
a connection as soon as it accepts it, before it accepts the next: the peer
sends its initiation the moment it connects, so the kernel hands the
connection over with the initiation already in it, and the session
authenticates it in the same callback. A candidate is never closed for room
before it has been read, so the peer's never waits in the pool at all. That
holds whatever the eviction order, and however many strangers reopen.

The order matters when the peer must wait. Under load, the session answers its
initiation with a cookie reply and the peer's candidate waits one round trip
for the initiation that returns the cookie (and where TCP_DEFER_ACCEPT does not
hold, e.g. a connection completed by a SYN cookie, it waits for its initiation
to arrive). With the pool full of strangers reopening as they are closed:

- random eviction: each newcomer closes the peer's candidate with chance 1/8,
  so it survives k newcomers in its round trip with chance (7/8)^k: 34% at
  k = 8, 12% at k = 16. The peer retries every second (its reconnect) and gets
  in eventually; an attacker only has to be fast.
- oldest first, by rank (this choice): the peer's candidate, answered last,
  is closed only when the 7 others waiting were all answered after it, and
  another newcomer comes: strangers that sent nothing or a partial frame (the
  cheap attack) never count. Answered strangers need the listener's public key
  and the session's cookie replies, which its budget and per-source limit
  bound per second: in a round trip of a few milliseconds, a handful. And a
  peer that comes back from the address it last authenticated from (a
  restart, a reconnect) ranks above every stranger, so it is never the one
  closed.

Nothing here costs the common case: not under load, a stranger's initiation
fails, which closes its connection; only candidates that have sent nothing
whole, or were answered, ever wait.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, TypeVar

CANDIDATES_MAX = 8  # candidates waiting at once; a newcomer past it closes one (first_out)
CANDIDATES_PER_SOURCE = 2  # from one IPv4 address or IPv6 /64; a newcomer past it closes one of theirs
CANDIDATE_TIMEOUT = 5.0  # s (REKEY_TIMEOUT): a candidate that has not authenticated by then is closed
CANDIDATE_MESSAGES = 8  # messages a candidate may send before it must have authenticated


class Stage(enum.Enum):
    OPENING = "opening"  # accepted; its first message has not arrived whole
    ANSWERED = "answered"  # the session answered it (a cookie reply): it owes the next message


@dataclass(frozen=True)
class Opening:
    """The message a candidate must open with: the session's handshake initiation,
    at most `size` bytes and `accepts(message)` true (type and size; the session
    checks the rest)."""

    size: int
    accepts: Callable[[bytes | memoryview], bool]


class Candidate(Protocol):
    source: bytes  # source_of(its address)
    stage: Stage
    ticket: int  # when it last made progress (accepted, answered), as a rising count


C = TypeVar("C", bound=Candidate)


def source_of(addr) -> bytes:
    """What CANDIDATES_PER_SOURCE counts by: an IPv4 address, an IPv6 /64, a
    v4-mapped address as the IPv4 address it is."""
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except (ValueError, TypeError, IndexError):
        return repr(addr).encode()
    if ip.version == 6:
        mapped = ip.ipv4_mapped
        return mapped.packed if mapped is not None else ip.packed[:8]
    return ip.packed


def first_out(candidates: Iterable[C], peer_source: bytes | None = None) -> C:
    """The one to close first: the lowest rank (nothing whole sent, then answered,
    then from `peer_source`), of those the one waiting longest since its last progress."""
    return min(candidates, key=lambda c: (c.source == peer_source, c.stage is Stage.ANSWERED, c.ticket))


def make_room(pool: Iterable[C], newcomer: C, peer_source: bytes | None = None) -> C | None:
    """The candidate to close now that `newcomer` (in `pool`, already read)
    waits too, or None. Never the newcomer: it has had its first read and no
    more. `peer_source`: source_of() the address the peer last authenticated from."""
    others = [c for c in pool if c is not newcomer]
    same = [c for c in others if c.source == newcomer.source]
    if len(same) >= CANDIDATES_PER_SOURCE:
        return first_out(same, peer_source)
    if len(others) >= CANDIDATES_MAX:
        return first_out(others, peer_source)
    return None
