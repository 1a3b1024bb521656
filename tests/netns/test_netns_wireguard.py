"""Interop with the real wireguard-go, in WireGuard-compatible mode.

    +-----------------------------+                      +-----------------------------+
    | ns A                        |   veth underlay      | ns B                        |
    |  tunneld (tun, udp 51820)   | 10.77.0.1/24         |  wireguard-go + wg(8)       |
    |  tun: 10.9.0.1/24           |----------------------|  wgNAME: 10.9.0.2/24        |
    +-----------------------------+         10.77.0.2/24 +-----------------------------+

"tunneld initiates": tunneld knows wireguard-go's endpoint, wireguard-go does not
know tunneld's, so only tunneld can start. "wireguard-go initiates": the reverse.
Against Debian's wireguard-go (2022) and the current one (2025, with TUN TSO/GRO
and UDP GSO/GRO), which the test machines keep in ../shared/peers beside the
checkout: its offloads change nothing on the wire, and the test says so.
"""

import base64
import os
import subprocess
import sys

import pytest

from pathlib import Path

from tests.lab import require, require_netns, wait_for

CURRENT_WIREGUARD_GO = Path(__file__).resolve().parents[3] / "shared" / "peers" / "wireguard-go"



@pytest.fixture
def wg_pair(lab):
    require_netns("wireguard-go", "wg")
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    return a, b


def wireguard_go(which: str) -> str:
    """The wireguard-go binary: Debian's on PATH, or the current one beside the checkout."""
    if which == "debian":
        return "wireguard-go"
    require(os.access(CURRENT_WIREGUARD_GO, os.X_OK), f"this test needs the current wireguard-go at {CURRENT_WIREGUARD_GO}")
    return str(CURRENT_WIREGUARD_GO)


def start_wireguard_go(lab, ns: str, name: str, key_path, peer_pub: str, psk_path, endpoint: str | None,
                       binary: str = "wireguard-go"):
    proc = lab.spawn(ns, binary, "-f", name, stderr=lab.tmp / f"{name}.log")
    wait_for(lambda: lab.ip(ns, "link", "show", name, check=False).returncode == 0, 10, what=f"{name} to appear")
    args = ["wg", "set", name, "private-key", str(key_path), "listen-port", "51820", "peer", peer_pub,
            "allowed-ips", "10.9.0.1/32"]
    if psk_path:
        args += ["preshared-key", str(psk_path)]
    if endpoint:
        args += ["endpoint", endpoint]
    lab.run(ns, *args)
    lab.ip(ns, "addr", "add", "10.9.0.2/24", "dev", name)
    lab.ip(ns, "link", "set", name, "mtu", "1420", "up")
    return proc


def wg_dump(lab, ns, name):
    """(latest handshake unix time, rx bytes, tx bytes) of wireguard-go's one peer."""
    line = lab.run(ns, "wg", "show", name, "dump").stdout.splitlines()[1].split("\t")
    return int(line[4]), int(line[5]), int(line[6])


@pytest.mark.parametrize("which", ["debian", "current"])
@pytest.mark.parametrize("initiator", ["tunneld", "wireguard-go"])
@pytest.mark.parametrize("with_psk", [False, True], ids=["no-psk", "psk"])
def test_interop_with_wireguard_go(lab, wg_pair, initiator, with_psk, which):
    binary = wireguard_go(which)
    a, b = wg_pair
    our_key, our_pub = lab.keypair()
    their_key, their_pub = lab.keypair()
    psk = lab.psk() if with_psk else None
    wg_name = lab.name("tdwg")  # the control socket path is shared by all namespaces
    start_wireguard_go(lab, b, wg_name, their_key, our_pub, psk,
                       endpoint="10.77.0.1:51820" if initiator == "wireguard-go" else None, binary=binary)
    remote = '  remote: "10.77.0.2:51820"\n' if initiator == "tunneld" else ""
    psk_line = f"  preshared_key_file: {psk}\n" if psk else ""
    tun = lab.name("tdt")
    d = lab.daemon(a, f"""\
interface: {{name: {tun}, mode: tun, addresses: [10.9.0.1/24]}}
transport:
  protocol: udp
  listen: "0.0.0.0:51820"
{remote}encryption:
  private_key_file: {our_key}
  peer_public_key: "{their_pub}"
{psk_line}  wireguard_compatible: true
  allowed_ips: [10.9.0.2/32]
log_level: debug
""").wait_up()
    start = a if initiator == "tunneld" else b
    target = "10.9.0.2" if initiator == "tunneld" else "10.9.0.1"
    wait_for(lambda: lab.ping(start, target, count=1, check=False).returncode == 0, 30, what="the first ping")
    lab.ping(a, "10.9.0.2")
    lab.ping(b, "10.9.0.1")
    expected = "(we initiated)" if initiator == "tunneld" else "(peer initiated)"
    assert f"handshake completed with 10.77.0.2:51820 {expected}" in d.log, d.log
    sent, got = lab.transfer(a, b, "10.9.0.2")
    assert sent == got
    sent, got = lab.transfer(b, a, "10.9.0.1", size=5_000_000)
    assert sent == got
    handshake, rx, tx = wg_dump(lab, b, wg_name)
    assert handshake > 0
    assert rx > 20_000_000 and tx > 5_000_000  # wg counts what crossed, as we do
    assert d.stop() == 0
    counters = next(line for line in d.log.splitlines() if "counters:" in line)
    assert "0 authentication failures" in counters, counters


