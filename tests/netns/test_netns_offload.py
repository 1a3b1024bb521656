"""Super-packets through real devices, in namespaces: offloads on, off and mixed,
TUN and TAP, over UDP and TCP, with TCP and UDP (GSO, so USO) traffic inside.

    ns A  tunneld (offload on/off) ==== veth 10.77.0.0/24 ==== tunneld (on/off)  ns B
          tun|tap 10.9.0.1/24                                 tun|tap 10.9.0.2/24

Each case moves 20 MB each way over TCP and 20 MB each way over UDP inside the
tunnel, compared by sha256, and reads the daemons' counters: super-packets
read from the device when its offloads are on, and none written by a side
whose peer cannot send them.
"""

import re

import pytest


MB20 = 20_000_000


def site(name: str, me: int, mode: str, proto: str, offload: bool, enc: str) -> str:
    peer = 3 - me
    transport = ['  listen: "0.0.0.0:55555"'] if me == 2 or proto == "udp" else []
    if me == 1:
        transport.append(f'  remote: "10.77.0.{peer}:55555"')
    return "\n".join([
        "interface:", f"  name: {name}", f"  mode: {mode}", "  mtu: 1420",
        f"  addresses: [10.9.0.{me}/24]", f"  offload: {str(offload).lower()}",
        "transport:", f"  protocol: {proto}", *transport, enc, "log_level: debug", ""])


def keyed(lab) -> list[str]:
    keys = [lab.keypair() for _ in range(2)]
    return [f"encryption:\n  private_key_file: {keys[i][0]}\n  peer_public_key: \"{keys[1 - i][1]}\"" for i in range(2)]


def counters(log: str) -> dict[str, int]:
    line = [x for x in log.splitlines() if "counters:" in x][-1]
    return {"read": int(re.search(r"(\d+) super-packets read", line)[1]),
            "written": int(re.search(r"(\d+) written", line)[1]),
            "chunked": int(re.search(r"(\d+) sent as chunks", line)[1]),
            "salvaged": int(re.search(r"(\d+) incomplete", line)[1]),
            "rx_errors": int(re.search(r"rx \d+ packets, \d+ bytes, \d+ drops, (\d+) errors", line)[1])}


def start(lab, mode: str, proto: str, offload_a: bool, offload_b: bool, enc: list[str]):
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    db = lab.daemon(b, site(lab.name("tdo"), 2, mode, proto, offload_b, enc[1]))
    db.wait_up()
    da = lab.daemon(a, site(lab.name("tdo"), 1, mode, proto, offload_a, enc[0]))
    da.wait_up()
    lab.wait_ping(a, "10.9.0.2")
    lab.ping(b, "10.9.0.1")
    return a, b, da, db


CASES = [(mode, proto, combo) for mode in ("tun", "tap") for proto in ("udp", "tcp") for combo in ("both", "mixed")]
CASES += [("tun", "udp", "off"), ("tun", "tcp", "off")]


@pytest.mark.parametrize("mode, proto, combo", CASES, ids=[f"{m}-{p}-{c}" for m, p, c in CASES])
def test_20mb_each_way_tcp_and_udp_inside(lab, mode, proto, combo):
    """both: two tunneld that agree on super-packets; mixed: B runs with
    interface.offload false, so A cuts its super-packets into packets for it;
    off: neither has offloads (one packet per read, as before)."""
    offload_a, offload_b = combo != "off", combo == "both"
    a, b, da, db = start(lab, mode, proto, offload_a, offload_b, keyed(lab))
    for src, dst, addr in ((a, b, "10.9.0.2"), (b, a, "10.9.0.1")):
        sent, got = lab.transfer(src, dst, addr, size=MB20)
        assert sent == got, f"TCP {src} -> {dst}"
        sent, got = lab.udp_transfer(src, dst, addr, size=MB20)
        assert sent == got, f"UDP {src} -> {dst}"
    assert da.stop() == 0 and db.stop() == 0
    ca, cb = counters(da.log), counters(db.log)
    assert "Traceback" not in da.log + db.log
    assert ca["rx_errors"] == cb["rx_errors"] == 0
    if combo == "both":
        assert ca["read"] > 100 and cb["read"] > 100, (ca, cb)
        assert ca["written"] > 100 and cb["written"] > 100, (ca, cb)
        if proto == "udp":  # super-packets went as chunks at the underlay's size, and came whole
            assert ca["chunked"] > 100 and cb["chunked"] > 100, (ca, cb)
        else:  # a stream takes them whole
            assert ca["chunked"] == cb["chunked"] == 0, (ca, cb)
    elif combo == "mixed":
        assert ca["chunked"] == cb["chunked"] == 0, (ca, cb)  # B cannot join chunks: A sends it segments
        assert ca["read"] > 100 and cb["read"] == 0, (ca, cb)  # A cut them; B has no offloads
        assert "offloads off, one packet per read" not in db.log  # off by config: no warning
        assert "interface.offload is false" not in da.log
    else:
        assert ca["read"] == cb["read"] == ca["written"] == cb["written"] == 0, (ca, cb)


