"""Config parsing: good files give typed objects, bad ones one exact line each."""

import ipaddress
import textwrap

import pytest

from tunneld.config import ConfigError, Endpoint, parse

PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

GOOD = """\
interface:
  name: tun0
  mode: tun
  mtu: 1420
  addresses: [10.9.0.1/24, "fd09::1/64"]
  routes: [192.168.20.0/24]
transport:
  protocol: udp
  listen: "0.0.0.0:55555"
  remote: "192.0.2.1:55555"
encryption: none
log_level: info
"""


def test_event_hooks_peer_timeout_and_resolve_intervals():
    cfg = parse(GOOD, "site-a.yaml")
    assert (cfg.peer_timeout, cfg.transport.resolve_min, cfg.transport.resolve_max) == (180, 5, 300)
    text = GOOD.replace('  remote: "192.0.2.1:55555"\n', '  remote: "vpn.example:55555"\n  resolve_min: 2\n  resolve_max: 60\n')
    cfg = parse(text + "peer_timeout: 30\nhooks: {peer_up: [a], peer_down: [b, c], endpoint_changed: [d]}\n")
    assert (cfg.peer_timeout, cfg.transport.resolve_min, cfg.transport.resolve_max) == (30, 2, 60)
    assert (cfg.hooks.peer_up, cfg.hooks.peer_down, cfg.hooks.endpoint_changed) == (("a",), ("b", "c"), ("d",))


def test_good_config():
    cfg = parse(GOOD, "site-a.yaml")
    assert cfg.interface.name == "tun0"
    assert cfg.interface.mode == "tun"
    assert cfg.interface.mtu == 1420
    assert cfg.interface.addresses == (ipaddress.ip_interface("10.9.0.1/24"), ipaddress.ip_interface("fd09::1/64"))
    assert cfg.interface.routes == (ipaddress.ip_network("192.168.20.0/24"),)
    assert cfg.transport.listen == Endpoint("0.0.0.0", 55555)
    assert cfg.transport.remote == Endpoint("192.0.2.1", 55555)
    assert cfg.encryption is None
    assert cfg.interface.max_packet == 1420


def test_defaults():
    cfg = parse("interface: {mode: tap}\ntransport: {protocol: tcp, remote: 'peer.example:55555'}\nencryption: none\n")
    assert (cfg.interface.name, cfg.interface.mtu, cfg.interface.persistent) == (None, 1500, False)
    assert cfg.interface.max_packet == 1522  # 1500 + Ethernet header + room for two VLAN tags
    assert cfg.transport.remote == Endpoint("peer.example", 55555)
    assert cfg.log_level == "info"
    assert parse("interface: {mode: tun}\ntransport: {protocol: udp, listen: '[::]:1'}\nencryption: none\n").interface.mtu == 1420


