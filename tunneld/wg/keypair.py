"""Keypairs: the transport keys of one handshake, and the session's three slots for them."""

from __future__ import annotations

from tunneld.wg import messages
from tunneld.wg.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from tunneld.wg.primitives import AEAD
from tunneld.wg.replay import ReplayWindow


class Keypair:
    """Transport keys from one handshake. Python cannot wipe memory; dropping the
    last reference to the AEAD objects is as close as we get to zeroing."""

    __slots__ = ("send", "recv", "send_counter", "replay", "created", "initiator",
                 "local_index", "remote_index", "remote_prefix", "offload", "chunks")

    def __init__(self, send_key: bytes, recv_key: bytes, initiator: bool, created: float,
                 local_index: int, remote_index: int, offload: bool = False, chunks: bool = False):
        self.send, self.recv = AEAD(send_key), AEAD(recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = created
        self.initiator = initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.remote_prefix = messages.HEADER_TRANSPORT + remote_index.to_bytes(4, "little")
        self.offload = offload  # both announced CAP_SUPER_PACKETS: messages carry flags, header authenticated
        self.chunks = chunks and offload  # both announced CAP_CHUNKS too: a message may be a chunk (FLAG_CHUNK)



class Keypairs:
    """The three keypair slots (whitepaper 6.1) of WireGuardSession: `current` sends;
    `previous` still receives; `next` is a responder's, used once the initiator
    confirms it. Rotation happens where a handshake completes (receive.py)."""

    @property
    def offload_peer(self) -> bool:
        """Some keypair carries super-packets: the peer may send them (a TCP
        transport then accepts frames over 64 KB)."""
        return any(kp is not None and kp.offload for kp in (self.current, self.next, self.previous))

    def _can_send(self, kp: Keypair, now: float) -> bool:
        return now - kp.created < REJECT_AFTER_TIME and kp.send_counter < REJECT_AFTER_MESSAGES

    def _new_index(self) -> int:
        taken = {kp.local_index for kp in (self.current, self.previous, self.next) if kp is not None}
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index and index not in taken:
                return index
