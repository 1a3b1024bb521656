"""The transport list's policy (core/failover.py) on a clock advanced by hand: when
an initiator moves on, where it goes, when it tries the preferred entry again,
and a listener that only follows. The config side of lists and their reload."""

import pytest

from tunneld.config import ConfigError, parse
from tunneld.core.failover import FAILBACK, FAILOVER_AFTER, Failover
from tunneld.service import reload

UDP, TCP_OUT, TCP_IN, UDP_IN = True, True, False, False  # dialable: the entry has a remote


def test_starts_on_the_first_entry_with_a_remote():
    assert Failover((TCP_IN, UDP, TCP_OUT)).active == 1
    assert Failover((UDP_IN, TCP_IN)).active == 0  # a listener: where the peer will turn up first


def test_unanswered_attempts_move_on_after_the_threshold_and_come_round_again():
    f = Failover((UDP, TCP_IN, TCP_OUT))
    moves = []
    for n in range(FAILOVER_AFTER * 3):
        moves.append(f.unanswered(5.0 * n))
    # every FAILOVER_AFTER-th attempt moves to the next entry that can be dialled, past the end to the top
    assert moves == [None] * (FAILOVER_AFTER - 1) + [2] + [None] * (FAILOVER_AFTER - 1) + [0] \
        + [None] * (FAILOVER_AFTER - 1) + [2]
    assert f.changes == 3


def test_an_answer_resets_the_count():
    f = Failover((UDP, TCP_OUT))
    for _ in range(FAILOVER_AFTER - 1):
        assert f.unanswered(0.0) is None
    assert f.authenticated(0, 1.0) is False  # answered where we are: no move, the count starts over
    for _ in range(FAILOVER_AFTER - 1):
        assert f.unanswered(2.0) is None
    assert f.unanswered(3.0) == 1


def test_a_lone_dialable_entry_stays_put():
    f = Failover((UDP, TCP_IN))
    for _ in range(10):
        assert f.unanswered(0.0) is None
    assert f.active == 0 and f.changes == 0


def test_a_listener_follows_the_peer_and_never_probes():
    f = Failover((UDP_IN, TCP_IN))
    assert f.unanswered(0.0) is None and f.unanswered(5.0) is None
    assert f.authenticated(1, 10.0) is True
    assert (f.active, f.changes) == (1, 1)
    assert f.get_timer() is None
    assert f.authenticated(0, 20.0) is True and f.changes == 2


def test_the_preferred_entry_is_probed_every_failback_seconds_and_won_back():
    f = Failover((UDP, TCP_OUT), failback=30)
    assert f.get_timer() is None  # on the preferred entry: nothing to probe
    for now in (0.0, 5.0):
        target = f.unanswered(now)
    assert target == 1 and f.get_timer() == 35.0
    assert f.handle_timer(34.9) is None  # early: nothing
    assert f.handle_timer(35.0) == 0  # the probe: one initiation over the preferred entry
    assert f.get_timer() == 65.0
    # the probe went unanswered: its retry is not the active entry's failure
    assert f.unanswered(40.0) is None and f.unanswered_count == 0
    assert f.handle_timer(65.0) == 0
    assert f.authenticated(0, 65.1) is True  # answered there: back
    assert (f.active, f.changes, f.get_timer()) == (0, 2, None)


def test_following_the_peer_away_from_the_preferred_arms_the_probe():
    f = Failover((UDP, TCP_IN), failback=20)
    assert f.authenticated(1, 100.0) is True
    assert f.get_timer() == 120.0 and f.handle_timer(120.0) == 0


def test_failback_zero_stays_where_it_works_and_a_reload_changes_the_interval():
    f = Failover((UDP, TCP_OUT), failback=0)
    for now in (0.0, 5.0):
        f.unanswered(now)
    assert f.active == 1 and f.get_timer() is None
    f.set_failback(10, 50.0)
    assert f.get_timer() == 60.0
    f.set_failback(0, 55.0)
    assert f.get_timer() is None and f.handle_timer(1e9) is None


# --- the config -------------------------------------------------------------------------

