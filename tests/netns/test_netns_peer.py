"""A tunnel that finds its peer, in namespaces: a UDP remote given by name is
followed (the responder comes back on another address, a name that resolves
only after start), and the peer's comings and goings run their hooks.

The initiator A knows B by the name peer-b.tunneld.test, from A's own hosts
file: `ip netns exec` bind-mounts /etc/netns/A/hosts over /etc/hosts for the
daemon, and glibc reads it at every lookup, so rewriting it in place repoints
the name. B listens and knows no remote: after a restart it cannot reach A
first.

    +-----------------------------+    veth underlay    +---------------------------+
    | ns A: tunneld (initiator)   | 10.77.0.1/24        | ns B: tunneld (responder) |
    |  remote peer-b.tunneld.test |---------------------|  listen 0.0.0.0:55555     |
    |  tun 10.9.0.1/24            |   10.77.0.2/24, later .3 |  tun 10.9.0.2/24     |
    +-----------------------------+                     +---------------------------+
"""

import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.lab import wait_for
from tests.netns.test_netns_service import FakeSystemd
from tests.netns.test_netns_tunnel import keyed, site

NAME = "peer-b.tunneld.test"  # RFC 6761: never a real name


@pytest.fixture
def sites(lab):
    a, b = lab.ns(), lab.ns()
    veth = lab.veth(a, "10.77.0.1/24", b, "10.77.0.2/24")
    etc = Path("/etc/netns") / a
    etc.mkdir(parents=True)
    # lookups of names not in hosts go to a loopback server that is not there: a fast failure,
    # no packet leaves the namespace
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    try:
        yield a, b, veth, etc / "hosts"
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def point(hosts: Path, address: str | None) -> None:
    """Repoint the name, writing the file in place (the bind mount holds its inode)."""
    with open(hosts, "r+") as f:
        f.truncate()
        f.write("127.0.0.1 localhost\n" + (f"{address} {NAME}\n" if address else ""))


def initiator(lab, enc: str, extra: str = "") -> str:
    text = site(lab.name("tdt"), 1, "udp", listen=False, remote=False, encryption=enc)
    return text.replace("  protocol: udp\n", f'  protocol: udp\n  remote: "{NAME}:55555"\n') + extra


def responder(lab, enc: str) -> str:
    return site(lab.name("tdt"), 2, "udp", listen=True, remote=False, encryption=enc)


def test_the_responder_comes_back_on_another_address_and_the_name_follows(lab, sites):
    a, b, (_, vb), hosts = sites
    enc = keyed(lab)
    point(hosts, "10.77.0.2")
    da = lab.daemon(a, initiator(lab, enc[0])).wait_up()
    db = lab.daemon(b, responder(lab, enc[1])).wait_up()
    lab.wait_ping(a, "10.9.0.2")
    da.wait_log(f"{NAME}:55555 resolves to ")

    assert db.stop(signal.SIGKILL) == -signal.SIGKILL  # gone without a word, as a crashed or rebooted host
    lab.ip(b, "addr", "del", "10.77.0.2/24", "dev", vb)
    lab.ip(b, "addr", "add", "10.77.0.3/24", "dev", vb)
    point(hosts, "10.77.0.3")
    db = lab.daemon(b, responder(lab, enc[1])).wait_up()
    moved = time.monotonic()
    # pings keep coming (the tunnel's data goes unanswered, so a handshake starts and goes unanswered)
    pinger = lab.spawn(a, "ping", "-i", "0.5", "-W", "1", "10.9.0.2")
    wait_for(lambda: lab.ping(a, "10.9.0.2", count=1, check=False).returncode == 0, 30,
             what="a ping after the responder moved")
    took = time.monotonic() - moved
    pinger.send_signal(signal.SIGINT)
    pinger.wait(5)
    assert took < 30, took
    assert f"{NAME}:55555 now resolves to 10.77.0.3:55555: sending to 10.77.0.3:55555 instead of 10.77.0.2:55555" in da.log
    assert da.log.count("now resolves to") == 1  # each change logged once
    assert "Traceback" not in da.log + db.log


