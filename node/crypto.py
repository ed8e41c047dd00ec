"""Cryptographic primitives: the only module that imports ``nacl``.

Contract:
- Every function takes and returns ``bytes``; every failure raises a subclass of
  :class:`node.errors.CryptoError` (never ``ValueError``/``RuntimeError``/``TypeError`` from
  the library, whatever the input).
- Signatures always carry a domain string (``peerline/<purpose>/v<N>``) so that a signature
  made for one purpose never verifies for another.
- Secret-bearing objects never show key bytes in ``repr``/``str``.
- No hidden randomness except :func:`random_bytes`, which the I/O shell passes into the pure
  state machines as their ``rng``.

Choices: BLAKE2b, HMAC and HKDF come from the stdlib (10x faster than nacl's bindings for
small inputs); Ed25519, X25519, XChaCha20-Poly1305 and Argon2id come from libsodium via nacl.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
from collections.abc import Callable

import nacl.bindings as _sodium
import nacl.exceptions
import nacl.pwhash.argon2id as _argon2id
import nacl.utils

from node.errors import (
    CryptoError,
    DecryptionError,
    InvalidKeyError,
    InvalidSignatureError,
    LocalProtocolError,
)

__all__ = [
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "AEAD_TAG_SIZE",
    "ARGON2_SALT_SIZE",
    "KEY_SIZE",
    "SIGNATURE_SIZE",
    "Argon2Params",
    "Rng",
    "SigningKey",
    "X25519PrivateKey",
    "aead_decrypt",
    "aead_encrypt",
    "argon2id",
    "blake2b",
    "ed25519_public_to_x25519",
    "hkdf_sha256",
    "hmac_sha256",
    "hmac_sha256_verify",
    "random_bytes",
    "verify",
    "verify_raw",
    "x25519",
]

KEY_SIZE = 32
SIGNATURE_SIZE = 64
AEAD_KEY_SIZE = 32
AEAD_NONCE_SIZE = 24
AEAD_TAG_SIZE = 16
ARGON2_SALT_SIZE = 16
_SHA256_SIZE = 32
_MAX_DOMAIN = 255
_MIN_HMAC_TAG = 16

Rng = Callable[[int], bytes]
"""Source of randomness passed into pure code: ``rng(n)`` returns ``n`` random bytes."""


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the OS CSPRNG (the real ``Rng``)."""
    return nacl.utils.random(n)


