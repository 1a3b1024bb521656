"""c. A TAP tunnel bridging two LANs into one subnet.

    ns hostA                ns gwA                                ns gwB                ns hostB
    +------------+   +--------------------------+          +--------------------------+   +------------+
    | 10.60.0.1  |   | brA: [veth] + [tap]      |  veth    | brB: [veth] + [tap]      |   | 10.60.0.2  |
    | mtu 1500   |---|        tunneld (tap)     |----------|        tunneld (tap)     |---| mtu 1500   |
    +------------+   | 10.77.0.1/24  mtu 1500   |          | 10.77.0.2/24  mtu 1500   |   +------------+
                     +--------------------------+          +--------------------------+
                                  \\====== tunnel (udp|tcp 55555) ======//

Plaintext (simpletun's format) and encrypted (tunneld mode over UDP and TCP).
The hosts share 10.60.0.0/24 and keep their 1500-byte MTU: ARP resolves across
the tunnel and full-size frames (1514 bytes) cross it. Over UDP a full-size
frame's outer datagram exceeds the 1500-byte underlay and the kernel fragments
it (tunneld clears DF), but TCP between the hosts never makes one: tunneld
clamps the MSS of bridged SYNs so that every segment's datagram fits the
underlay whole (interface.clamp_mss, on for tap over udp), and the transfer
leaves the gateways' fragment counters where they were. Over TCP the stream
carries every frame.
"""

import json

import pytest

from tests.netns.test_netns_tunnel import keyed



