"""As root, tunneld refuses a config, a file a hook names or a key file that
anyone but root could change: one owned by another user, writable by a group or
others, or in a folder (up to /) that is. `tunneld check` says so in one line and
exits 2, as a start does (tests/netns/test_netns_config.py). The run_as user reads its
keys through its group (0640 root:GROUP). Not as root, none of this applies.

Each case builds its files in pytest's tmp_path (under /tmp/pytest-of-root, 0700),
so the folders above are root's, and /tmp, writable by all, is sticky."""

import base64
import grp
import os
import subprocess
import sys

import pytest

from tests.lab import require
from tunneld.host import ownership

NOBODY = 65534
NOGROUP = grp.getgrnam("nogroup").gr_gid if "nogroup" in {g.gr_name for g in grp.getgrall()} else 65534
RULE = ("started as root, tunneld takes its config, hooks and keys only from files and folders that no one "
        "but root can change")
PUB = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
PLAIN = "interface: {mode: tun}\ntransport: {protocol: udp, listen: '0.0.0.0:5000'}\nencryption: none\n"


@pytest.fixture(autouse=True)
def _root():
    require(os.geteuid() == 0, "these tests need root: only a root start checks who owns what")


def check(cfg, user: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tunneld", "check", str(cfg)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd="/")


def site(tmp_path, text: str = PLAIN, mode: int = 0o755):
    """tmp_path/etc/site.yaml, root's, 0644, in a folder of `mode`."""
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    etc.chmod(mode)
    cfg = etc / "site.yaml"
    cfg.write_text(text)
    cfg.chmod(0o644)
    return cfg


def refused(p: subprocess.CompletedProcess, where: str, reason: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr == f"{where}: {reason}: {RULE}\n", p.stderr


def test_a_root_owned_0644_config_is_accepted(tmp_path):
    p = check(site(tmp_path))
    assert p.returncode == 0 and p.stderr == "", p.stderr


@pytest.mark.parametrize("mode, who, bits", [(0o664, "group root", "g"), (0o646, "others", "o"),
                                             (0o666, "group root and others", "go")])
def test_a_config_others_can_write_is_refused(tmp_path, mode, who, bits):
    cfg = site(tmp_path)
    cfg.chmod(mode)
    refused(check(cfg), str(cfg), f"{cfg} is writable by {who} (chmod {bits}-w {cfg})")


def test_a_config_owned_by_another_user_is_refused(tmp_path):
    cfg = site(tmp_path)
    os.chown(cfg, NOBODY, NOGROUP)
    refused(check(cfg), str(cfg), f"{cfg} belongs to user nobody, not root (chown root {cfg})")


@pytest.mark.parametrize("change", ["group-writable", "world-writable", "owned by nobody"])
def test_a_folder_above_the_config_is_held_to_it_too(tmp_path, change):
    cfg = site(tmp_path)
    folder = tmp_path  # two levels up: every folder counts, not only the config's own
    if change == "group-writable":
        folder.chmod(0o770)
        reason = f"{folder} is writable by group root (chmod g-w {folder})"
    elif change == "world-writable":
        folder.chmod(0o757)
        reason = f"{folder} is writable by others (chmod o-w {folder})"
    else:
        os.chown(folder, NOBODY, NOGROUP)
        reason = f"{folder} belongs to user nobody, not root (chown root {folder})"
    refused(check(cfg), str(cfg), reason)


def test_a_sticky_folder_like_tmp_is_fine_with_roots_entries_in_it_and_nobody_elses(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cfg = site(shared)
    assert check(cfg).returncode == 0
    os.chown(cfg.parent, NOBODY, NOGROUP)  # nobody's folder in the sticky one: theirs to swap
    refused(check(cfg), str(cfg), f"{cfg.parent} belongs to user nobody, not root (chown root {cfg.parent})")
    shared.chmod(0o777)  # without the sticky bit anyone may rename anything in it
    os.chown(cfg.parent, 0, 0)
    refused(check(cfg), str(cfg), f"{shared} is writable by group root and others (chmod go-w {shared})")


def test_symlinks_are_followed_and_the_links_own_folder_counts(tmp_path):
    cfg = site(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOGROUP)
    target = theirs / "real.yaml"
    target.write_text(PLAIN)
    link = cfg.parent / "link.yaml"
    link.symlink_to(target)
    refused(check(link), str(link), f"{theirs} belongs to user nobody, not root (chown root {theirs})")
    link.unlink()
    link.symlink_to(cfg)
    assert check(link).returncode == 0
    os.lchown(link, NOBODY, NOGROUP)
    refused(check(link), str(link), f"{link} belongs to user nobody, not root (chown root {link})")


@pytest.mark.parametrize("hook", ["{script}", "sh {script} >/dev/null", "FOO=1 exec {script} --x=1"])
@pytest.mark.parametrize("change", ["group-writable", "owned by nobody", "folder world-writable"])
def test_a_hook_names_a_file_others_can_change(tmp_path, hook, change):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    script = hooks / "up.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    script.chmod(0o755)
    line = hook.format(script=script)
    cfg = site(tmp_path, PLAIN + f"hooks: {{down: ['true'], up: ['true', '{line}']}}\n")
    assert check(cfg).returncode == 0, check(cfg).stderr
    if change == "group-writable":
        script.chmod(0o775)
        reason = f"{script} is writable by group root (chmod g-w {script})"
    elif change == "owned by nobody":
        os.chown(script, NOBODY, NOGROUP)
        reason = f"{script} belongs to user nobody, not root (chown root {script})"
    else:
        hooks.chmod(0o757)
        reason = f"{hooks} is writable by others (chmod o-w {hooks})"
    refused(check(cfg), f"{cfg}:4", f"hooks.up[1]: {reason}")


def test_down_hooks_count_too_and_devices_and_missing_files_are_not_judged(tmp_path):
    script = tmp_path / "down.sh"
    script.write_text("true\n")
    cfg = site(tmp_path, PLAIN + f"hooks:\n  up: ['echo > /dev/null', 'date >> {tmp_path}/not-yet.log']\n"
                                 f"  down: ['{script}']\n")
    assert check(cfg).returncode == 0
    os.chown(script, NOBODY, NOGROUP)
    refused(check(cfg), f"{cfg}:6", f"hooks.down[0]: {script} belongs to user nobody, not root (chown root {script})")


def keyed(tmp_path, run_as: str = ""):
    key = tmp_path / "etc" / "site.key"
    (tmp_path / "etc").mkdir(exist_ok=True)
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    text = PLAIN.replace("encryption: none\n", f"encryption: {{private_key_file: site.key, peer_public_key: '{PUB}'}}\n")
    return site(tmp_path, text + run_as), key


def test_a_key_file_another_user_could_write_is_refused(tmp_path):
    cfg, key = keyed(tmp_path, "run_as: {user: nobody, group: nogroup}\n")
    assert check(cfg).returncode == 0
    os.chown(key, NOBODY, NOGROUP)  # the run_as user's own: it could put a key of its choosing there
    refused(check(cfg), f"{cfg}:3",
            f"encryption.private_key_file: {key} belongs to user nobody, not root (chown root {key})")
    os.chown(key, 0, NOGROUP)
    key.chmod(0o660)
    refused(check(cfg), f"{cfg}:3", f"encryption.private_key_file: {key} is writable by group nogroup (chmod g-w {key})")


def test_run_as_reads_its_keys_through_its_group_and_no_other_group(tmp_path):
    cfg, key = keyed(tmp_path, "run_as: {user: nobody, group: nogroup}\n")
    os.chown(key, 0, NOGROUP)
    key.chmod(0o640)
    p = check(cfg)
    assert p.returncode == 0, p.stderr
    os.chown(key, 0, 0)
    p = check(cfg)
    assert p.returncode == 2 and f"{key} is readable by others or a group other than run_as's (chmod 640 {key}; " \
                                  f"chgrp nogroup {key})" in p.stderr, p.stderr
    cfg.write_text(cfg.read_text().replace("run_as: {user: nobody, group: nogroup}\n", ""))  # no run_as: 0600
    p = check(cfg)
    assert p.returncode == 2 and f"{key} is readable by group or others (chmod 600 {key})" in p.stderr


def test_not_as_root_a_user_runs_a_config_of_its_own(tmp_path):
    """A user's own tunnel (a persistent device made for it with mktun): nothing
    here is root's, and nothing needs to be; the check is a root start's."""
    require(subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0, "this test needs setpriv")
    import tempfile
    home = tempfile.mkdtemp(prefix="tunneld-user-")  # tmp_path is root-only
    try:
        os.chmod(home, 0o755)
        cfg = os.path.join(home, "mine.yaml")
        with open(cfg, "w") as f:
            f.write(PLAIN)
        os.chown(cfg, NOBODY, NOGROUP)
        os.chmod(cfg, 0o664)
        p = check(cfg, user=NOBODY)
        assert p.returncode == 0, p.stderr
        assert check(cfg).returncode == 2  # and root would not take it
    finally:
        import shutil
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("command, paths", [
    ("/etc/tunneld/up.sh", ["/etc/tunneld/up.sh"]),
    ("sh /etc/tunneld/up.sh > /var/log/up.log 2>&1", ["/etc/tunneld/up.sh", "/var/log/up.log"]),
    ("FOO=/opt/x ip -batch /etc/tunneld/routes", ["/opt/x", "/etc/tunneld/routes"]),
    ("ip route add 10.0.0.0/8 dev $TUNNELD_INTERFACE", []),
    ("logger 'tunnel up'; /usr/bin/true|/bin/cat", ["/usr/bin/true", "/bin/cat"]),
    ("cmd --file=/a/../b/./c", ["/b/c"]),
    ("./relative.sh ~/x $HOME/y", []),
])
def test_the_files_a_hook_names(command, paths):
    assert ownership.named_files(command) == paths


def test_quote_keeps_odd_names_on_one_pasteable_line():
    assert ownership.quote("/etc/tunneld/a.yaml") == "/etc/tunneld/a.yaml"
    assert ownership.quote("/tmp/a b\nc'd") == "'/tmp/a b\\nc'\\''d'"
