"""Whatever YAML types a value as (an integer of 5,000 digits, an impossible date,
`!!bool maybe`, binary, a nested map, an anchor), in whatever key: the loader
returns a Config or one ConfigError line naming the file, never a Python error
(`tunneld check` printed ValueError tracebacks and exited 1; a reload left the
client without an answer). `tunneld check` on the named cases; the reload's
answer is in tests/netns/test_netns_config.py."""

import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.config import KEYS, ConfigError, parse
from tunneld.config.parse import Unreadable

PUB = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="

# every key with a value that passes, in a tun config and in a tap one (mac and bridge are tap's)
TUN = {
    "name": "site", "log_level": "info",
    "interface": {"mode": "tun", "name": "tdx0", "mtu": "1420", "addresses": "[10.9.0.1/24]",
                  "routes": "[10.8.0.0/24]", "persistent": "false", "clamp_mss": "true", "offload": "true"},
    "transport": {"protocol": "udp", "listen": "'0.0.0.0:55555'", "remote": "'192.0.2.1:55555'",
                  "keepalive": "25", "fwmark": "51820"},
    "encryption": {"private_key_file": "site.key", "peer_public_key": f"'{PUB}'", "preshared_key_file": "site.psk",
                   "wireguard_compatible": "false", "allowed_ips": "[10.9.0.0/24]"},
    "run_as": {"user": "tunneld", "group": "tunneld", "keep_net_admin": "true"},
    "hooks": {"up": "['true']", "down": "['true']"},
    "metrics": {"listen": "'127.0.0.1:9586'"},
}
TAP = {**TUN, "interface": {"mode": "tap", "name": "tdx0", "mtu": "1500", "mac": "'02:00:00:00:00:01'",
                            "bridge": "br0", "persistent": "false", "offload": "true"},
       "encryption": {k: v for k, v in TUN["encryption"].items() if k != "allowed_ips"}}
PATHS = [k.path for k in KEYS]


def render(base: dict, path: str, value: str | None = None, extra_key: str | None = None) -> str:
    """The base config as block YAML, with `value` (YAML text) at `path`, or an
    extra key `extra_key: 1` in the mapping at `path`."""
    lines = []
    for top, body in base.items():
        if top == path and value is not None:
            lines.append(f"{top}: {value}")
        elif isinstance(body, dict):
            lines.append(f"{top}:")
            items = dict(body)
            if path.startswith(top + ".") and value is not None:
                items[path.split(".", 1)[1]] = value
            if top == path and extra_key is not None:
                items[extra_key] = "1"
            lines += [f"  {k}: {v}" for k, v in items.items()]
        else:
            lines.append(f"{top}: {body}")
    if "." not in path and path not in base and value is not None:
        lines.append(f"{path}: {value}")
    return "\n".join(lines) + "\n"


def _flow_safe(text: str) -> str:
    return json.dumps(text)  # a double-quoted YAML string: \u escapes, \0, surrogates from \ud800


