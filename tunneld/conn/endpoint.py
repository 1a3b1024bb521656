"""Where the underlay's sockets bind and connect: the transport's settings as
the config states them (host names resolved by the transports and conn/resolver.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    host: str  # an IP literal (no brackets) or a host name
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TransportConfig:
    protocol: str  # "udp" | "tcp"
    listen: Endpoint | None
    remote: Endpoint | None
    keepalive: int | None = None  # s: persistent keepalive (encrypted modes)
    fwmark: int | None = None  # SO_MARK on our sockets; with a /0 route also the full tunnel's table
    resolve_min: int = 5  # s: a remote host name is looked up again at most this often (conn/resolver.py)
    resolve_max: int = 300  # s: and at least this often


def is_ip(host: str) -> bool:
    """An IP address literal (not a host name)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
