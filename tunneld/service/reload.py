"""A reload, as a pure diff of two configs: what may change in a running
tunnel, and what changed. The daemon owns the running state and applies it.

Live: the peer endpoint (every entry's, with a list of transports), keys and
preshared key, keepalive, failback, allowed IPs, log level, addresses and
routes, the peer timeout. Everything else (mode, a transport's protocol or
listen address, the number of transports, device name, MTU, ...) needs a
restart: the reload is refused and the old config stays.
"""

from __future__ import annotations

from dataclasses import dataclass

RESTART_KEYS = {
    "interface": ["name", "mode", "mtu", "mac", "bridge", "persistent", "clamp_mss", "offload"],
    "transport": ["protocol", "listen", "fwmark", "resolve_min", "resolve_max"],
}


@dataclass(frozen=True)
class Plan:
    """What differs between the running config and the new one."""
    log_level: bool = False
    link: bool = False  # addresses or routes
    remote: bool = False
    keys: bool = False  # private key, preshared key or peer public key: a new session
    keepalive: bool = False
    allowed_ips: bool = False
    failback: bool = False
    peer_timeout: bool = False

    def changed(self, new) -> list[str]:
        """The names of what changed, for the log and the reload's answer."""
        words = {
            "log_level": f"log_level {new.log_level}", "link": "addresses and routes",
            "remote": f"peer endpoint {', '.join(str(t.remote) for t in new.transports if t.remote)}",
            "keys": "keys", "keepalive": "keepalive", "allowed_ips": "allowed_ips",
            "failback": f"failback {new.failback} s", "peer_timeout": f"peer_timeout {new.peer_timeout} s",
        }
        return [text for field, text in words.items() if getattr(self, field)]


def restart_needed(old, new) -> str | None:
    """Why the new config cannot be applied live, or None."""
    keys = [f"{section}.{f}" for section, fields in RESTART_KEYS.items()
            for f in fields if getattr(getattr(old, section), f) != getattr(getattr(new, section), f)]
    olds, news = old.transports, new.transports
    if len(olds) != len(news):
        keys.append(f"transport (from {len(olds)} entries to {len(news)})")
    else:
        keys += [f"transport[{i}].{f}" for i, (o, n) in enumerate(zip(olds, news)) if i
                 for f in RESTART_KEYS["transport"] if getattr(o, f) != getattr(n, f)]
    if old.name != new.name:
        keys.append("name")
    if (old.encryption is None) != (new.encryption is None):
        keys.append("encryption")
    elif old.encryption is not None and old.encryption.wireguard_compatible != new.encryption.wireguard_compatible:
        keys.append("encryption.wireguard_compatible")
    for key in ("run_as", "hooks", "metrics"):
        if getattr(old, key) != getattr(new, key):
            keys.append(key)
    if keys:
        return f"{', '.join(keys)} changed: that needs a restart"
    return None


def plan(old, new) -> Plan:
    """The diff of two configs that passed restart_needed()."""
    oe, ne = old.encryption, new.encryption
    io, in_ = old.interface, new.interface
    return Plan(
        log_level=old.log_level != new.log_level,
        link=io.addresses != in_.addresses or io.routes != in_.routes,
        remote=[t.remote for t in old.transports] != [t.remote for t in new.transports],
        keys=ne is not None and (oe.keys != ne.keys or oe.peer_public_key != ne.peer_public_key),
        keepalive=old.transport.keepalive != new.transport.keepalive,
        allowed_ips=ne is not None and oe.allowed_ips != ne.allowed_ips,
        failback=old.failback != new.failback,
        peer_timeout=old.peer_timeout != new.peer_timeout,
    )
