"""The control socket and the metrics endpoint facing hostile clients: bounded
requests, one JSON answer each, label values escaped."""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.service import control, metrics

SNAPSHOT = {"name": 'we"ird\\na\nme', "interface": "tun0", "mode": "tun", "mtu": 1420, "transport": "udp",
            "encryption": "tunneld", "peer": None, "last_handshake_seconds_ago": None,
            "rx": {"packets": 1, "bytes": 2, "drops": 3, "errors": 4},
            "tx": {"packets": 5, "bytes": 6, "drops": 7, "errors": 8},
            "auth_failures": 0, "handshakes": 0, "reconnects": 0, "peer_changes": 0,
            "uptime_seconds": 1.0, "pid": 1, "peer_state": "up", "transport_protocol": "udp"}


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
    sample = re.compile(r'\Atunneld_\w+\{name="((?:[^"\\\n]|\\[\\"n])*)",interface="tun0"(,transport="udp")?\} \S+\Z',
                        re.DOTALL)
    for line in text.split("\n")[:-1]:  # the format separates lines by \n only
        if not line.startswith("#"):
            m = sample.match(line)
            assert m, line
            unescaped = re.sub(r'\\(.)', lambda g: {"n": "\n"}.get(g.group(1), g.group(1)), m.group(1))
            assert unescaped == name


def test_the_peer_up_gauge_alone_carries_the_transport():
    text = metrics.render({**SNAPSHOT, "name": "london", "transport_protocol": "tcp"})
    assert 'tunneld_peer_up{name="london",interface="tun0",transport="tcp"} 1\n' in text
    assert "# TYPE tunneld_peer_up gauge" in text
    assert text.count("transport=") == 1  # the counters' series stay the same whatever carries them
    assert 'tunneld_peer_up{name="london",interface="tun0",transport="tcp"} 0\n' in \
        metrics.render({**SNAPSHOT, "name": "london", "transport_protocol": "tcp", "peer_state": "down"})


def test_status_text_shows_the_attack_counters():
    text = control.format_status({**SNAPSHOT, "cookies_sent": 410, "handshakes_shed": 34_000_000, "candidates_refused": 7})
    assert "  under attack: 410 cookie replies, 34000000 handshake messages shed, 7 TCP candidates refused" in text


# --- the control client against a hostile or broken server -------------------------------

class FakeControl:
    """A control socket that answers any request with `reply`, in `pieces`
    sent `gap` s apart; counts what it managed to send before the client left."""

    def __init__(self, path, reply: bytes, pieces: int = 1, gap: float = 0.0):
        import threading
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.path, self.reply, self.pieces, self.gap = str(path), reply, pieces, gap
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(control.MAX_REQUEST)
            step = -(-len(self.reply) // self.pieces)
            try:
                for i in range(0, len(self.reply), step):
                    conn.sendall(self.reply[i:i + step])
                    self.sent += len(self.reply[i:i + step])
                    time.sleep(self.gap)
            except OSError:
                pass  # the client hung up: what a bounded client does

    def close(self):
        self.thread.join(10)
        self.sock.close()


def test_a_reply_over_1_mib_is_one_error_read_within_bounds(tmp_path):
    fake = FakeControl(tmp_path / "big.sock", b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', pieces=64)
    with pytest.raises(control.ReplyError) as e:
        control.query(fake.path)
    fake.close()
    assert e.value.strerror == "reply longer than 1 MiB"
    assert fake.sent < 2 * 1024 * 1024  # the client stopped reading: the rest was never taken


def test_the_timeout_is_for_the_whole_reply_not_each_read(tmp_path):
    fake = FakeControl(tmp_path / "slow.sock", json.dumps(SNAPSHOT).encode(), pieces=20, gap=0.1)
    with pytest.raises(TimeoutError):
        control.query(fake.path, timeout=0.5)  # every read comes within 0.5 s; the whole takes 2 s
    fake.close()


@pytest.mark.parametrize("reply, words", [
    (b"a" * (control.MAX_REPLY + 1), "reply longer than 1 MiB"),
    (b"HTTP/1.0 400 Bad Request\r\n\r\n", "reply is not JSON (is something other than tunneld listening?)"),
    (b"\xff\xfe", "reply is not JSON (is something other than tunneld listening?)"),
    (b"[1, 2]", "reply is not a JSON object"),
])
@pytest.mark.parametrize("command, code", [("status", 3), ("reload", 1)])
def test_cli_says_one_line_about_a_bad_reply(tmp_path, reply, words, command, code):
    run = tmp_path / "run"
    run.mkdir()
    fake = FakeControl(run / "t.sock", reply)
    p = subprocess.run([sys.executable, "-m", "tunneld", command, "t"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "RUNTIME_DIRECTORY": str(run)})
    fake.close()
    assert p.returncode == code and p.stdout.strip() == ""
    assert p.stderr.count("\n") == 1 and words in p.stderr and "Traceback" not in p.stderr, p.stderr


# --- the metrics endpoint against many clients -----------------------------------------------

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


async def _scrape(port: int, request: bytes = SCRAPE) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def _idle(port: int, n: int) -> list[socket.socket]:
    """n connections that never send: connect() completes from the backlog, before any accept."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


async def test_idle_clients_are_bounded_and_the_scrape_gets_through():
    server = metrics.MetricsServer("127.0.0.1", 0, lambda: dict(SNAPSHOT))
    await server.start()
    idle = _idle(server.port, 100)
    await asyncio.sleep(0.2)
    assert len(server.clients) == metrics.MAX_CLIENTS
    assert server.evicted == 100 - metrics.MAX_CLIENTS
    answer = await _scrape(server.port)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n# HELP tunneld_" in answer
    assert f"tunneld_metrics_clients_evicted_total{{".encode() in answer
    server.close()
    for s in idle:
        s.close()


async def test_a_client_that_asked_is_answered_not_evicted():
    server = metrics.MetricsServer("127.0.0.1", 0, lambda: dict(SNAPSHOT))
    await server.start()
    idle = _idle(server.port, metrics.MAX_CLIENTS)
    await asyncio.sleep(0.2)
    assert len(server.clients) == metrics.MAX_CLIENTS
    # the newcomer is queued before the oldest asks: the loop sees the listener first, and
    # evicting makes one last read of the oldest, which finds its request
    newcomer = socket.create_connection(("127.0.0.1", server.port))
    idle[0].sendall(SCRAPE)
    await asyncio.sleep(0.2)
    idle[0].settimeout(5)
    answer = b""
    while chunk := idle[0].recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.evicted == 0 and len(server.clients) == metrics.MAX_CLIENTS
    server.close()
    for s in (*idle, newcomer):
        s.close()


async def test_a_silent_or_endless_request_is_closed(monkeypatch):
    monkeypatch.setattr(metrics, "CLIENT_TIMEOUT", 0.2)
    server = metrics.MetricsServer("127.0.0.1", 0, lambda: dict(SNAPSHOT))
    await server.start()
    silent = _idle(server.port, 1)[0]
    await asyncio.sleep(0.5)
    assert server.clients == {}
    silent.settimeout(5)
    assert silent.recv(100) == b""  # closed, unanswered
    endless = socket.create_connection(("127.0.0.1", server.port))
    endless.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * (metrics.MAX_REQUEST // 6))
    await asyncio.sleep(0.1)  # the server's turn
    endless.settimeout(5)
    with pytest.raises(ConnectionResetError):  # closed with the request unread: a reset, no answer
        endless.recv(100)
    assert server.clients == {}
    assert (await _scrape(server.port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    server.close()
    silent.close()
    endless.close()
