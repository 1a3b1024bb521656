"""scripts/build-deb on this host: what the package holds and depends on, that
its bundled modules run on Debian's python3, and that lintian finds no error.
Installing, starting and purging it under systemd: tests/netns/test_package.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import require

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    require(shutil.which("dpkg-deb") is not None, "this test needs dpkg-deb")
    require(Path("/usr/bin/python3").exists(), "this test needs Debian's /usr/bin/python3")
    out = tmp_path_factory.mktemp("deb")
    p = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--python", sys.executable, "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    [deb] = out.glob("tunneld_*_*.deb")
    return deb


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_name_control_fields_and_dependencies(deb):
    from tunneld import __version__
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"tunneld_{__version__}_{arch}.deb"
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    minor = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[1])"],
                           capture_output=True, text=True).stdout.strip()
    # the bundled modules are built for one Python: the package says which
    assert f"python3 (>= 3.{minor}~)" in depends and f"python3 (<< 3.{int(minor) + 1})" in depends
    assert "python3-yaml (>= 6.0)" in depends and "adduser" in depends
    assert not any(d.startswith(("python3-cryptography", "python3-uvloop")) for d in depends)
    for script in ("postinst", "prerm", "postrm"):
        control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
        assert f"./{script}".encode() in control


def test_contents(deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    entries = {line.split()[-1].lstrip("."): line.split()[0] for line in listing.splitlines()}
    for path, mode in (("/usr/bin/tunneld", "-rwxr-xr-x"),
                       ("/lib/systemd/system/tunneld@.service", "-rw-r--r--"),
                       ("/lib/systemd/system/tunneld.target", "-rw-r--r--"),
                       ("/usr/share/man/man8/tunneld.8.gz", "-rw-r--r--"),
                       ("/usr/share/man/man5/tunneld.yaml.5.gz", "-rw-r--r--"),
                       ("/usr/share/bash-completion/completions/tunneld", "-rw-r--r--"),
                       ("/usr/share/doc/tunneld/copyright", "-rw-r--r--"),
                       ("/usr/share/doc/tunneld/changelog.gz", "-rw-r--r--"),
                       ("/usr/share/doc/tunneld/examples/site-a.yaml", "-rw-r--r--"),
                       ("/usr/lib/tunneld/tunneld/cli.py", "-rw-r--r--")):
        assert entries.get(path) == mode, f"{path}: {entries.get(path)}"
    assert all(" root/root " in line for line in listing.splitlines())
    assert not [p for p in entries if "__pycache__" in p or p.endswith(".pyc")]  # postinst compiles
    assert not [p for p in entries if p.startswith("/etc/")]  # /etc/tunneld is made by postinst, root:tunneld
    bundled = {m.group(1): m.group(2) for p in entries
               if (m := re.fullmatch(r"/usr/lib/tunneld/([a-z_]+)-([0-9.]+)\.dist-info/", p))}
    assert set(bundled) == {"cryptography", "cffi", "uvloop"}
    assert int(bundled["cryptography"].split(".")[0]) >= 47


def test_the_bundle_runs_on_debians_python(deb, tmp_path):
    """The packaged tree, on /usr/bin/python3 alone (-I: no venv, no PYTHONPATH), makes
    a key, and seals with the encrypt_into the data path uses."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    unit = (tmp_path / "lib/systemd/system/tunneld@.service").read_text()
    assert "ExecStart=/usr/bin/tunneld --config" in unit and "/usr/local" not in unit
    launcher = (tmp_path / "usr/bin/tunneld").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n") and 'sys.path.insert(0, "/usr/lib/tunneld")' in launcher
    lib = tmp_path / "usr/lib/tunneld"
    code = (f"import sys; sys.path.insert(0, {str(lib)!r})\n"
            "import tunneld, cryptography, uvloop\n"
            f"assert tunneld.__file__.startswith({str(lib)!r}), tunneld.__file__\n"
            f"assert cryptography.__file__.startswith({str(lib)!r}), cryptography.__file__\n"
            "from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305\n"
            "buf = bytearray(32)\n"
            "ChaCha20Poly1305(bytes(32)).encrypt_into(bytes(12), bytes(16), None, buf)\n"
            "from tunneld.cli import main\n"
            "sys.exit(main(['genkey']))\n")
    p = subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=\n", p.stdout)


def test_lintian_finds_no_error(deb):
    require(shutil.which("lintian") is not None, "this test needs lintian (scripts/test installs it)")
    p = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True, text=True, timeout=300)
    errors = [line for line in p.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors)
    assert p.returncode == 0, p.stdout + p.stderr
