"""WireGuard's protocol (Noise IKpsk2), a pure implementation: no sockets, no clock.

    constants.py   every spec constant, with the whitepaper's names and units
    primitives.py  HASH, HMAC, MAC, KDF, AEAD, XAEAD, DH, TAI64N
    messages.py    the four wire messages: sizes, offsets, pack/parse
    noise.py       the handshake: initiation, response, key derivation
    cookie.py      mac1/mac2 and cookie replies (the DoS defence)
    replay.py      the RFC 6479 sliding window
    keypair.py     one direction-pair of transport keys, with counters and age
    peer.py        the session: handshake and keypair rotation driven by timers
"""
