"""Under a real systemd: two sites, each a container with its own root and
systemd as PID 1, each inside one of the test's network namespaces.

    ns london                                       ns paris
    +--------------------------------+              +--------------------------------+
    | systemd-nspawn --boot          |  veth        | systemd-nspawn --boot          |
    |  systemd (PID 1)               | 10.77.0.1/24 |  systemd (PID 1)               |
    |  tunneld@london.service        |--------------|  tunneld@paris.service         |
    |  tun 10.9.0.1/24, run_as       | 10.77.0.2/24 |  tun 10.9.0.2/24, run_as       |
    +--------------------------------+              +--------------------------------+

The root is debootstrapped once into /var/cache/tunneld-test (outside the clone)
and each container boots an overlay of it; scripts/install installs tunneld
from wheels made on the host. Never systemd against the machine's own root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import sys
from pathlib import Path

import pytest

from tests.lab import require_netns, wait_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/tunneld-test")
# python3-yaml, python3-pycparser (python3-ply: debootstrap does not resolve the virtual package
# python3-pycparser depends on) and adduser: what the Debian package depends on beyond
# python3, so that test_package.py's apt installs it offline. The cache path hashes this list.
INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,procps,python3-yaml,python3-pycparser,python3-ply,adduser"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_root() -> Path:
    """A minbase root with systemd, made once per include list and reused."""
    key = hashlib.sha256(f"{SUITE} {INCLUDE}".encode()).hexdigest()[:8]
    root = CACHE / f"{SUITE}-{key}"
    if (root / "usr/lib/systemd/systemd").exists() or (root / "lib/systemd/systemd").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / f"{root.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    p = subprocess.run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(tmp), MIRROR],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"debootstrap failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    tmp.rename(root)
    return root


def wheels(tmp: Path) -> Path:
    """tunneld and its dependencies as wheels, for an offline install in the container."""
    out = tmp / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", str(ROOT), "-w", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp)
    assert p.returncode == 0, p.stderr
    return out


class Container:
    def __init__(self, lab, base: Path, ns: str, name: str, wheel_dir: Path):
        self.lab, self.ns, self.name = lab, ns, name
        self.dir = lab.tmp / f"ct-{name}"
        for d in ("upper", "work", "root"):
            (self.dir / d).mkdir(parents=True)
        self.root = self.dir / "root"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}", str(self.root)],
                       check=True)
        lab.unmounts.append(self.root)
        self.proc = lab.spawn(None, "systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
                              f"--network-namespace-path=/run/netns/{ns}", "--capability=CAP_NET_ADMIN",
                              "--console=passive", f"--machine={lab.name('tdct')}",
                              f"--bind-ro={ROOT}:/src", f"--bind-ro={wheel_dir}:/wheels", "--bind=/dev/net/tun",
                              stderr=self.dir / "console.log")
        lab.containers.append(self)
        self.pid1 = wait_for(self._pid1, 30, what=f"{name}'s systemd to start")
        def booted():  # until PID 1 answers on its bus and has finished starting up
            state = self.run("systemctl", "is-system-running", check=False, timeout=30).stdout.strip()
            return state in ("running", "degraded")
        wait_for(booted, 120, interval=0.5, what=f"{name}'s systemd to finish booting")

    def _pid1(self) -> int | None:
        """The container's PID 1 as the host sees it: nspawn's child, once it is systemd."""
        assert self.proc.poll() is None, (self.dir / "console.log").read_text()
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "systemd":
                return int(children[0])
        except OSError:
            pass
        return None

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        full = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i", f"PATH={PATH}", *cmd]
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def write(self, path: str, text: str, owner: str = "root:tunneld", mode: str = "640") -> None:
        """As scripts/install lays /etc/tunneld out: root's, read by the tunneld group."""
        target = self.root / path.lstrip("/")
        target.write_text(text)
        self.run("chown", owner, path)
        self.run("chmod", mode, path)

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat").stdout

    def poweroff(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to shut down
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def sites(lab):
    require_netns("systemd-nspawn", "debootstrap", "nsenter")
    lab.unmounts, lab.containers = [], []
    try:
        base = base_root()
        wheel_dir = wheels(lab.tmp)
        london_ns, paris_ns = lab.ns(), lab.ns()
        lab.veth(london_ns, "10.77.0.1/24", paris_ns, "10.77.0.2/24")
        london = Container(lab, base, london_ns, "london", wheel_dir)
        paris = Container(lab, base, paris_ns, "paris", wheel_dir)
        yield london, paris
    finally:
        for c in lab.containers:
            c.poweroff()
        for mount in reversed(lab.unmounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def site_config(me: int, key_b64: str, peer_pub: str, remote: bool) -> tuple[str, str]:
    peer = 3 - me
    yaml = (f"interface: {{name: tdsd{me}, mode: tun, addresses: [10.9.0.{me}/24]}}\n"
            f"transport: {{protocol: udp, listen: '0.0.0.0:55555'"
            + (f", remote: '10.77.0.{peer}:55555'" if remote else "") + "}\n"
            f"encryption: {{private_key_file: site.key, peer_public_key: '{peer_pub}'}}\n"
            "run_as: {user: tunneld}\n"
            + ("hooks: {down: ['sleep 2']}\n" if me == 1 else ""))  # a stop that takes a while
    return yaml, key_b64


def test_under_real_systemd(lab, sites):
    import base64

    from tunneld.wg.primitives import generate_private, public_of
    london, paris = sites
    keys = {n: generate_private(os.urandom(32)) for n in ("london", "paris")}
    pub = {n: base64.b64encode(public_of(k)).decode() for n, k in keys.items()}
    for c, me, peer, remote in ((london, 1, "paris", True), (paris, 2, "london", False)):
        install = c.run("env", "TUNNELD_WHEELS=/wheels", "/src/scripts/install", timeout=300)
        assert "installed" in install.stdout
        # what an earlier install left: /etc/tunneld and its files the tunneld user's
        c.run("chown", "-R", "tunneld:tunneld", "/etc/tunneld")
        c.run("chmod", "700", "/etc/tunneld")
        c.run("chmod", "600", "/etc/tunneld/site-a.yaml")
        again = c.run("env", "TUNNELD_WHEELS=/wheels", "/src/scripts/install", timeout=300)  # idempotent
        assert "installed" in again.stdout
        for path, want in (("/etc/tunneld", "750 root tunneld"), ("/etc/tunneld/site-a.yaml", "640 root tunneld")):
            assert c.run("stat", "-c", "%a %U %G", path).stdout.strip() == want, path
        yaml, _ = site_config(me, "", pub[peer], remote)
        c.write("/etc/tunneld/site.key", base64.b64encode(keys[c.name]).decode() + "\n")
        c.write(f"/etc/tunneld/{c.name}.yaml", yaml.replace("site.key", "/etc/tunneld/site.key"))
        verify = c.run("systemd-analyze", "verify", "--man=no", f"tunneld@{c.name}.service", "tunneld.target", check=False)
        assert verify.returncode == 0, verify.stderr
        c.run("systemctl", "enable", f"tunneld@{c.name}")
        c.run("systemctl", "start", f"tunneld@{c.name}")
        assert c.show(f"tunneld@{c.name}", "ActiveState") == "active"

    # the tunnel carries traffic; systemd knows it is ready, and what state it is in
    lab.wait_ping(london.ns, "10.9.0.2")
    lab.ping(paris.ns, "10.9.0.1")
    london.run("systemctl", "reload", "tunneld@london")  # READY=1 again, with a fresh STATUS=
    wait_for(lambda: "reloaded" in london.journal("tunneld@london"), 10, what="the reload to be logged")
    # a refused reload fails `systemctl reload`, with the reason, and the tunnel runs on
    good = (london.root / "etc/tunneld/london.yaml").read_text()
    for broken, reason in ((good.replace("transport: {", "transport: [{"), "invalid YAML"),
                           (good.replace("mode: tun", "mode: tun, mtu: 1300"), "interface.mtu changed: that needs a restart")):
        london.write("/etc/tunneld/london.yaml", broken)
        p = london.run("systemctl", "reload", "tunneld@london", check=False)
        assert p.returncode != 0
        assert reason in london.journal("tunneld@london").split("refused")[-1]
        assert london.show("tunneld@london", "ActiveState") == "active"
    london.write("/etc/tunneld/london.yaml", good)
    p = london.run("tunneld", "reload", "london")
    assert p.stdout.startswith("reloaded /etc/tunneld/london.yaml")
    assert london.show("tunneld@london", "Documentation") == "\"man:tunneld(8)\" \"man:tunneld.yaml(5)\""
    for path in ("/usr/local/share/man/man8/tunneld.8", "/usr/local/share/man/man5/tunneld.yaml.5",
                 "/usr/local/share/bash-completion/completions/tunneld"):
        london.run("test", "-s", path)
    status = london.run("systemctl", "status", "--no-pager", "tunneld@london").stdout
    assert "active (running)" in status
    assert re.search(r'Status: "tdsd1 up, peer 10\.77\.0\.2:55555 up, handshake \d+ s ago"', status), status
    st = json.loads(london.run("tunneld", "status", "london", "--json").stdout)
    assert st["interface"] == "tdsd1" and st["peer"] == "10.77.0.2:55555" and st["encryption"] == "tunneld"
    assert st["handshakes"] >= 1 and st["tx"]["packets"] > 0 and st["last_handshake_seconds_ago"] is not None
    text = london.run("tunneld", "status", "london").stdout
    assert "latest handshake:" in text and "peer: 10.77.0.2:55555" in text

    # least privilege, as systemd started it: the tunneld user, CAP_NET_ADMIN at most
    pid = int(london.show("tunneld@london", "MainPID"))
    proc_status = london.run("cat", f"/proc/{pid}/status").stdout
    uid = london.run("id", "-u", "tunneld").stdout.strip()
    assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", proc_status, re.M)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        value = int(re.search(rf"^{field}:\s+([0-9a-f]+)$", proc_status, re.M).group(1), 16)
        assert value & ~(1 << 12) == 0, f"{field} = {value:x}: more than CAP_NET_ADMIN"

    # kill -9: systemd restarts it and the tunnel comes back
    london.run("kill", "-9", str(pid))
    wait_for(lambda: london.show("tunneld@london", "MainPID") not in ("0", str(pid))
             and london.show("tunneld@london", "ActiveState") == "active", 30, what="systemd to restart tunneld")
    assert int(london.show("tunneld@london", "NRestarts")) >= 1
    lab.wait_ping(london.ns, "10.9.0.2", timeout=30)

    # tunneld.target stops every instance, and returns only once they are down
    # (london's down hook makes its stop take 2 s)
    london.run("systemctl", "stop", "tunneld.target")
    assert london.show("tunneld@london", "ActiveState") == "inactive"
    assert lab.ip(london.ns, "link", "show", "tdsd1", check=False).returncode != 0  # nothing left behind
    london.run("systemctl", "start", "tunneld.target")
    wait_for(lambda: london.show("tunneld@london", "ActiveState") == "active", 30,
             what="tunneld.target's start to reach the enabled instance")
    lab.wait_ping(london.ns, "10.9.0.2", timeout=30)

    # a bad config at start: exit 2, failed, and no restart loop
    london.write("/etc/tunneld/broken.yaml", "interface: {mode: tun}\ntransport: {protocol: udp}\nencryption: none\n")
    assert london.run("systemctl", "start", "tunneld@broken", check=False).returncode != 0
    time.sleep(5)  # more than RestartSec
    assert london.show("tunneld@broken", "ActiveState") == "failed"
    assert london.show("tunneld@broken", "ExecMainStatus") == "2"
    assert london.show("tunneld@broken", "NRestarts") == "0"
    assert "transport: udp needs listen, remote, or both" in london.journal("tunneld@broken")
    # a config the tunneld user could change: root does not start from it (exit 2, no restart)
    london.write("/etc/tunneld/owned.yaml", good, owner="tunneld:tunneld", mode="600")
    assert london.run("systemctl", "start", "tunneld@owned", check=False).returncode != 0
    time.sleep(5)
    assert london.show("tunneld@owned", "ExecMainStatus") == "2"
    assert london.show("tunneld@owned", "NRestarts") == "0"
    assert ("/etc/tunneld/owned.yaml belongs to user tunneld, not root (chown root /etc/tunneld/owned.yaml)"
            in london.journal("tunneld@owned"))

    # stop
    for c in (london, paris):
        c.run("systemctl", "stop", f"tunneld@{c.name}")
        assert c.show(f"tunneld@{c.name}", "ActiveState") == "inactive"
    journal = london.journal("tunneld@london")
    assert "counters:" in journal and "Traceback" not in journal
    uninstall = london.run("/src/scripts/uninstall", timeout=120)
    assert "uninstalled" in uninstall.stdout
    assert london.run("test", "-e", "/usr/local/bin/tunneld", check=False).returncode != 0
