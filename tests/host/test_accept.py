"""The accept loop (tunneld/conn/accept.py): bounded batches, connection errors
skipped, and out of descriptors: room made, or a pause said once."""

import asyncio
import errno
import logging
import os
import socket

from tunneld.conn import accept


class FakeListener:
    """A listener that is always readable (a socketpair with a byte waiting) and
    whose accept() fails with the given errors, then returns real sockets."""

    def __init__(self, errors):
        self.r, self.w = socket.socketpair()
        self.w.send(b"!")
        self.errors = list(errors)
        self.calls = 0
        self.given: list[socket.socket] = []

    def fileno(self) -> int:
        return self.r.fileno()

    def accept(self):
        self.calls += 1
        if self.errors:
            err = self.errors[0] if len(self.errors) == 1 else self.errors.pop(0)  # the last one repeats
            if err is not None:
                raise OSError(err, os.strerror(err))
            self.errors.clear()
        if len(self.given) >= 3:
            raise BlockingIOError
        a, b = socket.socketpair()
        self.given += [a, b]
        return a, "peer"

    def close(self):
        for s in (self.r, self.w, *self.given):
            s.close()


async def test_out_of_descriptors_pauses_and_says_it_once(monkeypatch, caplog):
    monkeypatch.setattr(accept, "ACCEPT_PAUSE", 0.1)
    listener = FakeListener([errno.EMFILE])
    acceptor = accept.Acceptor(listener, lambda conn, addr: None, "metrics")
    with caplog.at_level(logging.INFO, logger="tunneld"):
        acceptor.start()
        await asyncio.sleep(1.0)
        acceptor.close()
    listener.close()
    # about one accept per pause; a reader left on a readable listener is called thousands of times
    assert 5 <= listener.calls <= 15, listener.calls
    assert acceptor.starved == listener.calls
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["metrics: accept: Too many open files: not accepting for 0.1 s at a time until descriptors free up"]


async def test_room_made_by_the_owner_then_accepted():
    listener = FakeListener([errno.EMFILE, None])
    room, got = [], []
    acceptor = accept.Acceptor(listener, lambda conn, addr: got.append(addr), "metrics",
                               make_room=lambda: room.append(1) or True)
    acceptor._readable()
    acceptor.close()
    listener.close()
    assert room == [1] and got == ["peer"] * 2  # then BlockingIOError ends the batch
    assert acceptor.starved == 1


async def test_room_that_did_not_help_pauses(monkeypatch):
    listener = FakeListener([errno.ENFILE])  # system-wide: our freed descriptor went elsewhere
    room = []
    acceptor = accept.Acceptor(listener, lambda conn, addr: None, "tcp", make_room=lambda: room.append(1) or True)
    acceptor.start()
    acceptor._readable()
    paused = acceptor._resume is not None
    acceptor.close()
    listener.close()
    assert room == [1] and listener.calls == 2 and paused  # one eviction per failure, not a batch of them


async def test_a_connection_error_is_skipped_without_a_pause():
    listener = FakeListener([errno.ECONNABORTED, errno.EPROTO, None])
    got = []
    acceptor = accept.Acceptor(listener, lambda conn, addr: got.append(addr), "tcp")
    acceptor.start()
    acceptor._readable()
    assert acceptor._resume is None and acceptor.starved == 0 and got == ["peer"] * 2
    acceptor.close()
    listener.close()


async def test_one_callback_accepts_a_bounded_batch():
    server = socket.create_server(("127.0.0.1", 0), backlog=256)
    server.setblocking(False)
    clients = [socket.create_connection(server.getsockname()) for _ in range(accept.ACCEPT_BATCH + 20)]
    got = []
    acceptor = accept.Acceptor(server, lambda conn, addr: got.append(conn), "metrics")
    acceptor._readable()
    assert len(got) == accept.ACCEPT_BATCH  # the rest on the next callback, after the loop served the others
    acceptor._readable()
    assert len(got) == accept.ACCEPT_BATCH + 20
    for s in (*got, *clients, server):
        s.close()
