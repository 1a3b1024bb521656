"""tunneld: a point-to-point TUN/TAP tunnel daemon over UDP or length-prefixed TCP."""

__version__ = "0.1.0"
