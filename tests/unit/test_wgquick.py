"""`tunneld import`: wg-quick configs in, tunneld configs out; what it refuses, and why."""

import base64
import os
import subprocess
import sys

import pytest

from tunneld import config
from tunneld.config import wgquick

KEY = base64.b64encode(bytes(range(32))).decode()
PUB = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
BASE = f"""[Interface]
PrivateKey = {KEY}
Address = 10.9.0.1/24, fd09::1/64
ListenPort = 51820

[Peer]
PublicKey = {PUB}
AllowedIPs = 10.9.0.0/24
Endpoint = 192.0.2.7:51820
"""


def test_what_it_carries():
    imp = wgquick.parse(BASE + "PersistentKeepalive = 25\n", "wg0.conf")
    assert imp.addresses == ["10.9.0.1/24", "fd09::1/64"]
    assert imp.routes == imp.allowed_ips == ["10.9.0.0/24"]
    assert (imp.listen_port, imp.endpoint, imp.keepalive, imp.mtu) == (51820, "192.0.2.7:51820", 25, 1420)
    assert imp.private_key == bytes(range(32)) and imp.psk is None


@pytest.mark.parametrize("extra, routes, fwmark", [
    ("Table = off\n", [], None),
    ("Table = auto\n", ["10.9.0.0/24"], None),
    ("FwMark = 0x1234\n", ["10.9.0.0/24"], 0x1234),
    ("FwMark = off\n", ["10.9.0.0/24"], None),
])
def test_table_and_fwmark_map(extra, routes, fwmark):
    imp = wgquick.parse(BASE.replace("ListenPort = 51820\n", "ListenPort = 51820\n" + extra))
    assert imp.routes == routes and imp.fwmark == fwmark


@pytest.mark.parametrize("change, message", [
    (lambda t: t + f"\n[Peer]\nPublicKey = {PUB}\nAllowedIPs = 10.8.0.0/24\n",
     "wg0.conf: a tunneld tunnel has exactly one peer; found 2 [Peer] sections (lines 6, 11): write one wg-quick file per peer and import each"),
    (lambda t: t.replace("ListenPort", "PostUp = iptables -A FORWARD -i %i -j ACCEPT\nListenPort"),
     "wg0.conf:4: PostUp runs shell commands; tunneld import does not carry them over unseen"),
    (lambda t: t.replace("ListenPort", "Table = 1234\nListenPort"),
     "wg0.conf:4: Table = 1234: tunneld puts routes in the main table"),
    (lambda t: t.replace("ListenPort", "DNS = 1.1.1.1\nListenPort"),
     "wg0.conf:4: DNS tunneld does not change the resolver"),
    (lambda t: t.replace("ListenPort", "SaveConfig = true\nListenPort"),
     "wg0.conf:4: SaveConfig tunneld never writes its config back"),
    (lambda t: t.replace("ListenPort", "Colour = blue\nListenPort"),
     "wg0.conf:4: Colour is not a wg-quick key tunneld can carry"),
    (lambda t: t.replace(f"PublicKey = {PUB}", "PublicKey = nope"), "wg0.conf:7: [Peer] PublicKey is not a base64 key"),
    (lambda t: t.replace("[Peer]", "[Peers]"), "wg0.conf:6: unknown section [Peers]"),
    (lambda t: t.replace("ListenPort = 51820\n", "").replace("Endpoint = 192.0.2.7:51820\n", ""),
     "wg0.conf: neither ListenPort nor a peer Endpoint"),
    (lambda t: t.replace("10.9.0.0/24", "10.9.0.0/99"), "wg0.conf:8: AllowedIPs: not an address/prefix"),
])
def test_what_it_refuses(change, message):
    with pytest.raises(wgquick.Unsupported) as e:
        wgquick.parse(change(BASE), "wg0.conf")
    assert str(e.value).startswith(message), str(e.value)