def _require_bytes(value: object, size: int | None, what: str) -> bytes:
    """Check a caller-supplied value; wrong type is misuse, wrong size is a bad key/input."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"{what} must be bytes", code="crypto.bad_argument")
    data = bytes(value)
    if size is not None and len(data) != size:
        raise InvalidKeyError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _domain_prefixed(domain: str, message: bytes) -> bytes:
    """The exact bytes signed: ``len(domain) || domain || message`` (domain is ASCII)."""
    if not domain or not domain.isascii() or len(domain) > _MAX_DOMAIN:
        raise LocalProtocolError(
            "signature domain must be 1..255 ASCII chars", code="crypto.bad_domain"
        )
    encoded = domain.encode("ascii")
    return bytes([len(encoded)]) + encoded + message


class SigningKey:
    """An Ed25519 secret key. Built from a 32-byte seed; the seed is the only secret stored."""

    __slots__ = ("_public", "_secret")

    def __init__(self, seed: bytes) -> None:
        seed = _require_bytes(seed, KEY_SIZE, "Ed25519 seed")
        public, secret = _sodium.crypto_sign_seed_keypair(seed)
        self._public: bytes = public
        self._secret: bytes = secret

    @classmethod
    def generate(cls, rng: Rng = random_bytes) -> SigningKey:
        return cls(rng(KEY_SIZE))

    @property
    def public_key(self) -> bytes:
        return self._public

    def seed(self) -> bytes:
        """The 32-byte secret seed (for storage in the encrypted key file only)."""
        return bytes(_sodium.crypto_sign_ed25519_sk_to_seed(self._secret))

    def sign(self, domain: str, message: bytes) -> bytes:
        """Sign ``message`` for ``domain``; returns the 64-byte detached signature."""
        signed = _sodium.crypto_sign(_domain_prefixed(domain, bytes(message)), self._secret)
        return bytes(signed[:SIGNATURE_SIZE])

    def sign_raw(self, message: bytes) -> bytes:
        """Plain RFC 8032 signature with no domain: only for test vectors and TLS certificates."""
        return bytes(_sodium.crypto_sign(bytes(message), self._secret)[:SIGNATURE_SIZE])

    def to_x25519(self) -> X25519PrivateKey:
        """The X25519 key birationally equivalent to this Ed25519 key."""
        return X25519PrivateKey(_sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret))

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()[:16]}…, secret=<hidden>)"

    __str__ = __repr__


def verify(public_key: bytes, domain: str, message: bytes, signature: bytes) -> None:
    """Verify a detached Ed25519 signature made with :meth:`SigningKey.sign` for ``domain``.

    Raises :class:`InvalidSignatureError` for a wrong signature, :class:`InvalidKeyError` for
    a malformed key; returns ``None`` on success.
    """
    public_key = _require_bytes(public_key, KEY_SIZE, "Ed25519 public key")
    signature = _require_bytes(signature, None, "signature")
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidSignatureError("signature must be 64 bytes")
    signed = signature + _domain_prefixed(domain, bytes(message))
    try:
        _sodium.crypto_sign_open(signed, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise InvalidSignatureError("signature does not verify") from exc


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Plain RFC 8032 verification, no domain: only for test vectors and the TLS layer."""
    public_key = _require_bytes(public_key, KEY_SIZE, "Ed25519 public key")
    signature = _require_bytes(signature, None, "signature")
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidSignatureError("signature must be 64 bytes")
    try:
        _sodium.crypto_sign_open(signature + bytes(message), public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise InvalidSignatureError("signature does not verify") from exc


class X25519PrivateKey:
    """An X25519 secret scalar. ``exchange`` refuses low-order peer points."""

    __slots__ = ("_public", "_secret")

    def __init__(self, secret: bytes) -> None:
        self._secret = _require_bytes(secret, KEY_SIZE, "X25519 secret")
        self._public = bytes(_sodium.crypto_scalarmult_base(self._secret))

    @classmethod
    def generate(cls, rng: Rng = random_bytes) -> X25519PrivateKey:
        return cls(rng(KEY_SIZE))

    @property
    def public_key(self) -> bytes:
        return self._public

    def secret_bytes(self) -> bytes:
        """The raw scalar, for persistence in the (encrypted, secure-deleted) store only."""
        return self._secret

    def exchange(self, peer_public: bytes) -> bytes:
        return x25519(self._secret, peer_public)

    def __repr__(self) -> str:
        return f"X25519PrivateKey(public={self._public.hex()[:16]}…, secret=<hidden>)"

    __str__ = __repr__


def x25519(secret: bytes, peer_public: bytes) -> bytes:
    """RFC 7748 X25519. Raises :class:`InvalidKeyError` when the result is all zeros."""
    secret = _require_bytes(secret, KEY_SIZE, "X25519 secret")
    peer_public = _require_bytes(peer_public, KEY_SIZE, "X25519 public key")
    try:
        return bytes(_sodium.crypto_scalarmult(secret, peer_public))
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise InvalidKeyError("X25519 public key is a low-order point") from exc


def ed25519_public_to_x25519(public_key: bytes) -> bytes:
    """Convert an Ed25519 public key to its X25519 form (refuses invalid points)."""
    public_key = _require_bytes(public_key, KEY_SIZE, "Ed25519 public key")
    try:
        return bytes(_sodium.crypto_sign_ed25519_pk_to_curve25519(public_key))
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise InvalidKeyError("Ed25519 public key is not a valid point") from exc


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
    """XChaCha20-Poly1305 (IETF): returns ciphertext || 16-byte tag."""
    key = _require_bytes(key, AEAD_KEY_SIZE, "AEAD key")
    nonce = _require_bytes(nonce, AEAD_NONCE_SIZE, "AEAD nonce")
    try:
        return bytes(
            _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
                bytes(plaintext), bytes(associated_data), nonce, key
            )
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise CryptoError("AEAD encryption failed", code="crypto.encrypt_failed") from exc


def aead_decrypt(
    key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes = b""
) -> bytes:
    """Inverse of :func:`aead_encrypt`. Raises :class:`DecryptionError` on any forgery."""
    key = _require_bytes(key, AEAD_KEY_SIZE, "AEAD key")
    nonce = _require_bytes(nonce, AEAD_NONCE_SIZE, "AEAD nonce")
    ciphertext = _require_bytes(ciphertext, None, "ciphertext")
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionError("ciphertext shorter than its tag")
    try:
        return bytes(
            _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, bytes(associated_data), nonce, key
            )
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise DecryptionError("ciphertext failed authentication") from exc


def blake2b(data: bytes, *, size: int = 32, key: bytes = b"", person: bytes = b"") -> bytes:
    """BLAKE2b (stdlib). ``person`` (<= 16 bytes) separates domains; ``key`` makes it a MAC."""
    if not 1 <= size <= 64 or len(key) > 64 or len(person) > 16:
        raise LocalProtocolError("bad BLAKE2b parameters", code="crypto.bad_argument")
    return hashlib.blake2b(
        bytes(data), digest_size=size, key=bytes(key), person=bytes(person)
    ).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104 / 4231)."""
    return _hmac.new(bytes(key), bytes(data), hashlib.sha256).digest()


def hmac_sha256_verify(key: bytes, data: bytes, tag: bytes) -> None:
    """Constant-time check of a (possibly truncated, >= 16 bytes) HMAC-SHA256 tag."""
    tag = _require_bytes(tag, None, "HMAC tag")
    if not _MIN_HMAC_TAG <= len(tag) <= _SHA256_SIZE:
        raise InvalidSignatureError("HMAC tag length out of range", code="crypto.bad_mac")
    if not _hmac.compare_digest(hmac_sha256(key, data)[: len(tag)], tag):
        raise InvalidSignatureError("HMAC tag does not match", code="crypto.bad_mac")


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` then expand to ``length`` bytes."""
    if not 0 < length <= 255 * _SHA256_SIZE:
        raise LocalProtocolError("HKDF length out of range", code="crypto.bad_argument")
    prk = hmac_sha256(bytes(salt) or bytes(_SHA256_SIZE), bytes(ikm))
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac_sha256(prk, block + bytes(info) + bytes([counter]))
        output += block
        counter += 1
    return output[:length]