PUB = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
ENC = f'encryption:\n  private_key_file: k\n  peer_public_key: "{PUB}"\n'
LIST = ('transport:\n'
        '  - {protocol: udp, listen: "0.0.0.0:55555", remote: "vpn.example:55555", keepalive: 25, failback: 45}\n'
        '  - {protocol: tcp, remote: "vpn.example:443"}\n')


def test_a_list_parses_with_the_first_entry_settings_for_all():
    cfg = parse("interface: {mode: tap}\n" + LIST + ENC)
    assert [t.protocol for t in cfg.transports] == ["udp", "tcp"]
    assert cfg.transport is cfg.transports[0]
    assert [t.keepalive for t in cfg.transports] == [25, 25] and cfg.failback == 45
    assert cfg.interface.clamp_mss  # tap with a UDP entry: bridged frames are clamped


def test_a_single_mapping_is_a_list_of_one():
    cfg = parse('interface: {mode: tun}\ntransport: {protocol: udp, listen: "0.0.0.0:1"}\n' + ENC)
    assert len(cfg.transports) == 1 and cfg.failback == FAILBACK


BAD = [
    ("plaintext", "interface: {mode: tun}\n" + LIST + "encryption: none\n",
     "transport: a list of transports needs encryption in tunneld mode: plaintext"),
    ("wireguard", "interface: {mode: tun}\n" + LIST + ENC + "  wireguard_compatible: true\n",
     "transport: a list of transports needs encryption in tunneld mode: a WireGuard peer speaks UDP only"),
    ("later keepalive", 'interface: {mode: tun}\ntransport:\n  - {protocol: udp, listen: "0.0.0.0:1"}\n'
     '  - {protocol: tcp, remote: "h:443", keepalive: 5}\n' + ENC,
     "transport[1].keepalive: applies to the whole list: set it on the first entry"),
    ("empty", "interface: {mode: tun}\ntransport: []\n" + ENC, "transport: expected a mapping or a list of mappings"),
    ("bad entry", 'interface: {mode: tun}\ntransport:\n  - {protocol: udp, listen: "0.0.0.0:1"}\n'
     '  - {protocol: tcp}\n' + ENC, "transport[1]: tcp needs exactly one of listen (server) or remote (client)"),
    ("twice", 'interface: {mode: tun}\ntransport:\n  - {protocol: tcp, listen: "0.0.0.0:1"}\n'
     '  - {protocol: tcp, listen: "0.0.0.0:1"}\n' + ENC, "transport[1].listen: transport[0] listens there already"),
    ("failback alone", 'interface: {mode: tun}\ntransport: {protocol: udp, listen: "0.0.0.0:1", failback: 5}\n' + ENC,
     "transport.failback: moving back applies to a list of transports"),
    ("failback range", LIST.replace("failback: 45", "failback: -1").join(["interface: {mode: tun}\n", ENC]),
     "transport[0].failback: expected 0 to 86400 seconds"),
]


@pytest.mark.parametrize("case,text,message", BAD, ids=[b[0] for b in BAD])
def test_bad_lists_are_one_line_naming_the_key(case, text, message):
    with pytest.raises(ConfigError) as e:
        parse(text, source="x.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_reload_applies_remotes_and_failback_and_refuses_a_new_shape():
    base = "interface: {mode: tun}\n" + LIST + ENC
    old = parse(base)
    moved = parse(base.replace("vpn.example:443", "vpn2.example:443").replace("failback: 45", "failback: 5"))
    assert reload.restart_needed(old, moved) is None
    p = reload.plan(old, moved)
    assert p.remote and p.failback and "vpn2.example:443" in ", ".join(p.changed(moved))
    listen = parse(base.replace('remote: "vpn.example:443"', 'listen: "0.0.0.0:443"'))
    assert "transport[1].listen" in reload.restart_needed(old, listen)
    one = parse('interface: {mode: tun}\ntransport: {protocol: udp, listen: "0.0.0.0:55555"}\n' + ENC)
    assert "transport (from 2 entries to 1)" in reload.restart_needed(old, one)
