"""rtnetlink messages, routing plans and reload diffs: pure, no kernel."""

import ipaddress
import socket
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld import config
from tunneld.service import reload
from tunneld.host import routing, rtnl
from tunneld.host.rtnl import RT_TABLE_MAIN, Route, Rule


def body_of(message: bytes) -> bytes:
    return rtnl.messages(message)[0].body


@pytest.mark.parametrize("text", ["10.9.0.1/24", "fd09::1/64", "fe80::1/64", "127.0.0.2/8"])
def test_address_round_trip(text):
    addr = ipaddress.ip_interface(text)
    assert rtnl.parse_address(rtnl.address_body(7, addr)) == (7, addr)


@pytest.mark.parametrize("net, table", [("192.168.7.0/24", RT_TABLE_MAIN), ("0.0.0.0/0", 51820),
                                        ("::/0", 51820), ("fd77::/64", RT_TABLE_MAIN)])
def test_route_round_trip(net, table):
    route = Route(ipaddress.ip_network(net), table)
    assert rtnl.parse_route(rtnl.route_body(9, route)) == (9, route)


@pytest.mark.parametrize("net", ["0.0.0.0/0", "::/0"])
def test_unreachable_route_round_trip_keeps_its_metric_and_names_no_device(net):
    route = Route(ipaddress.ip_network(net), 51820, unreachable=True, metric=routing.GUARD_METRIC)
    body = rtnl.route_body(9, route)
    assert body[7] == rtnl.RTN_UNREACHABLE and rtnl.RTA_OIF not in rtnl.attributes(body, 12)
    assert rtnl.parse_route(body) == (None, route)
    assert str(route) == f"unreachable {net} table 51820 metric 4294967295"


@pytest.mark.parametrize("rule", [Rule(4, 51820, fwmark=51820, invert=True), Rule(6, RT_TABLE_MAIN, suppress_prefixlength=0)])
def test_rule_round_trip(rule):
    assert rtnl.parse_rule(rtnl.rule_body(rule)) == rule


def test_a_rule_dumped_with_suppress_prefixlength_minus_one_has_none():
    """Kernels dump FRA_SUPPRESS_PREFIXLEN = -1 on every rule without one; read as
    a value, our own `not fwmark` rule would not be recognised, and be added twice."""
    rule = Rule(4, 51820, fwmark=51820, invert=True)
    dumped = rtnl.rule_body(rule) + rtnl.u32(rtnl.FRA_SUPPRESS_PREFIXLEN, 0xFFFFFFFF)
    assert rtnl.parse_rule(dumped) == rule


def test_rule_text_is_what_ip_rule_says():
    assert str(Rule(4, 51820, fwmark=51820, invert=True)) == "-4 not fwmark 0xca6c table 51820"
    assert str(Rule(6, RT_TABLE_MAIN, suppress_prefixlength=0)) == "-6 table main suppress_prefixlength 0"


def test_link_round_trip():
    body = rtnl.link_body(3, up=True, mtu=1420, mac=bytes.fromhex("020000000001"), master=0)
    link = rtnl.parse_link(body)
    assert (link.index, link.up, link.mtu, link.mac, link.master) == (3, True, 1420, bytes.fromhex("020000000001"), 0)


def test_an_error_message_carries_the_errno():
    err = struct.pack("=i", -17) + bytes(16)
    [m] = rtnl.messages(rtnl.message(rtnl.NLMSG_ERROR, 0, 5, err))
    assert (m.kind, m.seq, rtnl.error_code(m.body)) == (rtnl.NLMSG_ERROR, 5, 17)
    assert str(rtnl.NetlinkError(17, "add route 10.0.0.0/8")) == "[Errno 17] add route 10.0.0.0/8: File exists"


@settings(max_examples=2000)
@given(st.binary(max_size=400))
def test_parsers_never_raise_on_arbitrary_bytes(data):
    """Kernel answers are trusted, but a parser that raises would take the daemon down
    on a kernel that answers with more than we expect."""
    for m in rtnl.messages(data):
        assert len(m.body) <= len(data)
    rtnl.attributes(data, 0)
    rtnl.parse_link(data), rtnl.parse_address(data), rtnl.parse_route(data), rtnl.parse_rule(data)


def test_a_prefix_longer_than_the_address_is_not_an_address():
    body = struct.pack("=BBBBI", socket.AF_INET, 40, 0, 0, 3) + rtnl.attr(rtnl.IFA_LOCAL, bytes(4))
    assert rtnl.parse_address(body) is None


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=8))
def test_attributes_round_trip(attrs):
    packed = b"".join(rtnl.attr(k, v) for k, v in attrs)
    assert rtnl.attributes(packed, 0) == {k: v for k, v in attrs}