def ip_stats(lab, ns: str) -> dict[str, int]:
    """The namespace's IP counters (/proc/net/snmp): FragCreates, ReasmReqds, ..."""
    rows = [line.split() for line in lab.run(ns, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Ip:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def gateway(tap: str, bridge: str, me: int, proto: str, encryption: str = "encryption: none") -> str:
    transport = ({"udp": f'listen: "0.0.0.0:55555", remote: "10.77.0.{3 - me}:55555"',
                  "tcp": 'listen: "0.0.0.0:55555"' if me == 2 else 'remote: "10.77.0.2:55555"'}[proto])
    return (f"interface: {{name: {tap}, mode: tap, bridge: {bridge}, mac: \"02:00:00:00:00:0{me}\"}}\n"
            f"transport: {{protocol: {proto}, {transport}}}\n"
            f"{encryption}\n")


@pytest.mark.parametrize("crypto", ["plaintext", "encrypted"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tap_bridges_two_lans(lab, proto, crypto):
    host_a, gw_a, gw_b, host_b = lab.ns(), lab.ns(), lab.ns(), lab.ns()
    lab.veth(gw_a, "10.77.0.1/24", gw_b, "10.77.0.2/24")
    bridges = {}
    for host, gw, addr in ((host_a, gw_a, "10.60.0.1/24"), (host_b, gw_b, "10.60.0.2/24")):
        br = lab.name("tdbr")
        lab.ip(gw, "link", "add", br, "type", "bridge")
        lab.ip(gw, "link", "set", br, "up")
        _, gw_port = lab.veth(host, addr, gw, None)
        lab.ip(gw, "link", "set", gw_port, "master", br)
        bridges[gw] = br
    taps = {gw_a: lab.name("tdtap"), gw_b: lab.name("tdtap")}
    enc = keyed(lab) if crypto == "encrypted" else ["encryption: none"] * 2
    db = lab.daemon(gw_b, gateway(taps[gw_b], bridges[gw_b], 2, proto, enc[1])).wait_up()
    da = lab.daemon(gw_a, gateway(taps[gw_a], bridges[gw_a], 1, proto, enc[0])).wait_up()
    if proto == "tcp":
        da.wait_log("tcp: connected to")

    tap = json.loads(lab.ip(gw_a, "-j", "link", "show", taps[gw_a]).stdout)[0]
    assert tap["mtu"] == 1500 and tap["master"] == bridges[gw_a]
    assert tap["address"] == "02:00:00:00:00:01"

    lab.wait_ping(host_a, "10.60.0.2")
    lab.ping(host_a, "10.60.0.2")  # ARP resolves across the tunnel
    lab.ping(host_b, "10.60.0.1")
    neigh = lab.ip(host_a, "neigh", "show", "10.60.0.2").stdout
    assert "lladdr" in neigh
    frags = lambda: sum(ip_stats(lab, gw)["FragCreates"] for gw in (gw_a, gw_b))  # noqa: E731
    before = frags()
    lab.ping(host_a, "10.60.0.2", size=1472, count=2)  # a full 1500-byte IP packet with DF
    lab.ping(host_b, "10.60.0.1", size=1472, count=2)
    if crypto == "encrypted" or proto == "tcp":  # tunneld mode splits a 1514-byte frame into two chunks
        assert frags() == before
    else:  # simpletun's wire: one frame, one datagram, which the kernel fragments
        assert frags() > before
    for host in (host_a, host_b):
        dev = json.loads(lab.ip(host, "-j", "link", "show").stdout)
        assert all(d["mtu"] == 1500 for d in dev if d["ifname"] != "lo")
    before = frags()
    sent, got = lab.transfer(host_a, host_b, "10.60.0.2")
    assert sent == got
    assert frags() == before  # 20 MB of bridged TCP, not one IP fragment on the underlay
    assert da.stop() == 0 and db.stop() == 0
    assert "Traceback" not in da.log + db.log


@pytest.mark.parametrize("crypto,proto", [("encrypted", "udp"), ("encrypted", "tcp"), ("plaintext", "tcp")])
def test_tap_frames_of_every_length_arrive_byte_for_byte(lab, proto, crypto):
    """Frames of every length 15-1514, and 802.1Q-tagged 20-1518, sent out of the TAP
    on one side (AF_PACKET) arrive on the other side's TAP unaltered: no padding
    left on, no full-size tagged frame refused.

        ns gwA                                       ns gwB
        frames.py send -> tapA  tunneld ==== tunneld  tapB -> frames.py recv
    """
    import sys
    from tests.lab import HELPERS, wait_for
    gw_a, gw_b = lab.ns(), lab.ns()
    lab.veth(gw_a, "10.77.0.1/24", gw_b, "10.77.0.2/24")
    taps = {gw_a: lab.name("tdtap"), gw_b: lab.name("tdtap")}
    enc = keyed(lab) if crypto == "encrypted" else ["encryption: none"] * 2
    conf = lambda gw, me, e: gateway(taps[gw], "x", me, proto, e).replace(", bridge: x", "")  # noqa: E731
    db = lab.daemon(gw_b, conf(gw_b, 2, enc[1])).wait_up()
    da = lab.daemon(gw_a, conf(gw_a, 1, enc[0])).wait_up()
    if proto == "tcp":
        da.wait_log("tcp: connected to")
    for gw in (gw_a, gw_b):  # no IPv6 on the taps: nothing but the test's frames
        lab.run(gw, "sysctl", "-qw", f"net.ipv6.conf.{taps[gw]}.disable_ipv6=1")
    if crypto == "encrypted":  # a handshake first: frames sent while it runs would wait in a queue of 128
        lab.run(gw_a, sys.executable, str(HELPERS / "frames.py"), "send", taps[gw_a], "0")
        wait_for(lambda: "handshake completed" in da.log, 15, what="the handshake")
    out = lab.tmp / "frames.out"
    recv = lab.spawn(gw_b, sys.executable, str(HELPERS / "frames.py"), "recv", taps[gw_b], "7", "3",
                     stdout=open(out, "w"))
    wait_for(lambda: "listening" in out.read_text(), 10, what="the receiver")
    rx = lambda: int(lab.run(gw_b, "cat", f"/sys/class/net/{taps[gw_b]}/statistics/rx_packets").stdout)  # noqa: E731
    before = rx()
    lab.run(gw_a, sys.executable, str(HELPERS / "frames.py"), "send", taps[gw_a], "7")
    recv.wait(60)
    result = out.read_text().splitlines()[-1]
    assert result == "intact 2999 of 2999; altered []; missing lengths []"
    assert rx() - before == 2999  # tunneld wrote each exactly once
    assert da.stop() == 0 and db.stop() == 0
    assert "exceeds" not in da.log + db.log and "Traceback" not in da.log + db.log
