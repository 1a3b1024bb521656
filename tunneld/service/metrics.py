"""Prometheus text exposition of the counters: GET /metrics on metrics.listen."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from tunneld.conn.accept import Acceptor

log = logging.getLogger("tunneld")
MAX_CLIENTS = 32  # connections at once: a scraper or two and a person with curl, with room to spare
CLIENT_TIMEOUT = 5.0  # s a client has to send its request and take the answer
MAX_REQUEST = 8192  # bytes of request head read; a longer one is closed unanswered
BACKLOG = 128  # connections the kernel queues before we accept them

_HELP = [
    ("rx_packets_total", "counter", "Packets delivered to the device", lambda s: s["rx"]["packets"]),
    ("rx_bytes_total", "counter", "Bytes received from the peer", lambda s: s["rx"]["bytes"]),
    ("rx_drops_total", "counter", "Received packets dropped", lambda s: s["rx"]["drops"]),
    ("rx_errors_total", "counter", "Received packets refused as malformed", lambda s: s["rx"]["errors"]),
    ("tx_packets_total", "counter", "Messages sent to the peer", lambda s: s["tx"]["packets"]),
    ("tx_bytes_total", "counter", "Bytes sent to the peer", lambda s: s["tx"]["bytes"]),
    ("tx_drops_total", "counter", "Packets read from the device and dropped", lambda s: s["tx"]["drops"]),
    ("tx_errors_total", "counter", "Sends that failed", lambda s: s["tx"]["errors"]),
    ("authentication_failures_total", "counter", "Messages refused by mac1 or decryption", lambda s: s["auth_failures"]),
    ("handshakes_total", "counter", "Handshakes completed", lambda s: s["handshakes"]),
    ("cookie_replies_total", "counter", "Cookie replies sent under load", lambda s: s.get("cookies_sent", 0)),
    ("handshakes_shed_total", "counter", "Handshake messages dropped by rate limits", lambda s: s.get("handshakes_shed", 0)),
    ("tcp_candidates_refused_total", "counter", "TCP connections closed before they authenticated",
     lambda s: s.get("candidates_refused", 0)),
    ("super_packets_read_total", "counter", "TSO/USO super-packets read from the device",
     lambda s: s.get("super_reads", 0)),
    ("super_packets_written_total", "counter", "super-packets written to the device (whole from the peer, or joined)",
     lambda s: s.get("super_writes", 0)),
    ("chunked_total", "counter", "Plaintexts sent as chunks at the underlay's size (UDP, tunneld mode)",
     lambda s: s.get("chunked", 0)),
    ("salvaged_total", "counter", "Chunked plaintexts that arrived incomplete (their whole segments went on)",
     lambda s: s.get("salvaged", 0)),
    ("reconnects_total", "counter", "TCP connections re-established", lambda s: s["reconnects"]),
    ("transport_changes_total", "counter", "Moves of the tunnel between the entries of a transport list",
     lambda s: s.get("transport_changes", 0)),
    ("peer_up", "gauge", "1 while the peer is up (heard from within peer_timeout), else 0; transport: udp or tcp",
     lambda s: int(s["peer_state"] == "up")),
    ("last_handshake_seconds", "gauge", "Seconds since the last handshake (absent: never)", lambda s: s["last_handshake_seconds_ago"]),
    ("uptime_seconds", "gauge", "Seconds since start", lambda s: s["uptime_seconds"]),
    ("metrics_clients_evicted_total", "counter", "Metrics connections closed to make room for a newer one",
     lambda s: s.get("metrics_clients_evicted", 0)),
    ("metrics_accept_starved_total", "counter", "Times the metrics listener found no file descriptor to accept with",
     lambda s: s.get("metrics_accept_starved", 0)),
]


def label_value(text: str) -> str:
    """A label value as the text exposition format wants it: backslash, double quote
    and line feed escaped (a config's name comes from its file name, which may hold any)."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(st: dict) -> str:
    labels = f'name="{label_value(st["name"])}",interface="{label_value(st["interface"])}"'
    # the peer's gauge also says over which transport: a label on it alone, so the
    # counters' series stay the same whatever carries them
    peer_labels = f'{labels},transport="{label_value(st["transport_protocol"])}"'
    out = []
    for name, kind, help_text, get in _HELP:
        value = get(st)
        out.append(f"# HELP tunneld_{name} {help_text}")
        out.append(f"# TYPE tunneld_{name} {kind}")
        if value is not None:
            out.append(f"tunneld_{name}{{{peer_labels if name == 'peer_up' else labels}}} {value}")
    if "transport_active" in st:  # which transport carries the tunnel: its protocol and place in the list
        out += ["# HELP tunneld_transport_active The transport in use (1), by protocol and entry of the list",
                "# TYPE tunneld_transport_active gauge",
                f'tunneld_transport_active{{{labels},transport="{label_value(st["transport_active"])}",'
                f'entry="{st.get("transport_entry", 0)}"}} 1']
    return "\n".join(out) + "\n"


class MetricsServer:
    """HTTP/1.1 GET /metrics, one request per connection, on non-blocking sockets.

    Every client costs a descriptor, so clients are bounded in number
    (MAX_CLIENTS) and in time (CLIENT_TIMEOUT, request and answer together).
    A newcomer beyond the bound evicts the oldest client still asking, after
    one last read of what it sent: a scraper sends its request as it connects
    and is answered, not evicted. Eviction rather than refusal, so that idle
    connections, reopened as they are closed, cannot lock the real scraper out
    (refusing newcomers would leave the slots to whoever came first). Running
    out of descriptors below the bound (a low RLIMIT_NOFILE) evicts the same
    way (accept.Acceptor).
    """

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict]):
        self.host, self.port, self.snapshot = host, port, snapshot
        self.sock: socket.socket | None = None
        self.acceptor: Acceptor | None = None
        self.clients: dict[int, _Client] = {}  # by fd, oldest first
        self.evicted = 0  # clients closed to make room for a newer one

    async def start(self) -> None:
        from tunneld.errors import StartupError
        try:
            self.sock = _listen(self.host, self.port)
        except OSError as e:
            raise StartupError(f"metrics: cannot listen on {self.host}:{self.port}: "
                               f"{(e.strerror or str(e)).lower()}") from None
        self.port = self.sock.getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self.acceptor = Acceptor(self.sock, self._accepted, "metrics", make_room=self._make_room)
        self.acceptor.start()
        log.info("metrics: serving http://%s:%d/metrics", f"[{self.host}]" if ":" in self.host else self.host, self.port)

    def _accepted(self, sock: socket.socket, addr) -> None:
        if len(self.clients) >= MAX_CLIENTS and not self._make_room():
            sock.close()  # every slot is being answered: rare, and over within CLIENT_TIMEOUT
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.clients[client.fd] = client
        client.expiry = self._loop.call_later(CLIENT_TIMEOUT, self._drop, client)
        self._loop.add_reader(client.fd, self._readable, client)
        self._readable(client)  # the request often came with the connection

    def _make_room(self) -> bool:
        """Close the oldest client still asking, after one last read of what it
        sent; True when a descriptor was freed (or answered and closed)."""
        for client in list(self.clients.values()):
            if client.reply is not None:
                continue  # being answered; it closes itself within CLIENT_TIMEOUT
            self._readable(client)
            if client.fd in self.clients and client.reply is None:
                self._drop(client)
                self.evicted += 1
                return True
            if client.fd not in self.clients:
                return True
        return False

    def _readable(self, client: "_Client") -> None:
        while True:
            try:
                data = client.sock.recv(MAX_REQUEST - len(client.request))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(client)
                return
            if not data:  # closed before asking
                self._drop(client)
                return
            client.request += data
            if b"\r\n\r\n" in client.request:
                self._answer(client)
                return
            if len(client.request) >= MAX_REQUEST:  # not a scraper: closed unanswered
                self._drop(client)
                return

    def _answer(self, client: "_Client") -> None:
        self._loop.remove_reader(client.fd)
        client.reply = memoryview(self.response(bytes(client.request)))
        self._writable(client)

    def response(self, request: bytes) -> bytes:
        """The whole HTTP response to one request head."""
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if request.startswith(b"GET ") and path in (b"/metrics", b"/"):
            st = {**self.snapshot(), "metrics_clients_evicted": self.evicted,
                  "metrics_accept_starved": self.acceptor.starved if self.acceptor else 0}
            body, status = render(st).encode(), b"200 OK"
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
        else:
            body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
        return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    def _writable(self, client: "_Client") -> None:
        try:
            sent = client.sock.send(client.reply)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        client.reply = client.reply[sent:]
        if not client.reply:
            self._drop(client)
        elif not client.writing:
            client.writing = True
            self._loop.add_writer(client.fd, self._writable, client)

    def _drop(self, client: "_Client") -> None:
        if self.clients.pop(client.fd, None) is None:
            return
        self._loop.remove_reader(client.fd)
        if client.writing:
            self._loop.remove_writer(client.fd)
        if client.expiry is not None:
            client.expiry.cancel()
        client.sock.close()

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor = None
        for client in list(self.clients.values()):
            self._drop(client)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _Client:
    __slots__ = ("sock", "fd", "request", "reply", "writing", "expiry")

    def __init__(self, sock: socket.socket):
        self.sock, self.fd = sock, sock.fileno()
        self.request = bytearray()
        self.reply: memoryview | None = None  # None while the request is being read
        self.writing = False  # a writer is registered for the rest of the reply
        self.expiry: asyncio.TimerHandle | None = None


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on an IP literal (v6: v6 only, as asyncio did)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
