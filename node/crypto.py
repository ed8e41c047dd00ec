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

Type confusion is refused, never coerced (``bytes(5)`` would silently be five zero bytes):
byte arguments must be ``bytes``/``bytearray``/``memoryview``, sizes must be ``int``. A wrong
*type* or an out-of-range size/length/domain argument is caller misuse
(:class:`LocalProtocolError`, code ``crypto.bad_argument`` / ``crypto.bad_domain``); a
wrong-length key, nonce or signature, a bad point or a forged tag is a :class:`CryptoError`
subclass (such input usually comes from a peer).

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
_MAX_RANDOM = 1 << 20
_ARGON2_MIN_SIZE = 16
_ARGON2_MAX_SIZE = 64
_NACL_ERRORS = (nacl.exceptions.CryptoError, ValueError, TypeError, RuntimeError)
_STDLIB_ERRORS = (TypeError, ValueError, OverflowError)

Rng = Callable[[int], bytes]
"""Source of randomness passed into pure code: ``rng(n)`` returns ``n`` random bytes."""


def _misuse(message: str) -> LocalProtocolError:
    return LocalProtocolError(message, code="crypto.bad_argument")


def _require_int(value: object, low: int, high: int, what: str) -> int:
    """An ``int`` (not ``bool``) in ``low..high``, else :class:`LocalProtocolError`."""
    if type(value) is not int or not low <= value <= high:
        raise _misuse(f"{what} must be an int in {low}..{high}")
    return value


def _require_bytes(value: object, size: int | None, what: str) -> bytes:
    """Check a caller-supplied value; wrong type is misuse, wrong size is a bad key/input.

    Error messages name the argument and the sizes, never the content.
    """
    if type(value) is bytes:
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    else:
        raise _misuse(f"{what} must be bytes")
    if size is not None and len(data) != size:
        raise InvalidKeyError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def random_bytes(n: int) -> bytes:
    """Return ``n`` (0..1 MiB) bytes from the OS CSPRNG: the real :data:`Rng`."""
    return nacl.utils.random(_require_int(n, 0, _MAX_RANDOM, "random byte count"))


def _domain_prefixed(domain: str, message: bytes) -> bytes:
    """The exact bytes signed: ``len(domain) || domain || message`` (domain is ASCII)."""
    if (
        not isinstance(domain, str)
        or not domain
        or not domain.isascii()
        or len(domain) > _MAX_DOMAIN
    ):
        raise LocalProtocolError(
            "signature domain must be 1..255 ASCII chars", code="crypto.bad_domain"
        )
    encoded = domain.encode("ascii")
    return bytes([len(encoded)]) + encoded + _require_bytes(message, None, "message")


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
        return self._sign(_domain_prefixed(domain, message))

    def sign_raw(self, message: bytes) -> bytes:
        """Plain RFC 8032 signature with no domain: only for test vectors and TLS certificates."""
        return self._sign(_require_bytes(message, None, "message"))

    def _sign(self, signed: bytes) -> bytes:
        return bytes(_sodium.crypto_sign(signed, self._secret)[:SIGNATURE_SIZE])

    def to_x25519(self) -> X25519PrivateKey:
        """The X25519 key birationally equivalent to this Ed25519 key."""
        return X25519PrivateKey(_sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret))

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()[:16]}…, secret=<hidden>)"

    __str__ = __repr__


def verify(public_key: bytes, domain: str, message: bytes, signature: bytes) -> None:
    """Verify a detached Ed25519 signature made with :meth:`SigningKey.sign` for ``domain``.

    Raises :class:`InvalidSignatureError` for a wrong signature (including one made for another
    domain), :class:`InvalidKeyError` for a malformed key; returns ``None`` on success.
    """
    _verify_signed(public_key, _domain_prefixed(domain, message), signature)


