"""An encrypted tunneld under attack: it answers nobody it should not, delivers
nothing forged to its device, and keeps serving its real peer.

    ns A (real peer)                    ns B (under test)                   ns M (mallory)
    tunneld 10.9.0.1  10.77.0.1 ------- 10.77.0.2  tunneld 10.9.0.2         10.78.0.3
                                        10.78.0.2 ----------------------------'
                                        (tcpdump on both veths of B)
"""

import os
import random
import sys

import pytest

from tests.lab import require_netns, wait_for
from tests.netns.test_netns_tunnel import site



@pytest.fixture
def arena(lab):
    require_netns("tcpdump")
    a, b, m = lab.ns(), lab.ns(), lab.ns()
    _, b_to_a = lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    _, b_to_m = lab.veth(m, "10.78.0.3/24", b, "10.78.0.2/24")
    key_a, pub_a = lab.keypair()
    key_b, pub_b = lab.keypair()
    enc = lambda key, peer: f"encryption:\n  private_key_file: {key}\n  peer_public_key: \"{peer}\""  # noqa: E731
    tun_b = lab.name("tdt")
    real = lab.capture(b, b_to_a, "udp port 55555")  # the real handshake, for replaying later
    db = lab.daemon(b, site(tun_b, 2, "udp", listen=True, remote=False, encryption=enc(key_b, pub_a))).wait_up()
    da = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc(key_a, pub_b))).wait_up()
    return dict(a=a, b=b, m=m, da=da, db=db, pub_b=pub_b, pub_a=pub_a, b_to_a=b_to_a, b_to_m=b_to_m, tun_b=tun_b, enc=enc, real=real)


def device_rx(lab, ns, dev) -> int:
    """Packets the daemon wrote into its device, by the kernel's count."""
    return int(lab.run(ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets").stdout)


@pytest.mark.parametrize("mallory_knows", ["b's public key", "nothing"])
def test_wrong_peer_key_gets_no_tunnel_and_no_reply(lab, arena, mallory_knows):
    m, b = arena["m"], arena["b"]
    cap = lab.capture(b, arena["b_to_m"], "udp")
    key_m, _ = lab.keypair()
    _, other_pub = lab.keypair()
    target_pub = arena["pub_b"] if mallory_knows == "b's public key" else other_pub
    mallory = lab.daemon(m, "interface: {name: %s, mode: tun, addresses: [10.9.0.3/24]}\n"
                            "transport: {protocol: udp, listen: '0.0.0.0:55555', remote: '10.78.0.2:55555'}\n%s\n"
                         % (lab.name("tdt"), arena["enc"](key_m, target_pub))).wait_up()
    assert lab.ping(m, "10.9.0.2", count=3, check=False).returncode != 0
    lab.run(m, "sleep", "5.5")  # let mallory retry once
    packets = cap.stop()
    from_b = [p for p in packets if p[0] == "10.78.0.2"]
    to_b = [p for p in packets if p[2] == "10.78.0.2"]
    assert len(to_b) >= 2 and all(p[4][0] == 1 for p in to_b)  # mallory's initiations arrived
    assert from_b == []  # and not one packet went back
    mallory.stop()
    lab.wait_ping(arena["a"], "10.9.0.2")  # the real peer is still served
    arena["db"].stop()
    assert "authentication failed" in arena["db"].log
    counters = next(line for line in arena["db"].log.splitlines() if "counters:" in line)
    assert " 0 authentication failures" not in counters


def test_garbage_truncation_and_replays_get_nothing(lab, arena):
    a, b, m = arena["a"], arena["b"], arena["m"]
    real = arena["real"]
    lab.wait_ping(a, "10.9.0.2")
    lab.ping(a, "10.9.0.2", count=5)
    captured = [p[4] for p in real.stop() if p[2] == "10.77.0.2"]
    initiation = next(p for p in captured if p[0] == 1)
    transports = [p for p in captured if p[0] == 4]
    assert transports, "no transport messages captured"

    rng = random.Random(7)
    attacks = [os.urandom(n) for n in (1, 3, 4, 31, 32, 33, 92, 148, 1000, 1452)]
    attacks += [bytes([t, 0, 0, 0]) + rng.randbytes(n) for t in (1, 2, 3, 4) for n in (0, 12, 60, 144)]
    attacks += [initiation[:n] for n in (4, 64, 116, 147)] + [initiation + b"\0"]  # truncated, extended
    attacks += [initiation]  # replayed whole
    attacks += transports  # replayed transport messages
    attacks += [t[:-1] + bytes([t[-1] ^ 1]) for t in transports[:3]]  # tampered
    rx_before = device_rx(lab, b, arena["tun_b"])
    cap = lab.capture(b, arena["b_to_m"], "udp")
    script = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('10.78.0.3',40000))\n"
              "for h in sys.stdin.read().split():\n    s.sendto(bytes.fromhex(h) if h != '-' else b'',('10.78.0.2',55555))\n")
    lab.run(m, sys.executable, "-c", script, input="\n".join(x.hex() or "-" for x in attacks))
    lab.run(m, "sleep", "1")
    from_b = [p for p in cap.stop() if p[0] == "10.78.0.2"]
    assert from_b == [], "the daemon answered an attacker"
    assert device_rx(lab, b, arena["tun_b"]) == rx_before, "something forged reached the device"
    assert arena["db"].proc.poll() is None
    lab.ping(a, "10.9.0.2")  # still serving its real peer, at the same endpoint
    arena["db"].stop()
    log = arena["db"].log
    assert "peer moved" not in log
    assert "Traceback" not in log
    wait_for(lambda: "counters:" in log, 1)
