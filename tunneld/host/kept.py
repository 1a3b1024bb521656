"""What a tunnel leaves in the kernel when it stops for a restart, and the file
that says so.

A restart must leave no moment in which the tunnel's traffic takes another
route in clear, and a crash is a restart nobody announced: so what guards
against that is in the kernel all the time the daemon runs, and it stays
when the daemon goes. That is

- a full tunnel's policy rules and its unreachable default routes (routing.py),
  which hold the tunnel's traffic while no device is there;
- on a persistent device, which outlives the daemon, what we put on it: its
  addresses, its routes, its link state (up, MTU, MAC, bridge).

Only a real stop removes them: `tunneld down NAME` (what the systemd unit
runs after `systemctl stop`), or Ctrl-C in a terminal. A daemon starting
again adopts what is there.

The daemon keeps the file RUNTIME_DIR/NAME.kept (JSON) true whenever what it
holds changes, so that `tunneld down` knows what to remove after any kind of
exit, kill -9 included. The file may belong to the run_as user (who rewrites
it at a reload), so `remove` trusts it no further than this: rules of the two
full-tunnel shapes, unreachable routes with our metric, and addresses, routes
and link state of the named device only when that is a TUN/TAP device.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field

from tunneld.host import routing
from tunneld.host.rtnl import RT_TABLE_MAIN, Netlink, NetlinkError, Route, Rule

SYS_NET = "/sys/class/net"
_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)  # already gone: nothing to do


@dataclass(frozen=True)
class Kept:
    device: str
    persistent: bool = False
    rules: tuple[Rule, ...] = ()
    routes: tuple[Route, ...] = ()  # guards; on a persistent device also its routes
    addresses: tuple = ()  # on a persistent device
    brought_up: bool = False  # a persistent device we brought up: a real stop takes it down
    link_undo: tuple[tuple[str, dict], ...] = field(default=())  # link properties as they were before us

    def __bool__(self) -> bool:
        return bool(self.rules or self.routes or self.addresses or self.brought_up or self.link_undo)

    def describe(self) -> str:
        """In a few words, for the log and for `tunneld down`."""
        guards = [r for r in self.routes if r.unreachable]
        parts = []
        if self.rules:
            parts.append(_count(len(self.rules), "rule"))
        if guards:
            parts.append(f"{_count(len(guards), 'unreachable route')} in table {guards[0].table}")
        if self.addresses or len(guards) < len(self.routes):
            parts.append(f"{_count(len(self.addresses), 'address')} and "
                         f"{_count(len(self.routes) - len(guards), 'route')} on {self.device}")
        if self.brought_up or self.link_undo:
            parts.append(f"{self.device}'s link state")
        return ", ".join(parts) or "nothing"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("ss") else f"{n} {word}s"


# --- the file ----------------------------------------------------------------------


def _route(r: Route) -> dict:
    return {"net": str(r.net), "table": r.table, "unreachable": r.unreachable, "metric": r.metric}


def _undo(u: dict) -> dict:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in u.items()}


def dumps(k: Kept) -> str:
    return json.dumps({
        "device": k.device, "persistent": k.persistent,
        "rules": [vars(r) for r in k.rules],
        "routes": [_route(r) for r in k.routes],
        "addresses": [str(a) for a in k.addresses],
        "brought_up": k.brought_up,
        "link_undo": [[what, _undo(u)] for what, u in k.link_undo],
    }, indent=1) + "\n"


_LINK_KEYS = {"up": bool, "mtu": int, "master": int, "mac": str}  # rtnl.link_body's keywords, as JSON has them


def _link_change(u: dict) -> dict:
    """One link_undo entry, checked: only link_body's keywords, each of its type
    (the file may belong to the run_as user; a bad one is refused, never a traceback)."""
    out = {}
    for key, value in u.items():
        kind = _LINK_KEYS.get(key)
        if kind is None or type(value) is not kind or (kind is int and not 0 <= value <= 0xFFFFFFFF):
            raise ValueError(f"link change {key!r}: {value!r}")
        out[key] = bytes.fromhex(value) if key == "mac" else value
    if "mac" in out and len(out["mac"]) != 6:
        raise ValueError("link change 'mac': not 6 bytes")
    return out


def loads(text: str) -> Kept:
    """The file's Kept; ValueError when it is not one."""
    try:
        d = json.loads(text)
        rules = tuple(Rule(int(r["version"]), int(r["table"]), None if r["fwmark"] is None else int(r["fwmark"]),
                           bool(r["invert"]),
                           None if r["suppress_prefixlength"] is None else int(r["suppress_prefixlength"]))
                      for r in d["rules"])
        routes = tuple(Route(ipaddress.ip_network(r["net"]), int(r["table"]), bool(r["unreachable"]),
                             None if r["metric"] is None else int(r["metric"])) for r in d["routes"])
        addresses = tuple(ipaddress.ip_interface(a) for a in d["addresses"])
        link_undo = tuple((str(what), _link_change(u)) for what, u in d["link_undo"])
        return Kept(str(d["device"]), bool(d["persistent"]), rules, routes, addresses, bool(d["brought_up"]),
                    link_undo)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a tunneld state file ({e})") from None


