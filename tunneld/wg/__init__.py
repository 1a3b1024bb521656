"""WireGuard's protocol (Noise IKpsk2), a pure implementation: no sockets, no clock.

    constants.py   every spec constant, with the whitepaper's names and units
    primitives.py  HASH, HMAC, MAC, KDF, AEAD, XAEAD, DH, TAI64N
    messages.py    the four wire messages: sizes, offsets, pack/parse
    noise.py       the handshake: initiation, response, key derivation
    cookie.py      mac1/mac2 and cookie replies (the DoS defence)
    replay.py      the RFC 6479 sliding window
    keypair.py     one direction-pair of transport keys, with counters and age; the three slots
    send.py        staging, sealing in place, initiating
    receive.py     handshake and transport messages, replay, keypair rotation
    admission.py   the DoS gate before any DH: limiter, mac1, load, cookies, budgets
    ratelimiter.py the per-source limiter, token buckets, the load meter
    timers.py      the five timers and their hooks
    peer.py        the session composed of those, speaking core/session.py's contract
"""