def drop_udp(lab, ns: str, percent: int) -> None:
    """Drop `percent`% of the underlay's UDP datagrams at random on input (nft numgen)."""
    lab.run(ns, "nft", "-f", "-", input=f"table inet tdloss {{\n chain input {{\n  type filter hook input priority 0;\n"
            f"  meta l4proto udp numgen random mod 100 < {percent} drop\n }}\n}}\n")


@pytest.mark.parametrize("mode", ["tun", "tap"])
def test_20mb_each_way_through_1_percent_loss(lab, mode):
    """Chunks lost on the underlay (1% of datagrams, both ways): every byte still
    arrives, by sha256, TCP inside retransmitting what the salvage could not keep."""
    a, b, da, db = start(lab, mode, "udp", True, True, keyed(lab))
    for ns in (a, b):
        drop_udp(lab, ns, 1)
    for src, dst, addr in ((a, b, "10.9.0.2"), (b, a, "10.9.0.1")):
        sent, got = lab.transfer(src, dst, addr, size=MB20)
        assert sent == got, f"TCP {src} -> {dst}"
    assert da.stop() == 0 and db.stop() == 0
    ca, cb = counters(da.log), counters(db.log)
    assert "Traceback" not in da.log + db.log
    assert ca["rx_errors"] == cb["rx_errors"] == 0, (ca, cb)
    assert ca["chunked"] > 100 and cb["chunked"] > 100, (ca, cb)
    assert ca["salvaged"] + cb["salvaged"] > 0, (ca, cb)  # losses inside super-packets, salvaged


def test_status_says_what_the_peer_takes(lab):
    import json
    import os
    import subprocess
    import sys
    run = lab.tmp / "run"
    run.mkdir(exist_ok=True)
    env = {**os.environ, "RUNTIME_DIRECTORY": str(run)}
    enc = keyed(lab)
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    db = lab.daemon(b, site(lab.name("tdo"), 2, "tun", "udp", True, enc[1]), env=env)
    db.wait_up()
    da = lab.daemon(a, site(lab.name("tdo"), 1, "tun", "udp", False, enc[0]), env=env)
    da.wait_up()
    lab.wait_ping(a, "10.9.0.2")
    names = {p.stem for p in run.glob("*.sock")}
    assert len(names) == 2, names
    status = {}
    for name in names:
        p = subprocess.run([sys.executable, "-m", "tunneld", "status", name, "--json"], capture_output=True, text=True, env=env)
        status[name] = json.loads(p.stdout)
    offloads = sorted(s["offload"] for s in status.values())
    assert offloads[0].startswith("off (interface.offload is false)"), offloads
    assert "cut into packets for the peer" in offloads[1], offloads


def test_plaintext_stays_simpletun_on_the_wire(lab):
    """With offloads on, plaintext UDP still carries one whole ordinary IP packet
    per datagram, none over the MTU, each with a valid checksum: simpletun's format."""
    a, b, da, db = start(lab, "tun", "udp", True, True, ["encryption: none"] * 2)
    veth = [line.split(":")[1].strip().split("@")[0] for line in lab.ip(a, "-o", "link", "show", "type", "veth").stdout.splitlines()][0]
    cap = lab.capture(a, veth, "udp port 55555")
    sent, got = lab.transfer(a, b, "10.9.0.2", size=5_000_000)
    assert sent == got
    packets = cap.stop()
    assert len(packets) > 500  # tcpdump keeps what its buffer holds at this rate
    from tests.packets import checksum
    for *_, payload in packets:
        # tcpdump on a veth sees a UDP GSO send before the kernel cuts it (the
        # datagrams are cut at equal sizes, the last may be shorter): walk it
        pos, sizes = 0, []
        while pos < len(payload):
            packet = payload[pos:]
            size = int.from_bytes(packet[2:4], "big")
            assert packet[0] >> 4 == 4 and 20 <= size <= 1420 and checksum(packet[:20]) == 0
            sizes.append(size)
            pos += size
        assert pos == len(payload) and len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
    assert da.stop() == 0 and db.stop() == 0
    assert counters(da.log)["read"] > 50  # TSO was on, and the super-packets were cut
