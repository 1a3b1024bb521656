"""Configuration: YAML text in, frozen typed objects (model.py) out.

`parse(text, source)` is pure; `load(path)` is its only I/O. Every error is one
line that names the file, the line and the key path:

    site-a.yaml:7: transport.remote: expected host:port, got '10.0.0.1'
"""

from __future__ import annotations

import base64
import binascii
import datetime
import errno
import grp
import ipaddress
import os
import pwd
import re
import stat
from dataclasses import dataclass, replace
from typing import Any, Callable

import yaml

from tunneld.config.model import (IFNAMSIZ, LOG_LEVELS, Config, ConfigError, EncryptionConfig, Hooks, InterfaceConfig,
                                  IPInterface, IPNetwork, Keys, RunAs, encryption_overhead)
from tunneld.conn.endpoint import Endpoint, TransportConfig, is_ip
from tunneld.core.failover import FAILBACK
from tunneld.host import ownership, routing
from tunneld.packet import limits
from tunneld.wg.constants import KEY_SIZE


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; a megabyte is plenty
MAX_KEY_FILE_BYTES = 4096  # a base64 key is 44 characters and a newline
MAX_YAML_DEPTH = 32  # nesting levels; ours use three
LIST_WIDE = ("keepalive", "fwmark", "failback")  # transport keys of a list's first entry that apply to all


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Never blocks (a FIFO
    is refused, not opened for reading until a writer comes) and never reads past
    the limit (/dev/zero is refused, not read until memory runs out)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while we read
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def load(path: str) -> Config:
    """Read and parse a config file and the key files it names; an unreadable
    file, or a key file others can read, is a ConfigError too. As root, so is a
    config, a file a hook names or a key file that anyone but root could change
    (tunneld/host/ownership.py)."""
    check_file = _check_file if os.geteuid() == 0 else None
    if check_file is not None:
        why = check_file(path)
        if why is not None:
            raise ConfigError(path, 0, "", why)
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
    except OSError as e:
        raise ConfigError(path, 0, "", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, 0, "", "not UTF-8 text") from None
    return parse(text, source=path, read_secret=_read_secret, check_file=check_file)


def parse(text: str, source: str = "<config>",
          read_secret: Callable[[str, RunAs | None], str] | None = None,
          check_file: Callable[[str], str | None] | None = None) -> Config:
    """`read_secret(path, run_as) -> text` reads a key file (load() passes the real
    one); without it, key files are named but not read (Config.encryption.keys is
    None). `check_file(path) -> why or None` vets each key file and each
    file a hook names before root acts on it (load() passes it when run as root)."""
    data, lines = _compose(text, source)
    return _Reader(source, lines, read_secret, check_file).config(data)


ROOT_ONLY = ("started as root, tunneld takes its config, hooks and keys only from files "
             "and folders that no one but root can change")


def _check_file(path: str) -> str | None:
    why = ownership.why_unsafe(path)
    return f"{why}: {ROOT_ONLY}" if why is not None else None


class SecretFileError(Exception):
    pass


def _read_secret(path: str, run_as: RunAs | None = None) -> str:
    """A key file's text, refused when others may read it, or its group unless
    that is run_as's group (0640 root:tunneld: the dropped daemon reads it at a
    reload, and nobody else can), like ssh and wg-quick."""
    shown = ownership.quote(path)
    try:
        data = read_bounded(path, MAX_KEY_FILE_BYTES)
        # checked on the path after the read: the mode is the file's, whatever opened it
        st = os.stat(path)
        if st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            if run_as is None:
                raise SecretFileError(f"{shown} is readable by group or others (chmod 600 {shown})")
            group = _run_as_group(run_as)
            if st.st_mode & stat.S_IROTH or group is None or st.st_gid != group[1]:
                name = group[0] if group else run_as.group or run_as.user
                raise SecretFileError(f"{shown} is readable by others or a group other than run_as's "
                                      f"(chmod 640 {shown}; chgrp {name} {shown})")
        return data.decode("ascii")
    except OSError as e:
        raise SecretFileError(f"cannot read {shown}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{shown} is not a base64 key") from None


def _run_as_group(run_as: RunAs) -> tuple[str, int] | None:
    """(name, gid) of the group tunneld drops to, or None (no such user or group)."""
    try:
        if run_as.group is not None:
            return run_as.group, grp.getgrnam(run_as.group).gr_gid
        gid = pwd.getpwnam(run_as.user).pw_gid
        return grp.getgrgid(gid).gr_name, gid
    except KeyError:
        return None


