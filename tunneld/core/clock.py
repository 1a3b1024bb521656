"""A clock the tests advance by hand: the core never reads one, so retries, rekeys
and keepalives are tested without sleeping."""

from __future__ import annotations


class FakeClock:
    """A clock advanced by hand: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
