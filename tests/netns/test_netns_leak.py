"""No plaintext leak across a restart, in namespaces, with tcpdump on the underlay.

    +-----------------------------+  veth underlay      +-------------------------------+
    | ns A: tunneld, full tunnel  | 10.78.0.1/24        | ns B: tunneld (listens)       |
    |  routes [0.0.0.0/0, ::/0]   |---------------------|  "the internet" on lo:        |
    |  ping 198.51.100.1 and      |  default via B      |   198.51.100.1, 2001:db8:100::1
    |  2001:db8:100::1, all along |        10.78.0.2/24 |                               |
    |  tcpdump on the underlay    |                     |                               |
    +-----------------------------+                     +-------------------------------+

A's default route leads straight to "the internet" over the underlay, so any
ping that is not in the tunnel shows up on the underlay in clear: tcpdump
filters for the ping targets (the tunnel's own packets are UDP between the
two underlay addresses and never match). While A's tunneld is killed with -9
and started again, and stopped with SIGTERM (what systemd's stop and restart
send) and started again, not one such packet may appear; after a real stop
(`tunneld down NAME`, or Ctrl-C) nothing is left and the pings do go out in
clear, which shows the capture would have seen a leak. The real
`systemctl restart` is in test_systemd.py.
"""

import os
import signal
import struct
import sys
import time

import pytest

from tests.lab import require_netns, wait_for
from tests.netns.test_netns_routing import config, rules, world  # noqa: F401 - world is a fixture
from tests.netns.test_netns_service import status
from tests.netns.test_netns_tunnel import keyed

TARGETS = ("198.51.100.1", "2001:db8:100::1")
CLEAR = "host 198.51.100.1 or host 2001:db8:100::1"  # only the pings go to them


def frames(path) -> int:
    """How many packets a pcap file holds."""
    data = path.read_bytes()
    n, pos = 0, 24
    while pos + 16 <= len(data):
        caplen = struct.unpack("<I", data[pos + 8:pos + 12])[0]
        pos += 16 + caplen
        n += 1
    return n


def finish(cap) -> int:
    """Stop a capture; how many packets it saw. tcpdump hands packets over in
    blocks, at the latest after its 1 s timeout: wait that out first, or the
    last second's packets are lost (Capture.stop waits only 0.3 s)."""
    time.sleep(1.2)
    cap.stop()
    return frames(cap.path)


def pingers(lab, ns):
    """A ping to each target every 50 ms until stopped; a failed send ("no route
    to host") does not end them."""
    return [lab.spawn(ns, "ping", "-i", "0.05", "-W", "1", t) for t in TARGETS]


def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGINT)
        p.wait(10)


def down(lab, ns, name, *args):
    return lab.run(ns, sys.executable, "-m", "tunneld", "down", name, *args,
                   env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})


def table(lab, ns):
    """Table 51820, both families (an IPv6 table never made does not exist: empty)."""
    return "".join(lab.ip(ns, f, "route", "show", "table", "51820", check=False).stdout for f in ("-4", "-6"))


def through_tunnel(lab, d, since):
    """The pings reach the targets through the tunnel again."""
    wait_for(lambda: status(lab, d.config.stem)["tx"]["packets"] > since + 20, 20, what="pings through the tunnel")
    for t in TARGETS:
        lab.ping(d.ns, t, count=1)