def decode_key(text: str) -> bytes | None:
    """32 bytes from base64 (as `wg genkey` prints), or None."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_SIZE else None


# --- YAML with line numbers ------------------------------------------------


class _Loader(yaml.SafeLoader):
    """safe_load without anchors and aliases (a billion-laughs file, or `a: &x [*x]`,
    would cost memory or recursion), and with a nesting limit (a deep file would
    exhaust the composer's recursion). Neither is ever needed in a config."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(event.start_mark.line + 1, "YAML anchors and aliases (&name, *name) are not supported")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(event.start_mark.line + 1, f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    def __init__(self, line: int, message: str):
        self.line, self.message = line, message


@dataclass(frozen=True)
class Unreadable:
    """A scalar that YAML types but no Python value can hold: `2001-13-45` (a
    timestamp in month 13), `!!bool maybe`, an integer of 5,000 digits. It fails
    every type check, so the error names its key and shows the text as written."""
    kind: str  # how _kind() names it: "an unreadable date or time", "an oversized integer", ...
    text: str

    def __repr__(self) -> str:  # as the text stands in the file, also inside a list's repr
        return repr(self.text)


MAX_NUMBER_CHARS = 100  # an integer or float written longer is refused unread (int() of 4,300+ digits raises)
_CONSTRUCT_ERRORS = (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError)


def _guarded(construct: Callable, kind: str, numeric: bool = False) -> Callable:
    """A SafeConstructor scalar constructor that returns Unreadable instead of
    raising a Python error (PyYAML lets ValueError and KeyError escape for
    `2024-02-30`, `!!int x`, `!!bool maybe`; they are not YAMLErrors)."""
    def guarded(loader, node):
        if numeric and isinstance(node.value, str) and len(node.value) > MAX_NUMBER_CHARS:
            return Unreadable(f"an oversized {kind}", node.value)
        try:
            return construct(loader, node)
        except _CONSTRUCT_ERRORS:
            return Unreadable(f"an unreadable {kind}", str(node.value))
    return guarded


_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_TEXT = "a string with a NUL or a lone surrogate"


def _construct_str(loader, node):
    """Strings as PyYAML makes them, but none holding NUL (no file name, device
    name or command can) or a lone surrogate from a \\ud800 escape (not text)."""
    value = loader.construct_yaml_str(node)
    if "\0" in value or _SURROGATE.search(value):
        return Unreadable(NOT_TEXT, value)
    return value

_Loader.add_constructor("tag:yaml.org,2002:int", _guarded(yaml.SafeLoader.construct_yaml_int, "integer", numeric=True))
_Loader.add_constructor("tag:yaml.org,2002:float", _guarded(yaml.SafeLoader.construct_yaml_float, "number", numeric=True))
_Loader.add_constructor("tag:yaml.org,2002:bool", _guarded(yaml.SafeLoader.construct_yaml_bool, "boolean"))
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _guarded(yaml.SafeLoader.construct_yaml_timestamp,
                                                                 "date or time"))
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def _compose(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """safe_load, plus the line of every key path, and duplicate keys refused."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # a control character: YAML allows printable text only
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(source, line, "", f"invalid YAML: control character {e.character!r} is not allowed") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(source, 1, "", "empty file: expected a mapping of settings")
        lines: dict[str, int] = {}
        _record_lines(node, "", lines, source)
        return loader.construct_document(node), lines
    except _Refused as e:
        raise ConfigError(source, e.line, "", e.message) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(source, line, "", f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(source, 1, "", f"invalid YAML: {e}") from None
    finally:
        loader.dispose()


def _record_lines(node: yaml.Node, path: str, lines: dict[str, int], source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            sub = f"{path}.{_key_name(name)}" if path else _key_name(name)
            if name in seen:
                raise ConfigError(source, key.start_mark.line + 1, sub, "duplicate key")
            seen.add(name)
            lines[sub] = key.start_mark.line + 1
            _record_lines(value, sub, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, f"{path}[{i}]", lines, source)


# --- every key: its type, default, whether a reload applies it, and what it does ---
# The parser takes the keys it accepts from here, and tunneld.yaml(5) is made
# from it (scripts/docs), so the manual cannot miss a key the parser knows.


@dataclass(frozen=True)
class Key:
    path: str
    type: str
    default: str  # "" when required
    reload: bool  # a reload applies a change; otherwise a change needs a restart
    text: str


KEYS: tuple[Key, ...] = (
    Key("name", "string", "the file name without .yaml", False,
        "The instance name: the control socket is /run/tunneld/NAME.sock and `tunneld status NAME` finds it. "
        "Two tunnels on one machine need two names, even in different network namespaces. "
        "Letters, digits, '.', '_' and '-'. Under tunneld@NAME.service it must be NAME."),
    Key("peer_timeout", "integer (seconds)", "180", True,
        "The peer counts as down when nothing from it was accepted (authenticated, when encrypted) for this "
        "long, 10 to 86400 s, or when its TCP connection is lost; up again with the next packet from it. "
        "The default is WireGuard's key lifetime: a live peer handshakes within it. An idle tunnel "
        "without transport.keepalive, and any idle plaintext tunnel, goes down after it (hooks.peer_down)."),
    Key("log_level", "debug | info | warning | error", "info", True,
        "How much goes to the journal. `-v` or `--log-level` on the command line overrides it."),
    Key("interface", "mapping", "", False, "The TUN or TAP device."),
    Key("interface.mode", "tun | tap", "", False, "tun carries IP packets (layer 3), tap Ethernet frames (layer 2)."),
    Key("interface.name", "string", "the kernel picks tun0, tap0, ...", False,
        "The device name, at most 15 bytes; tun%d lets the kernel number it."),
    Key("interface.mtu", "integer", "1420 (tun), 1500 (tap)", False, "The device MTU, 576 to 65535 (1280 or more with IPv6)."),
    Key("interface.addresses", "list of address/prefix", "none", True,
        "Addresses put on the device, IPv4 or IPv6, like 10.0.0.1/24."),
    Key("interface.routes", "list of network/prefix", "none", True,
        "Routes through the device. 0.0.0.0/0 or ::/0 sends everything through the tunnel (full tunnel): "
        "the default route goes into table transport.fwmark, with the rules `not fwmark M table M` and "
        "`table main suppress_prefixlength 0`, so the tunnel's own packets keep the underlay path to the peer "
        "wherever it roams, and an unreachable default route in that table beneath the device's, so that nothing "
        "leaks while no daemon runs. A restart keeps the rules and unreachable routes; a real stop removes them "
        "(`systemctl stop`, `tunneld down NAME`, Ctrl-C). Adding the first /0 route, or removing the last, "
        "changes transport.fwmark and so needs a restart."),
    Key("interface.mac", "string", "random", False, "The MAC address of a tap device, quoted: '02:00:00:00:00:01'."),
    Key("interface.bridge", "string", "none", False, "A bridge the tap device joins (it must exist)."),
    Key("interface.persistent", "boolean", "false", False,
        "Attach to a device made with `tunneld mktun` (needs interface.name); it outlives the daemon. What tunneld "
        "put on it (addresses, routes, link state) stays across a restart and is undone at a real stop "
        "(`systemctl stop`, `tunneld down NAME`, Ctrl-C)."),
    Key("interface.clamp_mss", "boolean", "true for tun, and for tap over udp", False,
        "Rewrite the MSS of TCP SYNs crossing the tunnel so their segments need no fragmentation: to fit the "
        "interface's MTU (tun); for frames bridged over UDP (tap), to fit a 1500-byte underlay whole, "
        "as OpenVPN's mssfix does, while the LAN keeps its 1500-byte MTU."),
    Key("interface.offload", "boolean", "true", False,
        "64 KB super-packets between device and daemon (IFF_VNET_HDR, TSO, UDP GSO/GRO); false: one packet per read."),
    Key("transport", "mapping, or a list of mappings", "", False,
        "The underlay: UDP datagrams or one TCP connection. A list of them (tunneld mode only) is tried "
        "in order: all its listen entries listen at once and the tunnel follows the peer to the one it "
        "authenticates on; an initiator moves to the next entry with a remote when two handshake attempts "
        "on the current one go unanswered, and probes the first again every transport.failback seconds. "
        "keepalive, fwmark and failback go on the first entry and apply to all."),
    Key("transport.protocol", "udp | tcp", "", False,
        "udp: one datagram per packet. tcp: simpletun's framing (2-byte length, packet)."),
    Key("transport.listen", "ip:port", "none", False, "Where to bind: the server side ([::]:port for IPv6)."),
    Key("transport.remote", "host:port", "none", True,
        "The peer's address: the client side. With encryption, a UDP peer is followed when it roams."),
    Key("transport.keepalive", "integer (seconds)", "none", True,
        "Persistent keepalive, 1 to 65535 s: keeps NAT mappings open (encrypted modes only)."),
    Key("transport.resolve_min", "integer (seconds)", "5", False,
        "A host name in transport.remote (udp) is looked up again at most this often, 1 to 86400 s: when a "
        "handshake goes unanswered on every address it had. Each unanswered handshake first moves to the name's "
        "next address (IPv6 and IPv4)."),
    Key("transport.resolve_max", "integer (seconds)", "300", False,
        "A host name in transport.remote (udp) is looked up again at least this often while the tunnel works, "
        "1 to 86400 s (the system resolver does not tell a record's TTL), and at every reload. A name that "
        "does not resolve is asked again after 1 s, doubling to 30 s; the daemon starts without it."),
    Key("transport.fwmark", "integer", "51820 with a /0 route, else none", False,
        "The mark (SO_MARK) on the tunnel's own sockets, like WireGuard's FwMark; with a /0 route also the "
        "number of the full tunnel's routing table."),
    Key("transport.failback", "integer (seconds)", "30", True,
        "With a list of transports: while a later entry carries the tunnel, every so many seconds one "
        "handshake initiation goes over the first entry with a remote, and the tunnel moves back when it is "
        "answered there. 0: stay on the entry that works until it fails."),
    Key("encryption", "none | mapping", "", False,
        "`none` for plaintext (simpletun's wire format), or the WireGuard keys below. Switching between "
        "the two needs a restart; the keys inside apply at reload."),
    Key("encryption.private_key_file", "path", "", True,
        "This side's private key (`tunneld genkey`), mode 0600; relative to the config file's folder."),
    Key("encryption.peer_public_key", "base64 key", "", True, "The peer's public key (`tunneld pubkey`, `wg pubkey`)."),
    Key("encryption.preshared_key_file", "path", "none", True, "An optional preshared key (`tunneld genpsk`), mode 0600."),
    Key("encryption.wireguard_compatible", "boolean", "false", False,
        "Speak WireGuard itself (UDP and tun only): the peer may be wireguard-go, the kernel module or wg-quick."),
    Key("encryption.allowed_ips", "list of network/prefix", "any", True,
        "Inner source addresses accepted from the peer (tun only), like WireGuard's AllowedIPs."),
    Key("run_as", "mapping", "stay root", False, "Drop privileges after set-up."),
    Key("run_as.user", "string", "", False, "The user to run as."),
    Key("run_as.group", "string", "the user's primary group", False, "The group to run as."),
    Key("run_as.keep_net_admin", "boolean", "true", False,
        "Keep CAP_NET_ADMIN so reloads can change addresses and routes (a full tunnel needs it)."),
    Key("hooks", "mapping", "none", False, "Shell commands, with TUNNELD_* variables describing the tunnel."),
    Key("hooks.up", "list of strings", "none", False, "Run after the device is up; one failing stops the start."),
    Key("hooks.down", "list of strings", "none", False, "Run before the device goes down."),
    Key("hooks.peer_up", "list of strings", "none", False,
        "Run when something from the peer is accepted, the first time and after it was down."),
    Key("hooks.peer_down", "list of strings", "none", False,
        "Run when nothing from the peer was accepted for peer_timeout, or its TCP connection is lost."),
    Key("hooks.endpoint_changed", "list of strings", "none", False,
        "Run when the address the tunnel sends to moves: the peer roamed, its name resolves elsewhere, "
        "a reload, a TCP connection from elsewhere. TUNNELD_OLD_ENDPOINT and TUNNELD_NEW_ENDPOINT say where."),
    Key("metrics", "mapping", "none", False, "Prometheus text on http://LISTEN/metrics."),
    Key("metrics.listen", "ip:port", "", False, "Where to serve the metrics."),
)


def _children(parent: str) -> set[str]:
    prefix = f"{parent}." if parent else ""
    return {k.path[len(prefix):] for k in KEYS if k.path.startswith(prefix) and "." not in k.path[len(prefix):]}


# --- validation --------------------------------------------------------------

_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a number", str: "a string",
    list: "a list", dict: "a mapping", type(None): "nothing",
}
_OTHER_TYPE_NAMES = {  # what else safe_load makes: !!binary, timestamps, !!set, !!omap and !!pairs items
    bytes: "binary data", datetime.date: "a date", datetime.datetime: "a date and time", set: "a set",
    tuple: "a pair",
}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


HOOK_KINDS = ("up", "down", "peer_up", "peer_down", "endpoint_changed")
_SHOWN_CHARS = 60  # of a value quoted in an error: enough to recognise it, never a screenful


def _kind(value: Any) -> str:
    if isinstance(value, Unreadable):
        return value.kind
    return _TYPE_NAMES.get(type(value), _OTHER_TYPE_NAMES.get(type(value), type(value).__name__))


def _show(value: Any) -> str:
    """A value as an error quotes it: its repr, cut short; the text as written for
    what YAML typed but Python cannot hold. (No integer is too big for repr():
    MAX_NUMBER_CHARS keeps them far below 4,300 digits.)"""
    if isinstance(value, Unreadable):
        value = value.text
    elif isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    elif isinstance(value, (list, dict, set, tuple, bytes)) and len(value) > 8:
        return f"of {len(value)} items" if not isinstance(value, bytes) else f"of {len(value)} bytes"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 3] + "..."


def _key_name(key: str) -> str:
    """A key as a key path shows it: as written, or quoted and cut short when it
    would break the error's one line (a newline) or fill it."""
    return key if key.isprintable() and len(key) <= _SHOWN_CHARS else _show(key)


class _Reader:
    def __init__(self, source: str, lines: dict[str, int], read_secret=None, check_file=None):
        self.source, self.lines, self.read_secret, self.check_file = source, lines, read_secret, check_file

    def error(self, path: str, message: str) -> ConfigError:
        probe = path
        while probe not in self.lines and probe:
            probe = probe.rpartition(".")[0] if "[" not in probe else probe.rpartition("[")[0]
        return ConfigError(self.source, self.lines.get(probe, 1), path, message)

    # generic shapes

    def mapping(self, value: Any, path: str, allowed: set[str], required: set[str]) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"keys must be strings, got {_show(key)}")
            if key not in allowed:
                sub = f"{path}.{_key_name(key)}" if path else _key_name(key)
                known = ", ".join(sorted(allowed))
                raise self.error(sub, f"unknown key (expected one of: {known})")
        for key in sorted(required - value.keys()):
            raise self.error(f"{path}.{key}" if path else key, "missing (required)")
        return value

    def typed(self, value: Any, path: str, kind: type, hint: str = "") -> Any:
        if type(value) is not kind:  # bool is an int subclass; YAML's 'yes' must not pass as 1
            if not hint and kind is str and not isinstance(value, (list, dict)) \
                    and not (isinstance(value, Unreadable) and value.kind == NOT_TEXT):
                hint = "quote it: unquoted, YAML reads it as another type"
            extra = f" ({hint})" if hint else ""
            raise self.error(path, f"expected {_TYPE_NAMES[kind]}, got {_kind(value)} {_show(value)}{extra}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            got = _show(value) if isinstance(value, str) else f"{_kind(value)} {_show(value)}"
            raise self.error(path, f"expected one of {' | '.join(choices)}, got {got}")
        return value

    def str_list(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(path, f"expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            self.typed(item, f"{path}[{i}]", str)
        return value

    # the document

    def config(self, data: Any) -> Config:
        top = self.mapping(data, "", _children(""), {"interface", "transport", "encryption"})
        transports, failback = self.transports(top["transport"])
        transport = transports[0]
        encryption = self.encryption(top["encryption"])
        if len(transports) > 1 and (encryption is None or encryption.wireguard_compatible):
            raise self.error("transport", "a list of transports needs encryption in tunneld mode: "
                             + ("plaintext cannot tell on which the peer is" if encryption is None
                                else "a WireGuard peer speaks UDP only (wireguard_compatible)"))
        interface = self.interface(top["interface"], transports, encrypted=encryption is not None)
        if transport.keepalive is not None and encryption is None:
            raise self.error("transport.keepalive", "needs encryption: plaintext has no keepalive message")
        if encryption is not None:
            if encryption.wireguard_compatible and (transport.protocol != "udp" or interface.mode != "tun"):
                raise self.error("encryption.wireguard_compatible",
                                 "WireGuard carries IP packets over UDP: needs transport.protocol udp and interface.mode tun")
            if encryption.allowed_ips is not None and interface.mode != "tun":
                raise self.error("encryption.allowed_ips", "applies to IP packets: needs interface.mode tun")
        log_level = self.choice(top.get("log_level", "info"), "log_level", LOG_LEVELS)
        run_as = self.run_as(top["run_as"]) if "run_as" in top else None
        hooks = self.hooks(top["hooks"]) if "hooks" in top else Hooks()
        metrics = None
        if "metrics" in top:
            m = self.mapping(top["metrics"], "metrics", _children("metrics"), {"listen"})
            metrics = self.endpoint(m["listen"], "metrics.listen")
            if not is_ip(metrics.host):
                raise self.error("metrics.listen", f"expected an IP address to bind, got {_show(metrics.host)}")
        peer_timeout = 180
        if "peer_timeout" in top:
            peer_timeout = self.typed(top["peer_timeout"], "peer_timeout", int)
            if not 10 <= peer_timeout <= 86400:
                raise self.error("peer_timeout", f"expected 10 to 86400 seconds, got {_show(peer_timeout)}")
        name = None
        if "name" in top:
            name = self.typed(top["name"], "name", str)
            if not _NAME.match(name):
                raise self.error("name", f"expected letters, digits, '.', '_' and '-' (at most 64), got {_show(name)}")
        if routing.full_tunnel(interface.routes) and transport.fwmark is None:
            transport = replace(transport, fwmark=routing.FULL_TUNNEL_MARK)
        # the list-wide settings of the first entry are every entry's
        fallbacks = tuple(replace(t, keepalive=transport.keepalive, fwmark=transport.fwmark) for t in transports[1:])
        if transport.fwmark is not None and run_as is not None and not run_as.keep_net_admin:
            if routing.full_tunnel(interface.routes):
                raise self.error("run_as.keep_net_admin", "a full tunnel (a /0 route) needs CAP_NET_ADMIN to "
                                 "remove its routing rules at stop: keep it (true)")
            if any(t.protocol == "tcp" and t.remote is not None for t in transports):
                raise self.error("run_as.keep_net_admin", "transport.fwmark on a TCP client needs CAP_NET_ADMIN "
                                 "to mark every new connection: keep it (true)")
        cfg = Config(interface, transport, encryption, log_level, self.source, run_as, hooks, metrics, name,
                     fallbacks, failback, peer_timeout=peer_timeout)
        if encryption is not None and self.read_secret is not None:
            cfg = replace(cfg, encryption=replace(encryption, keys=self.keys(encryption, run_as)))
        return cfg

    def run_as(self, value: Any) -> RunAs:
        m = self.mapping(value, "run_as", _children("run_as"), {"user"})
        user = self.typed(m["user"], "run_as.user", str)
        group = self.typed(m["group"], "run_as.group", str) if "group" in m else None
        keep = self.typed(m.get("keep_net_admin", True), "run_as.keep_net_admin", bool)
        for key, name in (("run_as.user", user), ("run_as.group", group)):
            if name is not None and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$", name):
                raise self.error(key, f"not a user or group name: {_show(name)}")
        return RunAs(user, group, keep)

    def hooks(self, value: Any) -> Hooks:
        m = self.mapping(value, "hooks", _children("hooks"), set())
        lists = {kind: tuple(self.str_list(m.get(kind, []), f"hooks.{kind}")) for kind in HOOK_KINDS}
        if self.check_file is not None:  # root runs them (the down ones too without run_as): root's alone
            for kind, commands in lists.items():
                for i, command in enumerate(commands):
                    for path in ownership.named_files(command):
                        why = self.check_file(path)
                        if why is not None:
                            raise self.error(f"hooks.{kind}[{i}]", why)
        return Hooks(**lists)

    def encryption(self, value: Any) -> EncryptionConfig | None:
        if value == "none":
            return None
        if not isinstance(value, dict):
            raise self.error("encryption", f"expected 'none' or a mapping of keys, got {_show(value)}")
        m = self.mapping(value, "encryption", _children("encryption"), {"private_key_file", "peer_public_key"})
        private = self.path(m["private_key_file"], "encryption.private_key_file")
        psk = self.path(m["preshared_key_file"], "encryption.preshared_key_file") if "preshared_key_file" in m else None
        peer = self.typed(m["peer_public_key"], "encryption.peer_public_key", str)
        peer_key = decode_key(peer)
        if peer_key is None:
            raise self.error("encryption.peer_public_key", f"expected a base64 public key of {KEY_SIZE} bytes "
                             f"(as 'wg pubkey' or 'tunneld pubkey' print), got {_show(peer)}")
        if is_low_order(peer_key):
            raise self.error("encryption.peer_public_key", f"{_show(peer)} is a low-order point: no shared secret "
                             "can come of it (a broken or hostile key)")
        compatible = self.typed(m.get("wireguard_compatible", False), "encryption.wireguard_compatible", bool)
        allowed = None
        if "allowed_ips" in m:
            allowed = tuple(self.network(r, f"encryption.allowed_ips[{i}]")
                            for i, r in enumerate(self.str_list(m["allowed_ips"], "encryption.allowed_ips")))
        return EncryptionConfig(private, peer_key, psk, compatible, allowed)

    def path(self, value: Any, path: str) -> str:
        self.typed(value, path, str)
        if not value:
            raise self.error(path, "expected a file name")
        if os.path.isabs(value) or self.source.startswith("<"):
            return value
        return os.path.join(os.path.dirname(os.path.abspath(self.source)), value)

    def keys(self, enc: EncryptionConfig, run_as: RunAs | None) -> Keys:
        def secret(path: str, key_path: str) -> bytes:
            why = self.check_file(path) if self.check_file is not None else None
            if why is not None:
                raise self.error(key_path, why)
            try:
                text = self.read_secret(path, run_as)
            except SecretFileError as e:
                raise self.error(key_path, str(e)) from None
            key = decode_key(text)
            if key is None:
                raise self.error(key_path, f"{ownership.quote(path)} does not hold a base64 key of {KEY_SIZE} bytes "
                                 "(make one with 'tunneld genkey' or 'tunneld genpsk')")
            return key
        private = secret(enc.private_key_file, "encryption.private_key_file")
        psk = secret(enc.preshared_key_file, "encryption.preshared_key_file") if enc.preshared_key_file else None
        return Keys(private, psk)

    def ifname(self, value: Any, path: str) -> str:
        self.typed(value, path, str)
        if not value or len(value.encode()) >= IFNAMSIZ:
            raise self.error(path, f"interface names are 1 to {IFNAMSIZ - 1} bytes, got {_show(value)}")
        if value in (".", "..") or any(c in value for c in "/: \t\n") :
            raise self.error(path, f"not a valid interface name: {_show(value)}")
        return value

    def interface(self, value: Any, transports: tuple[TransportConfig, ...], encrypted: bool) -> InterfaceConfig:
        m = self.mapping(value, "interface", _children("interface"), {"mode"})
        mode = self.choice(m["mode"], "interface.mode", ("tun", "tap"))
        name = self.ifname(m["name"], "interface.name") if m.get("name") is not None else None
        persistent = self.typed(m.get("persistent", False), "interface.persistent", bool)
        if persistent and name is None:
            raise self.error("interface.persistent", "a persistent device needs interface.name")
        if persistent and "%" in name:
            raise self.error("interface.name", f"a persistent device needs its exact name, got {_show(name)}")

        addresses = tuple(self.address(a, f"interface.addresses[{i}]")
                          for i, a in enumerate(self.str_list(m.get("addresses", []), "interface.addresses")))
        routes = tuple(self.network(r, f"interface.routes[{i}]")
                       for i, r in enumerate(self.str_list(m.get("routes", []), "interface.routes")))
        for key, items in (("interface.addresses", addresses), ("interface.routes", routes)):
            for i, item in enumerate(items):
                if item in items[:i]:
                    raise self.error(f"{key}[{i}]", f"{item} is listed twice")

        default_mtu = limits.DEFAULT_TAP_MTU if mode == "tap" else limits.DEFAULT_TUN_MTU
        mtu = self.typed(m.get("mtu", default_mtu), "interface.mtu", int)
        if not limits.MIN_MTU <= mtu <= limits.MAX_MTU:
            raise self.error("interface.mtu", f"expected {limits.MIN_MTU} to {limits.MAX_MTU}, got {_show(mtu)}")
        if mtu < limits.IPV6_MIN_MTU and any(a.version == 6 for a in addresses):
            raise self.error("interface.mtu", f"IPv6 addresses need an MTU of at least {limits.IPV6_MIN_MTU}, got {_show(mtu)}")
        frame = limits.max_packet(mode, mtu) + (encryption_overhead(mode, False) if encrypted else 0)
        protocols = {t.protocol for t in transports}
        if "tcp" in protocols and not encrypted and frame > limits.SIMPLETUN_BUFFER:
            raise self.error("interface.mtu", f"{mtu} gives {frame}-byte frames; plaintext TCP is simpletun's "
                             f"wire format, whose peers read at most {limits.SIMPLETUN_BUFFER} bytes")
        if "tcp" in protocols and frame > limits.MAX_LENGTH_FIELD:
            raise self.error("interface.mtu", f"{mtu} gives {frame}-byte frames, over the "
                             f"{limits.MAX_LENGTH_FIELD}-byte limit of a 2-byte length")
        if "udp" in protocols and frame > limits.MAX_UDP_PAYLOAD:
            raise self.error("interface.mtu", f"{mtu} gives {frame}-byte messages, over the "
                             f"{limits.MAX_UDP_PAYLOAD}-byte UDP payload limit")

        mac = bridge = None
        if m.get("mac") is not None:
            if mode != "tap":
                raise self.error("interface.mac", "only a tap device has a MAC address")
            mac = self.typed(m["mac"], "interface.mac", str, "quote it: unquoted, YAML can read a MAC address as a number")
            if not _MAC.match(mac):
                raise self.error("interface.mac", f"expected a MAC address like 02:00:00:00:00:01, got {_show(mac)}")
            first = int(mac[:2], 16)
            if first & 1 or mac.replace(":", "") == "0" * 12:
                raise self.error("interface.mac", f"expected a unicast, nonzero MAC address, got {_show(mac)}")
            mac = mac.lower()
        if m.get("bridge") is not None:
            if mode != "tap":
                raise self.error("interface.bridge", "only a tap device can join a bridge")
            bridge = self.ifname(m["bridge"], "interface.bridge")
        # tap over UDP: bridged TCP is clamped to the underlay, so full-size LAN frames need no IP fragments
        clamp = self.typed(m.get("clamp_mss", mode == "tun" or "udp" in protocols), "interface.clamp_mss", bool)
        offload = self.typed(m.get("offload", True), "interface.offload", bool)
        return InterfaceConfig(name, mode, mtu, addresses, mac, bridge, routes, persistent, clamp, offload)

    def address(self, text: str, path: str) -> IPInterface:
        if "/" not in text:
            raise self.error(path, f"expected address/prefix, got {_show(text)}")
        try:
            return ipaddress.ip_interface(text)
        except ValueError:
            raise self.error(path, f"expected address/prefix, got {_show(text)}") from None

    def network(self, text: str, path: str) -> IPNetwork:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            if "host bits" in str(e):
                raise self.error(path, f"{_show(text)} has host bits set") from None
            raise self.error(path, f"expected network/prefix, got {_show(text)}") from None

    def endpoint(self, value: Any, path: str) -> Endpoint:
        if not isinstance(value, str):
            raise self.error(path, f"expected host:port, got {_kind(value)} {_show(value)}")
        bad = self.error(path, f"expected host:port, got {_show(value)}")
        if value.startswith("["):
            host, sep, port = value[1:].partition("]:")
            if not sep:
                raise bad
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise self.error(path, f"not an IPv6 address: {_show(host)}") from None
        else:
            host, sep, port = value.rpartition(":")
            if not sep or not host or ":" in host:
                raise bad
            if not _HOSTNAME.match(host):
                raise self.error(path, f"not an IPv4 address or host name: {_show(host)}")
            if host.replace(".", "").isdigit():
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise self.error(path, f"not an IPv4 address: {_show(host)}") from None
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:  # not '²', which int() refuses
            raise self.error(path, f"port must be 1 to 65535, got {_show(port)}")
        return Endpoint(host, int(port))

    def transports(self, value: Any) -> tuple[tuple[TransportConfig, ...], int]:
        """`transport`: one mapping, or a list of them in order of preference; and failback."""
        if not isinstance(value, list):
            entry = self.transport(value, "transport")
            if "failback" in value:
                raise self.error("transport.failback", "moving back applies to a list of transports")
            return (entry,), FAILBACK
        if not value:
            raise self.error("transport", "expected a mapping or a list of mappings, got an empty list")
        entries: list[TransportConfig] = []
        for i, item in enumerate(value):
            path = f"transport[{i}]"
            entry = self.transport(item, path)
            if i:
                for key in LIST_WIDE:
                    if key in item:
                        raise self.error(f"{path}.{key}", "applies to the whole list: set it on the first entry")
            for j, other in enumerate(entries):
                if entry.listen is not None and (other.protocol, other.listen) == (entry.protocol, entry.listen):
                    raise self.error(f"{path}.listen", f"transport[{j}] listens there already")
                if entry == other:
                    raise self.error(path, f"the same as transport[{j}]")
            entries.append(entry)
        failback = FAILBACK
        if "failback" in value[0]:
            failback = self.typed(value[0]["failback"], "transport[0].failback", int)
            if not 0 <= failback <= 86400:
                raise self.error("transport[0].failback", f"expected 0 to 86400 seconds, got {_show(failback)}")
        return tuple(entries), failback

    def transport(self, value: Any, path: str = "transport") -> TransportConfig:
        m = self.mapping(value, path, _children("transport"), {"protocol"})
        protocol = self.choice(m["protocol"], f"{path}.protocol", ("udp", "tcp"))
        listen = self.endpoint(m["listen"], f"{path}.listen") if "listen" in m else None
        remote = self.endpoint(m["remote"], f"{path}.remote") if "remote" in m else None
        if protocol == "tcp" and (listen is None) == (remote is None):
            raise self.error(path, "tcp needs exactly one of listen (server) or remote (client)")
        if protocol == "udp" and listen is None and remote is None:
            raise self.error(path, "udp needs listen, remote, or both")
        if listen is not None and remote is not None:
            lv6, rv6 = _is_v6(listen.host), _is_v6(remote.host)
            if lv6 is False and rv6 is True:
                raise self.error(f"{path}.remote", f"IPv6 remote {remote} cannot be reached from IPv4 listen {listen}")
        if listen is not None and not is_ip(listen.host):
            raise self.error(f"{path}.listen", f"expected an IP address to bind, got {_show(listen.host)}")
        keepalive = None
        if "keepalive" in m:
            keepalive = self.typed(m["keepalive"], f"{path}.keepalive", int)
            if not 1 <= keepalive <= 65535:
                raise self.error(f"{path}.keepalive", f"expected 1 to 65535 seconds, got {_show(keepalive)}")
        fwmark = None
        if "fwmark" in m:
            fwmark = self.typed(m["fwmark"], f"{path}.fwmark", int)
            if not 1 <= fwmark <= 0xFFFFFFFF:
                raise self.error(f"{path}.fwmark", f"expected 1 to {0xFFFFFFFF}, got {_show(fwmark)}")
        resolve = {}
        for key in ("resolve_min", "resolve_max"):
            if key in m:
                resolve[key] = self.typed(m[key], f"{path}.{key}", int)
                if not 1 <= resolve[key] <= 86400:
                    raise self.error(f"{path}.{key}", f"expected 1 to 86400 seconds, got {_show(resolve[key])}")
        transport = TransportConfig(protocol, listen, remote, keepalive, fwmark, **resolve)
        if transport.resolve_min > transport.resolve_max:
            raise self.error(f"{path}.resolve_min", f"{transport.resolve_min} s is more than "
                             f"{path}.resolve_max, {transport.resolve_max} s")
        return transport


def refuse_root(cfg) -> None:
    """A config whose run_as is uid 0 is a mistake (ConfigError, exit 2): root
    keeps every capability whatever run_as says. A user this machine does not
    know is left to start-up, which says so (the user may be made later)."""
    if cfg.run_as is None:
        return
    try:
        uid = pwd.getpwnam(cfg.run_as.user).pw_uid
    except KeyError:
        return
    if uid == 0:
        raise ConfigError(cfg.source, 0, "run_as.user", f"{cfg.run_as.user!r} is uid 0, which keeps every "
                          "capability: name an unprivileged user (e.g. tunneld), or leave run_as out to stay root")


def is_low_order(public: bytes) -> bool:
    """Curve25519 points of small order (0, 1, the order-8 points, p-1, p, p+1 and
    their high-bit twins) give an all-zero shared secret with every clamped private
    key: clamping makes the scalar a multiple of the cofactor 8. One exchange with a
    fixed key tells them apart from every usable public key."""
    from tunneld.wg.primitives import DH, DHError
    try:
        DH(_PROBE_PRIVATE, public)
    except DHError:
        return True
    return False


_PROBE_PRIVATE = bytes([0x40]) + bytes(30) + bytes([0x40])  # any clamped scalar will do


def _is_v6(host: str) -> bool | None:
    """True/False for an IP literal, None for a host name (resolved by the daemon)."""
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return None
