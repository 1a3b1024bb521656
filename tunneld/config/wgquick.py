"""`tunneld import wg0.conf -o london.yaml`: a wg-quick config becomes a
WireGuard-compatible tunneld config, with its keys in files beside it (0600).

What it carries: [Interface] PrivateKey, Address, ListenPort, MTU, FwMark,
Table (auto or off); one [Peer] with PublicKey, PresharedKey, Endpoint,
AllowedIPs and PersistentKeepalive. AllowedIPs become both the routes (as
wg-quick adds them; a /0 makes tunneld's full tunnel, wg-quick's fwmark
rules) and encryption.allowed_ips. What it refuses, saying why: more than one
peer, PreUp/PostUp/PreDown/PostDown (shell commands we will not carry over
unseen), DNS, SaveConfig, a numbered Table, and any key it does not know.

`parse(text)` is pure; `main` does the files.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import sys
from dataclasses import dataclass, field

import yaml

from tunneld import config as configmod

WG_QUICK_MTU = 1420  # what wg-quick picks over a 1500-byte underlay
INTERFACE_KEYS = {"privatekey", "address", "listenport", "mtu", "fwmark", "table"}
PEER_KEYS = {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"}
_HOOK = ("runs shell commands; tunneld import does not carry them over unseen: remove the line, "
         "then put what you need in hooks.{} of the new config")
REFUSED = {
    "preup": _HOOK.format("up"), "postup": _HOOK.format("up"),
    "predown": _HOOK.format("down"), "postdown": _HOOK.format("down"),
    "dns": "tunneld does not change the resolver: remove the line (a hooks.up command can call resolvconf)",
    "saveconfig": "tunneld never writes its config back: remove the line",
}


class Unsupported(Exception):
    """A line we cannot carry: `source:line: message`."""


@dataclass
class Section:
    kind: str
    line: int
    values: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def one(self, key: str) -> tuple[int, str] | None:
        found = self.values.get(key)
        return found[-1] if found else None

    def many(self, key: str) -> list[tuple[int, str]]:
        """Comma-separated values over every line of `key`."""
        return [(n, item.strip()) for n, v in self.values.get(key, []) for item in v.split(",") if item.strip()]


def _sections(text: str, source: str) -> list[Section]:
    out: list[Section] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            kind = line[1:-1].strip().lower()
            if kind not in ("interface", "peer"):
                raise Unsupported(f"{source}:{n}: unknown section [{line[1:-1]}] (expected [Interface] or [Peer])")
            out.append(Section(kind, n))
            continue
        key, sep, value = line.partition("=")
        if not sep or not out:
            raise Unsupported(f"{source}:{n}: expected 'Key = Value' inside [Interface] or [Peer], got {raw.strip()!r}")
        out[-1].values.setdefault(key.strip().lower(), []).append((n, value.strip()))
    return out


def _key(value: tuple[int, str] | None, source: str, what: str) -> bytes:
    if value is None:
        raise Unsupported(f"{source}: {what} is missing")
    key = configmod.decode_key(value[1])
    if key is None:
        raise Unsupported(f"{source}:{value[0]}: {what} is not a base64 key of 32 bytes")
    return key


def _int(value: tuple[int, str], source: str, what: str, low: int, high: int, off: bool = False) -> int | None:
    n, text = value
    if off and text.lower() in ("off", "0"):
        return None
    try:
        number = int(text, 0)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise Unsupported(f"{source}:{n}: {what} = {text}: expected {low} to {high}" + (" or off" if off else ""))
    return number


@dataclass
class Imported:
    private_key: bytes
    peer_public_key: bytes
    psk: bytes | None
    addresses: list[str]
    routes: list[str]
    allowed_ips: list[str]
    mtu: int
    listen_port: int | None
    endpoint: str | None
    keepalive: int | None
    fwmark: int | None


def parse(text: str, source: str = "<wg-quick>") -> Imported:
    sections = _sections(text, source)
    interfaces = [s for s in sections if s.kind == "interface"]
    peers = [s for s in sections if s.kind == "peer"]
    if len(interfaces) != 1:
        raise Unsupported(f"{source}: expected one [Interface] section, found {len(interfaces)}")
    if len(peers) != 1:
        lines = ", ".join(str(p.line) for p in peers)
        raise Unsupported(f"{source}: a tunneld tunnel has exactly one peer; found {len(peers)} [Peer] sections"
                           + (f" (lines {lines}): write one wg-quick file per peer and import each" if peers else ""))
    iface, peer = interfaces[0], peers[0]
    for section, known in ((iface, INTERFACE_KEYS), (peer, PEER_KEYS)):
        for key, found in section.values.items():
            n, value = found[0]
            if key == "saveconfig" and value.lower() == "false":
                continue
            if key in REFUSED:
                raise Unsupported(f"{source}:{n}: {key_name(key)} {REFUSED[key]}")
            if key not in known:
                raise Unsupported(f"{source}:{n}: {key_name(key)} is not a wg-quick key tunneld can carry "
                                   f"(in [{section.kind.capitalize()}]: {', '.join(key_name(k) for k in sorted(known))})")

    def networks(key: str, host_ok: bool) -> list[str]:
        out = []
        for n, item in peer.many(key) if key == "allowedips" else iface.many(key):
            try:
                value = ipaddress.ip_interface(item) if host_ok else ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise Unsupported(f"{source}:{n}: {key_name(key)}: not an address/prefix: {item!r}") from None
            out.append(str(value))
        return out

    addresses = networks("address", host_ok=True)
    allowed = networks("allowedips", host_ok=False)
    table = iface.one("table")
    routes = allowed
    if table is not None:
        if table[1].lower() == "off":
            routes = []
        elif table[1].lower() != "auto":
            raise Unsupported(f"{source}:{table[0]}: Table = {table[1]}: tunneld puts routes in the main table "
                               "(and a /0 route in the table numbered like transport.fwmark); use auto or off")
    mtu = _int(iface.one("mtu"), source, "MTU", 1280, 65535) if iface.one("mtu") else WG_QUICK_MTU
    port = _int(iface.one("listenport"), source, "ListenPort", 1, 65535) if iface.one("listenport") else None
    fwmark = _int(iface.one("fwmark"), source, "FwMark", 1, 0xFFFFFFFF, off=True) if iface.one("fwmark") else None
    keepalive = (_int(peer.one("persistentkeepalive"), source, "PersistentKeepalive", 1, 65535, off=True)
                 if peer.one("persistentkeepalive") else None)
    endpoint = peer.one("endpoint")
    if endpoint is None and port is None:
        raise Unsupported(f"{source}: neither ListenPort nor a peer Endpoint: tunneld needs one of them to know "
                           "where to listen or whom to reach")
    return Imported(
        private_key=_key(iface.one("privatekey"), source, "[Interface] PrivateKey"),
        peer_public_key=_key(peer.one("publickey"), source, "[Peer] PublicKey"),
        psk=_key(peer.one("presharedkey"), source, "[Peer] PresharedKey") if peer.one("presharedkey") else None,
        addresses=addresses, routes=routes, allowed_ips=allowed, mtu=mtu, listen_port=port,
        endpoint=endpoint[1] if endpoint else None, keepalive=keepalive, fwmark=fwmark)


def key_name(key: str) -> str:
    names = {"privatekey": "PrivateKey", "listenport": "ListenPort", "fwmark": "FwMark", "publickey": "PublicKey",
             "presharedkey": "PresharedKey", "allowedips": "AllowedIPs", "persistentkeepalive": "PersistentKeepalive",
             "mtu": "MTU", "dns": "DNS", "preup": "PreUp", "postup": "PostUp", "predown": "PreDown",
             "postdown": "PostDown", "saveconfig": "SaveConfig"}
    return names.get(key, key.capitalize())


def render(imp: Imported, source: str, interface: str | None, key_file: str, psk_file: str | None) -> str:
    """The YAML text, made by a serializer: file names and values from the input
    (a name with a newline, a quote or a colon) stay the strings they are and
    never become keys of their own."""
    v6_endpoint = imp.endpoint is not None and imp.endpoint.startswith("[")
    iface: dict = {"mode": "tun"}
    if interface:
        iface["name"] = interface
    iface["mtu"] = imp.mtu
    if imp.addresses:
        iface["addresses"] = list(imp.addresses)
    if imp.routes:
        iface["routes"] = list(imp.routes)
    transport: dict = {"protocol": "udp"}
    if imp.listen_port is not None:
        transport["listen"] = f"{'[::]' if v6_endpoint else '0.0.0.0'}:{imp.listen_port}"
    if imp.endpoint is not None:
        transport["remote"] = imp.endpoint
    if imp.keepalive is not None:
        transport["keepalive"] = imp.keepalive
    if imp.fwmark is not None:
        transport["fwmark"] = imp.fwmark
    enc: dict = {"wireguard_compatible": True, "private_key_file": key_file,
                 "peer_public_key": base64.b64encode(imp.peer_public_key).decode()}
    if psk_file:
        enc["preshared_key_file"] = psk_file
    if imp.allowed_ips:
        enc["allowed_ips"] = list(imp.allowed_ips)
    body = yaml.dump({"interface": iface, "transport": transport, "encryption": enc}, Dumper=_Dumper,
                     sort_keys=False, default_flow_style=False, allow_unicode=False, width=1 << 16)
    # a comment ends at the line's end: the source path goes in escaped, printable ASCII only
    shown = source.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return f"# imported from {shown} by 'tunneld import'\n" + body


class _Dumper(yaml.SafeDumper):
    """safe_dump's, with lists on one line: `addresses: [10.9.0.1/24, 'fd09::1/64']`."""


