"""SIGHUP: what may change in a running tunnel, and applying it.

Live: the peer endpoint, keys and preshared key, keepalive, allowed IPs, log
level, addresses and routes. Everything else (mode, transport, device name,
MTU, ...) needs a restart: the reload is refused and the old config stays.
"""

from __future__ import annotations

import logging
import socket

from tunneld import netaddr

log = logging.getLogger("tunneld")


def _diff(old, new, fields: list[str], prefix: str) -> list[str]:
    return [f"{prefix}.{f}" for f in fields if getattr(old, f) != getattr(new, f)]


def _sync(old, new, add, remove) -> bool:
    """Remove what went, add what came; whether anything changed."""
    for item in [x for x in old if x not in new]:
        remove(item)
    for item in [x for x in new if x not in old]:
        add(item)
    return old != new


def restart_needed(old, new) -> str | None:
    """Why the new config cannot be applied live, or None."""
    keys = _diff(old.interface, new.interface, ["name", "mode", "mtu", "mac", "bridge", "persistent", "clamp_mss", "offload"], "interface")
    keys += _diff(old.transport, new.transport, ["protocol", "listen"], "transport")
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


async def apply_reload(daemon, new) -> list[str]:
    """Apply a config that passed restart_needed(); the names of what changed."""
    old, core, changed = daemon.cfg, daemon.core, []
    io, in_ = old.interface, new.interface
    if (io.addresses != in_.addresses or io.routes != in_.routes) and not daemon.can_net_admin:
        from tunneld.errors import StartupError
        raise StartupError("addresses or routes changed, but run_as.keep_net_admin is false: "
                           "no capability is left to change them; restart to apply")
    if new.log_level != old.log_level:
        logging.getLogger("tunneld").setLevel(new.log_level.upper())
        changed.append(f"log_level {new.log_level}")
    link = daemon.link
    if _sync(io.addresses, in_.addresses, link.add_address, link.del_address):
        changed.append("addresses")
    if _sync(io.routes, in_.routes, link.add_route, link.del_route):
        changed.append("routes")

    if new.transport.remote != old.transport.remote:
        if new.transport.protocol == "udp":
            remote = None
            if new.transport.remote is not None:
                family = daemon.transport.sock.family
                _, remote = await netaddr.resolve(new.transport.remote, family, socket.SOCK_DGRAM)
            core.endpoint = remote
            core.pinned = new.encryption is None and remote is not None
        else:
            daemon.transport.set_remote(new.transport.remote)
        changed.append(f"peer endpoint {new.transport.remote}")

    oe, ne = old.encryption, new.encryption
    if ne is not None:
        if (oe.keys != ne.keys or oe.peer_public_key != ne.peer_public_key):
            from tunneld.daemon import make_session
            core.replace_session(make_session(new, previous=core.session, offload=core.vnet))
            changed.append("keys")
        elif old.transport.keepalive != new.transport.keepalive:
            core.session.persistent_keepalive = new.transport.keepalive
            core.session.t_persistent = None
        if old.transport.keepalive != new.transport.keepalive:
            changed.append("keepalive")
        if oe.allowed_ips != ne.allowed_ips:
            core.set_allowed(ne.allowed_ips)
            changed.append("allowed_ips")
    daemon.relay.start()  # a new session or keepalive may want to speak now
    return changed