def verify_raw(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Plain RFC 8032 verification, no domain: only for test vectors and the TLS layer.

    libsodium's checks apply: non-canonical ``S`` (malleability), small-order ``R`` or key and
    non-canonical encodings are rejected.
    """
    _verify_signed(public_key, _require_bytes(message, None, "message"), signature)


def _verify_signed(public_key: object, signed: bytes, signature: object) -> None:
    public_key = _require_bytes(public_key, KEY_SIZE, "Ed25519 public key")
    signature = _require_bytes(signature, None, "signature")
    if len(signature) != SIGNATURE_SIZE:
        raise InvalidSignatureError("signature must be 64 bytes")
    try:
        _sodium.crypto_sign_open(signature + signed, public_key)
    except _NACL_ERRORS as exc:
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
    """RFC 7748 X25519 (libsodium: non-canonical public keys are reduced mod p, as the RFC says).

    Raises :class:`InvalidKeyError` when the shared secret is all zeros (low-order point).
    """
    secret = _require_bytes(secret, KEY_SIZE, "X25519 secret")
    peer_public = _require_bytes(peer_public, KEY_SIZE, "X25519 public key")
    try:
        return bytes(_sodium.crypto_scalarmult(secret, peer_public))
    except _NACL_ERRORS as exc:
        raise InvalidKeyError("X25519 public key is a low-order point") from exc


def ed25519_public_to_x25519(public_key: bytes) -> bytes:
    """Convert an Ed25519 public key to its X25519 form (refuses invalid points)."""
    public_key = _require_bytes(public_key, KEY_SIZE, "Ed25519 public key")
    try:
        return bytes(_sodium.crypto_sign_ed25519_pk_to_curve25519(public_key))
    except _NACL_ERRORS as exc:
        raise InvalidKeyError("Ed25519 public key is not a valid point") from exc


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
    """XChaCha20-Poly1305 (IETF): returns ciphertext || 16-byte tag."""
    key = _require_bytes(key, AEAD_KEY_SIZE, "AEAD key")
    nonce = _require_bytes(nonce, AEAD_NONCE_SIZE, "AEAD nonce")
    plaintext = _require_bytes(plaintext, None, "plaintext")
    associated_data = _require_bytes(associated_data, None, "associated data")
    try:
        return bytes(
            _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
                plaintext, associated_data, nonce, key
            )
        )
    except _NACL_ERRORS as exc:
        raise CryptoError("AEAD encryption failed", code="crypto.encrypt_failed") from exc


def aead_decrypt(
    key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes = b""
) -> bytes:
    """Inverse of :func:`aead_encrypt`. Raises :class:`DecryptionError` on any forgery.

    A key or nonce of the wrong length raises :class:`InvalidKeyError`.
    """
    key = _require_bytes(key, AEAD_KEY_SIZE, "AEAD key")
    nonce = _require_bytes(nonce, AEAD_NONCE_SIZE, "AEAD nonce")
    ciphertext = _require_bytes(ciphertext, None, "ciphertext")
    associated_data = _require_bytes(associated_data, None, "associated data")
    if len(ciphertext) < AEAD_TAG_SIZE:
        raise DecryptionError("ciphertext shorter than its tag")
    try:
        return bytes(
            _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext, associated_data, nonce, key
            )
        )
    except _NACL_ERRORS as exc:
        raise DecryptionError("ciphertext failed authentication") from exc


def blake2b(data: bytes, *, size: int = 32, key: bytes = b"", person: bytes = b"") -> bytes:
    """BLAKE2b (stdlib). ``person`` (<= 16 bytes) separates domains; ``key`` makes it a MAC.

    ``size`` is 1..64, ``key`` <= 64 bytes. hashlib's own checks are used (this is called per
    chunk entry and per id, so it stays a single C call); its errors become ours.
    """
    try:
        return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()
    except _STDLIB_ERRORS as exc:
        raise _misuse("BLAKE2b needs bytes, size 1..64, key <= 64 and person <= 16 bytes") from exc


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104 / 4231); any key length, as the RFC allows."""
    try:
        return _hmac.digest(key, data, "sha256")
    except _STDLIB_ERRORS as exc:
        raise _misuse("HMAC key and input must be bytes") from exc


def hmac_sha256_verify(key: bytes, data: bytes, tag: bytes) -> None:
    """Constant-time check of a (possibly truncated, 16..32 bytes) HMAC-SHA256 tag.

    Raises :class:`InvalidSignatureError` (code ``crypto.bad_mac``) for a wrong or badly sized tag.
    """
    tag = _require_bytes(tag, None, "HMAC tag")
    if not _MIN_HMAC_TAG <= len(tag) <= _SHA256_SIZE:
        raise InvalidSignatureError("HMAC tag length out of range", code="crypto.bad_mac")
    if not _hmac.compare_digest(hmac_sha256(key, data)[: len(tag)], tag):
        raise InvalidSignatureError("HMAC tag does not match", code="crypto.bad_mac")


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with ``salt`` then expand to ``length`` bytes.

    ``length`` outside ``1..8160`` (255 blocks) is caller misuse: :class:`LocalProtocolError`.
    An empty ``salt`` means 32 zero bytes, as in the RFC.
    """
    length = _require_int(length, 1, 255 * _SHA256_SIZE, "HKDF length")
    salt = _require_bytes(salt, None, "HKDF salt")
    info = _require_bytes(info, None, "HKDF info")
    prk = hmac_sha256(salt or bytes(_SHA256_SIZE), ikm)
    if length <= _SHA256_SIZE:  # the usual case (one key), without the loop's overhead
        return _hmac.digest(prk, info + b"\x01", "sha256")[:length]
    blocks = []
    block = b""
    for counter in range(1, -(-length // _SHA256_SIZE) + 1):
        block = _hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        blocks.append(block)
    return b"".join(blocks)[:length]


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
        if not isinstance(other, Argon2Params):
            return NotImplemented
        return (self.opslimit, self.memlimit) == (other.opslimit, other.memlimit)

    def __hash__(self) -> int:
        return hash((self.opslimit, self.memlimit))


Argon2Params.MODERATE = Argon2Params(_argon2id.OPSLIMIT_MODERATE, _argon2id.MEMLIMIT_MODERATE)
Argon2Params.FAST_FOR_TESTS = Argon2Params(_argon2id.OPSLIMIT_MIN, _argon2id.MEMLIMIT_MIN)


def argon2id(passphrase: bytes, salt: bytes, params: Argon2Params, size: int = 32) -> bytes:
    """Derive a ``size``-byte (16..64) key from a passphrase with Argon2id13.

    Costs outside libsodium's range raise :class:`CryptoError` (``crypto.bad_argument``).
    Memory is allocated as asked: callers reading ``params`` from a file must cap them first.
    """
    passphrase = _require_bytes(passphrase, None, "passphrase")
    salt = _require_bytes(salt, ARGON2_SALT_SIZE, "Argon2 salt")
    size = _require_int(size, _ARGON2_MIN_SIZE, _ARGON2_MAX_SIZE, "Argon2 output size")
    if not isinstance(params, Argon2Params):
        raise _misuse("Argon2 params must be Argon2Params")
    try:
        return bytes(
            _argon2id.kdf(
                size, passphrase, salt, opslimit=params.opslimit, memlimit=params.memlimit
            )
        )
    except (*_NACL_ERRORS, OverflowError, MemoryError) as exc:
        raise CryptoError("Argon2id parameters refused", code="crypto.bad_argument") from exc