class Argon2Params:
    """Argon2id cost parameters stored beside the salt, so they can be raised later."""

    __slots__ = ("memlimit", "opslimit")

    MODERATE: Argon2Params
    FAST_FOR_TESTS: Argon2Params

    def __init__(self, opslimit: int, memlimit: int) -> None:
        self.opslimit = opslimit
        self.memlimit = memlimit

    def __repr__(self) -> str:
        return f"Argon2Params(opslimit={self.opslimit}, memlimit={self.memlimit})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Argon2Params) and (self.opslimit, self.memlimit) == (
            other.opslimit,
            other.memlimit,
        )

    def __hash__(self) -> int:
        return hash((self.opslimit, self.memlimit))


Argon2Params.MODERATE = Argon2Params(_argon2id.OPSLIMIT_MODERATE, _argon2id.MEMLIMIT_MODERATE)
Argon2Params.FAST_FOR_TESTS = Argon2Params(_argon2id.OPSLIMIT_MIN, _argon2id.MEMLIMIT_MIN)


def argon2id(passphrase: bytes, salt: bytes, params: Argon2Params, size: int = 32) -> bytes:
    """Derive a ``size``-byte key from a passphrase with Argon2id13."""
    salt = _require_bytes(salt, ARGON2_SALT_SIZE, "Argon2 salt")
    try:
        return bytes(
            _argon2id.kdf(
                size, bytes(passphrase), salt, opslimit=params.opslimit, memlimit=params.memlimit
            )
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError) as exc:
        raise CryptoError("Argon2id parameters refused", code="crypto.bad_argument") from exc