def test_ipv6_endpoint_and_tap_options():
    cfg = parse(textwrap.dedent("""\
        interface: {mode: tap, mac: "02:AA:00:00:00:01", bridge: br0, persistent: true, name: tap7}
        transport: {protocol: udp, listen: "[::]:55555", remote: "[2001:db8::1]:55555"}
        encryption: none
        """))
    assert cfg.interface.mac == "02:aa:00:00:00:01"
    assert cfg.interface.bridge == "br0"
    assert cfg.transport.remote == Endpoint("2001:db8::1", 55555)
    assert str(cfg.transport.remote) == "[2001:db8::1]:55555"


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (case, config text, the exact error line)
BAD = [
    ("remote without port", edit('remote: "192.0.2.1:55555"', "remote: 10.0.0.1"),
     "site-a.yaml:10: transport.remote: expected host:port, got '10.0.0.1'"),
    ("port out of range", edit("192.0.2.1:55555", "192.0.2.1:70000"),
     "site-a.yaml:10: transport.remote: port must be 1 to 65535, got '70000'"),
    ("bad IPv4", edit("192.0.2.1:55555", "192.0.2.300:55555"),
     "site-a.yaml:10: transport.remote: not an IPv4 address: '192.0.2.300'"),
    ("bad IPv6", edit('"192.0.2.1:55555"', '"[fe80::zz]:55555"'),
     "site-a.yaml:10: transport.remote: not an IPv6 address: 'fe80::zz'"),
    ("bare IPv6", edit('"192.0.2.1:55555"', '"2001:db8::1:55555"'),
     "site-a.yaml:10: transport.remote: expected host:port, got '2001:db8::1:55555'"),
    ("unknown top-level key", GOOD + "colour: blue\n",
     "site-a.yaml:13: colour: unknown key (expected one of: encryption, hooks, interface, log_level, metrics, name, peer_timeout, run_as, transport)"),
    ("unknown interface key", edit("  mtu: 1420\n", "  mtu: 1420\n  txqueuelen: 500\n"),
     "site-a.yaml:5: interface.txqueuelen: unknown key (expected one of: addresses, bridge, clamp_mss, mac, mode, mtu, name, offload, persistent, routes)"),
    ("missing transport", GOOD.replace("transport:\n  protocol: udp\n  listen: \"0.0.0.0:55555\"\n  remote: \"192.0.2.1:55555\"\n", ""),
     "site-a.yaml:1: transport: missing (required)"),
    ("missing encryption", edit("encryption: none\n", ""),
     "site-a.yaml:1: encryption: missing (required)"),
    ("missing mode", edit("  mode: tun\n", ""),
     "site-a.yaml:1: interface.mode: missing (required)"),
    ("bad mode", edit("mode: tun", "mode: tunnel"),
     "site-a.yaml:3: interface.mode: expected one of tun | tap, got 'tunnel'"),
    ("mtu as string", edit("mtu: 1420", "mtu: '1420'"),
     "site-a.yaml:4: interface.mtu: expected an integer, got a string '1420'"),
    ("mtu too small", edit("mtu: 1420", "mtu: 40"),
     "site-a.yaml:4: interface.mtu: expected 68 to 65535, got 40"),
    ("mtu too small for IPv6", edit("mtu: 1420", "mtu: 1200"),
     "site-a.yaml:4: interface.mtu: IPv6 addresses need an MTU of at least 1280, got 1200"),
    ("address without prefix", edit("10.9.0.1/24", "10.9.0.1"),
     "site-a.yaml:5: interface.addresses[0]: expected address/prefix, got '10.9.0.1'"),
    ("address garbage", edit('"fd09::1/64"', '"fd09::g/64"'),
     "site-a.yaml:5: interface.addresses[1]: expected address/prefix, got 'fd09::g/64'"),
    ("route with host bits", edit("192.168.20.0/24", "192.168.20.1/24"),
     "site-a.yaml:6: interface.routes[0]: '192.168.20.1/24' has host bits set"),
    ("addresses not a list", edit('addresses: [10.9.0.1/24, "fd09::1/64"]', "addresses: 10.9.0.1/24"),
     "site-a.yaml:5: interface.addresses: expected a list, got a string"),
    ("mac on tun", edit("  mtu: 1420\n", '  mtu: 1420\n  mac: "02:00:00:00:00:01"\n'),
     "site-a.yaml:5: interface.mac: only a tap device has a MAC address"),
    ("bridge on tun", edit("  mtu: 1420\n", "  mtu: 1420\n  bridge: br0\n"),
     "site-a.yaml:5: interface.bridge: only a tap device can join a bridge"),
    ("unquoted mac (YAML sexagesimal)", edit("mode: tun", "mode: tap").replace("  mtu: 1420\n", "  mtu: 1420\n  mac: 12:00:00:00:00:01\n"),
     "site-a.yaml:5: interface.mac: expected a string, got an integer 9331200001 (quote it: unquoted, YAML can read a MAC address as a number)"),
    ("multicast mac", edit("mode: tun", "mode: tap").replace("  mtu: 1420\n", '  mtu: 1420\n  mac: "01:00:5e:00:00:01"\n'),
     "site-a.yaml:5: interface.mac: expected a unicast, nonzero MAC address, got '01:00:5e:00:00:01'"),
    ("name too long", edit("name: tun0", "name: a-very-long-tunnel-name"),
     "site-a.yaml:2: interface.name: interface names are 1 to 15 bytes, got 'a-very-long-tunnel-name'"),
    ("name with slash", edit("name: tun0", "name: tun/0"),
     "site-a.yaml:2: interface.name: not a valid interface name: 'tun/0'"),
    ("persistent without name", edit("  name: tun0\n", "  persistent: true\n"),
     "site-a.yaml:2: interface.persistent: a persistent device needs interface.name"),
    ("persistent as string", edit("  mtu: 1420\n", "  mtu: 1420\n  persistent: 'no'\n"),
     "site-a.yaml:5: interface.persistent: expected a boolean, got a string 'no'"),
    ("tcp with both ends", edit("protocol: udp", "protocol: tcp"),
     "site-a.yaml:7: transport: tcp needs exactly one of listen (server) or remote (client)"),
    ("udp with neither end", edit('  listen: "0.0.0.0:55555"\n  remote: "192.0.2.1:55555"\n', '  {}\n').replace("  protocol: udp\n  {}\n", "  protocol: udp\n"),
     "site-a.yaml:7: transport: udp needs listen, remote, or both"),
    ("bad protocol", edit("protocol: udp", "protocol: sctp"),
     "site-a.yaml:8: transport.protocol: expected one of udp | tcp, got 'sctp'"),
    ("listen on a host name", edit("0.0.0.0:55555", "myhost:55555"),
     "site-a.yaml:9: transport.listen: expected an IP address to bind, got 'myhost'"),
    ("v6 remote from v4 listen", edit('"192.0.2.1:55555"', '"[2001:db8::1]:55555"'),
     "site-a.yaml:10: transport.remote: IPv6 remote [2001:db8::1]:55555 cannot be reached from IPv4 listen 0.0.0.0:55555"),
    ("plaintext TCP frame over simpletun's buffer", edit("mtu: 1420", "mtu: 9000").replace('  listen: "0.0.0.0:55555"\n', "").replace("protocol: udp", "protocol: tcp"),
     "site-a.yaml:4: interface.mtu: 9000 gives 9000-byte frames; plaintext TCP is simpletun's wire format, whose peers read at most 2000 bytes"),
    ("udp frame over the datagram limit", edit("mtu: 1420", "mtu: 65535"),
     "site-a.yaml:4: interface.mtu: 65535 gives 65535-byte messages, over the 65507-byte UDP payload limit"),
    ("encryption without a private key", edit("encryption: none", f"encryption: {{peer_public_key: '{PUB}'}}"),
     "site-a.yaml:11: encryption.private_key_file: missing (required)"),
    ("encryption typo", edit("encryption: none", "encryption: off"),
     "site-a.yaml:11: encryption: expected 'none' or a mapping of keys, got False"),
    ("bad peer key", edit("encryption: none", "encryption: {private_key_file: k, peer_public_key: abc}"),
     "site-a.yaml:11: encryption.peer_public_key: expected a base64 public key of 32 bytes (as 'wg pubkey' or 'tunneld pubkey' print), got 'abc'"),
    ("unknown encryption key", edit("encryption: none", f"encryption: {{private_key_file: k, peer_public_key: '{PUB}', cipher: aes}}"),
     "site-a.yaml:11: encryption.cipher: unknown key (expected one of: allowed_ips, peer_public_key, preshared_key_file, private_key_file, wireguard_compatible)"),
    ("WireGuard mode over TCP", edit("encryption: none", f"encryption: {{private_key_file: k, peer_public_key: '{PUB}', wireguard_compatible: true}}").replace('  listen: "0.0.0.0:55555"\n', "").replace("protocol: udp", "protocol: tcp"),
     "site-a.yaml:10: encryption.wireguard_compatible: WireGuard carries IP packets over UDP: needs transport.protocol udp and interface.mode tun"),
    ("allowed_ips on tap", edit("encryption: none", f"encryption: {{private_key_file: k, peer_public_key: '{PUB}', allowed_ips: [10.0.0.0/8]}}").replace("mode: tun", "mode: tap"),
     "site-a.yaml:11: encryption.allowed_ips: applies to IP packets: needs interface.mode tun"),
    ("peer timeout too short", GOOD + "peer_timeout: 5\n", "site-a.yaml:13: peer_timeout: expected 10 to 86400 seconds, got 5"),
    ("peer timeout as text", GOOD + "peer_timeout: 3m\n",
     "site-a.yaml:13: peer_timeout: expected an integer, got a string '3m'"),
    ("resolve floor above the ceiling", edit('  remote: "192.0.2.1:55555"\n', '  remote: "192.0.2.1:55555"\n  resolve_min: 60\n  resolve_max: 30\n'),
     "site-a.yaml:11: transport.resolve_min: 60 s is more than transport.resolve_max, 30 s"),
    ("resolve ceiling out of range", edit('  remote: "192.0.2.1:55555"\n', '  remote: "192.0.2.1:55555"\n  resolve_max: 0\n'),
     "site-a.yaml:11: transport.resolve_max: expected 1 to 86400 seconds, got 0"),
    ("event hook not a list", GOOD + "hooks: {peer_down: 'logger down'}\n",
     "site-a.yaml:13: hooks.peer_down: expected a list, got a string"),
    ("keepalive without encryption", edit('  remote: "192.0.2.1:55555"\n', '  remote: "192.0.2.1:55555"\n  keepalive: 25\n'),
     "site-a.yaml:11: transport.keepalive: needs encryption: plaintext has no keepalive message"),
    ("keepalive out of range", edit('  remote: "192.0.2.1:55555"\n', '  remote: "192.0.2.1:55555"\n  keepalive: 0\n').replace("encryption: none", f"encryption: {{private_key_file: k, peer_public_key: '{PUB}'}}"),
     "site-a.yaml:11: transport.keepalive: expected 1 to 65535 seconds, got 0"),
    ("bad log level", edit("log_level: info", "log_level: verbose"),
     "site-a.yaml:12: log_level: expected one of debug | info | warning | error, got 'verbose'"),
    ("duplicate key", edit("  mtu: 1420\n", "  mtu: 1420\n  mtu: 1400\n"),
     "site-a.yaml:5: interface.mtu: duplicate key"),
    ("not a mapping", "- just\n- a list\n",
     "site-a.yaml:1: expected a mapping, got a list"),
    ("empty file", "",
     "site-a.yaml:1: empty file: expected a mapping of settings"),
    ("YAML syntax", "interface: {mode: tun\ntransport: x\n",
     "site-a.yaml:2: invalid YAML: expected ',' or '}', but got ':'"),
    ("interface not a mapping", edit("interface:\n  name: tun0\n  mode: tun\n  mtu: 1420\n  addresses: [10.9.0.1/24, \"fd09::1/64\"]\n  routes: [192.168.20.0/24]\n", "interface: tun0\n"),
     "site-a.yaml:1: interface: expected a mapping, got a string"),
]