# --- routing ---------------------------------------------------------------------

def nets(*texts):
    return tuple(ipaddress.ip_network(t) for t in texts)


def test_a_default_route_goes_to_the_mark_table_with_two_rules_per_family():
    routes = nets("0.0.0.0/0", "::/0", "192.168.7.0/24")
    v4, v6 = nets("0.0.0.0/0", "::/0")
    guard = dict(unreachable=True, metric=routing.GUARD_METRIC)
    assert routing.routes(routes, 51820) == (Route(v4, 51820, **guard), Route(v6, 51820, **guard),  # beneath
                                             Route(v4, 51820), Route(v6, 51820),
                                             Route(nets("192.168.7.0/24")[0], RT_TABLE_MAIN))
    assert routing.routes(nets("192.168.7.0/24"), 51820) == (Route(nets("192.168.7.0/24")[0], RT_TABLE_MAIN),)
    assert routing.rules(routes, 51820) == (
        Rule(4, 51820, fwmark=51820, invert=True), Rule(4, RT_TABLE_MAIN, suppress_prefixlength=0),
        Rule(6, 51820, fwmark=51820, invert=True), Rule(6, RT_TABLE_MAIN, suppress_prefixlength=0))
    assert routing.rules(nets("0.0.0.0/0"), 7) == (Rule(4, 7, fwmark=7, invert=True),
                                                   Rule(4, RT_TABLE_MAIN, suppress_prefixlength=0))
    assert routing.rules(nets("10.0.0.0/8"), 7) == ()


@pytest.mark.parametrize("routes, peer, hit", [
    (("0.0.0.0/1", "128.0.0.0/1"), "198.51.100.7", "128.0.0.0/1"),
    (("0.0.0.0/0",), "198.51.100.7", None),              # the full tunnel keeps it out
    (("10.0.0.0/8", "10.1.0.0/16"), "10.1.2.3", "10.1.0.0/16"),
    (("10.0.0.0/8",), "192.0.2.1", None),
    (("::/1", "8000::/1"), "2001:db8::1", "::/1"),
    (("0.0.0.0/1",), "vpn.example.net", None),           # a name: checked at start, once resolved
])
def test_captures(routes, peer, hit):
    assert routing.captures(nets(*routes), peer) == (ipaddress.ip_network(hit) if hit else None)


def test_config_gives_a_full_tunnel_its_mark():
    base = "interface: {mode: tun, routes: [%s]}\ntransport: {protocol: udp, listen: '0.0.0.0:1'}\nencryption: none\n"
    assert config.parse(base % "'0.0.0.0/0'").transport.fwmark == 51820
    assert config.parse(base % "'10.0.0.0/8'").transport.fwmark is None
    text = base % "'::/0'" + "run_as: {user: tunneld, keep_net_admin: false}\n"
    with pytest.raises(config.ConfigError, match="a full tunnel .* needs CAP_NET_ADMIN"):
        config.parse(text)
    with pytest.raises(config.ConfigError, match="listed twice"):
        config.parse(base % "'10.0.0.0/8', '10.0.0.0/8'")


# --- reload as a diff -----------------------------------------------------------

BASE = config.parse("interface: {mode: tun, addresses: [10.9.0.1/24]}\n"
                    "transport: {protocol: udp, listen: '0.0.0.0:1', remote: '10.0.0.2:1'}\n"
                    "encryption: none\n", "/etc/tunneld/x.yaml")


@pytest.mark.parametrize("change, field", [
    (lambda c: replace(c, log_level="debug"), "log_level"),
    (lambda c: replace(c, interface=replace(c.interface, routes=nets("10.8.0.0/16"))), "link"),
    (lambda c: replace(c, transport=replace(c.transport, remote=config.Endpoint("10.0.0.3", 1))), "remote"),
])
def test_plan_names_what_changed(change, field):
    new = change(BASE)
    assert reload.restart_needed(BASE, new) is None
    p = reload.plan(BASE, new)
    assert [f for f in ("log_level", "link", "remote", "keys", "keepalive", "allowed_ips") if getattr(p, f)] == [field]


@pytest.mark.parametrize("change, reason", [
    (lambda c: replace(c, interface=replace(c.interface, mtu=1300)), "interface.mtu changed"),
    (lambda c: replace(c, transport=replace(c.transport, fwmark=51820)), "transport.fwmark changed"),
    (lambda c: replace(c, name_key="other"), "name changed"),
])
def test_what_needs_a_restart(change, reason):
    assert reason in reload.restart_needed(BASE, change(BASE))
