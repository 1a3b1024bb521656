"""The service side, in namespaces: sd_notify against an AF_UNIX datagram socket
standing in for systemd, reload on SIGHUP, the privilege drop, persistent
devices for non-root users, status and metrics, hooks, and MSS clamping.

    +----------------------+    veth underlay     +----------------------+
    | ns A: tunneld        | 10.77.0.1/24         | ns B: tunneld        |
    |  tun 10.9.0.1/24     |----------------------|  tun 10.9.0.2/24     |
    +----------------------+         10.77.0.2/24 +----------------------+
"""

import json
import os
import re
import shutil
import signal
import stat
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import require_netns, wait_for
from tests.netns.test_netns_tunnel import keyed, site



@pytest.fixture
def sites(lab):
    a, b = lab.ns(), lab.ns()
    lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    return a, b


def status(lab, name: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "tunneld", "status", name, "--json"], capture_output=True, text=True,
                       env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


# --- sd_notify -----------------------------------------------------------------

class FakeSystemd:
    """An AF_UNIX datagram socket where NOTIFY_SOCKET points, recording what arrives."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []

    def read_until(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            fields = dict(line.split("=", 1) for line in data.splitlines())
            self.messages.append((time.monotonic(), fields))
            if predicate(fields):
                return fields
        raise AssertionError(f"timed out; got {self.messages}")


def test_sd_notify_ready_watchdog_reload_stopping(lab, sites, tmp_path):
    a, b = sites
    systemd = FakeSystemd(tmp_path / "notify")
    name = lab.name("tdt")
    d = lab.daemon(a, site(name, 1, "udp", listen=True, remote=True),
                   env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"})
    ready = systemd.read_until(lambda f: f.get("READY") == "1", 15)
    # READY only once the interface is configured and the transport bound
    assert "10.9.0.1/24" in lab.ip(a, "addr", "show", "dev", name).stdout
    assert ":55555" in lab.run(a, "ss", "-uln").stdout
    assert ready["STATUS"] == f"{name} up, peer 10.77.0.2:55555 (plaintext)"
    assert not any("WATCHDOG" in f for _, f in systemd.messages[:-1])  # nothing before READY but READY

    start = time.monotonic()
    systemd.messages.clear()
    with pytest.raises(AssertionError):
        systemd.read_until(lambda f: False, 2.0)
    pings = [t for t, f in systemd.messages if f.get("WATCHDOG") == "1"]
    assert 7 <= len(pings) <= 13, f"{len(pings)} watchdog pings in 2 s at WATCHDOG_USEC=400000"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.1 < g < 0.35 for g in gaps), gaps  # every 0.2 s: half of WATCHDOG_USEC
    assert pings[0] - start < 0.3

    systemd.messages.clear()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    d.proc.send_signal(signal.SIGHUP)
    reloading = systemd.read_until(lambda f: f.get("RELOADING") == "1", 5)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    systemd.read_until(lambda f: f.get("READY") == "1", 5)

    d.proc.send_signal(signal.SIGTERM)
    systemd.read_until(lambda f: f.get("STOPPING") == "1", 5)
    assert d.proc.wait(10) == 0


def test_notify_to_an_abstract_socket():
    from tunneld.service.sdnotify import Notifier
    name = f"tunneld-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000"})
        assert n.watchdog_interval == 1.5
        assert n.ready("up")
        assert s.recv(100) == b"READY=1\nSTATUS=up"
        assert n.stopping() and s.recv(100) == b"STOPPING=1"
    assert Notifier({}).ready() is False  # outside systemd: a no-op
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_units_pass_systemd_analyze_verify(tmp_path):
    from tests.lab import require
    require(shutil.which("systemd-analyze") is not None, "this test needs systemd-analyze (systemd)")
    root = Path(__file__).resolve().parents[2]
    tunneld_bin = shutil.which("tunneld") or str(Path(sys.executable).parent / "tunneld")
    for unit in ("tunneld@.service", "tunneld.target"):
        text = (root / "systemd" / unit).read_text().replace("/usr/local/bin/tunneld", tunneld_bin)
        (tmp_path / unit).write_text(text)
    (tmp_path / "tunneld@london.service").symlink_to(tmp_path / "tunneld@.service")
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "tunneld@london.service"),
                        str(tmp_path / "tunneld.target")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr


# --- reload --------------------------------------------------------------------

def test_reload_changes_the_peer_key_while_a_ping_runs(lab, sites):
    a, b = sites
    enc = keyed(lab)
    cfg_a = site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc[0])
    cfg_b = site(lab.name("tdt"), 2, "udp", listen=True, remote=False, encryption=enc[1])
    da, db = lab.daemon(a, cfg_a), lab.daemon(b, cfg_b)
    da.wait_up(), db.wait_up()
    lab.wait_ping(a, "10.9.0.2")
    ping = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-c", "80", "-i", "0.05", "-W", "1", "10.9.0.2"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    new_key, new_pub = lab.keypair()  # B gets a new key; A learns B's new public key
    b_key = re.search(r"private_key_file: (\S+)", enc[1]).group(1)
    Path(b_key).write_text(Path(new_key).read_text())
    old_pub = re.search(r'peer_public_key: "([^"]+)"', enc[0]).group(1)
    da.config.write_text(cfg_a.replace(old_pub, new_pub))
    db.proc.send_signal(signal.SIGHUP)
    da.proc.send_signal(signal.SIGHUP)
    out, _ = ping.communicate(timeout=60)
    received = int(re.search(r"(\d+) received", out).group(1))
    assert received >= 70, f"lost {80 - received} of 80 pings across the key change:\n{out}"
    da.wait_log("reloaded"), db.wait_log("reloaded")
    assert "keys" in da.log.split("reloaded")[-1] and "keys" in db.log.split("reloaded")[-1]
    assert status(lab, da.config.stem)["handshakes"] >= 2


def test_invalid_or_restart_needing_reload_changes_nothing(lab, sites):
    a, b = sites
    name = lab.name("tdt")
    cfg = site(name, 1, "udp", listen=True, remote=True)
    d = lab.daemon(a, cfg).wait_up()
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False)).wait_up()
    lab.ping(a, "10.9.0.2")
    d.config.write_text(cfg.replace("transport:", "transport: [oops"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reload refused, keeping the running config:")
    # tun to tap over udp: the mode and its default MTU change (both clamp TCP by default)
    d.config.write_text(cfg.replace("mode: tun", "mode: tap").replace("listen: \"0.0.0.0:55555\"", "listen: \"0.0.0.0:4000\""))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("interface.mode, interface.mtu, transport.listen changed: that needs a restart")
    lab.ping(a, "10.9.0.2")  # still the old tunnel
    assert "10.9.0.1/24" in lab.ip(a, "addr", "show", "dev", name).stdout
    # a good reload: addresses and routes change live
    d.config.write_text(cfg.replace("[10.9.0.1/24, \"fd09::1/64\"]", "[10.9.0.1/24, 10.9.9.1/24]")
                        .replace("  mode: tun\n", "  mode: tun\n  routes: [192.168.77.0/24]\n"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("reloaded")
    addrs = lab.ip(a, "addr", "show", "dev", name).stdout
    assert "10.9.9.1/24" in addrs and "fd09::1" not in addrs
    assert "192.168.77.0/24" in lab.ip(a, "route", "show", "dev", name).stdout
    assert d.stop() == 0


# --- least privilege -----------------------------------------------------------------

@pytest.mark.parametrize("keep", [True, False])
def test_privilege_drop_and_tcp_reconnect_after_it(lab, sites, keep):
    a, b = sites
    from tests.lab import Daemon
    cfg = Path(tempfile_dir(lab)) / f"{lab.name('cfg')}.yaml"  # readable by nobody, for the reload below
    cfg.write_text(site(lab.name("tdt"), 1, "tcp", listen=False, remote=True)
                   + f"run_as: {{user: nobody, group: nogroup, keep_net_admin: {str(keep).lower()}}}\n")
    cfg.chmod(0o644)
    client = Daemon(lab, a, cfg, lab.tmp / "client.log")
    server_cfg = site(lab.name("tdt"), 2, "tcp", listen=True, remote=False)
    server = lab.daemon(b, server_cfg).wait_up()
    client.wait_up()
    client.wait_log("tcp: connected to")
    st = proc_status(client.proc.pid)
    assert st["Uid"].split() == ["65534"] * 4 and st["Gid"].split() == [str(__import__("grp").getgrnam("nogroup").gr_gid)] * 4
    expected = "0000000000001000" if keep else "0000000000000000"
    assert st["CapEff"] == st["CapPrm"] == expected and st["CapBnd"] == expected
    assert st["Groups"].strip() == ""
    lab.ping(a, "10.9.0.2")
    server.stop(signal.SIGKILL)
    client.wait_log("connection to 10.77.0.2:55555 lost")
    lab.daemon(b, server_cfg).wait_up()
    wait_for(lambda: lab.ping(a, "10.9.0.2", count=1, check=False).returncode == 0, 40, what="the dropped client to reconnect")
    assert client.log.count("tcp: connected to") == 2
    # with no capability left, an address change on reload is refused with a reason
    if not keep:
        client.config.write_text(client.config.read_text().replace("10.9.0.1/24", "10.9.0.5/24"))
        client.proc.send_signal(signal.SIGHUP)
        client.wait_log("run_as.keep_net_admin is false")


def test_mktun_then_a_non_root_tunneld_attaches(lab, sites, tmp_path):
    """tunneld mktun gives nobody a persistent device; nobody runs tunneld on it."""
    a, b = sites
    require_netns()
    venv = Path(tempfile_dir(lab)) / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    wheel_dir = lab.tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    str(Path(__file__).resolve().parents[2]), "-w", str(wheel_dir)], check=True, capture_output=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheel_dir), "tunneld"], check=True, capture_output=True)
    dev = lab.name("tdp")
    lab.run(a, sys.executable, "-m", "tunneld", "mktun", dev, "--mode", "tun", "--user", "nobody")
    flags = lab.run(a, "cat", f"/sys/class/net/{dev}/owner").stdout.strip()
    assert flags == "65534"
    lab.ip(a, "link", "set", dev, "mtu", "1420", "up")
    lab.ip(a, "addr", "add", "10.9.0.1/24", "dev", dev)
    cfg = Path(tempfile_dir(lab)) / "nobody.yaml"
    cfg.write_text(f"interface: {{name: {dev}, mode: tun, mtu: 1420, persistent: true}}\n"
                   "transport: {protocol: udp, listen: '0.0.0.0:55555', remote: '10.77.0.2:55555'}\n"
                   "encryption: none\n")
    cfg.chmod(0o644)
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False)).wait_up()
    log = Path(tempfile_dir(lab)) / "nobody.log"
    # Debian's udev makes /dev/net/tun 0666 (the device's owner check is what guards it);
    # some machines leave it 0600. The test sees 0666 in a mount namespace of its own,
    # through a node of its own, whatever the host has.
    node = Path(tempfile_dir(lab)) / "tun"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    node.chmod(0o666)
    proc = lab.spawn(a, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{node}" /dev/net/tun && exec "$0" "$@"',
                     "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                     str(venv / "bin/tunneld"), "--config", str(cfg), stderr=log,
                     env={"RUNTIME_DIRECTORY": tempfile_dir(lab)})
    wait_for(lambda: ": up, " in log.read_text() or proc.poll() is not None, 20, what="the non-root tunneld")
    assert proc.poll() is None, log.read_text()
    assert proc_status(proc.pid)["Uid"].split()[0] == "65534"
    assert proc_status(proc.pid)["CapEff"] == "0000000000000000"
    lab.ping(a, "10.9.0.2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert lab.ip(a, "link", "show", dev, check=False).returncode == 0  # persistent: still there
    lab.run(a, sys.executable, "-m", "tunneld", "rmtun", dev)
    assert lab.ip(a, "link", "show", dev, check=False).returncode != 0


def tempfile_dir(lab) -> str:
    """A folder other users can read (pytest's tmp_path is root-only)."""
    path = getattr(lab, "_public", None)
    if path is None:
        import tempfile
        path = tempfile.mkdtemp(prefix="tunneld-public-")
        os.chmod(path, 0o755)
        lab._public = path
        lab.public_dirs = [path]
    return path


@pytest.fixture(autouse=True)
def _remove_public_dirs(lab):
    yield
    for path in getattr(lab, "public_dirs", []):
        shutil.rmtree(path, ignore_errors=True)


# --- status, metrics, hooks ------------------------------------------------------------

def test_status_json_and_metrics(lab, sites):
    a, b = sites
    enc = keyed(lab)
    port = 9586
    da = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc[0])
                    + f"metrics: {{listen: '127.0.0.1:{port}'}}\n").wait_up()
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False, encryption=enc[1])).wait_up()
    lab.wait_ping(a, "10.9.0.2")
    st = status(lab, da.config.stem)
    for key in ("name", "interface", "mode", "mtu", "transport", "encryption", "peer", "last_handshake_seconds_ago",
                "rx", "tx", "auth_failures", "handshakes", "reconnects", "uptime_seconds", "pid"):
        assert key in st, key
    assert st["peer"] == "10.77.0.2:55555" and st["encryption"] == "tunneld" and st["handshakes"] == 1
    assert st["rx"]["packets"] >= 1 and st["tx"]["bytes"] > 0 and st["last_handshake_seconds_ago"] < 30
    sock = Path(lab.tmp / "run" / f"{da.config.stem}.sock")
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    text = lab.run(a, sys.executable, "-c",
                   f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())").stdout
    assert f'tunneld_handshakes_total{{name="{da.config.stem}",interface="{st["interface"]}"}} 1' in text
    assert "# TYPE tunneld_rx_packets_total counter" in text
    plain = subprocess.run([sys.executable, "-m", "tunneld", "status"], capture_output=True, text=True,
                           env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")}).stdout
    assert "latest handshake:" in plain and "peer: 10.77.0.2:55555" in plain


def test_hooks_get_the_tunnel_in_their_environment(lab, sites):
    a, _ = sites
    out = lab.tmp / "hook.out"
    name = lab.name("tdt")
    d = lab.daemon(a, site(name, 1, "udp", listen=True, remote=True)
                   + f"hooks:\n  up: ['env | grep ^TUNNELD_ | sort > {out}', 'echo hello from up']\n"
                     f"  down: ['echo down >> {out}']\n").wait_up()
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env == {"TUNNELD_INTERFACE": name, "TUNNELD_MODE": "tun", "TUNNELD_MTU": "1420",
                   "TUNNELD_ADDRESSES": "10.9.0.1/24 fd09::1/64", "TUNNELD_PEER": "10.77.0.2:55555"}
    assert "up hook: hello from up" in d.log
    assert d.stop() == 0
    assert out.read_text().endswith("down\n")

    failing = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True)
                         + "hooks: {up: ['echo cannot reach the DNS server; exit 3']}\n")
    assert failing.proc.wait(15) == 1
    assert "up hook: cannot reach the DNS server" in failing.log
    assert "ERROR up hook 'echo cannot reach the DNS server; exit 3' exited with 3: cannot reach the DNS server" in failing.log
    assert "Traceback" not in failing.log