@pytest.mark.parametrize("case,text,message", BAD, ids=[b[0] for b in BAD])
def test_bad_config(case, text, message):
    with pytest.raises(ConfigError) as e:
        parse(text, "site-a.yaml")
    assert str(e.value) == message
    assert "\n" not in str(e.value)


ENCRYPTED = GOOD.replace("encryption: none", f"""encryption:
  private_key_file: london.key
  peer_public_key: "{PUB}"
  preshared_key_file: /etc/tunneld/london.psk
  allowed_ips: [10.9.0.0/24]""")
KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def test_encrypted_config_reads_keys_through_read_secret():
    read = {}

    def secret(path, run_as):
        read[path] = True
        return KEY + "\n"
    cfg = parse(ENCRYPTED, "/etc/tunneld/site-a.yaml", read_secret=secret)
    enc = cfg.encryption
    assert enc.private_key_file == "/etc/tunneld/london.key"  # relative to the config's folder
    assert enc.peer_public_key == __import__("base64").b64decode(PUB)
    assert enc.allowed_ips == (ipaddress.ip_network("10.9.0.0/24"),)
    assert enc.wireguard_compatible is False
    assert enc.keys.private == enc.keys.psk == __import__("base64").b64decode(KEY)
    assert KEY not in repr(cfg)
    assert set(read) == {"/etc/tunneld/london.key", "/etc/tunneld/london.psk"}
    assert cfg.max_message == 1420 + 32
    assert parse(ENCRYPTED, "x.yaml").encryption.keys is None  # pure parse reads nothing


