"""A daemon that drops to run_as: NO_NEW_PRIVS set by tunneld itself (no
systemd here), and hooks that leave helpers running: the up hook as root, the
down hook as the run_as user; neither holds up start or stop, and what a helper
writes later is still logged.

    +----------------------+    veth underlay     +----------------------+
    | ns A: tunneld        | 10.77.0.1/24         | ns B: tunneld        |
    |  run_as nobody,      |----------------------|  tun 10.9.0.2/24     |
    |  hooks with helpers  |         10.77.0.2/24 |                      |
    +----------------------+                      +----------------------+
"""

import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.lab import Daemon
from tests.netns.test_netns_service import proc_status
from tests.netns.test_netns_tunnel import site, sites  # noqa: F401 (a fixture)



@pytest.fixture
def public():
    """A root-owned folder for the config that others may read (pytest's tmp_path is
    root-only), with w/ in it that nobody may write; the helpers' pids written there are
    killed at the end: they were started by our hooks, so they are ours to end."""
    path = Path(tempfile.mkdtemp(prefix="tunneld-run-as-"))
    path.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    (path / "w").mkdir()
    os.chown(path / "w", nobody.pw_uid, nobody.pw_gid)
    yield path
    for pidfile in (path / "w").glob("*.pid"):
        for pid in pidfile.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def test_no_new_privs_and_hooks_that_leave_helpers(lab, sites, public):
    a, b = sites
    up_pid, down_pid = public / "w/up.pid", public / "w/down.pid"
    cfg = public / "a.yaml"
    cfg.write_text(site(lab.name("tdt"), 1, "udp", listen=True, remote=True)
                   + "run_as: {user: nobody, group: nogroup}\n"
                   + "hooks:\n"
                   + "  up: ['(sleep 0.5; echo the up helper is still here; exec sleep 60) & echo $! > $PIDS/up.pid; "
                     "echo up started']\n"
                   + "  down: ['(exec sleep 60) & echo $! > $PIDS/down.pid; echo down started']\n")
    cfg.chmod(0o644)
    # PIDS in the environment: a path in the hook's text must be root's (tunneld/host/ownership.py), and w/ is nobody's
    d = Daemon(lab, a, cfg, lab.tmp / "a.log", env={"PIDS": str(public / "w")})
    d.wait_up()  # before the helper's 60 s are over
    lab.daemon(b, site(lab.name("tdt"), 2, "udp", listen=True, remote=False)).wait_up()
    st = proc_status(d.proc.pid)
    assert st["NoNewPrivs"] == "1" and st["Uid"].split() == ["65534"] * 4
    helper = proc_status(int(up_pid.read_text()))
    assert helper["Uid"].split()[0] == "0"  # the up hook ran as root; its helper is alive
    d.wait_log("up hook: the up helper is still here")  # written after the hook was done
    lab.ping(a, "10.9.0.2")
    assert d.stop() == 0  # the down hook's helper holds its output for 60 s: stop does not wait for it
    helper = proc_status(int(down_pid.read_text()))
    assert helper["Uid"].split()[0] == "65534" and helper["NoNewPrivs"] == "1" and helper["Name"] == "sleep"
    log = d.log
    assert "up hook: up started" in log and "down hook: down started" in log
    assert "Traceback" not in log and "ERROR" not in log