# --- MSS clamping end to end -------------------------------------------------------------

def test_mss_clamped_across_a_1280_mtu_tunnel(lab):
    """hostA (MTU 1500) -- gwA == tunnel, MTU 1280 == gwB -- hostB (MTU 1500): the SYN
    and SYN-ACK each host sees carry MSS 1240, and a transfer crosses intact."""
    require_netns("tcpdump")
    host_a, gw_a, gw_b, host_b = lab.ns(), lab.ns(), lab.ns(), lab.ns()
    lab.veth(gw_a, "10.77.0.1/24", gw_b, "10.77.0.2/24")
    _, _ = lab.veth(host_a, "192.168.10.2/24", gw_a, "192.168.10.1/24")
    hb, _ = lab.veth(host_b, "192.168.20.2/24", gw_b, "192.168.20.1/24")
    for host, gw in ((host_a, "192.168.10.1"), (host_b, "192.168.20.1")):
        lab.ip(host, "route", "add", "default", "via", gw)
    for gw in (gw_a, gw_b):
        lab.run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    enc = keyed(lab)
    for gw, me, lan, rem in ((gw_b, 2, "192.168.10.0/24", False), (gw_a, 1, "192.168.20.0/24", True)):
        lab.daemon(gw, f"interface: {{name: {lab.name('tdt')}, mode: tun, mtu: 1280, addresses: [10.9.0.{me}/24], "
                       f"routes: [{lan}]}}\n"
                       f"transport: {{protocol: udp, listen: '0.0.0.0:55555'"
                       + (", remote: '10.77.0.2:55555'" if rem else "") + "}\n" + enc[me - 1] + "\n").wait_up()
    lab.wait_ping(host_a, "192.168.20.2")
    cap = lab.tmp / "syn.txt"
    tcpdump = lab.spawn(host_b, "tcpdump", "-i", hb, "-n", "-l", "-v", "tcp[tcpflags] & tcp-syn != 0", stdout=open(cap, "w"),
                        stderr=lab.tmp / "tcpdump.log")
    wait_for(lambda: "listening" in (lab.tmp / "tcpdump.log").read_text(), 10, what="tcpdump")
    sent, got = lab.transfer(host_a, host_b, "192.168.20.2", size=3_000_000)
    assert sent == got
    time.sleep(0.5)
    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait(10)
    text = cap.read_text()
    mss = [int(m) for m in re.findall(r"mss (\d+)", text)]
    assert len(mss) >= 2, text  # the SYN arriving at hostB and its SYN-ACK leaving
    syn_in = [int(m) for m in re.findall(r"192\.168\.10\.2\.\d+ > 192\.168\.20\.2\.\d+: Flags \[S\].*?mss (\d+)", text, re.S)]
    assert syn_in and syn_in[0] == 1240, text  # hostA offered 1460; the tunnel made it fit


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_reload_moves_the_peer_endpoint_and_more(lab, sites, proto):
    """A side pointed at the wrong address is moved to the right one by a reload;
    keepalive, allowed IPs and log level change live too."""
    a, b = sites
    enc = keyed(lab)
    listen = proto == "udp"
    wrong = site(lab.name("tdt"), 1, proto, listen=listen, remote=True, encryption=enc[0]).replace("10.77.0.2:55555", "10.77.0.2:4444")
    da = lab.daemon(a, wrong).wait_up()
    lab.daemon(b, site(lab.name("tdt"), 2, proto, listen=True, remote=False, encryption=enc[1])).wait_up()
    assert lab.ping(a, "10.9.0.2", count=2, check=False).returncode != 0
    fixed = wrong.replace("10.77.0.2:4444", "10.77.0.2:55555").replace("log_level: debug", "log_level: info")
    fixed = fixed.replace(f"  protocol: {proto}\n", f"  protocol: {proto}\n  keepalive: 5\n")
    fixed = fixed.replace(enc[0], enc[0] + "\n  allowed_ips: [10.9.0.2/32]")
    da.config.write_text(fixed)
    da.proc.send_signal(signal.SIGHUP)
    da.wait_log("reloaded")
    line = da.log.split("reloaded", 1)[1].splitlines()[0]
    for what in ("log_level info", "peer endpoint 10.77.0.2:55555", "keepalive", "allowed_ips"):
        assert what in line, line
    lab.wait_ping(a, "10.9.0.2")
    assert status(lab, da.config.stem)["peer"].startswith("10.77.0.2:")
