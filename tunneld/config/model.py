"""The configuration's model: frozen dataclasses, as `parse` returns them, and
the sizes that follow from them. No I/O, no YAML."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from tunneld.conn.endpoint import Endpoint, TransportConfig
from tunneld.core.failover import FAILBACK
from tunneld.packet import limits
from tunneld.packet.limits import ENCRYPTION_OVERHEAD, PADDING_TRAILER_ROOM
from tunneld.wg.constants import INITIATION_SIZE

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOG_LEVELS = ("debug", "info", "warning", "error")
IFNAMSIZ = 16  # include/uapi/linux/if.h: names are at most 15 bytes plus NUL


class ConfigError(Exception):
    """A configuration mistake, printed as one line: `source:line: key.path: message`."""

    def __init__(self, source: str, line: int, path: str, message: str):
        self.source, self.line, self.path, self.message = source, line, path, message
        where = f"{source}:{line}: " if line else f"{source}: "
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


@dataclass(frozen=True)
class InterfaceConfig:
    name: str | None  # None: the kernel picks tun%d / tap%d
    mode: str  # "tun" | "tap"
    mtu: int
    addresses: tuple[IPInterface, ...] = ()
    mac: str | None = None
    bridge: str | None = None
    routes: tuple[IPNetwork, ...] = ()
    persistent: bool = False
    clamp_mss: bool = False  # rewrite TCP MSS on SYNs to fit the tunnel (default on for tun, tap over udp)
    offload: bool = True  # IFF_VNET_HDR + TSO/USO: 64 KB super-packets (false: one packet per read)

    @property
    def max_packet(self) -> int:
        return limits.max_packet(self.mode, self.mtu)


@dataclass(frozen=True)
class Keys:
    """Secrets read from the key files; never printed."""
    private: bytes = field(repr=False)
    psk: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class EncryptionConfig:
    private_key_file: str  # as resolved: relative paths are taken from the config file's folder
    peer_public_key: bytes
    preshared_key_file: str | None = None
    wireguard_compatible: bool = False
    allowed_ips: tuple[IPNetwork, ...] | None = None  # None: any inner source
    keys: Keys | None = field(default=None, repr=False)  # filled by load(), not by parse()


@dataclass(frozen=True)
class RunAs:
    user: str
    group: str | None = None  # None: the user's primary group
    keep_net_admin: bool = True  # keep CAP_NET_ADMIN so reloads can change addresses and routes


@dataclass(frozen=True)
class Hooks:
    up: tuple[str, ...] = ()  # shell commands run after the device is up
    down: tuple[str, ...] = ()  # and before it goes down
    peer_up: tuple[str, ...] = ()  # the peer is heard from, first or again
    peer_down: tuple[str, ...] = ()  # nothing from it for peer_timeout, or its TCP connection lost
    endpoint_changed: tuple[str, ...] = ()  # the address the tunnel sends to moved


@dataclass(frozen=True)
class Config:
    interface: InterfaceConfig
    transport: TransportConfig
    encryption: EncryptionConfig | None  # None is the explicit plaintext mode ("encryption: none")
    log_level: str = "info"
    source: str = "<config>"
    run_as: RunAs | None = None
    hooks: Hooks = Hooks()
    metrics: Endpoint | None = None  # Prometheus text on http://listen/metrics
    name_key: str | None = None  # `name:` as written; None: the file's stem
    # `transport` given as a list: the entries after the first, in order of preference
    # (they carry the first entry's keepalive and fwmark), and the probe interval
    fallbacks: tuple[TransportConfig, ...] = ()
    failback: int = FAILBACK  # s between probes of the preferred entry (0: never)

    @property
    def transports(self) -> tuple[TransportConfig, ...]:
        """Every transport entry, the preferred first (one, unless `transport` is a list)."""
        return (self.transport, *self.fallbacks)
    peer_timeout: int = 180  # s without anything accepted from the peer before it counts as down

    @property
    def name(self) -> str:
        """The instance name (control socket /run/tunneld/NAME.sock): `name:`, or
        the config file's name without .yaml (london.yaml: london)."""
        if self.name_key is not None:
            return self.name_key
        return stem(self.source)

    @property
    def max_message(self) -> int:
        """The largest message on the wire: a packet, or a padded packet sealed in a
        transport message (and never less than a handshake initiation)."""
        if self.encryption is None:
            return self.interface.max_packet
        return max(self.interface.max_packet + encryption_overhead(self.interface.mode, self.encryption.wireguard_compatible),
                   INITIATION_SIZE)


def stem(path: str) -> str:
    base = os.path.basename(path)
    return base.rsplit(".", 1)[0] if "." in base else base




def encryption_overhead(mode: str, wireguard_compatible: bool) -> int:
    """Bytes a transport message adds to a frame at most. A TUN packet's padding stays
    within the MTU (the IP length trims it); a TAP frame in tunneld mode carries its
    padding and the padding's length (wg/send.py), so a full frame grows by up to 16."""
    if mode == "tap" and not wireguard_compatible:
        return ENCRYPTION_OVERHEAD + PADDING_TRAILER_ROOM
    return ENCRYPTION_OVERHEAD