def test_a_full_tunnel_restarted_by_kill_9_and_sigterm_leaks_nothing_and_a_real_stop_leaves_nothing(lab, world):
    require_netns("ping", "tcpdump")
    a, b, va, vb = world
    before_rules = rules(lab, a)
    enc = keyed(lab)
    lab.daemon(b, config(lab.name("tdt"), 2, enc[1])).wait_up()
    text = config(lab.name("tdt"), 1, enc[0], routes='[0.0.0.0/0, "::/0"]', remote="10.78.0.2:55555")
    cfg = lab.config(text)

    def start():
        from tests.lab import Daemon
        return Daemon(lab, a, cfg, cfg.with_name(f"{cfg.stem}-{time.monotonic_ns()}.log")).wait_up()

    d = start()
    lab.wait_ping(a, "10.9.0.2")
    guard = table(lab, a)
    assert "unreachable default" in guard and "metric 4294967295" in guard  # beneath the device's route
    cap = lab.capture(a, va, CLEAR)
    pings = pingers(lab, a)
    try:
        through_tunnel(lab, d, 0)

        # kill -9: nothing runs at all; the kernel state must already be safe
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        time.sleep(1.5)  # 60 pings fall into the gap
        assert "unreachable default" in table(lab, a) and "dev" not in lab.ip(a, "route", "show", "table",
                                                                             "51820").stdout
        d = start()  # adopts the rules and guards: no "File exists"
        assert "ERROR" not in d.log and "exists" not in d.log, d.log
        assert "adopted what the last run kept: 4 rules, 2 unreachable routes in table 51820" in d.log, d.log
        through_tunnel(lab, d, 0)

        # SIGTERM, what systemd sends for a stop and for a restart: the guard stays
        assert d.stop() == 0
        assert "kept for a restart: 4 rules, 2 unreachable routes in table 51820" in d.log, d.log
        time.sleep(1.5)
        d = start()
        through_tunnel(lab, d, 0)
        assert rules(lab, a).count("lookup 51820") == 2  # one per family, not doubled by the adoptions
    finally:
        stop(pings)
    assert finish(cap) == 0, "pings left in clear during a restart"

    # the real stop: SIGTERM, then `tunneld down` (the unit's ExecStopPost after a stop job)
    assert d.stop() == 0
    assert rules(lab, a) != before_rules
    out = down(lab, a, cfg.stem).stdout
    assert "removed 4 rules, 2 unreachable routes in table 51820" in out, out
    assert rules(lab, a) == before_rules and table(lab, a) == ""
    assert down(lab, a, cfg.stem).stdout.strip().endswith("nothing kept")
    # and now the pings do go out in clear: the capture sees what it looks for
    cap = lab.capture(a, va, CLEAR)
    for t in TARGETS:
        lab.ping(a, t, count=1)
    assert finish(cap) >= 4  # two requests, two replies


def test_ctrl_c_is_a_real_stop_and_down_refuses_a_running_tunnel(lab, world):
    a, b, va, vb = world
    before = rules(lab, a)
    d = lab.daemon(a, config(lab.name("tdt"), 1, "encryption: none", routes="[0.0.0.0/0]",
                             remote="10.78.0.2:55555")).wait_up()
    p = lab.run(a, sys.executable, "-m", "tunneld", "down", d.config.stem, check=False,
                env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})
    assert p.returncode == 1 and "is running; stop it first" in p.stderr
    assert d.stop(signal.SIGINT) == 0
    assert rules(lab, a) == before and table(lab, a) == ""


@pytest.fixture
def persistent(lab, world):
    a, b, va, vb = world
    dev = lab.name("tdp")
    lab.ip(a, "tuntap", "add", "dev", dev, "mode", "tun")
    return a, b, va, dev


def test_a_persistent_device_keeps_its_routes_across_restarts_and_nothing_leaks(lab, persistent):
    """Routes on a persistent device (not a full tunnel): while no daemon is
    attached, their packets go to the device and are dropped there, never to
    the default route."""
    require_netns("ping", "tcpdump")
    a, b, va, dev = persistent
    lab.daemon(b, config(lab.name("tdt"), 2, "encryption: none", remote="10.78.0.1:55555")).wait_up()
    lab.ip(b, "addr", "add", "192.168.77.1/32", "dev", "lo")
    text = (config(dev, 1, "encryption: none", routes="[192.168.77.0/24]", remote="10.78.0.2:55555")
            .replace("  mode: tun\n", "  mode: tun\n  persistent: true\n"))
    cfg = lab.config(text)

    def start():
        from tests.lab import Daemon
        return Daemon(lab, a, cfg, cfg.with_name(f"{cfg.stem}-{time.monotonic_ns()}.log")).wait_up()

    def routes():
        return lab.ip(a, "route", "show", "dev", dev).stdout

    d = start()
    assert "192.168.77.0/24" in routes()
    cap = lab.capture(a, va, "host 192.168.77.1")
    ping = lab.spawn(a, "ping", "-i", "0.05", "-W", "1", "192.168.77.1")
    try:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        time.sleep(1)
        assert "192.168.77.0/24" in routes() and "10.9.0.1" in lab.ip(a, "addr", "show", "dev", dev).stdout
        d = start()
        assert "ERROR" not in d.log and "exists" not in d.log, d.log
        lab.ping(a, "192.168.77.1", count=1)  # through the tunnel again
        assert d.stop() == 0
        assert "192.168.77.0/24" in routes(), "a SIGTERM took the persistent device's routes"
        time.sleep(1)
        d = start()
    finally:
        ping.send_signal(signal.SIGINT)
        ping.wait(10)
    assert finish(cap) == 0, "packets for the persistent device's route left in clear"
    # the real stop: back as we found it
    assert d.stop() == 0
    out = down(lab, a, cfg.stem).stdout
    assert f"removed 2 addresses and 1 route on {dev}, {dev}'s link state" in out, out
    assert "192.168.77.0/24" not in routes() and "10.9.0.1" not in lab.ip(a, "addr", "show", "dev", dev).stdout
    assert "UP" not in lab.ip(a, "link", "show", dev).stdout.split(">")[0]
