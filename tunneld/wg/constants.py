"""WireGuard's constants (whitepaper section 6.1, wireguard-go device/constants.go)."""

from tunneld.core.contract import FLAG_PARTIAL, FLAG_VNET  # noqa: F401 (the wire values of the core's flags)
from tunneld.packet.limits import UNDERLAY_PLAINTEXT

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
# tunneld's own mode: the same protocol under its own identifier, so a handshake
# can never complete between a WireGuard-compatible side and a tunneld-mode side.
TUNNELD_IDENTIFIER = b"tunneld v1 point-to-point tunnel"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0  # s
REJECT_AFTER_TIME = 180.0  # s
REKEY_ATTEMPT_TIME = 90.0  # s
REKEY_TIMEOUT = 5.0  # s
REKEY_TIMEOUT_JITTER_MAX = 0.334  # s: 0..333 ms added to each retry
KEEPALIVE_TIMEOUT = 10.0  # s
COOKIE_REFRESH_TIME = 120.0  # s: the cookie secret's lifetime, and a cookie's
# An initiator receiving on a keypair this old starts a new handshake (whitepaper 6.2)
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT  # 165 s
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME  # s without a new handshake: every key is zeroed

PADDING_MULTIPLE = 16  # bytes
# tunneld mode: capability bits in the second byte of handshake messages (bound
# into the transcript, so authenticated). Both sides announcing a bit turns it on
# for the keypair that handshake makes.
CAP_SUPER_PACKETS = 0x01  # transport messages carry offload flags (below)
CAP_CHUNKS = 0x02  # with CAP_SUPER_PACKETS: a message may be one chunk of a larger one (FLAG_CHUNK)
# On a keypair with CAP_SUPER_PACKETS, a transport message's second byte says
# what its plaintext is, and the 16-byte message header is the AEAD's associated
# data, so the flags are authenticated and cost no byte of the MTU.
# FLAG_VNET, FLAG_PARTIAL: the core's names for what a packet is (core/contract.py)
FLAGS_KNOWN = FLAG_VNET | FLAG_PARTIAL
# On a keypair with CAP_CHUNKS too (tunneld mode over UDP): the message is chunk
# header[2] of header[3] of one plaintext (a super-packet, or a frame too big for
# the underlay), chunk i sealed under counter first + i (packet/chunks.py). Its
# other flags are the whole plaintext's.
FLAG_CHUNK = 0x04
# The plaintext of every chunk but the last: with the 32 bytes of a transport
# message, 40 of IPv6 and 8 of UDP, a 1500-byte underlay carries each whole.
CHUNK_STRIDE = UNDERLAY_PLAINTEXT
DEFAULT_MTU = 1420  # bytes

# Under load, responders answer an initiation without a valid mac2 with a cookie
# reply. wireguard-go: while its handshake queue holds 1/8 of its capacity; ours
# (ratelimiter.LoadMeter): while handshake messages arrive more than this many
# ahead of HANDSHAKES_PER_SECOND, half of HANDSHAKES_BURST (the other half stays
# for the mac2-valid initiation of the real peer).
UNDER_LOAD_BACKLOG = 5  # messages
UNDER_LOAD_AFTER = 1.0  # s the load state lasts after the backlog was last exceeded

# Global budgets under load, on top of the per-source limits of ratelimiter.py: they
# bound the CPU a flood from many sources can take (a cookie reply costs ~20 us in
# Python, a handshake ~300 us) and, through the burst, the work of one loop turn.
COOKIE_REPLIES_PER_SECOND = 500
COOKIE_REPLIES_BURST = 50
HANDSHAKES_PER_SECOND = 100
HANDSHAKES_BURST = 10

QUEUED_PACKETS_MAX = 128  # packets held while a handshake is under way (wireguard-go: 1024 staged)

# Message types
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

# Sizes (bytes)
KEY_SIZE = 32
AEAD_TAG_SIZE = 16
TAI64N_SIZE = 12
MAC_SIZE = 16
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE  # 32: a keepalive
COOKIE_NONCE_SIZE = 24


def transport_overhead() -> int:
    """Bytes a transport message adds to a padded packet."""
    return TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
