"""Two tunneld sites in network namespaces over a veth underlay.

    +---------------------------+                      +---------------------------+
    | ns A                      |   veth underlay      | ns B                      |
    |  tunneld (tun/udp|tcp)    | 10.77.0.1/24         |  tunneld (tun/udp|tcp)    |
    |  tun: 10.9.0.1/24         |----------------------|  tun: 10.9.0.2/24         |
    |       fd09::1/64          |         10.77.0.2/24 |       fd09::2/64          |
    +---------------------------+                      +---------------------------+
               \\=============== tunnel, port 55555 ================//
"""

import json
import os
import signal
import socket
import sys
import time

import pytest

from tests.lab import wait_for



def site(name: str, me: int, proto: str, *, listen: bool, remote: bool, extra: str = "",
         encryption: str = "encryption: none") -> str:
    peer = 3 - me
    lines = [
        "interface:",
        f"  name: {name}",
        "  mode: tun",
        f"  addresses: [10.9.0.{me}/24, \"fd09::{me}/64\"]",
        extra,
        "transport:",
        f"  protocol: {proto}",
    ]
    if listen:
        lines.append('  listen: "0.0.0.0:55555"')
    if remote:
        lines.append(f'  remote: "10.77.0.{peer}:55555"')
    lines += [encryption, "log_level: debug", ""]
    return "\n".join(line for line in lines if line) + "\n"


@pytest.fixture
def sites(lab):
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    return a, b


def keyed(lab, n: int = 2) -> list[str]:
    """Encryption blocks (tunneld mode) for n sites that know each other."""
    keys = [lab.keypair() for _ in range(n)]
    psk = lab.psk()
    return [f"encryption:\n  private_key_file: {keys[i][0]}\n  peer_public_key: \"{keys[1 - i][1]}\"\n"
            f"  preshared_key_file: {psk}" for i in range(n)]


@pytest.mark.parametrize("crypto", ["plaintext", "encrypted"])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tun_ping_both_ways_and_20mb_intact(lab, sites, proto, crypto):
    """a. TUN over UDP, b. TUN over TCP: ping both ways, 20 MB with the same sha256;
    in plaintext (simpletun's format) and encrypted (tunneld mode)."""
    a, b = sites
    enc = keyed(lab) if crypto == "encrypted" else ["encryption: none"] * 2
    # A connects (tcp) / knows its peer (udp); B listens and learns.
    da = lab.daemon(a, site(lab.name("tdt"), 1, proto, listen=proto == "udp", remote=True, encryption=enc[0]))
    db = lab.daemon(b, site(lab.name("tdt"), 2, proto, listen=True, remote=False, encryption=enc[1]))
    db.wait_up()
    da.wait_up()
    if proto == "tcp":
        da.wait_log("tcp: connected to")
    lab.wait_ping(a, "10.9.0.2")
    lab.ping(a, "10.9.0.2")  # A first: B learns A's address from it
    lab.ping(b, "10.9.0.1")
    lab.ping(b, "fd09::1")
    lab.ping(a, "10.9.0.2", count=2, size=1392)  # a full 1420-byte packet, DF set
    sent, got = lab.transfer(a, b, "10.9.0.2")
    assert sent == got
    sent, got = lab.transfer(b, a, "fd09::1", size=5_000_000)
    assert sent == got
    assert da.stop() == 0 and db.stop() == 0
    assert "Traceback" not in da.log + db.log
    counters = [line for line in db.log.splitlines() if "counters:" in line]
    assert counters and " 0 errors" in counters[0] and "0 authentication failures" in counters[0]
    if crypto == "encrypted":
        assert "handshake completed" in da.log and "1 handshakes" in counters[0]


def test_tcp_reconnects_after_the_listener_restarts(lab, sites):
    """d. Kill the listening daemon, start it again: traffic resumes, the client untouched."""
    a, b = sites
    client = lab.daemon(a, site(lab.name("tdt"), 1, "tcp", listen=False, remote=True))
    server_cfg = site(lab.name("tdt"), 2, "tcp", listen=True, remote=False)
    server = lab.daemon(b, server_cfg)
    server.wait_up()
    client.wait_up()
    client.wait_log("tcp: connected to")
    lab.ping(a, "10.9.0.2")
    server.stop(signal.SIGKILL)
    client.wait_log("connection to 10.77.0.2:55555 lost")
    time.sleep(2)  # let at least one reconnect attempt fail
    server = lab.daemon(b, server_cfg)
    server.wait_up()
    wait_for(lambda: lab.ping(a, "10.9.0.2", count=1, check=False).returncode == 0, 40, what="traffic to resume")
    lab.ping(b, "10.9.0.1")
    assert client.proc.poll() is None
    assert "cannot connect to 10.77.0.2:55555: connection refused; retrying in" in client.log
    assert client.log.count("tcp: connected to 10.77.0.2:55555") == 2
    client.stop()
    assert "1 reconnects" in client.log


