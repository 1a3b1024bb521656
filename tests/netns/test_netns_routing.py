"""Full-tunnel routing and the kernel state behind addresses and routes, in namespaces.

    +---------------------------+  veth underlay       +----------------------------+
    | ns A: tunneld, full tunnel| 10.78.0.1/24         | ns B: tunneld (listens)    |
    |  routes [0.0.0.0/0, ::/0] |----------------------|  "the internet" on lo:     |
    |  tun 10.9.0.1, fd09::1    |  default via B       |   198.51.100.1, 2001:db8:100::1
    |  default via 10.78.0.2    |         10.78.0.2/24 |  roams to 203.0.113.2      |
    +---------------------------+                      +----------------------------+

A's default route points at B over the underlay, so without the tunnel A
reaches "the internet" directly; with `routes: [0.0.0.0/0, ::/0]` every packet
but the tunnel's own goes through the tunnel. B then moves to an address that
A reaches only through its default route: A must follow it outside the tunnel.
"""

import signal
import subprocess
import sys

import pytest

from tests.lab import require_netns, wait_for
from tests.netns.test_netns_service import status
from tests.netns.test_netns_tunnel import keyed



@pytest.fixture
def world(lab):
    require_netns("ping")
    a, b = lab.ns(), lab.ns()
    va, vb = lab.veth(a, "10.78.0.1/24", b, "10.78.0.2/24")
    lab.ip(a, "-6", "addr", "add", "fd78::1/64", "dev", va, "nodad")
    lab.ip(b, "-6", "addr", "add", "fd78::2/64", "dev", vb, "nodad")
    lab.ip(a, "route", "add", "default", "via", "10.78.0.2")
    lab.ip(a, "-6", "route", "add", "default", "via", "fd78::2")
    lab.ip(b, "addr", "add", "198.51.100.1/32", "dev", "lo")
    lab.ip(b, "-6", "addr", "add", "2001:db8:100::1/128", "dev", "lo", "nodad")
    for ns in (a, b):
        lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    return a, b, va, vb


def config(name: str, me: int, encryption: str, routes: str = "", remote: str | None = None) -> str:
    lines = ["interface:", f"  name: {name}", "  mode: tun", f"  addresses: [10.9.0.{me}/24, \"fd09::{me}/64\"]"]
    if routes:
        lines.append(f"  routes: {routes}")
    lines += ["transport:", "  protocol: udp", '  listen: "0.0.0.0:55555"']
    if remote:
        lines.append(f'  remote: "{remote}"')
    lines += [encryption, "log_level: debug"]
    return "\n".join(lines) + "\n"


def rules(lab, ns: str) -> str:
    return lab.ip(ns, "-4", "rule").stdout + lab.ip(ns, "-6", "rule").stdout