def test_keys_interchange_with_wg_tools(lab):
    require_netns("wg")
    for _ in range(3):
        ours = subprocess.run(["tunneld", "genkey"], capture_output=True, text=True, check=True,
                              env={**os.environ, "PATH": f"{os.path.dirname(os.sys.executable)}:{os.environ['PATH']}"}).stdout
        theirs = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        for key in (ours, theirs):
            a = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True, check=True).stdout
            b = subprocess.run([os.sys.executable, "-m", "tunneld", "pubkey"], input=key,
                               capture_output=True, text=True, check=True).stdout
            assert a == b and len(base64.b64decode(a)) == 32
    psk = subprocess.run([os.sys.executable, "-m", "tunneld", "genpsk"], capture_output=True, text=True).stdout
    assert len(base64.b64decode(psk)) == 32


def test_import_a_config_that_wg_itself_wrote_and_run_it(lab, wg_pair, tmp_path):
    """wireguard-go in A is set up with wg(8); `wg showconf` writes its config, plus the
    two lines only wg-quick reads (Address, MTU). A then swaps wireguard-go for
    tunneld running the imported config, against wireguard-go in B."""
    a, b = wg_pair
    a_key, a_pub = lab.keypair()
    b_key, b_pub = lab.keypair()
    psk = lab.psk()
    a_wg = lab.name("tdwq")
    old = lab.spawn(a, "wireguard-go", "-f", a_wg, stderr=lab.tmp / f"{a_wg}.log")
    wait_for(lambda: lab.ip(a, "link", "show", a_wg, check=False).returncode == 0, 10, what=f"{a_wg} to appear")
    lab.run(a, "wg", "set", a_wg, "private-key", str(a_key), "listen-port", "51820", "fwmark", "0x4d2",
            "peer", b_pub, "preshared-key", str(psk), "endpoint", "10.77.0.2:51820",
            "allowed-ips", "10.9.0.2/32,fd09::2/128", "persistent-keepalive", "15")
    shown = lab.run(a, "wg", "showconf", a_wg).stdout
    assert "[Interface]" in shown and "PresharedKey" in shown and "FwMark" in shown
    old.terminate()
    old.wait(10)
    wait_for(lambda: lab.ip(a, "link", "show", a_wg, check=False).returncode != 0, 10, what=f"{a_wg} to go")
    conf = tmp_path / f"{a_wg}.conf"
    conf.write_text(shown.replace("[Interface]\n", "[Interface]\nAddress = 10.9.0.1/24, fd09::1/64\nMTU = 1420\n"))
    out = tmp_path / "imported.yaml"
    p = lab.run(None, sys.executable, "-m", "tunneld", "import", str(conf), "-o", str(out))
    assert f"wrote {tmp_path / 'imported.key'}, {tmp_path / 'imported.psk'}, {out}" in p.stdout

    b_wg = lab.name("tdwg")
    start_wireguard_go(lab, b, b_wg, b_key, a_pub, psk, endpoint=None)
    lab.ip(b, "-6", "addr", "add", "fd09::2/64", "dev", b_wg, "nodad")
    lab.run(b, "wg", "set", b_wg, "peer", a_pub, "allowed-ips", "10.9.0.1/32,fd09::1/128")
    from tests.lab import Daemon
    d = Daemon(lab, a, out, tmp_path / "imported.log").wait_up()
    lab.wait_ping(a, "10.9.0.2")
    lab.ping(a, "fd09::2")
    lab.ping(b, "10.9.0.1")
    assert f"{a_wg}: up, tun over udp" in d.log
    assert d.stop() == 0
