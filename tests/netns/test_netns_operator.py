"""What an operator does to a running tunnel, in namespaces: `tunneld reload`
and its outcome, reloads applied all or nothing against the kernel's real
state, names that do not collide, `tunneld status` listings, and STATUS= sent
to systemd when the state changes.

    +----------------------+    veth underlay     +----------------------+
    | ns A: tunneld        | 10.77.0.1/24         | ns B: tunneld        |
    |  tun 10.9.0.1/24     |----------------------|  tun 10.9.0.2/24     |
    +----------------------+         10.77.0.2/24 +----------------------+
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.lab import require
from tests.netns.test_netns_service import FakeSystemd, sites  # noqa: F401 (sites: the fixture drawn above)
from tests.netns.test_netns_tunnel import keyed, site



def tunneld(lab, *args: str, user: int | None = None, run: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tunneld", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd="/",
                          env={**os.environ, "RUNTIME_DIRECTORY": run or str(lab.tmp / "run")})


def test_reload_command_waits_and_says_why_it_was_refused(lab, sites):
    a, b = sites
    name = lab.name("tdt")
    cfg = site(name, 1, "udp", listen=True, remote=True)
    d = lab.daemon(a, cfg).wait_up()
    instance = d.config.stem

    d.config.write_text(cfg.replace("log_level: debug", "log_level: info"))
    p = tunneld(lab, "reload", instance)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"reloaded {d.config}: log_level info"

    d.config.write_text(cfg.replace("transport:", "transport: [oops"))
    p = tunneld(lab, "reload", instance)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith(f"tunneld reload: {instance}: refused: {d.config}:")
    assert "invalid YAML" in p.stderr

    d.config.write_text(cfg.replace("  mode: tun\n", "  mode: tun\n  mtu: 1300\n"))
    p = tunneld(lab, "reload", instance)
    assert p.returncode == 1
    assert p.stderr == f"tunneld reload: {instance}: refused: interface.mtu changed: that needs a restart\n"

    p = tunneld(lab, "reload", "nosuchtunnel")
    assert p.returncode == 3 and "nosuchtunnel: not running" in p.stderr
    assert d.stop() == 0


def test_a_reload_that_fails_half_way_changes_nothing_and_the_next_one_works(lab, sites):
    """The new config adds an address (fine) and a route the kernel refuses (the
    prefix already goes elsewhere): the address is walked back, the running
    config stays, and a later reload (a key rotation) still goes through."""
    a, b = sites
    enc = keyed(lab)
    name = lab.name("tdt")
    cfg = site(name, 1, "udp", listen=True, remote=True, encryption=enc[0])
    d = lab.daemon(a, cfg).wait_up()
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False, encryption=enc[1])).wait_up()
    lab.wait_ping(a, "10.9.0.2")
    lab.ip(a, "route", "add", "192.168.50.0/24", "dev", "lo")
    bad = cfg.replace('"fd09::1/64"]', '"fd09::1/64", 10.9.8.1/24]\n  routes: [192.168.60.0/24, 192.168.50.0/24]')
    d.config.write_text(bad)
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 1
    assert p.stderr.endswith(f"refused: {name}: cannot add route 192.168.50.0/24: file exists\n"), p.stderr
    assert "10.9.8.1" not in lab.ip(a, "addr", "show", "dev", name).stdout  # walked back
    assert "192.168.60.0/24" not in lab.ip(a, "route").stdout
    lab.ping(a, "10.9.0.2")

    # the obstacle goes; the same file now applies whole
    lab.ip(a, "route", "del", "192.168.50.0/24", "dev", "lo")
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 0, p.stderr
    routes = lab.ip(a, "route", "show", "dev", name).stdout
    assert "192.168.50.0/24" in routes and "192.168.60.0/24" in routes

    # someone removes one of our routes by hand; a reload that drops it does not trip
    # over its absence, and one that keeps the other puts it back
    lab.ip(a, "route", "del", "192.168.50.0/24", "dev", name)
    lab.ip(a, "route", "del", "192.168.60.0/24", "dev", name)
    d.config.write_text(bad.replace("192.168.60.0/24, 192.168.50.0/24", "192.168.60.0/24"))
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 0, p.stderr
    assert "192.168.60.0/24" in lab.ip(a, "route", "show", "dev", name).stdout

    # and keys still rotate by reload
    new_key, new_pub = lab.keypair()
    key_a = enc[0].split("private_key_file: ")[1].split()[0]
    open(key_a, "w").write(open(new_key).read())
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 0 and "keys" in p.stdout, p.stderr


def test_two_configs_with_one_file_name_in_two_namespaces(lab, sites, tmp_path):
    a, b = sites
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    text_a = site(lab.name("tdt"), 1, "udp", listen=True, remote=True)
    text_b = site(lab.name("tdt"), 2, "udp", listen=True, remote=True)
    (tmp_path / "one" / "a.yaml").write_text(text_a)
    (tmp_path / "two" / "a.yaml").write_text(text_b)
    from tests.lab import Daemon
    first = Daemon(lab, a, tmp_path / "one" / "a.yaml", tmp_path / "one.log").wait_up()
    second = Daemon(lab, b, tmp_path / "two" / "a.yaml", tmp_path / "two.log")
    assert second.proc.wait(20) == 1
    assert (f"name 'a' is taken: tunneld pid {first.proc.pid} ({tmp_path / 'one' / 'a.yaml'}, "
            in second.log), second.log
    assert "give one of the configs another name" in second.log

    (tmp_path / "two" / "a.yaml").write_text("name: a-site-b\n" + text_b)
    Daemon(lab, b, tmp_path / "two" / "a.yaml", tmp_path / "two.log").wait_up()
    p = tunneld(lab, "status", "--json")
    assert p.returncode == 0, p.stderr
    assert sorted(s["name"] for s in json.loads(p.stdout)) == ["a", "a-site-b"]
    lab.ping(a, "10.9.0.2")


def test_status_lists_only_the_tunnels_the_caller_may_query(lab, tmp_path):
    """A tunnel of root's (socket 0600) and one of nobody's: nobody sees its own only."""
    require(os.geteuid() == 0 and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0,
            "this test needs root and setpriv")
    import shutil
    import tempfile

    from tunneld.service import control
    run = tempfile.mkdtemp(prefix="tunneld-public-")  # pytest's tmp_path is root-only
    os.chmod(run, 0o755)
    servers = []

    def serve(name: str, uid: int) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = control.socket_path(name, run)
        s.bind(path)
        os.chmod(path, 0o600)
        os.chown(path, uid, uid)
        s.listen(4)
        servers.append(s)

        def answer():
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                c.recv(256)
                c.sendall(json.dumps({"name": name, "running": False}).encode())
                c.close()
        threading.Thread(target=answer, daemon=True).start()

    serve("roots", 0)
    serve("nobodys", 65534)
    try:
        p = tunneld(lab, "status", "--json", user=65534, run=run)
        assert p.returncode == 0, p.stderr
        assert [s["name"] for s in json.loads(p.stdout)] == ["nobodys"]
        assert p.stderr == ""
        p = tunneld(lab, "status", "roots", user=65534, run=run)
        assert p.returncode == 3 and "permission denied" in p.stderr
        p = tunneld(lab, "status", "--json", run=run)  # root may query both
        assert sorted(s["name"] for s in json.loads(p.stdout)) == ["nobodys", "roots"]
    finally:
        for s in servers:
            s.close()
        shutil.rmtree(run, ignore_errors=True)


def test_status_is_sent_when_the_handshake_completes_not_at_the_next_tick(lab, sites, tmp_path):
    a, b = sites
    enc = keyed(lab)
    systemd = FakeSystemd(tmp_path / "notify")
    lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc[0]),
               env={"NOTIFY_SOCKET": str(systemd.path)})
    ready = systemd.read_until(lambda f: f.get("READY") == "1", 15)
    assert "no handshake yet" in ready["STATUS"]
    time.sleep(1)  # past the first periodic update: the next one is 10 s away
    systemd.messages.clear()
    started = time.monotonic()  # B initiates as it starts: the handshake is done within a second
    db = lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=True, encryption=enc[1]))
    fields = systemd.read_until(lambda f: "handshake" in f.get("STATUS", "") and "no handshake" not in f["STATUS"], 5)
    assert time.monotonic() - started < 5  # the periodic update is 9 s away
    assert "handshake 0 s ago" in fields["STATUS"], fields
    db.wait_log("handshake completed")


def test_log_level_on_the_command_line_overrides_the_config_also_after_a_reload(lab, sites):
    a, b = sites
    enc = keyed(lab)
    cfg = site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc[0])
    d = lab.daemon(a, cfg.replace("log_level: debug", "log_level: warning"),
                   command=[sys.executable, "-m", "tunneld", "--log-level", "info"]).wait_up()  # an info line
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 0, p.stderr
    d.wait_log("reloaded")  # an info line too: the override outlived the reload
    assert "DEBUG" not in d.log
    v = lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False, encryption=enc[1])
                   .replace("log_level: debug", "log_level: error"),
                   command=[sys.executable, "-m", "tunneld", "-v"]).wait_up()
    lab.wait_ping(a, "10.9.0.2")
    v.wait_log("DEBUG handshake: answered an initiation")