def test_hostile_tcp_peer_is_dropped_and_the_next_one_served(lab, sites):
    """e. Oversized length, zero length, truncated frame, garbage: each such connection
    is logged and closed; the daemon keeps serving the next good peer."""
    a, b = sites
    server = lab.daemon(b, site(lab.name("tdt"), 2, "tcp", listen=True, remote=False))
    server.wait_up()
    attacks = {
        "oversize": b"\xff\xff" + b"garbage" * 100,
        "zero": b"\x00\x00",
        "truncated": b"\x00\x30" + b"\x45" * 10,
        "garbage": bytes(range(256)) * 4,
    }
    script = (
        "import socket,sys,time\n"
        "s=socket.create_connection(('10.77.0.2',55555),timeout=5)\n"
        "s.sendall(bytes.fromhex(sys.argv[1]))\n"
        "if sys.argv[2]=='truncated': s.close(); sys.exit(0)\n"
        "try:\n"
        "    print('closed' if s.recv(100)==b'' else 'answered')\n"
        "except ConnectionResetError:\n"
        "    print('closed')\n"
    )
    for kind, payload in attacks.items():
        out = lab.run(a, sys.executable, "-c", script, payload.hex(), kind).stdout.strip()
        if kind != "truncated":
            assert out == "closed", f"{kind}: the daemon did not close the connection"
    from tunneld.service import control
    sock = str(lab.tmp / "run" / f"{server.config.stem}.sock")
    wait_for(lambda: control.query(sock)["rx"]["errors"] == 4, 15, what="four framing errors counted")
    log = server.log
    # one line for the first; the rest within 10 s are counted, not logged (a stranger
    # opening connections in a loop must not flood the journal)
    assert "sent a bad frame (65535-byte frame exceeds the 1420-byte limit); closing that connection" in log
    assert "sent a bad frame (zero-length frame)" not in log
    assert "10.77.0.1:" in log  # the peer's address is named
    # the next good peer is served
    client = lab.daemon(a, site(lab.name("tdt"), 1, "tcp", listen=False, remote=True))
    client.wait_up()
    client.wait_log("tcp: connected to")
    lab.ping(a, "10.9.0.2")
    assert server.stop() == 0
    counters = [line for line in server.log.splitlines() if "counters:" in line][0]
    assert "rx " in counters and " 4 errors" in counters.split("rx ")[1]  # every framing error was counted


def test_udp_garbage_is_counted_not_fatal(lab, sites):
    a, b = sites
    server = lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False))
    server.wait_up()
    script = ("import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              "[s.sendto(os.urandom(n),('10.77.0.2',55555)) for n in (1,13,100,1420,1421,9000)]\n"
              "s.sendto(b'\\x45'*10,('10.77.0.2',55555))\n")
    lab.run(a, sys.executable, "-c", script)
    time.sleep(0.3)
    client = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True))
    client.wait_up()
    lab.ping(a, "10.9.0.2")
    assert server.proc.poll() is None
    server.stop()
    assert "Traceback" not in server.log


def addresses(lab, ns, dev):
    out = lab.ip(ns, "-j", "addr", "show", "dev", dev).stdout
    return sorted(a["local"] for a in json.loads(out)[0]["addr_info"] if a.get("scope") != "link")


def routes(lab, ns, dev):
    out = lab.ip(ns, "-j", "route", "show", "dev", dev, check=False).stdout or "[]"
    out6 = lab.ip(ns, "-j", "-6", "route", "show", "dev", dev, check=False).stdout or "[]"
    return [r["dst"] for r in json.loads(out) + json.loads(out6) if not r["dst"].startswith("fe80")]