INTS = st.one_of(
    st.integers(-2**80, 2**80).map(str),
    st.integers(4290, 6000).map(lambda n: "9" * n),  # past Python's 4,300-digit int() limit
    st.integers(1, 2000).map(lambda n: "0x" + "f" * n),
    st.integers(1, 300).map(lambda n: ":".join(["59"] * n)),  # base 60
    st.sampled_from(["0o17", "017", "0b1011", "1_000", "+12", "-0", "0x_", "08"]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from([".inf", "-.Inf", ".NaN", "1e400", "6.8523015e+5", "1_000.5", "190:20:30.15", "1." + "5" * 5000]),
)
BOOLS_NULLS_TEXT = ["yes", "No", "ON", "off", "true", "False", "y", "~", "null", "Null", "", "''"]
BOOLS_NULLS = st.sampled_from(BOOLS_NULLS_TEXT)
DATES = st.one_of(
    st.tuples(st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99))
    .map(lambda t: f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}"),
    st.tuples(st.integers(1, 12), st.integers(1, 31), st.integers(0, 99), st.integers(0, 99))
    .map(lambda t: f"2001-{t[0]:02d}-{t[1]:02d}T{t[2]:02d}:{t[3]:02d}:43.10-05:00"),
    st.sampled_from(["2001-13-45", "2024-02-30", "2001-12-14 21:59:43.10 -5", "2001-12-14t21:59:43.10-25:00",
                     "2002-12-14"]),
)
TAGGED_TEXT = [
    "!!int x", "!!int ''", "!!int 0x", "!!float x", "!!float ''", "!!bool maybe", "!!bool ''", "!!timestamp x",
    "!!timestamp 2024-02-30", "!!binary aGVsbG8=", "!!binary '!!!'", "!!binary é", "!!str 5", "!!null x",
    "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!pairs [a: 1, a: 2]", "!!python/name:os.system", "!foo bar",
    "!!str [1]", "!!int [1]", "!!map [1]", "!!seq {a: 1}", "!<tag:yaml.org,2002:int> 7",
]
TAGGED = st.sampled_from(TAGGED_TEXT)
STRINGS = st.one_of(
    st.text(max_size=30).map(_flow_safe),
    st.sampled_from(['"\\0"', '"\\ud800"', '"\\udcff"', '"a\\x00b"', '"\\u2028"', "'tun'", "tun", "tap", "udp",
                     "none", "'0.0.0.0:²'", "'[::1]:٥٥'", "'10.0.0.1:99999'", "x" * 5000]),
    st.text(max_size=12),  # raw: often not YAML at all
)
ANCHORS_TEXT = ["&a 5", "*a", "&a [1, *a]", "[&a x, *a]", "{<<: {a: 1}}", "{<<: 5}", "{? [a]: b}"]
ANCHORS = st.sampled_from(ANCHORS_TEXT)
SCALARS = st.one_of(INTS, FLOATS, BOOLS_NULLS, DATES, TAGGED, STRINGS, ANCHORS)
# the named troublemakers, each tried in every key (hypothesis alone meets a given pair rarely)
SPECIALS = BOOLS_NULLS_TEXT + TAGGED_TEXT + ANCHORS_TEXT + [
    "9" * 5000, "0x" + "f" * 5000, ":".join(["59"] * 300), "1." + "5" * 5000, "1e400", ".nan", "2001-13-45",
    "2024-02-30", "2002-12-14", "2001-12-14t21:59:43.10-05:00", '"\\0"', '"\\ud800"', '"\\udcff"', "'0.0.0.0:²'",
    "'[::1]:٥٥'", "'x:0'", "x" * 5000, "[[[]]]", "{}", "[]", "{a: {b: {c: 1}}}", "[2001-13-45]",
    "{2001-13-45: 1}", "[!!bool maybe]", '["\\0"]', '["\\ud800"]', "-1", "0", "65536", "4294967296", "true",
]
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(SCALARS, inner), max_size=3)
        .map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}")),
    max_leaves=8)


def _no_unreadable(value, seen=0) -> None:
    """Nothing YAML could not type survives into a Config."""
    assert not isinstance(value, Unreadable)
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _no_unreadable(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            _no_unreadable(item)


def _parse(text: str):
    return parse(text, "fuzz.yaml", read_secret=lambda path, run_as: KEY + "\n", check_file=lambda path: None)


@settings(max_examples=600, deadline=None)
@given(base=st.sampled_from([TUN, TAP]), path=st.sampled_from(PATHS), value=VALUES)
def test_any_yaml_value_in_any_key_is_a_config_or_one_config_error(base, path, value):
    text = render(base, path, value)
    try:
        cfg = _parse(text)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml:") and len(str(e)) < 2000, str(e)
        return
    _no_unreadable(cfg)


@pytest.mark.parametrize("path", PATHS)
def test_every_named_troublemaker_in_every_key_is_a_config_or_one_config_error(path):
    for base in (TUN, TAP) if path.startswith("interface") else (TUN,):  # the tap base differs only there
        for value in SPECIALS:
            try:
                _no_unreadable(_parse(render(base, path, value)))
            except ConfigError as e:
                assert "\n" not in str(e) and str(e).startswith("fuzz.yaml:") and len(str(e)) < 2000, (value, str(e))


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from([TUN, TAP]), section=st.sampled_from(["interface", "transport", "encryption",
                                                                   "run_as", "hooks", "metrics"]), key=SCALARS)
