"""A full tunnel under a real systemd: `systemctl restart` leaks nothing,
`systemctl stop` leaves nothing.

    ns london                                         ns paris
    +----------------------------------+              +------------------------------+
    | systemd-nspawn --boot            |  veth        | tunneld (listens)            |
    |  tunneld@london.service          | 10.78.0.1/24 | "the internet" on lo:        |
    |  routes [0.0.0.0/0, ::/0]        |--------------|  198.51.100.1,               |
    | ping 198.51.100.1, 2001:db8:100::1  default via |  2001:db8:100::1             |
    | tcpdump on the underlay          | 10.78.0.2/24 |                              |
    +----------------------------------+              +------------------------------+

The pings run in london's namespace beside the container (which shares it),
all through three `systemctl restart`s: not one may reach the underlay in
clear. The unit's ExecStopPost (`tunneld down --unless-restarting`) must tell
those restarts from the final `systemctl stop`, after which the rules and the
table are gone, exactly as before the first start.
"""

from __future__ import annotations

import base64
import os
import subprocess

import pytest

from tests.lab import require_netns, wait_for
from tests.netns.test_netns_leak import CLEAR, finish, pingers, stop, table
from tests.netns.test_netns_routing import config, rules, world  # noqa: F401 - world is a fixture
from tests.netns.test_systemd import Container, base_root, wheels


@pytest.fixture
def london(lab, world):
    require_netns("systemd-nspawn", "debootstrap", "nsenter", "tcpdump")
    lab.unmounts, lab.containers = [], []
    try:
        c = Container(lab, base_root(), world[0], "london", wheels(lab.tmp))
        yield c
    finally:
        for c in lab.containers:
            c.poweroff()
        for mount in reversed(lab.unmounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_systemctl_restart_of_a_full_tunnel_leaks_nothing_and_stop_leaves_nothing(lab, world, london):
    from tunneld.wg.primitives import generate_private, public_of
    a, b, va, vb = world
    before = rules(lab, a)
    keys = [generate_private(os.urandom(32)) for _ in range(2)]
    pubs = [base64.b64encode(public_of(k)).decode() for k in keys]
    key_b = lab.tmp / "paris.key"
    key_b.touch(mode=0o600)
    key_b.write_text(base64.b64encode(keys[1]).decode() + "\n")
    lab.daemon(b, config(lab.name("tdt"), 2, f"encryption: {{private_key_file: {key_b}, peer_public_key: '{pubs[0]}'}}")
               ).wait_up()

    london.run("env", "TUNNELD_WHEELS=/wheels", "/src/scripts/install", timeout=300)
    london.write("/etc/tunneld/london.key", base64.b64encode(keys[0]).decode() + "\n")
    london.write("/etc/tunneld/london.yaml", config(
        "tdsd1", 1, f"encryption: {{private_key_file: /etc/tunneld/london.key, peer_public_key: '{pubs[1]}'}}\n"
        "run_as: {user: tunneld, keep_net_admin: true}",
        routes='[0.0.0.0/0, "::/0"]', remote="10.78.0.2:55555"))
    london.run("systemctl", "start", "tunneld@london")
    lab.wait_ping(a, "10.9.0.2", timeout=30)
    assert "unreachable default" in table(lab, a)

    cap = lab.capture(a, va, CLEAR)
    pings = pingers(lab, a)
    try:
        for i in range(3):
            pid = london.show("tunneld@london", "MainPID")
            london.run("systemctl", "restart", "tunneld@london")
            wait_for(lambda: london.show("tunneld@london", "MainPID") not in ("0", pid), 30, what="a new tunneld")
            lab.wait_ping(a, "198.51.100.1", timeout=30)  # through the tunnel again
    finally:
        stop(pings)
    assert finish(cap) == 0, "pings left in clear during systemctl restart"
    journal = london.journal("tunneld@london")
    assert journal.count("systemd is restarting the service (restart job): kept 4 rules") == 3, journal
    assert "adopted what the last run kept" in journal, journal

    london.run("systemctl", "stop", "tunneld@london")
    assert london.show("tunneld@london", "ActiveState") == "inactive"
    assert "tunneld down london: removed 4 rules, 2 unreachable routes in table 51820" in london.journal(
        "tunneld@london")
    assert rules(lab, a) == before and table(lab, a) == ""
    assert london.run("test", "-e", "/run/tunneld/london.kept", check=False).returncode != 0
