"""Known-answer tests for ``node.crypto``: every Wycheproof case plus the RFC examples.

Wycheproof files are read from ``<repo>/../shared/test-vectors/wycheproof/`` (a missing file is
an error, not a skip). Every case runs; a failure names its ``tcId``.

Outcome rules (decided here, asserted for every case):

- ``valid``: the expected output, exactly.
- ``invalid``: one of our errors, never ``ValueError``/``TypeError``/``RuntimeError``:
  a forged or malformed Ed25519 signature -> :class:`InvalidSignatureError`; a modified AEAD
  tag -> :class:`DecryptionError`; an AEAD nonce of the wrong size -> :class:`InvalidKeyError`
  (wrong-length key material); a modified HMAC tag -> :class:`InvalidSignatureError`
  (code ``crypto.bad_mac``). The one exception to "CryptoError family": an HKDF output size
  over 255 blocks is *caller misuse*, not hostile input (lengths are constants in our code,
  never read from the wire), so it raises :class:`LocalProtocolError` (code
  ``crypto.bad_argument``).
- X25519 ``acceptable``: a low-order public point (flag ``LowOrderPublic`` /
  ``ZeroSharedSecret``) is refused with :class:`InvalidKeyError`, as libsodium refuses it.
  Every other ``acceptable`` case (twist points, non-canonical u >= p, other edge cases) is
  computed exactly as RFC 7748 says (u reduced mod p, top bit masked) and must give the
  expected shared secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.crypto import (
    SigningKey,
    X25519PrivateKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    hmac_sha256,
    hmac_sha256_verify,
    verify_raw,
    x25519,
)
from node.errors import (
    DecryptionError,
    InvalidKeyError,
    InvalidSignatureError,
    LocalProtocolError,
)

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "test-vectors" / "wycheproof"

Case = dict[str, Any]

EXPECTED_COUNTS = {
    "x25519_test.json": 518,
    "ed25519_test.json": 151,
    "xchacha20_poly1305_test.json": 315,
    "hkdf_sha256_test.json": 86,
    "hmac_sha256_test.json": 174,
}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _cases(name: str) -> list[Any]:
    """One ``pytest.param(group, test)`` per case, with id ``tc<tcId>-<result>``."""
    return [
        pytest.param(group, test, id=f"tc{test['tcId']}-{test['result']}")
        for group in _load(name)["testGroups"]
        for test in group["tests"]
    ]


def _hex(case: Case, field: str) -> bytes:
    return bytes.fromhex(case[field])


@pytest.mark.parametrize(("name", "count"), sorted(EXPECTED_COUNTS.items()))
def test_vector_files_are_complete(name: str, count: int) -> None:
    """Guard against a truncated or swapped file making the parametrized tests vacuous."""
    data = _load(name)
    tests = [t for g in data["testGroups"] for t in g["tests"]]
    assert len(tests) == count == data["numberOfTests"]
    assert len({t["tcId"] for t in tests}) == count


# --- Wycheproof ---------------------------------------------------------------------------


_LOW_ORDER_FLAGS = {"LowOrderPublic", "ZeroSharedSecret"}


@pytest.mark.parametrize(("group", "case"), _cases("x25519_test.json"))
def test_wycheproof_x25519(group: Case, case: Case) -> None:
    secret, public = _hex(case, "private"), _hex(case, "public")
    if case["result"] == "invalid" or _LOW_ORDER_FLAGS & set(case["flags"]):
        with pytest.raises(InvalidKeyError):
            x25519(secret, public)
        return
    assert case["result"] in {"valid", "acceptable"}
    assert x25519(secret, public) == _hex(case, "shared")
    assert X25519PrivateKey(secret).exchange(public) == _hex(case, "shared")


@pytest.mark.parametrize(("group", "case"), _cases("ed25519_test.json"))
def test_wycheproof_ed25519(group: Case, case: Case) -> None:
    public = bytes.fromhex(group["publicKey"]["pk"])
    message, signature = _hex(case, "msg"), _hex(case, "sig")
    if case["result"] == "valid":
        verify_raw(public, message, signature)
    else:
        assert case["result"] == "invalid"
        with pytest.raises(InvalidSignatureError):
            verify_raw(public, message, signature)


@pytest.mark.parametrize(("group", "case"), _cases("xchacha20_poly1305_test.json"))
def test_wycheproof_xchacha20_poly1305(group: Case, case: Case) -> None:
    key, nonce, aad = _hex(case, "key"), _hex(case, "iv"), _hex(case, "aad")
    message, sealed = _hex(case, "msg"), _hex(case, "ct") + _hex(case, "tag")
    if case["result"] == "valid":
        assert aead_encrypt(key, nonce, message, aad) == sealed
        assert aead_decrypt(key, nonce, sealed, aad) == message
    elif "InvalidNonceSize" in case["flags"]:
        with pytest.raises(InvalidKeyError):
            aead_decrypt(key, nonce, sealed, aad)
        with pytest.raises(InvalidKeyError):
            aead_encrypt(key, nonce, message, aad)
    else:
        assert case["result"] == "invalid"
        with pytest.raises(DecryptionError):
            aead_decrypt(key, nonce, sealed, aad)


@pytest.mark.parametrize(("group", "case"), _cases("hkdf_sha256_test.json"))
def test_wycheproof_hkdf_sha256(group: Case, case: Case) -> None:
    ikm, salt, info = _hex(case, "ikm"), _hex(case, "salt"), _hex(case, "info")
    if case["result"] == "valid":
        assert hkdf_sha256(ikm, salt=salt, info=info, length=case["size"]) == _hex(case, "okm")
    else:
        assert case["flags"] == ["SizeTooLarge"]
        with pytest.raises(LocalProtocolError) as caught:
            hkdf_sha256(ikm, salt=salt, info=info, length=case["size"])
        assert caught.value.code == "crypto.bad_argument"


@pytest.mark.parametrize(("group", "case"), _cases("hmac_sha256_test.json"))
def test_wycheproof_hmac_sha256(group: Case, case: Case) -> None:
    key, message, tag = _hex(case, "key"), _hex(case, "msg"), _hex(case, "tag")
    assert len(tag) * 8 == group["tagSize"]
    if case["result"] == "valid":
        assert hmac_sha256(key, message)[: len(tag)] == tag
        hmac_sha256_verify(key, message, tag)
    else:
        assert case["result"] == "invalid"
        with pytest.raises(InvalidSignatureError) as caught:
            hmac_sha256_verify(key, message, tag)
        assert caught.value.code == "crypto.bad_mac"


# --- RFC 7748: X25519 -----------------------------------------------------------------------

RFC7748_SECTION_5_2 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_SECTION_5_2, ids=["test1", "test2"])
def test_rfc7748_section_5_2(scalar: str, u: str, out: str) -> None:
    assert x25519(bytes.fromhex(scalar), bytes.fromhex(u)) == bytes.fromhex(out)


def test_rfc7748_section_5_2_iterated() -> None:
    """k = u = 9; then (k, u) = (X25519(k, u), k): after 1 and 1000 iterations."""
    k = u = bytes([9]) + bytes(31)
    results = {}
    for i in range(1, 1001):
        k, u = x25519(k, u), k
        results[i] = k
    assert results[1].hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert results[1000].hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = X25519PrivateKey(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public_key.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public_key.hex() == (
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.exchange(bob.public_key).hex() == shared
    assert bob.exchange(alice.public_key).hex() == shared


# --- RFC 8032 section 7.1: Ed25519 ----------------------------------------------------------

RFC8032_TESTS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(
    ("seed", "public", "message", "signature"), RFC8032_TESTS, ids=["test1", "test2", "test3"]
)
def test_rfc8032_ed25519(seed: str, public: str, message: str, signature: str) -> None:
    key = SigningKey(bytes.fromhex(seed))
    msg, sig = bytes.fromhex(message), bytes.fromhex(signature)
    assert key.public_key.hex() == public
    assert key.seed().hex() == seed
    assert key.sign_raw(msg) == sig
    verify_raw(key.public_key, msg, sig)
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(InvalidSignatureError):
        verify_raw(key.public_key, msg, tampered)


# --- RFC 5869: HKDF-SHA256 (test cases 1-3) -------------------------------------------------

RFC5869_TESTS = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "okm"), RFC5869_TESTS, ids=["case1", "case2", "case3"]
)
def test_rfc5869_hkdf_sha256(ikm: str, salt: str, info: str, okm: str) -> None:
    out = hkdf_sha256(
        bytes.fromhex(ikm),
        salt=bytes.fromhex(salt),
        info=bytes.fromhex(info),
        length=len(okm) // 2,
    )
    assert out.hex() == okm


# --- RFC 4231: HMAC-SHA256 (test cases 1-7) -------------------------------------------------

_BIG_KEY = "aa" * 131
RFC4231_TESTS = [
    (
        "0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        b"Jefe".hex(),
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        "aa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (
        bytes(range(1, 26)).hex(),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    ("0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    (
        _BIG_KEY,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        _BIG_KEY,
        b"This is a test using a larger than block-size key and a larger than block-size"
        b" data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize(
    ("key", "data", "tag"), RFC4231_TESTS, ids=[f"case{i}" for i in range(1, 8)]
)
def test_rfc4231_hmac_sha256(key: str, data: bytes, tag: str) -> None:
    """Case 5's tag is truncated to 128 bits, which :func:`hmac_sha256_verify` accepts."""
    expected = bytes.fromhex(tag)
    assert hmac_sha256(bytes.fromhex(key), data)[: len(expected)] == expected
    hmac_sha256_verify(bytes.fromhex(key), data, expected)


# --- draft-irtf-cfrg-xchacha, section A.3.1: AEAD_XChaCha20_Poly1305 --------------------------

XCHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the"
    b" future, sunscreen would be it."
)
XCHACHA_KEY = bytes(range(0x80, 0xA0))
XCHACHA_NONCE = bytes(range(0x40, 0x58))
XCHACHA_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
XCHACHA_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
)
XCHACHA_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def test_xchacha_draft_a_3_1() -> None:
    sealed = aead_encrypt(XCHACHA_KEY, XCHACHA_NONCE, XCHACHA_PLAINTEXT, XCHACHA_AAD)
    assert sealed == XCHACHA_CIPHERTEXT + XCHACHA_TAG
    assert aead_decrypt(XCHACHA_KEY, XCHACHA_NONCE, sealed, XCHACHA_AAD) == XCHACHA_PLAINTEXT
    with pytest.raises(DecryptionError):
        aead_decrypt(XCHACHA_KEY, XCHACHA_NONCE, sealed, XCHACHA_AAD + b"!")