def test_a_name_that_resolves_only_after_start(lab, sites, tmp_path):
    a, b, _, hosts = sites
    enc = keyed(lab)
    systemd = FakeSystemd(tmp_path / "notify")
    db = lab.daemon(b, responder(lab, enc[1])).wait_up()
    da = lab.daemon(a, initiator(lab, enc[0]), env={"NOTIFY_SOCKET": str(systemd.path)})
    ready = systemd.read_until(lambda f: f.get("READY") == "1", 15)
    started = time.monotonic()
    assert ready["STATUS"].endswith(f"up, resolving {NAME}, no handshake yet"), ready
    assert da.proc.poll() is None
    da.wait_log(f"cannot resolve {NAME}:55555")
    assert lab.ping(a, "10.9.0.2", count=1, check=False).returncode != 0
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    point(hosts, "10.77.0.2")
    lab.wait_ping(a, "10.9.0.2", timeout=45)  # the backoff reaches 16 s by then, then a handshake
    assert da.log.count(f"cannot resolve {NAME}:55555") == 1  # the same reason each time: said once
    assert f"{NAME}:55555 resolves to 10.77.0.2:55555" in da.log
    systemd.read_until(lambda f: f"peer 10.77.0.2:55555 up" in f.get("STATUS", ""), 15)
    assert da.stop() == 0 and "Traceback" not in da.log + db.log


def test_the_peer_killed_runs_peer_down_and_back_runs_peer_up(lab, sites):
    a, b, _, _ = sites
    enc = keyed(lab)
    marks = lab.tmp / "marks"
    marks.mkdir()
    hooks = (f"hooks:\n"
             f"  peer_up: ['env | grep ^TUNNELD_ | sort > {marks}/up.$(date +%s%N)']\n"
             f"  peer_down: ['env | grep ^TUNNELD_ | sort > {marks}/down.$(date +%s%N)']\n"
             f"peer_timeout: 10\n")
    # A initiates and keeps the peer's NAT open with keepalives, so silence means gone
    text_a = site(lab.name("tdt"), 1, "udp", listen=True, remote=True, encryption=enc[0])
    da = lab.daemon(a, text_a.replace("  protocol: udp\n", "  protocol: udp\n  keepalive: 2\n") + hooks).wait_up()
    text_b = site(lab.name("tdt"), 2, "udp", listen=True, remote=True, encryption=enc[1])
    text_b = text_b.replace("  protocol: udp\n", "  protocol: udp\n  keepalive: 2\n")
    db = lab.daemon(b, text_b).wait_up()
    lab.wait_ping(a, "10.9.0.2")

    def runs(kind: str) -> list[dict]:
        return [dict(line.split("=", 1) for line in p.read_text().splitlines())
                for p in sorted(marks.glob(f"{kind}.*")) if p.read_text()]

    wait_for(lambda: runs("up"), 10, what="the peer_up hook")
    up = runs("up")[0]
    assert up["TUNNELD_EVENT"] == "peer_up" and up["TUNNELD_PEER"] == "10.77.0.2:55555"
    assert up["TUNNELD_TRANSPORT"] == "udp" and up["TUNNELD_INTERFACE"] == da.config.read_text().split("name: ")[1].split()[0]
    assert runs("down") == []

    assert db.stop(signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()
    wait_for(lambda: runs("down"), 30, what="the peer_down hook")
    assert time.monotonic() - killed < 10 + 5  # peer_timeout, with a second or two of slack
    down = runs("down")[0]
    assert down["TUNNELD_PEER"] == "10.77.0.2:55555" and down["TUNNELD_REASON"] == "nothing from it for 10 s"
    assert "is down: nothing from it for 10 s" in da.log

    db = lab.daemon(b, text_b).wait_up()  # it initiates at start (keepalive): A hears it at once
    wait_for(lambda: len(runs("up")) == 2, 20, what="the second peer_up hook")
    lab.wait_ping(a, "10.9.0.2")
    assert len(runs("down")) == 1
    assert da.stop() == 0 and "Traceback" not in da.log
