"""Sizes and limits, in one place, with their units and where they come from.

Every buffer and frame limit in tunneld is derived from the configured MTU
through `max_packet()`; nothing on the packet path assumes 1500 or 2000 bytes.
"""

# Link layer
ETHERNET_HEADER = 14  # bytes: dst MAC, src MAC, EtherType in front of every TAP frame

# MTU bounds (bytes)
MIN_MTU = 68  # RFC 791: every IPv4 link carries 68-byte datagrams
IPV6_MIN_MTU = 1280  # RFC 8200 section 5: Linux disables IPv6 on smaller links
MAX_MTU = 65535  # the TUN/TAP driver's ceiling
DEFAULT_TUN_MTU = 1420  # fits a 1500-byte IPv4 or IPv6 underlay, with room for encryption
DEFAULT_TAP_MTU = 1500  # bridged LAN hosts keep their 1500-byte MTU; outer UDP fragments

# Underlay
UNDERLAY_MTU = 1500  # bytes: the path the outer datagrams take, as the default TUN MTU (1420) assumes
UNDERLAY_HEADERS = 48  # bytes: IPv6 + UDP, the larger of the two underlays
# the largest plaintext one encrypted datagram carries whole on it: 1500 - 48 - 32 (header and tag)
UNDERLAY_PLAINTEXT = UNDERLAY_MTU - UNDERLAY_HEADERS - 32  # 1420, WireGuard's default MTU for the same reason
MAX_UDP_PAYLOAD = 65507  # bytes: 65535 - 20 (IPv4 header) - 8 (UDP header)

# simpletun's TCP framing: a 2-byte big-endian length, then the packet
LENGTH_PREFIX = 2  # bytes
MAX_LENGTH_FIELD = 0xFFFF  # the largest length two bytes can say
SIMPLETUN_BUFFER = 2000  # bytes: simpletun's read buffer; a larger plaintext frame breaks it

# TCP transport
TCP_SEND_QUEUE_FRAMES = 64  # whole frames queued behind a slow TCP peer before we drop
TCP_RECV_CHUNK = 65536  # bytes read from a TCP socket per recv, at least one largest frame
RECONNECT_INITIAL = 1.0  # s, first wait after a lost or failed connection
RECONNECT_MAX = 30.0  # s, the cap the wait doubles up to
CONNECT_TIMEOUT = 10.0  # s, for one connection attempt

# Socket buffers asked of the kernel (bytes); bounded, sized for bursts at line rate
SOCKET_BUFFER = 4 * 1024 * 1024


VLAN_ROOM = 8  # bytes: up to two 802.1Q/802.1ad tags (QinQ) a TAP frame may carry past the MTU


def link_header(mode: str) -> int:
    """Bytes a device frame may carry besides the IP packet: a TAP frame's
    Ethernet header and room for VLAN tags (the kernel hands a 1500-MTU TAP
    1518-byte tagged frames, and 1522 with QinQ)."""
    return ETHERNET_HEADER + VLAN_ROOM if mode == "tap" else 0


# Encryption (WireGuard's transport message, whitepaper 5.4.6)
ENCRYPTION_OVERHEAD = 32  # bytes: transport header (16) + Poly1305 tag (16)
PADDING_TRAILER_ROOM = 16  # bytes: tunneld mode's TAP padding (0-15) and its length byte


# Super-packets (IFF_VNET_HDR with TSO/USO, packet/)
MAX_IP_PACKET = 65535  # bytes: an IP length field's ceiling, and so a TSO read's
VNET_HEADER = 10  # bytes: struct virtio_net_hdr in front of every read and write
UDP_GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS: datagrams one UDP GSO send may carry
GRO_MAX_SEGMENTS = 64  # TCP segments the coalescer joins into one super-packet write (the kernel's
                      # gso_max_segs is higher; 64 keeps a write bounded)
MAX_GSO_BYTES = 65000  # bytes of UDP payload in one GSO send (the limit is 65507 over IPv4)


def device_buffer(mode: str, mtu: int, vnet: bool) -> int:
    """The largest read or write on the device: a packet, or with a virtio header
    a super-packet of up to 64 KB."""
    if vnet:
        return VNET_HEADER + link_header(mode) + MAX_IP_PACKET
    return max_packet(mode, mtu)


def max_packet(mode: str, mtu: int) -> int:
    """The largest whole packet (TUN) or frame (TAP) the interface can carry."""
    return mtu + link_header(mode)
