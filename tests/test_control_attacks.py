"""The control socket and the metrics endpoint facing hostile clients: bounded
requests, one JSON answer each, label values escaped."""

import asyncio
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld import control, metrics

SNAPSHOT = {"name": 'we"ird\\na\nme', "interface": "tun0", "mode": "tun", "mtu": 1420, "transport": "udp",
            "encryption": "tunneld", "peer": None, "last_handshake_seconds_ago": None,
            "rx": {"packets": 1, "bytes": 2, "drops": 3, "errors": 4},
            "tx": {"packets": 5, "bytes": 6, "drops": 7, "errors": 8},
            "auth_failures": 0, "handshakes": 0, "reconnects": 0, "peer_changes": 0,
            "uptime_seconds": 1.0, "pid": 1}


@settings(max_examples=500)
@given(st.one_of(st.none(), st.binary(max_size=control.MAX_REQUEST)))
def test_any_request_gets_one_json_document(line):
    server = control.ControlServer("/nonexistent", lambda: SNAPSHOT)
    answer = server.answer(line)
    json.dumps(answer)  # serialisable, whatever the request held
    if line is not None and line.strip() == b"status":
        assert answer is SNAPSHOT
    else:
        assert set(answer) == {"error"}


async def _ask(path, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    try:
        await writer.drain()
        if not payload.endswith(b"\n"):
            writer.write_eof()
    except ConnectionError:
        pass  # the server answered and closed without reading the rest: what an oversize request gets
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_oversize_and_unterminated_requests(tmp_path):
    server = control.ControlServer(str(tmp_path / "t.sock"), lambda: SNAPSHOT)
    await server.start()
    try:
        big = json.loads(await _ask(server.path, b"status" * 1000 + b"\n"))
        assert big == {"error": f"request longer than {control.MAX_REQUEST} bytes"}
        assert json.loads(await _ask(server.path, b"status"))["name"] == SNAPSHOT["name"]  # EOF ends the line
        assert json.loads(await _ask(server.path, b"\x00\xff\n")) == {"error": "unknown request b'\\x00\\xff'"}
        assert json.loads(await _ask(server.path, b"status\n"))["pid"] == 1
    finally:
        server.close()


@given(st.text())
def test_metric_labels_are_escaped(name):
    text = metrics.render({**SNAPSHOT, "name": name})
    sample = re.compile(r'\Atunneld_\w+\{name="((?:[^"\\\n]|\\[\\"n])*)",interface="tun0"\} \S+\Z', re.DOTALL)
    for line in text.split("\n")[:-1]:  # the format separates lines by \n only
        if not line.startswith("#"):
            m = sample.match(line)
            assert m, line
            unescaped = re.sub(r'\\(.)', lambda g: {"n": "\n"}.get(g.group(1), g.group(1)), m.group(1))
            assert unescaped == name


def test_status_text_shows_the_attack_counters():
    text = control.format_status({**SNAPSHOT, "cookies_sent": 410, "handshakes_shed": 34_000_000, "candidates_refused": 7})
    assert "  under attack: 410 cookie replies, 34000000 handshake messages shed, 7 TCP candidates refused" in text
