"""The session's timers and their hooks (wireguard-go device/timers.go)."""

from __future__ import annotations

from tunneld.core.events import HandshakeGaveUp, HandshakeRetry, KeysZeroed, NoReply
from tunneld.wg.constants import (KEEPALIVE_TIMEOUT, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
                                  REKEY_TIMEOUT_JITTER_MAX, ZERO_KEYS_AFTER)


# wireguard-go's MaxTimerHandshakes: a retry is sent while attempts <= 18, so a
# handshake is tried 1 + 19 times (about 90 s) before it is given up
MAX_HANDSHAKE_ATTEMPTS = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)


class Timers:
    """WireGuardSession's five timers (wireguard-go timers.go): retransmit,
    keepalive, new handshake, zero keys, persistent keepalive; each a deadline on
    the caller's clock or None. The named hooks are called where the event is."""

    def _authenticated_sent(self, now: float) -> None:
        """timers.go: any authenticated packet sent (no keepalive owed) and traversal."""
        self.t_keepalive = None
        if self.persistent_keepalive:
            self.t_persistent = now + self.persistent_keepalive

    def _authenticated_received(self, now: float) -> None:
        """timers.go: any authenticated packet received (the peer is alive) and traversal."""
        self.t_new_handshake = None
        if self.persistent_keepalive:
            self.t_persistent = now + self.persistent_keepalive

    def get_timer(self) -> float | None:
        """Called after every packet: no allocation, just the earliest armed timer."""
        best = None
        for d in (self.t_retransmit, self.t_keepalive, self.t_new_handshake, self.t_zero_keys, self.t_persistent):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def handle_timer(self, now: float) -> list | tuple:
        if self.t_retransmit is not None and now >= self.t_retransmit:
            self.t_retransmit = None
            self._retransmit(now)
        if self.t_keepalive is not None and now >= self.t_keepalive:
            self.t_keepalive = None
            self._send_keepalive(now)
            if self.need_another_keepalive:
                self.need_another_keepalive = False
                self.t_keepalive = now + KEEPALIVE_TIMEOUT
        if self.t_new_handshake is not None and now >= self.t_new_handshake:
            self.t_new_handshake = None
            self._events.append(NoReply(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT))
            self._initiate(now, retry=False)
        if self.t_zero_keys is not None and now >= self.t_zero_keys:
            self.t_zero_keys = None
            self.current = self.previous = self.next = None
            self.handshake.zero()
            self._events.append(KeysZeroed(ZERO_KEYS_AFTER))
        if self.t_persistent is not None and now >= self.t_persistent:
            self.t_persistent = None
            self._send_keepalive(now)
        return self._take()

    def kick(self, now: float) -> list | tuple:
        if self.persistent_keepalive:
            self._send_keepalive(now)
        return self._take()

    def stream_up(self, now: float) -> list | tuple:
        """We dialled a new TCP connection: handshake on it at once, whatever the
        5 s gap says (what went on the old stream is gone with it)."""
        self._initiate(now, retry=False, gap=False)
        return self._take()

    def _retransmit(self, now: float) -> None:
        if self.attempts > MAX_HANDSHAKE_ATTEMPTS:
            dropped = len(self.staged)
            self.staged.clear()
            self.counters.tx.drops += dropped
            self.t_keepalive = None
            if self.t_zero_keys is None:
                self.t_zero_keys = now + ZERO_KEYS_AFTER
            self._events.append(HandshakeGaveUp(REKEY_ATTEMPT_TIME, dropped))
            return
        self.attempts += 1
        self._events.append(HandshakeRetry(self.attempts, REKEY_TIMEOUT))
        self._initiate(now, retry=True)

    def _jitter(self) -> float:
        return self._jitter_rng.randrange(int(REKEY_TIMEOUT_JITTER_MAX * 1000)) / 1000
