"""The command line, without root: version, check, exit codes, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunneld import __version__

ROOT = Path(__file__).resolve().parents[1]


def tunneld(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=30)


def test_version():
    p = tunneld("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"tunneld {__version__}"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_bundled_configs_check(name):
    p = tunneld("check", "--config", str(ROOT / "config" / name))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{ROOT / 'config' / name}: ok (")


def test_check_bad_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "site-a.yaml"
    bad.write_text("interface: {mode: tun}\ntransport:\n  protocol: udp\n  remote: 10.0.0.1\nencryption: none\n")
    for args in (("check", "--config", str(bad)), ("--config", str(bad))):
        p = tunneld(*args)
        assert p.returncode == 2
        assert p.stderr == f"{bad}:4: transport.remote: expected host:port, got '10.0.0.1'\n"
        assert p.stdout == ""


def test_missing_config_file(tmp_path):
    p = tunneld("--config", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2
    assert p.stderr == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"


def test_usage_errors_exit_2():
    p = tunneld()
    assert p.returncode == 2
    assert "--config FILE is required" in p.stderr
    assert tunneld("check").returncode == 2