@pytest.mark.parametrize("mode,content,message", [
    (0o644, KEY, "encryption.private_key_file: {path} is readable by group or others (chmod 600 {path})"),
    (0o600, "not a key", "encryption.private_key_file: {path} does not hold a base64 key of 32 bytes (make one with 'tunneld genkey' or 'tunneld genpsk')"),
    (None, None, "encryption.private_key_file: cannot read {path}: No such file or directory"),
])
def test_key_file_problems(tmp_path, mode, content, message):
    from tunneld.config import load
    key = tmp_path / "london.key"
    if content is not None:
        key.write_text(content)
        key.chmod(mode)
    cfg = tmp_path / "site-a.yaml"
    cfg.write_text(ENCRYPTED.replace("/etc/tunneld/london.psk", "london.key"))
    with pytest.raises(ConfigError) as e:
        load(str(cfg))
    assert str(e.value) == f"{cfg}:12: " + message.format(path=key)


@pytest.mark.parametrize("mode,proto,given,want", [
    ("tun", "udp", None, True), ("tun", "tcp", None, True),
    ("tap", "udp", None, True),  # bridged TCP fits the underlay whole: no IP fragments
    ("tap", "tcp", None, False),  # a stream needs no clamp
    ("tap", "udp", "false", False), ("tap", "tcp", "true", True), ("tun", "udp", "false", False),
])
def test_clamp_mss_defaults(mode, proto, given, want):
    transport = 'listen: "0.0.0.0:5000", remote: "10.0.0.2:5000"' if proto == "udp" else 'remote: "10.0.0.2:5000"'
    text = (f"interface: {{mode: {mode}" + (f", clamp_mss: {given}" if given else "") + "}\n"
            f"transport: {{protocol: {proto}, {transport}}}\nencryption: none\n")
    assert parse(text).interface.clamp_mss is want
