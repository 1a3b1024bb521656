"""Config refusals on a real start and a real reload, in a namespace: a root
start refuses a config or key file another user could change (one line, exit 2,
no device made); a reload of a value YAML types oddly (an impossible date, an
integer of 5,000 digits), or of a config that became writable by others, is
refused over the control socket with the reason, and the tunnel runs on.

    +----------------------+
    | ns A: tunneld        |  (no peer needed: nothing here gets as far as traffic)
    |  tun 10.9.0.1/24     |
    +----------------------+
"""

import os
import subprocess
import sys

import pytest

from tests.netns.test_netns_tunnel import keyed, site

RULE = ("started as root, tunneld takes its config, hooks and keys only from files and folders that no one "
        "but root can change")


def tunneld(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=60,
                          cwd="/", env={**os.environ, "RUNTIME_DIRECTORY": str(lab.tmp / "run")})


def start(lab, ns: str, text: str, prepare=None):
    """Start tunneld in `ns` on a config; (exit code or None if still running, stderr, device name)."""
    name = lab.name("tdt")
    cfg = lab.config(site(name, 1, "udp", listen=True, remote=False) if text is None else text.format(name=name))
    if prepare:
        prepare(cfg)
    p = lab.spawn(ns, sys.executable, "-m", "tunneld", "--config", str(cfg), stderr=cfg.with_suffix(".log"))
    try:
        code = p.wait(20)
    except subprocess.TimeoutExpired:
        code = None
    return code, cfg.with_suffix(".log").read_text(), name, cfg


def test_a_root_start_refuses_a_config_others_can_write_and_makes_no_device(lab):
    a = lab.ns()
    code, err, name, cfg = start(lab, a, site("{name}", 1, "udp", listen=True, remote=False),
                                 prepare=lambda cfg: cfg.chmod(0o664))
    assert code == 2, err
    assert err == f"{cfg}: {cfg} is writable by group root (chmod g-w {cfg}): {RULE}\n"
    assert lab.ip(a, "link", "show", name, check=False).returncode != 0


def test_a_root_start_refuses_a_key_its_run_as_user_owns(lab):
    a = lab.ns()
    enc = keyed(lab)[0]
    key = enc.split("private_key_file: ")[1].split()[0]
    os.chown(key, 65534, 65534)
    code, err, name, cfg = start(lab, a, site("{name}", 1, "udp", listen=True, remote=False, encryption=enc)
                                 + "run_as: {{user: nobody, group: nogroup}}\n")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{cfg}:")
    assert f"encryption.private_key_file: {key} belongs to user nobody, not root (chown root {key})" in err
    assert lab.ip(a, "link", "show", name, check=False).returncode != 0


@pytest.mark.parametrize("change, reason", [
    (lambda text: text.replace("log_level: debug", "log_level: 2024-02-30"),
     "log_level: expected one of debug | info | warning | error, got an unreadable date or time '2024-02-30'"),
    (lambda text: "name: 2001-13-45\n" + text,
     "name: expected a string, got an unreadable date or time '2001-13-45' (quote it: "),
    (lambda text: text.replace("  mode: tun\n", "  mode: tun\n  mtu: " + "9" * 5000 + "\n"),
     "interface.mtu: expected an integer, got an oversized integer '99999"),
], ids=["log_level date", "name date", "big int"])
def test_a_reload_answers_with_the_reason_for_a_yaml_typed_value(lab, change, reason):
    a = lab.ns()
    text = site(lab.name("tdt"), 1, "udp", listen=True, remote=False)
    d = lab.daemon(a, text).wait_up()
    d.config.write_text(change(text))
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"tunneld reload: {d.config.stem}: refused: {d.config}:")
    assert reason in p.stderr, p.stderr
    assert d.proc.poll() is None and "Traceback" not in d.log
    d.config.write_text(text)  # and the next good reload goes through
    assert tunneld(lab, "reload", d.config.stem).returncode == 0
    assert d.stop() == 0


def test_a_reload_as_root_refuses_a_config_others_can_now_write(lab):
    a = lab.ns()
    d = lab.daemon(a, site(lab.name("tdt"), 1, "udp", listen=True, remote=False)).wait_up()
    d.config.chmod(0o666)
    p = tunneld(lab, "reload", d.config.stem)
    assert p.returncode == 1
    assert p.stderr == (f"tunneld reload: {d.config.stem}: refused: {d.config}: {d.config} is writable by group root "
                        f"and others (chmod go-w {d.config}): {RULE}\n")
    assert d.stop() == 0
