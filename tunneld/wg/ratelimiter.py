"""Rate limits for handshake work under load: a token bucket per source address,
and one for the whole daemon.

After wireguard-go `ratelimiter/ratelimiter.go` and the kernel's
`ratelimiter.c`: a source may do 20 handshakes a second with a burst of 5; IPv4
sources are keyed by address, IPv6 sources by their /64 (one host owns at least
that much). Entries idle for a second are swept; the table is bounded, and a new
source finds no room while it is full (refused, like the kernel's).

Pure: every call takes `now` (seconds on the caller's clock).
"""

from __future__ import annotations

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
    """A TokenBucket per source key (bytes)."""

    def __init__(self, rate: float = PACKETS_PER_SECOND, burst: float = PACKETS_BURSTABLE,
                 max_entries: int = MAX_ENTRIES):
        self.rate, self.burst, self.max_entries = rate, burst, max_entries
        self.table: dict[bytes, TokenBucket] = {}
        self.next_sweep = float("-inf")

    def allow(self, source: bytes, now: float) -> bool:
        if now >= self.next_sweep:
            self.sweep(now)
        bucket = self.table.get(source)
        if bucket is None:
            if len(self.table) >= self.max_entries:
                return False
            bucket = self.table[source] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)

    def sweep(self, now: float) -> None:
        """Forget sources idle for GC_INTERVAL (their bucket would be full again anyway)."""
        stale = [k for k, b in self.table.items() if now - b.last >= GC_INTERVAL]
        for k in stale:
            del self.table[k]
        self.next_sweep = now + GC_INTERVAL


def source_key(ip: bytes) -> bytes:
    """The limiter's key for a packed IP address: IPv4 whole, IPv6 by its /64,
    an IPv4-mapped IPv6 address as the IPv4 address it is."""
    if len(ip) == 16:
        if ip[:12] == b"\0" * 10 + b"\xff\xff":
            return ip[12:]
        return ip[:8]
    return ip