def test_sigterm_leaves_nothing_behind_but_what_a_restart_needs(lab, sites):
    """f. After SIGTERM: a created device is gone with its addresses and routes; a
    persistent device stays, and keeps them for a restart; after `tunneld down`,
    the real stop's last step, it is back as we found it (MTU, no addresses, no
    routes, down)."""
    a, b = sites
    name = lab.name("tdt")
    d = lab.daemon(a, site(name, 1, "udp", listen=True, remote=True, extra="  routes: [192.168.20.0/24, \"fd20::/64\"]"))
    d.wait_up()
    assert addresses(lab, a, name) == ["10.9.0.1", "fd09::1"]
    assert "192.168.20.0/24" in routes(lab, a, name)
    assert d.stop() == 0
    assert lab.ip(a, "link", "show", name, check=False).returncode != 0
    assert "192.168.20.0/24" not in lab.ip(a, "route").stdout
    assert "fd20::" not in lab.ip(a, "-6", "route").stdout

    pname = lab.name("tdp")
    lab.ip(a, "tuntap", "add", "dev", pname, "mode", "tun")
    lab.ip(a, "addr", "add", "10.8.8.8/32", "dev", pname)  # someone else's: must survive
    before = lab.ip(a, "-j", "link", "show", pname).stdout
    cfg = site(pname, 1, "udp", listen=True, remote=True,
               extra="  persistent: true\n  mtu: 1380\n  routes: [192.168.30.0/24]")
    d = lab.daemon(a, cfg)
    d.wait_up()
    link = json.loads(lab.ip(a, "-j", "link", "show", pname).stdout)[0]
    assert link["mtu"] == 1380 and "UP" in link["flags"]
    assert addresses(lab, a, pname) == ["10.8.8.8", "10.9.0.1", "fd09::1"]
    assert "192.168.30.0/24" in lab.ip(a, "route", "show", "dev", pname).stdout  # there, so its absence below means something
    assert d.stop() == 0
    assert addresses(lab, a, pname) == ["10.8.8.8", "10.9.0.1", "fd09::1"]  # kept for a restart
    assert "192.168.30.0/24" in lab.ip(a, "route", "show", "dev", pname).stdout
    down = lab.run(a, sys.executable, "-m", "tunneld", "down", d.config.stem,
                   env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})
    assert f"removed 2 addresses and 1 route on {pname}" in down.stdout, down.stdout
    assert addresses(lab, a, pname) == ["10.8.8.8"]
    assert routes(lab, a, pname) == ["10.8.8.8"] or routes(lab, a, pname) == []
    assert "192.168.30.0" not in lab.ip(a, "route").stdout
    after = json.loads(lab.ip(a, "-j", "link", "show", pname).stdout)[0]
    assert after["mtu"] == json.loads(before)[0]["mtu"]
    assert "UP" not in after["flags"]


def one_error_line(log: str) -> str:
    errors = [line for line in log.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, log
    assert "Traceback" not in log
    return errors[0]


def test_startup_failures_are_one_clear_line(lab, sites):
    a, _ = sites
    # address in use
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder = lab.spawn(a, sys.executable, "-c",
                       "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                       "s.bind(('0.0.0.0',55555));time.sleep(60)")
    blocker.close()
    wait_for(lambda: "55555" in lab.run(a, "ss", "-uln", check=False).stdout, 10, what="the blocker to bind")
    d = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True))
    assert d.proc.wait(15) == 1
    assert one_error_line(d.log) == "ERROR udp: cannot listen on 0.0.0.0:55555: address already in use"
    holder.kill()

    # bridge missing
    name = lab.name("tdt")
    d = lab.daemon(a, f"interface: {{name: {name}, mode: tap, bridge: nosuchbr0}}\n"
                      "transport: {protocol: udp, listen: '0.0.0.0:55556'}\nencryption: none\n")
    assert d.proc.wait(15) == 1
    assert one_error_line(d.log) == f"ERROR {name}: cannot join bridge nosuchbr0: no such device"
    assert lab.ip(a, "link", "show", name, check=False).returncode != 0  # and the device is gone again

    # device busy: a second daemon wants the same name
    name = lab.name("tdt")
    first = lab.daemon(a, site(name, 1, "udp", listen=True, remote=True)).wait_up()
    d = lab.daemon(a, f"interface: {{name: {name}, mode: tun}}\n"
                      "transport: {protocol: udp, listen: '0.0.0.0:55557'}\nencryption: none\n")
    assert d.proc.wait(15) == 1
    assert one_error_line(d.log).startswith(f"ERROR {name}: cannot create tun device: device busy")
    first.stop()

    # persistent device that does not exist
    d = lab.daemon(a, "interface: {name: tdnosuch0, mode: tun, persistent: true}\n"
                      "transport: {protocol: udp, listen: '0.0.0.0:55558'}\nencryption: none\n")
    assert d.proc.wait(15) == 1
    assert one_error_line(d.log).startswith("ERROR tdnosuch0: persistent device does not exist")

    # no permission: without CAP_NET_ADMIN (root minus that capability) no device can be made
    cfg = lab.config(f"interface: {{name: {lab.name('tdt')}, mode: tun}}\n"
                     "transport: {protocol: udp, listen: '0.0.0.0:55559'}\nencryption: none\n")
    p = lab.run(a, "setpriv", "--inh-caps=-all", "--bounding-set=-net_admin",
                sys.executable, "-m", "tunneld", "--config", str(cfg), check=False)
    assert p.returncode == 1
    line = one_error_line(p.stderr)
    assert "cannot create tun device: operation not permitted" in line
