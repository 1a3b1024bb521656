"""Known answers: KDF (wireguard-go kdf_test.go), X25519 (RFC 7748 5.2, 6.1),
ChaCha20-Poly1305 (RFC 8439 2.8.2), HChaCha20 and XChaCha20-Poly1305
(draft-irtf-cfrg-xchacha-03 2.2.1, A.3.1), the replay window case by case
(wireguard-go replay_test.go, from the kernel's selftest/counter.c)."""

import pytest

from tunneld.wg import primitives as P
from tunneld.wg.replay import WINDOW_SIZE, ReplayWindow

h = bytes.fromhex


def test_kdf_vectors():
    key, data = b"test-key", b"test-input"
    t1 = h("6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633")
    t2 = h("df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a")
    t3 = h("fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24")
    assert P.KDF1(key, data) == t1
    assert P.KDF2(key, data) == (t1, t2)
    assert P.KDF3(key, data) == (t1, t2, t3)


@pytest.mark.parametrize("scalar,u,out", [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
])
def test_x25519_rfc7748_5_2(scalar, u, out):
    assert P.DH(h(scalar), h(u)) == h(out)


def test_x25519_rfc7748_6_1():
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert P.public_of(alice) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert P.public_of(bob) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert P.DH(alice, P.public_of(bob)) == P.DH(bob, P.public_of(alice)) == shared


@pytest.mark.parametrize("low_order", [bytes(32), b"\x01" + bytes(31),
                                       h("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")])
def test_dh_with_a_low_order_point_fails(low_order):
    with pytest.raises(P.DHError):
        P.DH(P.generate_private(b"\x42" * 32), low_order)


def test_chacha20_poly1305_rfc8439_2_8_2():
    key = bytes(range(0x80, 0xA0))
    nonce = h("070000004041424344454647")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
          b"sunscreen would be it.")
    ct = P.ChaCha20Poly1305(key).encrypt(nonce, pt, aad)
    expected_tag = h("1ae10b594f09e26a7e902ecbd0600691")
    assert ct[-16:] == expected_tag
    assert ct[:16] == h("d31a8d34648e60db7b86afbc53ef7ec2")


def test_aead_nonce_is_four_zero_bytes_then_le_counter():
    key = bytes(range(32))
    sealed = P.AEAD(key).seal(0x0102030405060708, b"packet", b"ad")
    assert sealed == P.ChaCha20Poly1305(key).encrypt(h("000000000807060504030201"), b"packet", b"ad")
    assert P.AEAD(key).open(0x0102030405060708, sealed, b"ad") == b"packet"
    with pytest.raises(P.InvalidTag):
        P.AEAD(key).open(0x0102030405060709, sealed, b"ad")


def test_hchacha20_draft_2_2_1():
    key = bytes(range(32))
    nonce = h("000000090000004a0000000031415927")
    assert P.hchacha20(key, nonce) == h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def test_xchacha20_poly1305_draft_a_3_1():
    pt = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
          b"sunscreen would be it.")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    iv = bytes(range(0x40, 0x58))
    ct = h("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
           "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
           "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
           "21f9664c97637da9768812f615c68b13b52e")
    tag = h("c0875924c1c7987947deafd8780acf49")
    assert P.xaead_seal(key, iv, pt, aad) == ct + tag
    assert P.xaead_open(key, iv, ct + tag, aad) == pt
    with pytest.raises(P.InvalidTag):
        P.xaead_open(key, iv, ct + tag, aad + b"x")


def test_tai64n():
    assert P.tai64n(0.0) == h("400000000000000a00000000")
    t = P.tai64n(1_700_000_000.5)
    assert t[:8] == (0x400000000000000A + 1_700_000_000).to_bytes(8, "big")
    assert int.from_bytes(t[8:], "big") == 500_000_000 & ~0xFFFFFF  # whitened
    assert P.tai64n(1_700_000_001.0) > t  # later times compare greater as bytes


def test_generated_keys_are_clamped():
    k = P.generate_private(b"\xff" * 32)
    assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40


# wireguard-go replay_test.go: its limit is 2^64 - 2^4 - 1 ("RejectAfterMessages" there)
LIMIT = (1 << 64) - (1 << 4) - 1
T = WINDOW_SIZE + 1
REPLAY_CASES = [
    (0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False),
    (T, True), (T - 1, True), (T - 1, False), (T - 2, True), (2, True), (2, False),
    (T + 16, True), (3, False), (T + 16, False), (T * 4, True), (T * 4 - (T - 1), True),
    (10, False), (T * 4 - T, False), (T * 4 - (T + 1), False), (T * 4 - (T - 2), True),
    (T * 4 + 1 - T, False), (0, False), (LIMIT, False), (LIMIT - 1, True), (LIMIT, False),
    (LIMIT - 1, False), (LIMIT - 2, True), (LIMIT + 1, False), (LIMIT + 2, False),
    (LIMIT - 2, False), (LIMIT - 3, True), (0, False),
]


def test_replay_window_cases_in_order():
    w = ReplayWindow()
    for number, (counter, expected) in enumerate(REPLAY_CASES, 1):
        assert w.check_and_update(counter, LIMIT) is expected, f"case {number}: counter {counter}"


def _bulk(counters, then):
    w = ReplayWindow()
    for c in counters:
        assert w.check_and_update(c, LIMIT), c
    for c, expected in then:
        assert w.check_and_update(c, LIMIT) is expected, c


def test_replay_window_bulk():
    _bulk(range(1, WINDOW_SIZE + 1), [(0, True), (0, False)])
    _bulk(range(2, WINDOW_SIZE + 2), [(1, True), (0, False)])
    _bulk(range(WINDOW_SIZE + 1, 0, -1), [])
    _bulk(range(WINDOW_SIZE + 2, 1, -1), [(0, False)])
    _bulk(range(WINDOW_SIZE, 0, -1), [(WINDOW_SIZE + 1, True), (0, False)])
    _bulk(range(WINDOW_SIZE, 0, -1), [(0, True), (WINDOW_SIZE + 1, True)])