def test_import_writes_a_config_that_checks_and_keys_0600(tmp_path):
    conf = tmp_path / "wg7.conf"
    conf.write_text(BASE + f"PresharedKey = {KEY}\n")
    out = tmp_path / "london.yaml"
    p = subprocess.run([sys.executable, "-m", "tunneld", "import", str(conf), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name in ("london.yaml", "london.key", "london.psk"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    cfg = config.load(str(out))
    assert cfg.encryption.wireguard_compatible and cfg.interface.name == "wg7"
    assert cfg.encryption.keys.private == bytes(range(32)) == cfg.encryption.keys.psk
    assert str(cfg.transport.remote) == "192.0.2.7:51820" and str(cfg.transport.listen) == "0.0.0.0:51820"
    # never overwrites
    p = subprocess.run([sys.executable, "-m", "tunneld", "import", str(conf), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "exists: not overwritten" in p.stderr
    conf.write_text(BASE.replace("ListenPort", "PostDown = rm -rf /\nListenPort"))
    p = subprocess.run([sys.executable, "-m", "tunneld", "import", str(conf), "-o", str(tmp_path / "x.yaml")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and not (tmp_path / "x.key").exists()


# --- what it writes: YAML from a serializer, whatever the names and values ----------

HOSTILE = [
    "wg0.conf\nhooks: {up: ['touch /tmp/tunneld-pwned']}\n#",  # a newline: a new top-level key
    "a\"b'c: d # e", "- item", "? key", "&a *a", "!!python/object/apply:os.system ['id']", "{a: 1}", "[x]",
    "~", "yes", "0x10", "2001-13-45", " leading and trailing ", "%YAML 1.1", "---", "...", "\t", "\\",
    "\u2028line separator", "\x85next line", "\rcarriage return", "\x7f", "\ufeff", "é", "\udcff",
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_and_values_stay_the_strings_they_are(hostile):
    import yaml
    imp = wgquick.parse(BASE + f"PresharedKey = {KEY}\nPersistentKeepalive = 25\n", "wg0.conf")
    imp.endpoint = hostile
    text = wgquick.render(imp, hostile, "wg0", hostile, hostile)
    assert yaml.safe_load(text) == {
        "interface": {"mode": "tun", "name": "wg0", "mtu": 1420, "addresses": ["10.9.0.1/24", "fd09::1/64"],
                      "routes": ["10.9.0.0/24"]},
        "transport": {"protocol": "udp", "listen": "[::]:51820" if hostile.startswith("[") else "0.0.0.0:51820",
                      "remote": hostile, "keepalive": 25},
        "encryption": {"wireguard_compatible": True, "private_key_file": hostile, "peer_public_key": PUB,
                       "preshared_key_file": hostile, "allowed_ips": ["10.9.0.0/24"]},
    }
    comment, _, _ = text.partition("\n")
    assert comment.startswith("# imported from ") and comment.isascii() and comment.isprintable()


@pytest.mark.parametrize("conf_name, out_name", [
    ("wg0.conf\nhooks: {up: ['touch pwned']}\n#.conf", "london.yaml"),  # into the comment line
    ("wg0.conf", "x\nhooks:\n  up: ['touch pwned']\n#.yaml"),  # into the key file names
], ids=["wg-quick file", "output"])
def test_import_with_hostile_file_names_writes_exactly_the_intended_keys(tmp_path, conf_name, out_name):
    """The wg-quick file's name and the output's (and so the key files') may hold
    a newline and YAML: the config written still has no hooks, and names its key
    files as they are."""
    import yaml
    conf = tmp_path / conf_name
    conf.write_text(BASE + f"PresharedKey = {KEY}\n")
    out = tmp_path / out_name
    p = subprocess.run([sys.executable, "-m", "tunneld", "import", str(conf), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert list(yaml.safe_load(out.read_text())) == ["interface", "transport", "encryption"]
    cfg = config.load(str(out))
    assert cfg.hooks == config.Hooks() and cfg.run_as is None
    assert cfg.encryption.private_key_file == str(out)[:-5] + ".key"
    assert cfg.encryption.preshared_key_file == str(out)[:-5] + ".psk"
    assert cfg.encryption.keys.private == bytes(range(32))
