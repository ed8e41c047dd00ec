"""Error hygiene of ``node.crypto``: whatever goes in, only our errors come out, secret-free.

Hypothesis feeds arbitrary values (bytes of every length, bytearray, memoryview, ints, bools,
floats, str, None, lists) to every public function. Properties:

- the only exceptions are :class:`PeerlineError` subclasses (no ``ValueError``,
  ``TypeError``, ``RuntimeError``, ``AttributeError``, ``OverflowError`` ...);
- an error's ``str``/``repr`` never contains a byte argument it was given (hex or ``repr``),
  since keys and plaintexts are among them;
- ``repr``/``str`` of :class:`SigningKey` / :class:`X25519PrivateKey` never show the secret;
- a signature made for one domain never verifies for another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import crypto
from node.crypto import Argon2Params, SigningKey, X25519PrivateKey
from node.errors import InvalidSignatureError, PeerlineError

FUZZ = settings(max_examples=150, deadline=None)


def _view(data: bytes) -> memoryview:
    return memoryview(data)


byte_strings = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=24, max_size=24),
    st.binary(min_size=64, max_size=64),
)
anything = st.one_of(
    byte_strings,
    byte_strings.map(bytearray),
    byte_strings.map(_view),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.none(),
    st.lists(st.integers(min_value=0, max_value=255), max_size=40),
)
sizes = st.one_of(st.integers(min_value=-5, max_value=9000), anything)
domains = st.one_of(st.text(max_size=300), anything)
ascii_domains = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=255
)
argon_params = st.one_of(st.just(Argon2Params.FAST_FOR_TESTS), anything)


def _leaks(text: str, value: object) -> bool:
    """Whether ``text`` shows a byte argument of 8+ bytes, as hex or as a Python literal."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return False
    data = bytes(value)
    return len(data) >= 8 and (data.hex() in text.lower() or repr(data) in text)


def _call(function: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    """Call ``function``; only a secret-free :class:`PeerlineError` may escape (returns None)."""
    try:
        return function(*args, **kwargs)
    except PeerlineError as error:
        shown = f"{error!s} {error!r} {error.to_dict()}"
        for value in (*args, *kwargs.values()):
            assert not _leaks(shown, value), f"{type(error).__name__} shows an argument"
        assert isinstance(error.code, str)
        assert error.code
        return None
    except Exception as error:  # the property under test: anything else is a bug
        pytest.fail(f"{function.__name__} raised foreign {type(error).__name__}: {error}")


@FUZZ
@given(public=anything, domain=domains, message=anything, signature=anything)
def test_verify(public: object, domain: object, message: object, signature: object) -> None:
    _call(crypto.verify, public, domain, message, signature)
    _call(crypto.verify_raw, public, message, signature)


@FUZZ
@given(seed=anything, domain=domains, message=anything)
def test_signing_key(seed: object, domain: object, message: object) -> None:
    key = _call(SigningKey, seed)
    if isinstance(key, SigningKey):
        _call(key.sign, domain, message)
        _call(key.sign_raw, message)


@FUZZ
@given(secret=anything, public=anything)
def test_x25519(secret: object, public: object) -> None:
    _call(crypto.x25519, secret, public)
    _call(crypto.ed25519_public_to_x25519, public)
    key = _call(X25519PrivateKey, secret)
    if isinstance(key, X25519PrivateKey):
        _call(key.exchange, public)


@FUZZ
@given(key=anything, nonce=anything, data=anything, associated=anything)
def test_aead(key: object, nonce: object, data: object, associated: object) -> None:
    _call(crypto.aead_decrypt, key, nonce, data, associated)
    _call(crypto.aead_encrypt, key, nonce, data, associated)


@FUZZ
@given(key=anything, data=anything, tag=anything, person=anything, size=sizes)
def test_macs_and_hashes(
    key: object, data: object, tag: object, person: object, size: object
) -> None:
    _call(crypto.hmac_sha256, key, data)
    _call(crypto.hmac_sha256_verify, key, data, tag)
    _call(crypto.blake2b, data, size=size, key=key, person=person)
    _call(crypto.random_bytes, size)


@FUZZ
@given(ikm=anything, salt=anything, info=anything, length=sizes)
def test_hkdf(ikm: object, salt: object, info: object, length: object) -> None:
    _call(crypto.hkdf_sha256, ikm, salt=salt, info=info, length=length)


@settings(max_examples=60, deadline=None)
@given(passphrase=anything, salt=anything, params=argon_params, size=sizes)
def test_argon2id(passphrase: object, salt: object, params: object, size: object) -> None:
    _call(crypto.argon2id, passphrase, salt, params, size)


@FUZZ
@given(seed=st.binary(min_size=32, max_size=32))
def test_secret_keys_never_shown(seed: bytes) -> None:
    signing = SigningKey(seed)
    exchange = X25519PrivateKey(seed)
    for key, secrets in (
        (signing, [seed, signing.to_x25519().secret_bytes()]),
        (exchange, [seed]),
    ):
        for shown in (repr(key), str(key), f"{key}", f"{key!r}"):
            for secret in secrets:
                windows = {secret[i : i + 8].hex() for i in range(len(secret) - 7)}
                assert not any(window in shown for window in windows)
                assert repr(secret) not in shown


@FUZZ
@given(
    seed=st.binary(min_size=32, max_size=32),
    domain=ascii_domains,
    other=ascii_domains,
    message=st.binary(max_size=200),
)
def test_signature_bound_to_its_domain(
    seed: bytes, domain: str, other: str, message: bytes
) -> None:
    key = SigningKey(seed)
    signature = key.sign(domain, message)
    crypto.verify(key.public_key, domain, message, signature)
    if other != domain:
        with pytest.raises(InvalidSignatureError):
            crypto.verify(key.public_key, other, message, signature)
    with pytest.raises(InvalidSignatureError):
        crypto.verify_raw(key.public_key, message, signature)
    if len(domain) > 1:  # moving bytes between domain and message must not help
        shifted = domain[-1].encode("ascii") + message
        with pytest.raises(InvalidSignatureError):
            crypto.verify(key.public_key, domain[:-1], shifted, signature)


def test_helper_catches_foreign_errors() -> None:
    """The property cannot pass vacuously: a foreign exception is reported as a failure."""

    def broken(value: object) -> None:
        raise ValueError(value)

    with pytest.raises(pytest.fail.Exception, match="foreign ValueError"):
        _call(broken, b"x")


def test_helper_catches_leaks() -> None:
    secret = bytes(range(16))

    def leaky(value: bytes) -> None:
        raise PeerlineError(f"bad key {value.hex()}")

    with pytest.raises(AssertionError, match="shows an argument"):
        _call(leaky, secret)
