"""Prometheus text exposition of the counters: GET /metrics on metrics.listen."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("tunneld")

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
    ("reconnects_total", "counter", "TCP connections re-established", lambda s: s["reconnects"]),
    ("last_handshake_seconds", "gauge", "Seconds since the last handshake (absent: never)", lambda s: s["last_handshake_seconds_ago"]),
    ("uptime_seconds", "gauge", "Seconds since start", lambda s: s["uptime_seconds"]),
]


def label_value(text: str) -> str:
    """A label value as the text exposition format wants it: backslash, double quote
    and line feed escaped (a config's name comes from its file name, which may hold any)."""
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(st: dict) -> str:
    label = f'{{name="{label_value(st["name"])}",interface="{label_value(st["interface"])}"}}'
    out = []
    for name, kind, help_text, get in _HELP:
        value = get(st)
        out.append(f"# HELP tunneld_{name} {help_text}")
        out.append(f"# TYPE tunneld_{name} {kind}")
        if value is not None:
            out.append(f"tunneld_{name}{label} {value}")
    return "\n".join(out) + "\n"


class MetricsServer:
    def __init__(self, host: str, port: int, snapshot: Callable[[], dict]):
        self.host, self.port, self.snapshot = host, port, snapshot
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        from tunneld.errors import StartupError
        try:
            self.server = await asyncio.start_server(self._client, self.host, self.port)
        except OSError as e:
            raise StartupError(f"metrics: cannot listen on {self.host}:{self.port}: {e.strerror.lower()}") from None
        log.info("metrics: serving http://%s:%d/metrics", self.host, self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if request.startswith(b"GET ") and path in (b"/metrics", b"/"):
                body, status = render(self.snapshot()).encode(), b"200 OK"
                ctype = b"text/plain; version=0.0.4; charset=utf-8"
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
