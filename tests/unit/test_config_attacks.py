"""Configs and keys that would hang, exhaust or crash a naive loader: each is one
line and exit 2 from `tunneld check` and from a start, and no traceback."""

import base64
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.config import MAX_CONFIG_BYTES, ConfigError, is_low_order, load, parse

P = 2**255 - 19
# Curve25519's points of small order, as X25519 public keys (RFC 7748 section 5
# leaves them to the caller; the kernel's and libsodium's blocklists name these)
LOW_ORDER_U = {
    "zero": 0,
    "one": 1,
    "order 8 (a)": 325606250916557431795983626356110631294008115727848805560023387167927233504,
    "order 8 (b)": 39382357235489614581723060781553021112529911719440698176882885853963445705823,
    "p-1": P - 1,
    "p": P,
    "p+1": P + 1,
}
LOW_ORDER = {name: u.to_bytes(32, "little") for name, u in LOW_ORDER_U.items()}
LOW_ORDER.update({f"{name}, high bit set": (u | 1 << 255).to_bytes(32, "little") for name, u in LOW_ORDER_U.items()})

SITE = """\
interface: {{mode: tun, addresses: [10.9.0.1/24]}}
transport: {{protocol: udp, listen: "127.0.0.1:55555"}}
encryption:
  private_key_file: site.key
  peer_public_key: "{peer}"
"""


def tunneld(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunneld", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def site(tmp_path):
    key = tmp_path / "site.key"
    key.touch(mode=0o600)
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return tmp_path


@pytest.mark.parametrize("name", sorted(LOW_ORDER))
def test_low_order_peer_keys_are_refused(name):
    assert is_low_order(LOW_ORDER[name])
    text = SITE.format(peer=base64.b64encode(LOW_ORDER[name]).decode())
    with pytest.raises(ConfigError) as e:
        parse(text, "site.yaml")
    assert str(e.value).startswith("site.yaml:5: encryption.peer_public_key: ")
    assert "low-order point" in str(e.value)


@given(st.binary(min_size=32, max_size=32))
def test_usable_keys_are_not_low_order(raw):
    from tunneld.wg.primitives import generate_private, public_of
    assert not is_low_order(public_of(generate_private(raw)))


@pytest.mark.parametrize("command", [("check", "--config"), ("--config",)], ids=["check", "start"])
@pytest.mark.parametrize("name", ["zero", "one", "order 8 (a)", "p-1"])
def test_low_order_key_exits_2_from_check_and_start(site, command, name):
    peer = base64.b64encode(LOW_ORDER[name]).decode()
    cfg = site / "site.yaml"
    cfg.write_text(SITE.format(peer=peer))
    p = tunneld(*command, str(cfg))
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"{cfg}:5: encryption.peer_public_key: '{peer}' is a low-order point: no shared secret " \
                       "can come of it (a broken or hostile key)\n"


def test_dev_zero_is_refused_at_once():
    p = tunneld("check", "--config", "/dev/zero", timeout=10)
    assert (p.returncode, p.stderr) == (2, "/dev/zero: cannot read: not a regular file\n")


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "site.yaml"
    os.mkfifo(fifo)
    p = tunneld("check", "--config", str(fifo), timeout=10)
    assert (p.returncode, p.stderr) == (2, f"{fifo}: cannot read: not a regular file\n")


def test_directory_and_oversize_file(tmp_path):
    p = tunneld("check", "--config", str(tmp_path))
    assert (p.returncode, p.stderr) == (2, f"{tmp_path}: cannot read: is a directory\n")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    p = tunneld("check", "--config", str(big))
    assert (p.returncode, p.stderr) == (2, f"{big}: cannot read: larger than {MAX_CONFIG_BYTES} bytes\n")


def test_key_file_that_is_a_fifo_or_directory(site):
    cfg = site / "site.yaml"
    cfg.write_text(SITE.format(peer=base64.b64encode(os.urandom(32)).decode()).replace("site.key", "fifo.key"))
    os.mkfifo(site / "fifo.key", 0o600)
    with pytest.raises(ConfigError) as e:
        load(str(cfg))
    assert str(e.value) == f"{cfg}:4: encryption.private_key_file: cannot read {site / 'fifo.key'}: not a regular file"
    cfg.write_text(cfg.read_text().replace("fifo.key", "keys"))
    (site / "keys").mkdir()
    with pytest.raises(ConfigError) as e:
        load(str(cfg))
    assert str(e.value) == f"{cfg}:4: encryption.private_key_file: cannot read {site / 'keys'}: is a directory"


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("case,text,line,message", [
    ("self-referencing alias", "a: &x [*x]\n", 1, "YAML anchors and aliases (&name, *name) are not supported"),
    ("billion laughs", BILLION_LAUGHS, 1, "YAML anchors and aliases (&name, *name) are not supported"),
    ("an alias alone", "interface: {mode: tun}\ntransport: *t\n", 2, "YAML anchors and aliases (&name, *name) are not supported"),
    ("deep nesting", "a: " + "[" * 100_000 + "]" * 100_000 + "\n", 1, "nested deeper than 32 levels"),
    ("deep mappings", "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 60)), 32, "nested deeper than 32 levels"),
])
def test_yaml_bombs(tmp_path, case, text, line, message):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(text)
    p = tunneld("check", "--config", str(cfg), timeout=10)
    assert (p.returncode, p.stderr) == (2, f"{cfg}:{line}: {message}\n")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_is_one_config_error(text):
    try:
        parse(text, "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml:")


YAMLISH = st.recursive(
    st.one_of(st.sampled_from(["tun", "tap", "udp", "tcp", "none", "1420", "'0.0.0.0:1'", "[]", "{}", "&a x", "*a",
                               "!!python/object:os.system x", "true", "~", "10.0.0.1/24"]), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["interface", "transport", "encryption", "mode", "protocol", "listen", "mtu",
                                         "remote", "peer_public_key", "private_key_file"]), inner, max_size=4)
        .map(lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}")),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(YAMLISH)
def test_config_shaped_text_parses_or_is_one_config_error(text):
    try:
        parse(text, "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)
