"""What root acts on must be root's alone.

Started as root, tunneld reads its config, runs its hooks and takes its keys,
and the config says which user it drops to. Whoever can change one of those
files, or a folder above one (and so rename it away and put another in its
place), is root at the next start. So a config, the files its hooks name and
its key files, and every folder above them up to /, must belong to root and be
writable by no group and no one else, like sshd's StrictModes and sudo's check
of sudoers. The one exception is a folder with the sticky bit (/tmp): there
nobody can rename or remove what is not theirs, so what matters is that the
entry below it is root's. The run_as user gets only read access, through its
group (keys 0640 root:tunneld).

`named_files(command)` is pure; `why_unsafe(path)` stats the path.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat

# an absolute path in a shell command: a '/' that starts a word (or follows '=',
# ':' or a redirection), up to whatever ends a word for the shell
_PATH = re.compile(r"(?:^|(?<=[\s'\"=:<>;|&(`]))/[^\s'\"<>;|&()`$]*")


def named_files(command: str) -> list[str]:
    """The absolute paths a hook command names, in order, each once: its program
    (/etc/tunneld/up.sh), a script handed to a shell (sh /etc/tunneld/up.sh), a
    file it reads (ip -batch /etc/tunneld/routes). Paths it builds at run time
    ($DIR/up.sh) and programs found through PATH are not seen."""
    out: list[str] = []
    for match in _PATH.finditer(command):
        path = os.path.normpath(match.group())
        if path not in out:
            out.append(path)
    return out


def why_unsafe(path: str) -> str | None:
    """None when only root can change `path` or put another file in its place;
    otherwise the first reason, from / down, with the command that fixes it.
    Symbolic links are followed: the link and the folders it sits in are checked,
    and so are its target and the folders above that. Only a file or folder is
    judged: a path that cannot be looked at, or that ends in something else (a
    FIFO, a device such as /dev/null), is left to the reader to refuse, or is
    nothing a hook could run."""
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    for chain in (_chain(absolute), _chain(real) if real != absolute else []):
        for entry in chain:
            try:
                st = os.lstat(entry)
            except OSError:
                return None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                return None
            reason = _entry_reason(entry, st)
            if reason is not None:
                return reason
    return None


def _chain(absolute: str) -> list[str]:
    """/, /etc, /etc/tunneld, /etc/tunneld/london.yaml: every entry a path goes through."""
    parts = [p for p in absolute.split("/") if p]
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _entry_reason(entry: str, st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"{quote(entry)} belongs to {_user(st.st_uid)}, not root (chown root {quote(entry)})"
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode means nothing; only its owner could change it
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None  # a sticky folder: only an entry's owner can rename or remove it
    who = []
    if st.st_mode & stat.S_IWGRP:
        who.append(f"group {_group(st.st_gid)}")
    if st.st_mode & stat.S_IWOTH:
        who.append("others")
    if who:
        bits = ("g" if st.st_mode & stat.S_IWGRP else "") + ("o" if st.st_mode & stat.S_IWOTH else "")
        return f"{quote(entry)} is writable by {' and '.join(who)} (chmod {bits}-w {quote(entry)})"
    return None


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def quote(path: str) -> str:
    """A path as it can be pasted into a shell, on one line (repr-escaped when odd)."""
    if re.fullmatch(r"[\w./+@%,:-]+", path):
        return path
    return "'" + path.encode("unicode_escape").decode("ascii").replace("'", "'\\''") + "'"
