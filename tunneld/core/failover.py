"""Which entry of a transport list carries the tunnel, pure: the policy alone.

    authenticated(index, now) -> bool   the peer authenticated on entry `index` (a handshake
                                        completed there, or the core followed it there):
                                        the tunnel is on that entry now; True if it moved
    unanswered(now) -> int | None       a handshake attempt on the active entry went
                                        unanswered (the session's HandshakeRetry): the
                                        entry to move to, once FAILOVER_AFTER did, or None
    get_timer() -> float | None         when handle_timer() wants calling (a probe is due)
    handle_timer(now) -> int | None     the entry to probe now (the preferred one), or None

Only entries that can be dialled (a remote: an initiator's) are moved to or
probed; a listener's entries are where the peer may turn up, and the tunnel
follows it there. The preferred entry is the first that can be dialled. The
shell (service/transport_set.py) carries out what this says: it sends to the
entry, dials it, or sends one handshake initiation there (the probe), and tells
this what the session reported. No I/O, no clock: every call takes `now`.
"""

from __future__ import annotations

# Two unanswered attempts (5 s each, wg/constants.py REKEY_TIMEOUT) after the
# 15 s of silence that start a new handshake (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT):
# the third attempt goes over the next entry, about 25 s after the path died.
FAILOVER_AFTER = 2  # unanswered handshake attempts on the active entry
FAILBACK = 30  # s between probes of the preferred entry while another carries the tunnel (0: never)


class Failover:
    def __init__(self, dialable: tuple[bool, ...], failback: float = FAILBACK, after: int = FAILOVER_AFTER):
        """`dialable[i]`: entry i has a remote (we can initiate on it). `failback`:
        seconds between probes of the preferred entry (0: stay where it works)."""
        if not dialable:
            raise ValueError("a transport list has at least one entry")
        self.dialable = tuple(dialable)
        self.failback = failback
        self.after = after
        self.preferred = next((i for i, d in enumerate(self.dialable) if d), None)
        self.active = self.preferred if self.preferred is not None else 0
        self.changes = 0  # moves of the active entry since start
        self.unanswered_count = 0  # handshake attempts on the active entry that went unanswered
        self.probing = False  # a probe's initiation is out: its retry is not the active entry's failure
        self.t_probe: float | None = None

    # --- what the session said ----------------------------------------------------

    def authenticated(self, index: int, now: float) -> bool:
        """The peer answered on entry `index`: the tunnel is there. True if that is a move."""
        self.unanswered_count = 0
        self.probing = False
        if index == self.active:
            return False
        self._move(index, now)
        return True

    def unanswered(self, now: float) -> int | None:
        """A handshake attempt went unanswered: the entry to move to, or None."""
        if self.probing:  # the probe's initiation (sent elsewhere) is what went unanswered
            self.probing = False
            return None
        self.unanswered_count += 1
        if self.unanswered_count < self.after:
            return None
        target = self._next_dialable(self.active)
        self.unanswered_count = 0
        if target is None or target == self.active:
            return None  # nowhere else to go: keep trying here
        self._move(target, now)
        return target

    # --- the probe timer ----------------------------------------------------------

    def get_timer(self) -> float | None:
        return self.t_probe

    def handle_timer(self, now: float) -> int | None:
        """The preferred entry, when a probe of it is due (and the next one armed)."""
        if self.t_probe is None or now < self.t_probe:
            return None
        if self.preferred is None or self.active == self.preferred or not self.failback:
            self.t_probe = None
            return None
        self.t_probe = now + self.failback
        self.probing = True
        return self.preferred

    def set_failback(self, seconds: float, now: float) -> None:
        """A reload changed the interval: counted from now."""
        self.failback = seconds
        self._arm(now)

    # --- inside -----------------------------------------------------------------------

    def _move(self, index: int, now: float) -> None:
        self.active = index
        self.changes += 1
        self._arm(now)

    def _arm(self, now: float) -> None:
        away = self.preferred is not None and self.active != self.preferred
        self.t_probe = now + self.failback if away and self.failback else None

    def _next_dialable(self, index: int) -> int | None:
        """The first entry after `index` that can be dialled, from the top again past the end."""
        n = len(self.dialable)
        for step in range(1, n + 1):
            i = (index + step) % n
            if self.dialable[i]:
                return i
        return None
