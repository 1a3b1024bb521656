"""run_as corners (tunneld/host/privileges.py): uid 0 is refused as a config
mistake, whatever its name; the drop itself refuses it too and sets
NO_NEW_PRIVS (a started daemon's is checked in tests/netns/test_netns_run_as.py)."""

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import require
from tunneld import config
from tunneld.host import privileges

BASE = ("interface: {name: tdpriv0, mode: tun}\n"
        "transport: {protocol: udp, listen: '127.0.0.1:55999'}\n"
        "encryption: none\n")


def test_run_as_root_is_a_config_error_for_check_and_start(tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(BASE + "run_as: {user: root}\n")
    check = subprocess.run([sys.executable, "-m", "tunneld", "check", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 2 and check.stdout == ""
    assert check.stderr == (f"{cfg}: run_as.user: 'root' is uid 0, which keeps every capability: name an "
                            "unprivileged user (e.g. tunneld), or leave run_as out to stay root\n")
    # the daemon refuses before it opens anything; in a network namespace of its own all the same,
    # so that a regression cannot make a device on this machine
    require(os.geteuid() == 0, "this part needs root (unshare --net)")
    start = subprocess.run(["unshare", "--net", sys.executable, "-m", "tunneld", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
    assert start.returncode == 2 and start.stderr == check.stderr


def test_uid_0_under_another_name_is_refused(monkeypatch):
    real = pwd.getpwnam
    monkeypatch.setattr(pwd, "getpwnam", lambda name: real("root") if name == "toor" else real(name))
    cfg = config.parse(BASE + "run_as: {user: toor}\n", source="t.yaml")
    with pytest.raises(config.ConfigError) as e:
        config.refuse_root(cfg)
    assert str(e.value).startswith("t.yaml: run_as.user: 'toor' is uid 0")
    config.refuse_root(config.parse(BASE + "run_as: {user: nobody}\n"))  # an unprivileged user passes
    config.refuse_root(config.parse(BASE + "run_as: {user: no-such-user-here}\n"))  # start-up says so
    config.refuse_root(config.parse(BASE))


DROP = """
import sys
sys.path.insert(0, {root!r})
from tunneld.host import privileges
from tunneld.errors import StartupError
try:
    privileges.drop(0, 0, True)
except StartupError as e:
    print(e)
print(open("/proc/self/status").read())
"""


def test_drop_refuses_uid_0_before_changing_anything():
    """In a child process: a broken check would drop the test runner's own capabilities."""
    root = str(Path(__file__).resolve().parents[2])
    p = subprocess.run([sys.executable, "-c", DROP.format(root=root)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "run_as: uid 0 keeps every capability: name an unprivileged user"
    status = dict(line.split(":\t", 1) for line in lines[1:] if ":\t" in line)
    mine = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    assert status["CapBnd"] == mine["CapBnd"] and status["NoNewPrivs"] == mine["NoNewPrivs"]