def test_any_yaml_value_as_a_key_is_a_config_or_one_config_error(base, section, key):
    text = render(base, section, extra_key=key)  # '#' or '' make no key at all: then the config stands
    try:
        _no_unreadable(_parse(text))
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.yaml:")


@pytest.mark.parametrize("key", ['"a\\nb"', '"\\u2028"', '"\\t"', '"' + "k" * 1000 + '"'],
                         ids=["newline", "u2028", "tab", "long"])
def test_an_odd_key_stays_on_the_errors_one_line(key):
    for section in ("interface", "transport", "encryption", "run_as", "hooks", "metrics"):
        with pytest.raises(ConfigError) as e:
            _parse(render(TUN, section, extra_key=key))
        assert "\n" not in str(e.value) and str(e.value).isprintable() and len(str(e.value)) < 400, str(e.value)
        assert "unknown key" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _parse(f"interface: {{{key}: 1, {key}: 2}}\n")
    assert "\n" not in str(e.value) and str(e.value).endswith("duplicate key")


def test_the_bases_are_valid():
    for base in (TUN, TAP):
        _parse(render(base, "name"))


BIG = "9" * 5000


@pytest.mark.parametrize("path, value, message", [
    ("name", "2001-13-45", "name: expected a string, got an unreadable date or time '2001-13-45' "
                           "(quote it: unquoted, YAML reads it as another type)"),
    ("log_level", "2024-02-30", "log_level: expected one of debug | info | warning | error, "
                                "got an unreadable date or time '2024-02-30'"),
    ("interface.mtu", BIG, f"interface.mtu: expected an integer, got an oversized integer '{BIG[:56]}..."),
    ("transport.fwmark", "0x" + "f" * 90, "transport.fwmark: expected 1 to 4294967295, got "),
    ("interface.name", "2002-12-14", "interface.name: expected a string, got a date 2002-12-14 (quote it"),
    ("hooks.up", '["\\0"]', "hooks.up[0]: expected a string, got a string with a NUL or a lone surrogate '\\x00'"),
    ("run_as.keep_net_admin", "!!bool maybe", "run_as.keep_net_admin: expected a boolean, got an unreadable boolean 'maybe'"),
    ("transport.listen", "'0.0.0.0:²'", "transport.listen: port must be 1 to 65535, got '²'"),
])
def test_yaml_typed_values_get_one_line_naming_their_key(path, value, message):
    text = render(TUN, path, value)
    with pytest.raises(ConfigError) as e:
        _parse(text)
    line = text.split("\n").index(next(ln for ln in text.split("\n") if value[:20] in ln)) + 1
    assert str(e.value).startswith(f"fuzz.yaml:{line}: {message}"), str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("path, value", [("name", "2001-13-45"), ("log_level", "2024-02-30"),
                                         ("interface.mtu", BIG)], ids=["name", "log_level", "big int"])
def test_tunneld_check_gives_one_line_and_exit_2(tmp_path, path, value):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(render({"interface": {"mode": "tun"}, "transport": {"protocol": "udp", "listen": "'0.0.0.0:5000'"},
                           "encryption": "none"}, path, value))
    p = subprocess.run([sys.executable, "-m", "tunneld", "check", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and p.stderr.count("\n") == 1 and p.stderr.startswith(f"{cfg}:")
    assert f"{path}: expected " in p.stderr and "Traceback" not in p.stderr
