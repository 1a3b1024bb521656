"""The Debian package under a real systemd: scripts/build-deb builds it on the
host, apt installs it offline into the two containers test_systemd.py boots,
the tunnel runs as tunneld@NAME, and a purge leaves nothing behind.

    ns london                                       ns paris
    +--------------------------------+              +--------------------------------+
    | systemd-nspawn --boot          |  veth        | systemd-nspawn --boot          |
    |  apt-get install ./tunneld.deb | 10.77.0.1/24 |  apt-get install ./tunneld.deb |
    |  tunneld@london.service        |--------------|  tunneld@paris.service         |
    |  tun 10.9.0.1/24, run_as       | 10.77.0.2/24 |  tun 10.9.0.2/24, run_as       |
    +--------------------------------+              +--------------------------------+

The containers' root is test_systemd.py's debootstrap, which includes what the
package depends on (INCLUDE), so apt finds every dependency locally.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import require_netns
from tests.netns.test_systemd import Container, base_root, site_config

ROOT = Path(__file__).resolve().parents[2]
# Offline: the containers' namespaces have no route but the veth between them. (apt's
# --no-download refuses a local .deb: "Pathname to install is not absolute".)
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y")


@pytest.fixture
def packaged_sites(lab):
    require_netns("systemd-nspawn", "debootstrap", "nsenter", "dpkg-deb")
    lab.unmounts, lab.containers = [], []
    try:
        debs = lab.tmp / "debs"
        p = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--python", sys.executable, "--out", str(debs)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        deb = next(debs.glob("tunneld_*.deb"))
        base = base_root()
        london_ns, paris_ns = lab.ns(), lab.ns()
        lab.veth(london_ns, "10.77.0.1/24", paris_ns, "10.77.0.2/24")
        # the folder of the .deb is bound read-only at /wheels, where test_systemd binds its wheels
        london = Container(lab, base, london_ns, "london", debs)
        paris = Container(lab, base, paris_ns, "paris", debs)
        yield london, paris, f"/wheels/{deb.name}"
    finally:
        for c in lab.containers:
            c.poweroff()
        for mount in reversed(lab.unmounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def exists(c: Container, path: str) -> bool:
    return c.run("test", "-e", path, check=False).returncode == 0 or \
        c.run("test", "-L", path, check=False).returncode == 0


def test_the_debian_package_installs_runs_and_purges(lab, packaged_sites):
    from tunneld.wg.primitives import generate_private, public_of
    london, paris, deb = packaged_sites
    keys = {n: generate_private(os.urandom(32)) for n in ("london", "paris")}
    pub = {n: base64.b64encode(public_of(k)).decode() for n, k in keys.items()}
    for c, me, peer, remote in ((london, 1, "paris", True), (paris, 2, "london", False)):
        assert not exists(c, "/usr/local/bin/tunneld")  # nothing but the package provides tunneld here
        c.run(*APT, "install", deb, timeout=300)  # every dependency is already in the root
        assert c.run("dpkg-query", "-W", "-f", "${Status}", "tunneld").stdout == "install ok installed"
        assert c.run("stat", "-c", "%a %U %G", "/etc/tunneld").stdout.strip() == "750 root tunneld"
        assert c.run("getent", "passwd", "tunneld").stdout.strip().endswith(":/nonexistent:/usr/sbin/nologin")
        assert c.run("tunneld", "--version").stdout.startswith("tunneld ")
        for path in ("/usr/bin/tunneld", "/lib/systemd/system/tunneld@.service", "/lib/systemd/system/tunneld.target",
                     "/usr/share/man/man8/tunneld.8.gz", "/usr/share/man/man5/tunneld.yaml.5.gz",
                     "/usr/share/bash-completion/completions/tunneld", "/usr/share/doc/tunneld/copyright"):
            c.run("test", "-s", path)
        yaml, _ = site_config(me, "", pub[peer], remote)
        c.write("/etc/tunneld/site.key", base64.b64encode(keys[c.name]).decode() + "\n")
        c.write(f"/etc/tunneld/{c.name}.yaml", yaml.replace("site.key", "/etc/tunneld/site.key"))
        c.run("systemctl", "enable", f"tunneld@{c.name}")
        c.run("systemctl", "start", f"tunneld@{c.name}")
        assert c.show(f"tunneld@{c.name}", "ActiveState") == "active"
        assert "path=/usr/bin/tunneld " in c.show(f"tunneld@{c.name}", "ExecStart")
    for ns, dev in ((london.ns, "tdsd1"), (paris.ns, "tdsd2")):
        lab.ip(ns, "link", "show", dev)
    lab.wait_ping(london.ns, "10.9.0.2")
    lab.ping(paris.ns, "10.9.0.1")
    assert "Traceback" not in london.journal("tunneld@london")

    # an upgrade (here the same version again) restarts the running instance on the new files
    pid = london.show("tunneld@london", "MainPID")
    london.run(*APT, "install", "--reinstall", deb, timeout=300)
    assert london.show("tunneld@london", "ActiveState") == "active"
    assert london.show("tunneld@london", "MainPID") not in ("0", pid)
    lab.wait_ping(london.ns, "10.9.0.2", timeout=30)

    # paris: the admin removes its config and key, then purges: nothing is left
    files = paris.run("dpkg-query", "-L", "tunneld").stdout.split()
    paris.run("rm", f"/etc/tunneld/{paris.name}.yaml", "/etc/tunneld/site.key")
    paris.run(*APT, "purge", "tunneld", timeout=300)
    assert paris.run("dpkg-query", "-W", "-f", "${Status}", "tunneld", check=False).stdout in ("", "unknown ok not-installed")
    assert lab.ip(paris.ns, "link", "show", "tdsd2", check=False).returncode != 0
    left = [f for f in files if exists(paris, f) and not (paris.run("test", "-d", f, check=False).returncode == 0
                                                      and not f.startswith(("/usr/lib/tunneld", "/usr/share/doc/tunneld")))]
    assert left == [], f"left by the purge: {left}"
    for path in ("/usr/lib/tunneld", "/etc/tunneld", "/run/tunneld", "/etc/systemd/system/tunneld.target.wants",
                 "/etc/systemd/system/multi-user.target.wants/tunneld@paris.service"):
        assert not exists(paris, path), path
    for db in ("passwd", "group"):
        assert paris.run("getent", db, "tunneld", check=False).returncode != 0, f"the tunneld {db} entry is left"
    assert paris.run("systemctl", "list-unit-files", "--no-legend", "tunneld*", check=False).stdout.strip() == ""
    assert paris.show("tunneld@paris", "LoadState") == "not-found"
    assert paris.run("find", "/etc", "/lib/systemd", "/usr", "-name", "*tunneld*", check=False).stdout.strip() == ""

    # london: purged with the admin's config and key still in /etc/tunneld: they
    # stay, as dpkg keeps a folder that is not empty, and so does the group that reads them
    p = london.run(*APT, "purge", "tunneld", timeout=300)
    assert "/etc/tunneld is not empty: kept" in p.stdout + p.stderr
    assert lab.ip(london.ns, "link", "show", "tdsd1", check=False).returncode != 0
    assert london.run("ls", "/etc/tunneld").stdout.split() == ["london.yaml", "site.key"]
    assert london.run("stat", "-c", "%U %G", "/etc/tunneld/site.key").stdout.strip() == "root tunneld"
    for path in ("/usr/bin/tunneld", "/usr/lib/tunneld", "/lib/systemd/system/tunneld@.service",
                 "/etc/systemd/system/tunneld.target.wants"):
        assert not exists(london, path), path