_Dumper.add_representer(list, lambda dumper, items: dumper.represent_sequence("tag:yaml.org,2002:seq", items,
                                                                               flow_style=True))


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
    finally:
        os.close(fd)


def main(wg_conf: str, output: str) -> int:
    """Exit 0 with the files written, 2 when the input cannot be carried, 1 on a file error."""
    try:
        text = configmod.read_bounded(wg_conf, configmod.MAX_CONFIG_BYTES).decode("utf-8")
    except OSError as e:
        print(f"tunneld import: cannot read {wg_conf}: {e.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"tunneld import: {wg_conf}: not UTF-8 text", file=sys.stderr)
        return 2
    try:
        imp = parse(text, wg_conf)
    except Unsupported as e:
        print(f"tunneld import: {e}", file=sys.stderr)
        return 2
    base = output[:-5] if output.endswith(".yaml") else output
    key_path, psk_path = f"{base}.key", (f"{base}.psk" if imp.psk else None)
    ifname = configmod.stem(wg_conf)
    ifname = ifname if 0 < len(ifname.encode()) < configmod.IFNAMSIZ and ifname.replace("-", "").replace("_", "").isalnum() else None
    rendered = render(imp, wg_conf, ifname, os.path.basename(key_path), psk_path and os.path.basename(psk_path))
    written: list[str] = []
    try:
        for path, data, mode in ((key_path, imp.private_key, 0o600), (psk_path, imp.psk, 0o600),
                                 (output, None, 0o600)):
            if path is None:
                continue
            payload = rendered.encode() if data is None else base64.b64encode(data) + b"\n"
            _write_new(path, payload, mode)
            written.append(path)
        configmod.load(output)  # what we wrote must run as it is
    except FileExistsError as e:
        _remove(written)
        print(f"tunneld import: {e.filename} exists: not overwritten (remove it or pick another -o)", file=sys.stderr)
        return 1
    except OSError as e:
        _remove(written)
        print(f"tunneld import: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except configmod.ConfigError as e:
        _remove(written)
        print(f"tunneld import: the result does not check: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(written)}; run it with: tunneld --config {output}")
    return 0


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
