"""What happened in the core, as values: the one way news leaves it.

The core and its session queue these; the shell takes them with
`Tunnel.next_event()` (aioquic's `quic/events.py`) and decides what to do:
log them (`str(event)` is today's log line, `event.level` its level), tell
systemd, run hooks, count. Nothing here does I/O.

Events a flood could repeat carry a `kind`: the core lets one of a kind through
per interval and says in `held` how many it held back before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tunneld.core.contract import format_address as _fmt

Address = Any


@dataclass(frozen=True, slots=True)
class Event:
    # class attributes, not fields (unannotated, so a subclass may make them fields: Notice)
    level = "info"  # logging level name for the line made of it
    kind = None  # a name for events a flood could repeat: rate-limited; None: never


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """A new keypair is in use: `initiated` by us, or the peer confirmed theirs."""
    peer: Address
    initiated: bool
    first: bool  # the session's first: logged at info, later ones at debug

    @property
    def level(self) -> str:  # type: ignore[override]
        return "info" if self.first else "debug"

    def __str__(self) -> str:
        return f"handshake completed with {_fmt(self.peer)} ({'we initiated' if self.initiated else 'peer initiated'})"


@dataclass(frozen=True, slots=True)
class HandshakeAnswered(Event):
    level: ClassVar[str] = "debug"
    peer: Address

    def __str__(self) -> str:
        return f"handshake: answered an initiation from {_fmt(self.peer)}"


@dataclass(frozen=True, slots=True)
class HandshakeStale(Event):
    """A response to an initiation we no longer wait for (crossed handshakes)."""
    level: ClassVar[str] = "debug"
    peer: Address
    why: str

    def __str__(self) -> str:
        return f"handshake: dropped a {self.why} from {_fmt(self.peer)}"


@dataclass(frozen=True, slots=True)
class CookieReceived(Event):
    peer: Address

    def __str__(self) -> str:
        return f"handshake: {_fmt(self.peer)} is under load; sending the initiation again with its cookie"


@dataclass(frozen=True, slots=True)
class HandshakeRetry(Event):
    level: ClassVar[str] = "debug"
    attempt: int
    after: float  # s without a response

    def __str__(self) -> str:
        return f"handshake: no response after {self.after:g} s, retry {self.attempt}"


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp(Event):
    level: ClassVar[str] = "warning"
    after: float  # s of attempts
    dropped: int  # queued packets let go

    def __str__(self) -> str:
        return f"handshake did not complete after {self.after:g} s; gave up, dropped {self.dropped} queued packets"


@dataclass(frozen=True, slots=True)
class NoReply(Event):
    """Data sent and nothing authenticated back: a new handshake starts."""
    after: float

    def __str__(self) -> str:
        return f"no reply from the peer for {self.after:g} s; new handshake"


@dataclass(frozen=True, slots=True)
class KeysZeroed(Event):
    after: float

    def __str__(self) -> str:
        return f"no new handshake for {self.after:g} s: all session keys zeroed"


@dataclass(frozen=True, slots=True)
class PeerMoved(Event):
    """The core sends to `new` from now on (`old` None: the first it learned)."""
    old: Address
    new: Address

    def __str__(self) -> str:
        if self.old is None:
            return f"peer is {_fmt(self.new)}"
        return f"peer moved from {_fmt(self.old)} to {_fmt(self.new)}"


@dataclass(frozen=True, slots=True)
class EndpointChanged(Event):
    """The address the core sends to changed from one to another: the peer roamed,
    a stream to it came up elsewhere, or the shell set it (its name resolved anew,
    a reload). Not the first address it learns: that comes with PeerUp."""
    level: ClassVar[str] = "debug"
    old: Address
    new: Address
    why: str  # "roamed", "stream", or what the shell said ("resolved", "reload")

    def __str__(self) -> str:
        return f"endpoint {_fmt(self.old)} -> {_fmt(self.new)} ({self.why})"


@dataclass(frozen=True, slots=True)
class PeerUp(Event):
    """Something from the peer was accepted (authenticated, when the session can
    tell), the first time or after PeerDown."""
    peer: Address

    def __str__(self) -> str:
        return f"peer {_fmt(self.peer)} is up"


@dataclass(frozen=True, slots=True)
class PeerDown(Event):
    """Nothing accepted from the peer for the peer timeout, or its stream was lost."""
    level: ClassVar[str] = "warning"
    peer: Address  # where it was last
    why: str

    def __str__(self) -> str:
        return f"peer {_fmt(self.peer)} is down: {self.why}"


@dataclass(frozen=True, slots=True)
class StreamChanged(Event):
    """A stream transport's connection to the peer came up (`peer`) or went (None)."""
    level: ClassVar[str] = "debug"
    peer: Address

    def __str__(self) -> str:
        return f"stream to {_fmt(self.peer)} up" if self.peer is not None else "stream to the peer down"


@dataclass(frozen=True, slots=True)
class OffloadChanged(Event):
    """Some keypair carries super-packets now (or none does): a stream transport
    may take frames over 64 KB from the peer."""
    level: ClassVar[str] = "debug"
    offload_peer: bool

    def __str__(self) -> str:
        return "the peer takes super-packets" if self.offload_peer else "the peer takes ordinary packets only"


@dataclass(frozen=True, slots=True)
class AuthFailed(Event):
    level: ClassVar[str] = "warning"
    kind: ClassVar[str] = "auth"
    peer: Address
    why: str
    held: int = 0

    def __str__(self) -> str:
        return _held(f"authentication failed: {self.why}, from {_fmt(self.peer)}", self.held)


@dataclass(frozen=True, slots=True)
class Notice(Event):
    """A rate-limited line about input dropped or refused (`kind` names the sort:
    "junk", "replay", "malformed", "send", ...)."""
    kind: str = field()  # type: ignore[misc]  (field(): no default, whatever Event's class attribute says)
    level: str = field()  # type: ignore[misc]
    text: str = field()
    held: int = 0

    def __str__(self) -> str:
        return _held(self.text, self.held)


def _held(text: str, held: int) -> str:
    return f"{text} (and {held} more like it)" if held else text
