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
def test_bundled_configs_check(name, tmp_path):
    """Each bundled config is valid once its key files exist (as scripts/demo makes them)."""
    cfg = tmp_path / name
    cfg.write_text((ROOT / "config" / name).read_text())
    for line in cfg.read_text().splitlines():
        if "_key_file:" in line or "preshared_key_file:" in line:
            key = tmp_path / line.split(":", 1)[1].split("#")[0].strip()
            key.touch(mode=0o600)
            key.write_text(tunneld("genkey").stdout)
    p = tunneld("check", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{cfg}: ok (")


def test_genkey_pubkey_genpsk():
    import base64
    key = tunneld("genkey").stdout
    raw = base64.b64decode(key)
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40
    pub = subprocess.run([sys.executable, "-m", "tunneld", "pubkey"], input=key, capture_output=True, text=True)
    assert pub.returncode == 0 and len(base64.b64decode(pub.stdout)) == 32
    assert len(base64.b64decode(tunneld("genpsk").stdout)) == 32
    bad = subprocess.run([sys.executable, "-m", "tunneld", "pubkey"], input="nope", capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr == "tunneld pubkey: stdin is not a base64 private key of 32 bytes\n"


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


def test_status_of_stopped_instances(tmp_path):
    import socket as _socket
    env = {**__import__("os").environ, "RUNTIME_DIRECTORY": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "tunneld", "status", "paris"], capture_output=True, text=True, env=env)
    assert p.returncode == 3 and p.stderr == "tunneld status: paris: not running\n"
    stale = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "london.sock"))  # bound, never listening: what a stopped daemon leaves
    stale.close()
    p = subprocess.run([sys.executable, "-m", "tunneld", "status"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stdout == "london: not running\n"
    p = subprocess.run([sys.executable, "-m", "tunneld", "status", "london"], capture_output=True, text=True, env=env)
    assert p.returncode == 3 and p.stderr == "tunneld status: london: not running\n"
