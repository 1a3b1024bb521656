"""The command line, without root: version, check, exit codes, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from tunneld import __version__

ROOT = Path(__file__).resolve().parents[2]


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


def test_check_takes_the_file_either_way(tmp_path):
    cfg = tmp_path / "paris.yaml"
    cfg.write_text("interface: {mode: tun}\ntransport: {protocol: udp, listen: '0.0.0.0:5000'}\nencryption: none\n")
    for args in (("check", str(cfg)), ("--config", str(cfg), "check"), ("check", "--config", str(cfg)),
                 ("check", "-c", str(cfg))):
        p = tunneld(*args)
        assert p.returncode == 0, (args, p.stderr)
        assert p.stdout.startswith(f"{cfg}: ok (tun over udp") and "name paris" in p.stdout
    p = tunneld("check", str(cfg), "--config", str(tmp_path / "other.yaml"))
    assert p.returncode == 2 and "give the config once" in p.stderr


def test_a_key_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "site.key").mkdir()
    cfg = tmp_path / "site.yaml"
    cfg.write_text("interface: {mode: tun}\ntransport: {protocol: udp, listen: '0.0.0.0:5000'}\n"
                   "encryption:\n  private_key_file: site.key\n"
                   "  peer_public_key: 'hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo='\n")
    p = tunneld("check", str(cfg))
    assert p.returncode == 2
    assert p.stderr == f"{cfg}:4: encryption.private_key_file: cannot read {tmp_path / 'site.key'}: is a directory\n"


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_genkey_warns_about_a_file_others_may_read_and_the_readme_way_works(command, tmp_path):
    """As `wg genkey` does; and with umask 077 (as the README writes it) the key
    is one tunneld then accepts."""
    out = tmp_path / "open.key"
    p = subprocess.run(f"umask 022; {sys.executable} -m tunneld {command} > {out}", shell=True,
                       capture_output=True, text=True)
    assert p.returncode == 0
    assert f"tunneld {command}: warning: writing a secret to a file that group or others may read" in p.stderr
    key = tmp_path / "site.key"
    p = subprocess.run(f"(umask 077; {sys.executable} -m tunneld {command} > {key})", shell=True,
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == ""
    assert key.stat().st_mode & 0o777 == 0o600
    cfg = tmp_path / "site.yaml"
    cfg.write_text("interface: {mode: tun}\ntransport: {protocol: udp, listen: '0.0.0.0:5000'}\n"
                   "encryption:\n  private_key_file: site.key\n"
                   "  peer_public_key: 'hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo='\n")
    assert tunneld("check", str(cfg)).returncode == 0
    p = subprocess.run([sys.executable, "-m", "tunneld", command], capture_output=True, text=True)  # a pipe: no warning
    assert p.returncode == 0 and p.stderr == ""


def test_the_readmes_key_commands_work_as_written(tmp_path):
    """Every README line that makes a key runs, as it stands, with `tunneld`
    on the PATH and /etc/tunneld standing for a folder of ours."""
    import re
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
             if "tunneld genkey" in line or "tunneld genpsk" in line or line.strip() == "umask 077"]
    assert any("genkey" in line for line in lines)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tunneld").write_text(f"#!/bin/sh\nexec {sys.executable} -m tunneld \"$@\"\n")
    (bin_dir / "tunneld").chmod(0o755)
    etc = tmp_path / "etc"
    etc.mkdir()
    script = "\n".join(line.replace("/etc/tunneld", str(etc)).replace("sudo ", "") for line in lines)
    p = subprocess.run(["sh", "-ec", script], cwd=etc, capture_output=True, text=True,
                       env={**__import__("os").environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert p.returncode == 0 and "warning" not in p.stderr, (script, p.stderr)
    keys = list(etc.glob("*.key")) + list(etc.glob("*.psk"))
    assert keys
    for key in keys:
        assert key.stat().st_mode & 0o077 == 0, f"{key.name} is readable by others after: {script}"
