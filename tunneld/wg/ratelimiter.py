"""Rate limits for handshake work under load: a token bucket per source address,
one for the whole daemon, and the meter that says when we are under load.

After wireguard-go `ratelimiter/ratelimiter.go` and the kernel's
`ratelimiter.c`: a source may do 20 handshakes a second with a burst of 5; IPv4
sources are keyed by address, IPv6 sources by their /64 (one host owns at least
that much). Entries idle for a second are swept. The table is bounded, and
when it is full a new source evicts the source seen least recently instead of
being refused: a flood from more spoofed addresses than the table holds would
otherwise keep every newcomer out, the real peer first among them (the kernel
refuses; wireguard-go's table has no bound). Forgetting the least recently
seen source costs the least: its bucket has refilled the longest, and a new
bucket starts full anyway. The peer's current address (exactly; the session
sets `exempt`) is not limited at all, so a flood from the rest of its /64
cannot spend its allowance; its cookie replies come from a small bucket of its
own instead (peer.py). Someone who spoofs the peer's exact address can empty
that bucket, as with WireGuard's shared per-source bucket: they gain nothing
more, since cookies go to the real peer and the budgets bound the work.

The per-source limit is not the protection against many sources: cookies are
(whitepaper 5.3). A spoofed source never receives the cookie reply it asked
for, so it never produces a mac2, while the real initiator returns its cookie
at once; under load, only a valid mac2 reaches Diffie-Hellman.

Pure: every call takes `now` (seconds on the caller's clock).
"""

from __future__ import annotations

import collections

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
GC_INTERVAL = 1.0  # s: entries idle this long are swept
MAX_ENTRIES = 4096  # sources tracked at once


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; take() spends one."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: float, now: float = float("-inf")):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """A TokenBucket per source key (bytes), the table in least-recently-seen order."""

    def __init__(self, rate: float = PACKETS_PER_SECOND, burst: float = PACKETS_BURSTABLE,
                 max_entries: int = MAX_ENTRIES):
        self.rate, self.burst, self.max_entries = rate, burst, max_entries
        self.table: collections.OrderedDict[bytes, TokenBucket] = collections.OrderedDict()
        self.next_sweep = float("-inf")
        self.exempt: bytes | None = None  # the peer's packed IP address: never limited
        self.evicted = 0  # sources forgotten to make room

    def allow(self, ip: bytes, now: float) -> bool:
        """`ip`: the source's packed address (4 or 16 bytes)."""
        if ip == self.exempt:
            return True
        if now >= self.next_sweep:
            self.sweep(now)
        key = source_key(ip)
        table = self.table
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= self.max_entries:
                table.popitem(last=False)  # the least recently seen
                self.evicted += 1
            bucket = table[key] = TokenBucket(self.rate, self.burst, now)
        else:
            table.move_to_end(key)  # the most recently seen
        return bucket.take(now)

    def sweep(self, now: float) -> None:
        """Forget sources idle for GC_INTERVAL (their bucket would be full again anyway).
        The table is in the order sources were last seen: the idle ones lead it."""
        table = self.table
        while table:
            key, bucket = next(iter(table.items()))
            if now - bucket.last < GC_INTERVAL:
                break
            del table[key]
        self.next_sweep = now + GC_INTERVAL


class LoadMeter:
    """Whether handshake work arrives faster than it is done: "under load".

    The kernel and wireguard-go call a responder under load while its handshake
    queue holds 1/8 of its capacity or more: messages arrive faster than the
    workers do Diffie-Hellman. tunneld handles each message as it is read and has
    no queue to look at, so the meter keeps a virtual one: every handshake
    message that may ask for DH joins it (before any check, as the queue is fed),
    and it drains at `rate`, the daemon's handshake budget. Under load when a
    message finds more than `backlog` waiting, and for `hold` seconds after
    (WireGuard: 1 s). A token bucket `backlog` deep is exactly that queue.

    Why `backlog` is half the budget's burst: every message that spends the
    budget joined the meter first, and both run at one rate, so until the
    meter says "under load" a flood has spent at most `backlog` of the budget;
    from then on only a valid mac2 spends it. The other half is therefore always
    there for the real peer's initiation with its cookie, however fast the
    flood. 1/8 of our burst (10) would be a single message, which a peer's own
    crossed handshakes reach; one peer never has more than three handshake
    messages in flight, while a flood fills the meter in five.
    """

    def __init__(self, rate: float, backlog: float, hold: float):
        self.queue = TokenBucket(rate, backlog)
        self.hold = hold
        self.until = float("-inf")  # under load before this time

    def arrive(self, now: float) -> bool:
        """A handshake message arrived: under load now?"""
        if not self.queue.take(now):
            self.until = now + self.hold
        return now < self.until

    def under_load(self, now: float) -> bool:
        return now < self.until


def source_key(ip: bytes) -> bytes:
    """The limiter's key for a packed IP address: IPv4 whole, IPv6 by its /64,
    an IPv4-mapped IPv6 address as the IPv4 address it is."""
    if len(ip) == 16:
        if ip[:12] == _V4_MAPPED:
            return ip[12:]
        return ip[:8]
    return ip


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
