"""A listening socket's accept loop, for every listener in the daemon (the
metrics endpoint, the TCP transport).

    listener readable -> accept(), at most ACCEPT_BATCH per callback -> on_accept(sock, addr)
      the connection's own error (ECONNABORTED, EPROTO, ...)         -> the next one
      out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) -> make_room() closed one of
                                                                        ours? accept again
                                                                     -> else stop reading for
                                                                        ACCEPT_PAUSE, then resume

Why pause: accept(2) failing with EMFILE leaves the connection queued, so the
listener stays readable and a level-triggered reader is called straight back,
forever (63,000 warnings a second). Why make_room first: a listener whose
clients can be evicted should not be starved by them; when nothing can be
freed, pausing is all that helps. Either way it is said in one line, at most
once per STARVED_LOG_INTERVAL, with a count of the times held back.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

log = logging.getLogger("tunneld")

ACCEPT_BATCH = 64  # connections accepted per callback; then the loop serves the others
ACCEPT_PAUSE = 0.5  # s the listener is not read after accept found no descriptor
STARVED_LOG_INTERVAL = 60.0  # s: at most one log line per interval about running out

# accept(2), "Error handling": errors of the pending connection, not of the listener
_THEIRS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
                     errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH})
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Accepts on `sock` (listening, non-blocking) and hands each connection to
    `on_accept(conn, addr)`; `conn` is the accepted socket, still blocking.
    `make_room()`, when given, closes one connection of the owner's to free a
    descriptor and says whether it did. `what` prefixes the log line ("metrics").
    `batch`: connections accepted per callback."""

    def __init__(self, sock: socket.socket, on_accept: Callable[[socket.socket, object], None], what: str,
                 make_room: Callable[[], bool] | None = None, batch: int = ACCEPT_BATCH):
        self.sock, self.on_accept, self.what, self.make_room = sock, on_accept, what, make_room
        self.batch = batch
        self.starved = 0  # times accept found no descriptor or memory (a counter)
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._quiet_until = float("-inf")
        self._held = 0

    def start(self) -> None:
        if not self._reading:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def close(self) -> None:
        """Stop accepting; the socket stays the owner's to close."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _readable(self) -> None:
        made_room = False
        for _ in range(self.batch):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _THEIRS:
                    continue
                self.starved += 1
                if e.errno in _STARVED and not made_room and self.make_room is not None and self.make_room():
                    made_room = True  # once per failure: if the freed descriptor did not help, pause
                    self._say(e, "closed the oldest client to make room")
                    continue
                self._pause(e)
                return
            made_room = False
            self.on_accept(conn, addr)

    def _pause(self, e: OSError) -> None:
        self._say(e, f"not accepting for {ACCEPT_PAUSE:g} s at a time until descriptors free up")
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        self.start()

    def _say(self, e: OSError, action: str) -> None:
        now = self._loop.time()
        if now < self._quiet_until:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._quiet_until = now + STARVED_LOG_INTERVAL
        log.warning("%s: accept: %s: %s%s", self.what, e.strerror or e, action,
                    f" ({held} more times since the last such line)" if held else "")
