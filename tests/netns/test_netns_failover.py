"""A list of transports: UDP first, TCP on 443 when UDP is blocked, and back.

    +------------------------------+                   +------------------------------+
    | ns A (initiator)             |  veth underlay    | ns B (listener)              |
    |  transport: [udp -> B:55555, | 10.77.0.1/24      |  transport: [udp :55555,     |
    |              tcp -> B:443]   |-------------------|              tcp :443]       |
    |  tun 10.9.0.1/24             |      10.77.0.2/24 |  tun 10.9.0.2/24             |
    |  metrics 127.0.0.1:9591      |                   |  nft: every UDP packet dropped|
    +------------------------------+                   |       (in and out), then not |
                                                       +------------------------------+

A pings B all along. With UDP dropped on B's underlay, A's handshakes go
unanswered and it moves to TCP: pings within 30 s. With UDP back, A's probe of
its first entry is answered and both ends are on UDP again within 60 s of its
return. Status (the control socket) and metrics say which transport is in use;
a reload applies the list's remotes and failback.
"""

import json
import os
import subprocess
import sys
import time

from tests.lab import require, wait_for

METRICS = 9591


def site(lab, me: int, enc: str, *, initiator: bool) -> str:
    name = lab.name("tdf")
    if initiator:
        transport = ('  - {protocol: udp, listen: "0.0.0.0:55555", remote: "10.77.0.2:55555"}\n'
                     '  - {protocol: tcp, remote: "10.77.0.2:443"}\n')
    else:
        transport = ('  - {protocol: udp, listen: "0.0.0.0:55555"}\n'
                     '  - {protocol: tcp, listen: "0.0.0.0:443"}\n')
    metrics = f"metrics: {{listen: '127.0.0.1:{METRICS}'}}\n" if initiator else ""
    return (f"interface:\n  name: {name}\n  mode: tun\n  addresses: [10.9.0.{me}/24]\n"
            f"transport:\n{transport}{enc}\n{metrics}log_level: debug\n")


def keyed(lab) -> list[str]:
    keys = [lab.keypair() for _ in range(2)]
    return [f"encryption:\n  private_key_file: {keys[i][0]}\n  peer_public_key: \"{keys[1 - i][1]}\"" for i in range(2)]


def status(lab, daemon) -> dict:
    p = subprocess.run([sys.executable, "-m", "tunneld", "status", daemon.config.stem, "--json"], capture_output=True,
                       text=True, env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def reload(lab, daemon) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunneld", "reload", daemon.config.stem], capture_output=True,
                          text=True, env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})


def metric(lab, ns: str, name: str) -> list[str]:
    code = (f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{METRICS}/metrics', "
            "timeout=5).read().decode())")
    text = lab.run(ns, sys.executable, "-c", code).stdout
    return [line for line in text.splitlines() if line.startswith(name)]


def on(lab, a, da, db, protocol: str) -> bool:
    """Both ends say `protocol` carries the tunnel, and a ping gets through."""
    if status(lab, da)["transport_active"] != protocol or status(lab, db)["transport_active"] != protocol:
        return False
    return lab.ping(a, "10.9.0.2", count=1, check=False).returncode == 0


def test_udp_blocked_moves_to_tcp_and_back(lab):
    require(subprocess.run(["nft", "--version"], capture_output=True).returncode == 0, "this test needs nft")
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    enc = keyed(lab)
    db = lab.daemon(b, site(lab, 2, enc[1], initiator=False))
    da = lab.daemon(a, site(lab, 1, enc[0], initiator=True))
    db.wait_up()
    da.wait_up()
    lab.wait_ping(a, "10.9.0.2")
    wait_for(lambda: on(lab, a, da, db, "udp"), 10, what="both ends on udp")
    active = metric(lab, a, "tunneld_transport_active{")
    assert len(active) == 1 and active[0].endswith(',transport="udp",entry="0"} 1'), active
    # traffic all along: with nothing to send, nothing notices a dead path (as in WireGuard)
    lab.spawn(a, "ping", "-q", "-i", "0.2", "10.9.0.2")

    lab.run(b, "nft", "-f", "-", input="table inet tdblock {\n"
            "  chain in { type filter hook input priority 0; meta l4proto udp drop; }\n"
            "  chain out { type filter hook output priority 0; meta l4proto udp drop; }\n}\n")
    blocked = time.monotonic()
    wait_for(lambda: on(lab, a, da, db, "tcp"), 30, interval=0.5, what="pings over tcp with udp blocked")
    over_tcp = time.monotonic() - blocked
    assert "went unanswered; moving to tcp remote 10.77.0.2:443 (entry 2 of 2)" in da.log
    assert status(lab, da)["transport_changes"] == 1
    lab.ping(a, "10.9.0.2", count=5)
    # the core was told: over TCP a super-packet goes whole, in one big frame the listener now takes
    assert status(lab, da)["offload"].endswith("peer takes super-packets (whole over tcp)")
    sent, got = lab.transfer(a, b, "10.9.0.2", size=5_000_000)
    assert sent == got

    lab.run(b, "nft", "delete", "table", "inet", "tdblock")
    back = time.monotonic()
    wait_for(lambda: on(lab, a, da, db, "udp"), 60, interval=0.5, what="both ends back on udp")
    over_udp = time.monotonic() - back
    st = status(lab, da)
    assert st["transport_changes"] == 2 and st["transport"].startswith("udp listen 0.0.0.0:55555"), st
    changes = metric(lab, a, "tunneld_transport_changes_total{")
    assert len(changes) == 1 and changes[0].endswith("} 2"), changes
    lab.ping(a, "10.9.0.2", count=5)
    # and back over UDP a super-packet goes as chunks again (a whole one would not fit a datagram)
    assert status(lab, da)["offload"].endswith("(chunks at the underlay's size)")
    sent, got = lab.transfer(a, b, "10.9.0.2", size=5_000_000)
    assert sent == got

    # a reload applies a list's remotes and failback, and refuses a change of its shape
    text = da.config.read_text()
    da.config.write_text(text.replace('remote: "10.77.0.2:443"}', 'remote: "10.77.0.2:8443"}')
                         .replace('remote: "10.77.0.2:55555"}', 'remote: "10.77.0.2:55555", failback: 10}'))
    p = reload(lab, da)
    assert p.returncode == 0 and "peer endpoint 10.77.0.2:55555, 10.77.0.2:8443, failback 10 s" in p.stdout, p
    da.config.write_text(text.replace('  - {protocol: tcp, remote: "10.77.0.2:443"}\n', ""))
    p = reload(lab, da)
    assert p.returncode == 1 and "transport (from 2 entries to 1) changed: that needs a restart" in p.stderr, p
    lab.ping(a, "10.9.0.2", count=3)
    assert da.stop() == 0 and db.stop() == 0
    assert "Traceback" not in da.log + db.log
    print(f"on tcp {over_tcp:.1f} s after udp was blocked; back on udp {over_udp:.1f} s after it returned")