def load(path: str) -> Kept | None:
    """None when there is no file; ValueError when it cannot be read as one."""
    try:
        with open(path) as f:
            text = f.read()
        return loads(text) if text.strip() else None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(e.strerror) from None


def save(path: str, k: Kept) -> None:
    """Replace the file (no file when nothing is kept). Mode 0644 whatever the
    umask: root reads it at the next start without DAC_OVERRIDE, also when it
    belongs to the run_as user. After the privilege drop the folder is no longer
    ours: then the file, handed to that user at start, is rewritten in place.
    OSError propagates."""
    text = dumps(k) if k else ""
    try:
        if not k:
            forget(path)
            return
        new = f"{path}.new"
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except PermissionError:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)  # an empty file: nothing kept
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o644)
        f.write(text)
    os.replace(new, path)


def forget(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- a real stop after the daemon ---------------------------------------------------


def _ours(x) -> bool:
    """What `remove` will touch outside the device, whatever the file says."""
    if isinstance(x, Rule):
        return (x.fwmark is not None and x.invert and x.table == x.fwmark and x.suppress_prefixlength is None) or (
            x.fwmark is None and not x.invert and x.table == RT_TABLE_MAIN and x.suppress_prefixlength == 0)
    return x.unreachable and x.metric == routing.GUARD_METRIC


def is_tuntap(device: str) -> bool:
    return os.path.exists(f"{SYS_NET}/{device}/tun_flags")


def remove(k: Kept, nl: Netlink) -> list[str]:
    """Take away what a stopped tunnel kept; what could not be removed, one line
    each (an empty list: all of it is gone). Already gone is fine."""
    steps = [(f"remove rule {r}", lambda r=r: nl.del_rule(r)) for r in reversed(k.rules) if _ours(r)]
    steps += [(f"remove route {r}", lambda r=r: nl.del_route(0, r)) for r in k.routes if r.unreachable and _ours(r)]
    refused = [f"{x}: not a full-tunnel rule or guard, left alone" for x in (*k.rules, *k.routes)
               if (isinstance(x, Rule) or x.unreachable) and not _ours(x)]
    on_device = [r for r in k.routes if not r.unreachable]
    if k.persistent and (on_device or k.addresses or k.brought_up or k.link_undo):
        try:
            index = socket.if_nametoindex(k.device)
        except OSError:
            index = None  # the device is gone, and with it what was on it
        if index is not None and not is_tuntap(k.device):
            refused.append(f"{k.device}: not a TUN/TAP device, left alone")
        elif index is not None:
            steps += [(f"remove route {r}", lambda r=r: nl.del_route(index, r)) for r in reversed(on_device)]
            steps += [(f"remove address {a}", lambda a=a: nl.del_address(index, a)) for a in reversed(k.addresses)]
            if k.brought_up:
                steps.append(("bring the link down", lambda: nl.set_link(index, "bring the link down", up=False)))
            steps += [(what, lambda what=what, u=u: nl.set_link(index, what, **u)) for what, u in reversed(k.link_undo)]
    failed = []
    for what, step in steps:
        try:
            step()
        except NetlinkError as e:
            if e.errno not in _GONE:
                failed.append(f"cannot {what}: {os.strerror(e.errno)}")
    return refused + failed