def test_full_tunnel_v4_v6_keeps_the_peer_outside_also_after_it_roams_and_undoes_exactly(lab, world):
    a, b, va, vb = world
    enc = keyed(lab)
    before = rules(lab, a)
    assert "via 10.78.0.2" in lab.ip(a, "route", "get", "198.51.100.1").stdout  # direct, before the tunnel
    ta, tb = lab.name("tdt"), lab.name("tdt")
    db = lab.daemon(b, config(tb, 2, enc[1])).wait_up()
    da = lab.daemon(a, config(ta, 1, enc[0], routes="[0.0.0.0/0, \"::/0\"]", remote="10.78.0.2:55555")).wait_up()
    lab.wait_ping(a, "10.9.0.2")

    # everything goes into the tunnel; the tunnel's own (marked) packets do not
    assert f"dev {ta}" in lab.ip(a, "route", "get", "198.51.100.1").stdout
    assert f"dev {ta}" in lab.ip(a, "-6", "route", "get", "2001:db8:100::1").stdout
    assert f"dev {va}" in lab.ip(a, "route", "get", "10.78.0.2", "mark", "51820").stdout
    assert f"dev {va}" in lab.ip(a, "route", "get", "203.0.113.2", "mark", "51820").stdout
    sent = status(lab, da.config.stem)["tx"]["packets"]
    lab.ping(a, "198.51.100.1")
    lab.ping(a, "2001:db8:100::1")
    assert status(lab, da.config.stem)["tx"]["packets"] >= sent + 6  # those pings went through the tunnel
    added = rules(lab, a)
    assert "not from all fwmark 0xca6c lookup 51820" in added and "lookup main suppress_prefixlength 0" in added

    # B roams to an address A reaches only by its default route
    lab.ip(b, "addr", "add", "203.0.113.2/32", "dev", vb)
    lab.ip(b, "route", "replace", "10.78.0.1/32", "dev", vb, "src", "203.0.113.2")
    lab.ping(a, "10.9.0.2", count=2)  # B answers from its new address; A follows it
    wait_for(lambda: status(lab, da.config.stem)["peer"] == "203.0.113.2:55555", 10, what="A to follow B")
    lab.ping(a, "10.9.0.2")
    lab.ping(a, "198.51.100.1")
    lab.ping(a, "2001:db8:100::1")

    assert da.stop(signal.SIGINT) == 0  # a real stop (SIGTERM keeps the rules for a restart: test_netns_leak)
    assert rules(lab, a) == before  # the rules, exactly as they were
    assert lab.ip(a, "route", "show", "table", "51820").stdout == ""
    assert lab.ip(a, "-6", "route", "show", "table", "51820").stdout == ""
    assert "via 10.78.0.2" in lab.ip(a, "route", "get", "198.51.100.1").stdout
    db.stop()


def test_rules_left_by_a_killed_full_tunnel_go_at_the_next_real_stop(lab, world):
    a, b, va, vb = world
    before = rules(lab, a)
    text = config(lab.name("tdt"), 1, "encryption: none", routes="[0.0.0.0/0]", remote="10.78.0.2:55555")
    d = lab.daemon(a, text).wait_up()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert rules(lab, a) != before  # kill -9: nothing could undo them
    d = lab.daemon(a, text).wait_up()
    assert d.stop(signal.SIGINT) == 0
    assert rules(lab, a) == before


def test_check_warns_about_routes_that_capture_the_peer(tmp_path):
    cfg = tmp_path / "def1.yaml"
    cfg.write_text(config("tun9", 1, "encryption: none", routes="[0.0.0.0/1, 128.0.0.0/1]",
                          remote="10.78.0.2:55555"))
    p = subprocess.run([sys.executable, "-m", "tunneld", "check", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "warning: interface.routes: 0.0.0.0/1 contains the peer's address 10.78.0.2" in p.stderr
    cfg.write_text(config("tun9", 1, "encryption: none", routes="[0.0.0.0/0]", remote="10.78.0.2:55555"))
    p = subprocess.run([sys.executable, "-m", "tunneld", "check", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr


def test_link_down_up_restores_addresses_and_routes(lab, world):
    a, b, va, vb = world
    ta = lab.name("tdt")
    da = lab.daemon(a, config(ta, 1, "encryption: none", routes="[192.168.77.0/24, \"fd77::/64\"]",
                              remote="10.78.0.2:55555")).wait_up()
    lab.daemon(b, config(lab.name("tdt"), 2, "encryption: none", remote="10.78.0.1:55555")).wait_up()
    lab.wait_ping(a, "10.9.0.2")
    lab.ip(a, "link", "set", ta, "down")
    assert "192.168.77.0/24" not in lab.ip(a, "route").stdout  # the kernel dropped them
    lab.ip(a, "link", "set", ta, "up")
    da.wait_log("link back up; restored")
    assert "192.168.77.0/24" in lab.ip(a, "route", "show", "dev", ta).stdout
    assert "fd77::/64" in lab.ip(a, "-6", "route", "show", "dev", ta).stdout
    assert "fd09::1/64" in lab.ip(a, "addr", "show", "dev", ta).stdout  # IPv6 addresses go with the link
    lab.ping(a, "10.9.0.2")
    lab.ping(a, "fd09::2")
