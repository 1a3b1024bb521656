"""Super-packets: the virtio_net_hdr a TUN/TAP device with IFF_VNET_HDR puts in
front of every packet, and the pure code that checks, cuts and joins them.

    virtio.py     the 10-byte header, and the checks every header from the
                  network passes before it reaches the kernel
    layout.py     where the IP and TCP/UDP headers of a frame are
    checksum.py   the Internet checksum (RFC 1071), pseudo-headers
    segment.py    a TSO/USO super-packet -> MTU-sized packets (GSO in userspace)
    coalesce.py   consecutive TCP segments -> one super-packet (GRO in userspace)

No I/O and no clock here; the device (device.py) and the core (tunnel.py) use it.
"""
